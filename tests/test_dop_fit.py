"""The generic fit hook and DOP on it: typed artifacts, honest per-sample budgets, artifact checks,
calibration sources (tiny world, lmms-eval tasks, staged paper tasks) and their bad inputs."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import repro
from repro import tinyworld as tw
from repro.calibration import Sample, calibration_set, check_source
from repro.errors import ReproError
from repro.methods.dop import DOP, SearchArtifact, SearchOptions, search
from repro.methods.fitting import Calibration
from repro.runner.artifacts import check_disjoint, fit_request
from repro.runner.executors import budget_stats
from repro.runner.spec import Cell, MethodEntry

from conftest import TINY, make_image, stage_paper_tasks

MODEL = "tiny-llava-1.5"
QUESTIONS = ["Colour?", "What colour is the small square in the upper left corner?", "What is shown here?"]


@pytest.fixture(scope="module")
def artifact(tiny_models):
    samples = [Sample(f"s{i}", [make_image(i)], QUESTIONS[i % 2]) for i in range(2)]
    return search(tiny_models[MODEL]["sdpa"], samples, ["ratio:0.5"], SearchOptions(reducer="uniform", visual_points=4),
                  source="test", progress=False)


def test_artifact_is_typed_versioned_and_records_the_depth_step(artifact, tmp_path):
    assert artifact.options.depth_step == 1  # L/8 on a 4-layer model, at least 1: every layer sampled
    assert artifact.curves["attention_depth"].points == (0, 1, 2, 3, 4)
    path = artifact.save(tmp_path / "a.json")
    assert SearchArtifact.load(path) == artifact and len(artifact.sha256) == 64
    body = json.loads(path.read_text())
    assert (body["schema"], body["version"]) == ("repro-dop-search", 2)
    (tmp_path / "old.json").write_text(json.dumps({**body, "version": 1}))
    with pytest.raises(ReproError, match="version 1.*rerun the fit"):
        repro.method("dop", "ratio:0.5", artifact=tmp_path / "old.json")


def test_an_option_contradicting_the_artifact_is_one_clear_error(artifact):
    with pytest.raises(ReproError, match=r"reducer='vispruner' \(artifact: 'uniform'\) contradicts the artifact"):
        repro.method("dop", budget="ratio:0.5", artifact=artifact, reducer="vispruner")
    with pytest.raises(ReproError, match="mha_semantics='query_skip'"):
        repro.method("dop", budget="ratio:0.5", artifact=artifact, mha_semantics="query_skip")
    same = repro.method("dop", budget="ratio:0.5", artifact=artifact, reducer="uniform", mha_semantics="drop")
    assert same.reducer == "uniform"


@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_per_sample_budget_never_exceeds_the_ratio_and_uses_it(tiny_models, artifact, ratio):
    model = tiny_models[MODEL]["sdpa"]
    honest = repro.method("dop", budget=f"ratio:{ratio}", artifact=artifact)
    fixed = repro.method("dop", budget=f"ratio:{ratio}", artifact=artifact, budget_mode="fixed")
    uses, fixed_uses = [], []
    for i, question in enumerate(QUESTIONS):
        for method, out in ((honest, uses), (fixed, fixed_uses)):
            stats = model.generate(make_image(i), question, method=method, max_new_tokens=1).stats
            out.append(stats.tflops["paper"] / stats.unpruned_tflops / ratio)
    assert max(uses) <= 1 + 1e-12
    assert max(fixed_uses) > 1  # the long question: the mean-shape policy overshoots
    n_max = model.encode(model.prepare(make_image(0), "q")).patches.numel()
    if honest.policy_for(model).n_visual < n_max:  # the policy can use more: one more token would not fit
        assert min(uses) > 0.9


@pytest.mark.parametrize("name", TINY)
def test_stats_carry_the_unpruned_flops_of_the_input(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    stats = model.generate(make_image(1, (150, 100)), "What is it?", max_new_tokens=1).stats
    assert stats.unpruned_tflops == pytest.approx(stats.tflops["paper"], rel=1e-12)


def test_budget_stats_give_the_per_sample_maximum_over_the_budget():
    recs = [{"doc_id": i, "token_counts": [{"repro": {"budget": "ratio:0.5", "tflops": {"paper": p, "exact": p},
                                                      "stats": {"unpruned_tflops": u, "n_tokens": 1,
                                                                "visual_tokens": 1}}}]}
            for i, (p, u) in enumerate(((1.0, 2.0), (1.2, 2.0), (0.5, 2.0)))]
    stats = budget_stats(recs)
    assert stats["flops_ratio"]["max"] == pytest.approx(0.6)
    assert stats["budget_use"] == {"budget": "ratio:0.5", "mean": pytest.approx(2.7 / 3), "max": pytest.approx(1.2),
                                   "samples_over": 1}


def test_the_fit_hook_is_generic():
    assert DOP.fits() and not repro.methods.registry._REGISTRY["fastv"].cls.fits()
    request = fit_request(MethodEntry("dop", {"reducer": "uniform"}, search={"samples": 3, "depth_step": 2}))
    assert (request.source, request.samples, request.config.reducer, request.config.depth_step) == \
        ("tinyworld", 3, "uniform", 2)
    assert fit_request(MethodEntry("dop", {}, search={}), profile="paper").source == "lmms:gqa"
    from repro.calibration import held_out_task

    assert held_out_task("lmms:gqa", "paper") == "gqa" and held_out_task("lmms:tinyworld_gqa", "tiny") == "tinyworld_gqa"
    assert held_out_task("lmms:tinyworld_gqa_val:validation", "tiny") == "tinyworld_gqa_val"
    assert held_out_task("lmms:tinyworld_gqa:train", "tiny") is None and held_out_task("tinyworld", "tiny") is None
    with pytest.raises(ReproError, match="method 'fastv' does not have"):
        fit_request(MethodEntry("fastv", {}, search={"samples": 2}))
    with pytest.raises(ReproError, match="unknown dop search key"):
        fit_request(MethodEntry("dop", {}, search={"depthstep": 2}))
    with pytest.raises(ReproError, match="unknown calibration source 'imagenet'"):
        fit_request(MethodEntry("dop", {}, search={"calibration": "imagenet"}))
    with pytest.raises(ReproError, match="unknown method 'nope'"):
        repro.method("nope")


def _cell(task: str, limit: int | None) -> Cell:
    return Cell(model=MODEL, model_revision="r", method="dop", options={}, budget="ratio:0.5", task=task,
                task_version="v", seed=0, limit=limit, dtype="float32", attn="sdpa", harness="h", search={})


def test_cells_never_evaluate_their_calibration_documents():
    excluded = ("tinyworld_gqa/6", "tinyworld_gqa/7")
    check_disjoint(_cell("tinyworld_gqa", 6), excluded)
    check_disjoint(_cell("tinyworld_pope", None), excluded)
    from dataclasses import replace

    check_disjoint(replace(_cell("tinyworld_gqa", None), holdout=2), excluded)
    for limit in (7, None):
        with pytest.raises(ReproError, match="set the sweep's limit to at most 6"):
            check_disjoint(_cell("tinyworld_gqa", limit), excluded)


def test_lmms_calibration_sources_on_tiny_tasks():
    # a task's own split: its last documents, excluded from that task's evaluation (the validation
    # task's documents are not the test task's, so a sweep over tinyworld_gqa never hits them)
    val = calibration_set("lmms:tinyworld_gqa_val", 3)
    assert [s.id for s in val.samples] == [f"tinyworld_gqa_val/{i}" for i in (197, 198, 199)] == list(val.excluded)
    check_disjoint(_cell("tinyworld_gqa", None), val.excluded)
    same = calibration_set("lmms:tinyworld_gqa", 2)
    assert same.excluded == tuple(s.id for s in same.samples) and same.excluded[-1].startswith("tinyworld_gqa/")
    from lmms_eval.tasks import get_task_dict

    task = get_task_dict(["tinyworld_gqa"], tw.task_manager(tw.default_data_dir()))["tinyworld_gqa"]
    last = task.test_docs()[len(task.test_docs()) - 1]
    assert same.samples[-1].question == task.doc_to_text(last)  # the task's own prompt
    with pytest.raises(ReproError, match="unknown task 'tinyworld_gqq'.*did you mean tinyworld_gqa"):
        calibration_set("lmms:tinyworld_gqq", 2)
    with pytest.raises(ReproError, match="has only .* documents in split 'test', 100000 asked"):
        calibration_set("lmms:tinyworld_gqa", 100000)
    with pytest.raises(ReproError, match="has no split 'train'"):
        calibration_set("lmms:tinyworld_gqa:train", 2)
    for bad in ("lmms:", "lmms:a:b:c", "coco"):
        with pytest.raises(ReproError, match="unknown calibration source"):
            check_source(bad)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """Fake staged paper data for GQA and POPE (tiny-world rows in the official columns)."""
    return stage_paper_tasks(tmp_path_factory.mktemp("paper"), ["gqa", "pope"], test_rows=6)


def test_a_sweep_calibrates_dop_on_a_staged_paper_task(staged, tmp_path):
    from repro.runner.spec import expand, load_spec
    from repro.runner.store import Store
    from repro.runner.sweep import run_sweep

    spec = tmp_path / "dop.yaml"
    spec.write_text(textwrap.dedent(f"""\
        profile: paper
        models: [{MODEL}]
        tasks: [gqa, pope]
        staged: {staged}
        limit: 4
        threads: 1
        methods:
          - name: dop
            budgets: [ratio:0.5]
            options: {{reducer: uniform}}
            search: {{samples: 2, visual_points: 3}}
        """))
    run_sweep(load_spec(spec), tmp_path / "store", progress=False)
    store = Store(tmp_path / "store")
    records = [store.read(c.key) for c in expand(load_spec(spec))]
    fit = records[0]["fit"]
    assert fit["calibration"] == "lmms:gqa" and fit["samples"] == 2 and fit["excluded"] == ["gqa/4", "gqa/5"]
    assert all(r["fit"] == fit for r in records)
    artifact = SearchArtifact.from_dict(store.read_artifact(fit["artifact"]))
    assert artifact.calibration == Calibration("lmms:gqa", ("gqa/4", "gqa/5"), ("gqa/4", "gqa/5"))
    assert artifact.sha256 == fit["sha256"]
    assert all(r["budget_stats"]["budget_use"]["max"] <= 1 + 1e-12 for r in records)
    # every method, not only DOP, leaves the calibration documents out (the same documents for all)
    spec.write_text(spec.read_text().replace("limit: 4", "limit: null").replace(
        "methods:", "methods:\n  - name: none"))
    cells = expand(load_spec(spec))
    assert {(c.method, c.task, c.holdout) for c in cells} == {(m, t, 2 if t == "gqa" else 0)
                                                              for m in ("none", "dop") for t in ("gqa", "pope")}
    run_sweep(load_spec(spec), tmp_path / "store", progress=False)
    for cell in cells:
        record = store.read(cell.key)
        assert record["budget_stats"]["samples"] == (4 if cell.task == "gqa" else 6)
        assert record.get("holdout") == ({"documents": 2, "limit": 4} if cell.task == "gqa" else None)


def test_artifact_from_another_model_or_reducer_is_refused(tiny_models, artifact, tmp_path):
    path = artifact.save(tmp_path / "a.json")
    with pytest.raises(ReproError, match="searched on 'tiny-llava-1.5', not 'tiny-llava-next'"):
        repro.method("dop", budget="ratio:0.5", artifact=path).policy_for(tiny_models["tiny-llava-next"]["sdpa"])
    with pytest.raises(ReproError, match="contradicts the artifact"):
        repro.method("dop", budget="ratio:0.5", artifact=path, reducer="random")
    assert np.isfinite(artifact.reference_divergence)


def test_cli_search_and_proxy_with_threads_and_held_out_rho(tmp_path, capsys):
    from repro.cli import main

    out = tmp_path / "dop.json"
    assert main(["search", "dop", "--model", MODEL, "--samples", "2", "--reducer", "uniform", "--visual-points", "3",
                 "--calibration", "tinyworld:gqa", "--budgets", "ratio:0.6", "--threads", "1", "--out", str(out)]) == 0
    assert "depth step 1" in capsys.readouterr().out
    assert SearchArtifact.load(out).calibration.samples == ("gqa/0", "gqa/1")
    assert main(["analyze", "dop-proxy", "--artifact", str(out), "--policies", "6", "--heldout", "2",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "held-out rho" in printed and "on 2 samples the search never saw" in printed
    assert "true_heldout" in (tmp_path / f"dop-proxy-{MODEL}.csv").read_text().splitlines()[0]
    assert main(["search", "dop", "--model", MODEL, "--calibration", "lmms:nope", "--out", str(out)]) == 2
    assert main(["search", "dop", "--model", MODEL, "--reducer", "nope", "--out", str(out)]) == 2
