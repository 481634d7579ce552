"""FitPrune's offline fit (baselines/fitprune/fit.py): the reference's deletion rule and layer loop
on hand-built numbers, a fit on a tiny model, and fitted recipes in a sweep through the fit hook."""

from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import pytest
import torch

import repro
from baselines.fitprune import FitPrune, RecipeArtifact
from baselines.fitprune.fit import MassRule, deletable, walk
from baselines.fitprune.recipes import FitConfig, layer_cost
from repro.calibration import Sample
from repro.errors import ReproError
from repro.runner.artifacts import fit_request
from repro.runner.spec import MethodEntry

from conftest import make_image

MODEL = "tiny-llava-1.5"


# ------------------------------------------------------------------------------ hand-built cases

def test_deletable_is_the_prefix_before_the_mass_falls_below():
    values = torch.tensor([.3, .1, .4, .2])  # ascending: .1 .2 .3 .4 (positions 1 3 0 2)
    # rest after deleting the first i: 1.0, .9, .7, .4; threshold (1 - .35) * 1.0 = .65 falls at i = 3 -> delete 2
    assert deletable(values, 1.0, 0.35).tolist() == [1, 3]
    assert deletable(values, 1.0, 0.05).tolist() == []  # .9 < .95 at i = 1 -> max(0, 0)
    # a mass the current tokens never fall below (the reference reuses a stale count): all but the
    # largest (FIX: what its loop gives one step further)
    assert deletable(values, 0.2, 0.5).tolist() == [1, 3, 0]


def test_deletable_breaks_ties_by_position():
    values = torch.tensor([.2, .1, .1, .1, .5])
    # rest: 1.0, .9, .8, .7, .6; threshold .75 falls at i = 3 -> the first two of the tied .1s
    assert deletable(values, 1.0, 0.25).tolist() == [1, 2]


def test_mass_rule_deletes_the_intersection_and_records_masses():
    # 3 visual rows then 2 text rows over 3 visual columns (head max already taken)
    attention = torch.tensor([[.5, .1, .1], [.2, .3, .1], [.1, .1, .4], [.1, .3, .2], [.2, .1, .1]])
    recorder = MassRule()
    assert recorder.delete(0, attention, n_text=2).numel() == 0
    (w_cross, w_self), = recorder.recorded  # cross: column means over text rows; self: column sums / 3
    assert w_cross == pytest.approx(.5) and w_self == pytest.approx(1.9 / 3)
    # cross [.15 .2 .15] (order 0 2 1), self [.8 .5 .6]/3 (order 1 2 0); at α = .5 each criterion
    # may delete one token: cross {0}, self {1}: no token is in both
    rule = MassRule(0.5, [(w_cross, w_self)])
    assert rule.delete(0, attention, 2).tolist() == [] and rule.deleted == {0: 0}
    # at α = .7 (thresholds .15 and .19) neither rest (.5 .35 .2; .633 .467 .267) falls below: each
    # deletes all but its largest, cross {0, 2} and self {1, 2}: token 2 is in both
    rule = MassRule(0.7, [(w_cross, w_self)])
    assert rule.delete(0, attention, 2).tolist() == [2] and rule.deleted == {0: 1}


def test_walk_stops_where_the_budget_is_met_and_ignores_later_deletions():
    card = SimpleNamespace(layers=4, hidden=8, d_q=8, d_kv=8, mlp=16)  # what FitPrune's FLOPs model reads
    deletions = [{0: 4, 1: 2, 2: 2, 3: 1}, {0: 2, 1: 2, 2: 2, 3: 2}]  # two samples of 10 visual tokens
    reached, recipe = walk(card, [10, 10], deletions, 10)
    assert reached and recipe[0] == 3 and sum(recipe) < sum((3, 2, 2, 1))  # stopped before the last layers
    reached, recipe = walk(card, [10, 10], deletions, 95)
    assert not reached and recipe == [3, 2, 2, 1]  # never reached: every layer's mean deletions, rounded down
    # the check is the reference's: spent + forecast at layer l against (1 - r) x unpruned
    assert walk(card, [10, 10], [{}, {}], 1) == (False, [0, 0, 0, 0])
    assert layer_cost(card, 10) == 10 * 8 * (8 + 16) + 2 * 100 * 8 + 10 * 8 * 8 + 3 * 10 * 8 * 16


# ------------------------------------------------------------------------------ a fit on a tiny model

@pytest.fixture(scope="module")
def fitted(tiny_models):
    model = tiny_models[MODEL]["sdpa"]
    samples = [Sample(f"s{i}", [make_image(i)], q) for i, q in enumerate(["Colour?", "What is in the upper left?",
                                                                          "How many squares?"])]
    return model, samples, FitPrune.fit(model, samples, FitConfig((30, 60)), source="test", progress=False)


def test_fit_meets_each_reduction_and_more_alpha_deletes_more(fitted):
    from baselines.fitprune.fit import CalibrationRun

    model, samples, artifact = fitted
    runs = [CalibrationRun(model, s) for s in samples]
    masses = [run.run(MassRule()).recorded for run in runs]
    n_visual = [run.seq.visual.numel() for run in runs]

    def recipe(alpha: float, reduction: int):
        return walk(model.card, n_visual, [run.run(MassRule(alpha, m)).deleted for run, m in zip(runs, masses)],
                    reduction)

    for fit in artifact.recipes:
        assert fit.deletions is not None and fit.alpha is not None
        assert recipe(fit.alpha, fit.reduction) == (True, list(fit.deletions))  # the recipe at hi meets it
        assert not recipe(fit.alpha - 1 / 128, fit.reduction)[0]  # lo = hi - one bisection step does not
        assert sum(recipe(fit.alpha + 0.01, 100)[1]) >= sum(recipe(fit.alpha, 100)[1])
    deleted = {f.reduction: sum(f.deletions) for f in artifact.recipes}
    assert 0 < deleted[30] < deleted[60]
    assert artifact.calibration.samples == ("s0", "s1", "s2") and artifact.forward_passes > len(samples)


def test_fitted_recipes_run_round_trip_and_reproduce_the_model_at_full_budget(fitted, tmp_path):
    model, samples, artifact = fitted
    path = artifact.save(tmp_path / "recipes.json")
    assert RecipeArtifact.load(path) == artifact
    image, question = samples[0].images, samples[0].question
    n = model.encode(model.prepare(image, question)).patches.numel()
    full = model.generate(image, question, max_new_tokens=3)
    same = model.generate(image, question, method=repro.method("fitprune", f"tokens:{n}", artifact=path),
                          max_new_tokens=3)
    assert same.text == full.text and same.stats.tflops == full.stats.tflops
    method = repro.method("fitprune", "ratio:0.7", artifact=artifact)
    pruned = model.generate(image, question, method=method, max_new_tokens=3)
    assert pruned.stats.tflops["paper"] <= 0.7 * full.stats.tflops["paper"] + 1e-15
    seq = model.assemble(model.prepare(image, question), model.encode(model.prepare(image, question)))
    assert method.choose(model, seq, method.tables(model, seq.visual.numel())) in (30, 60)


def test_fitted_recipes_bad_input_is_one_clear_error(fitted, tiny_models, tmp_path):
    model, samples, artifact = fitted
    other = tiny_models["tiny-qwen2.5-vl"]["sdpa"]
    with pytest.raises(ReproError, match="fitted on 'tiny-llava-1.5', not 'tiny-qwen2.5-vl'"):
        other.generate(make_image(0), "What?", method=repro.method("fitprune", "ratio:0.7", artifact=artifact))
    with pytest.raises(ReproError, match="drop recipe='official' or the artifact"):
        repro.method("fitprune", recipe="official", artifact=artifact)
    with pytest.raises(ReproError, match=r"ratio must be one of the fitted tables \[0, 30, 60\]"):
        repro.method("fitprune", ratio=50, artifact=artifact)
    body = artifact.to_dict()
    (tmp_path / "old.json").write_text(json.dumps({**body, "version": 0}))
    with pytest.raises(ReproError, match="version 0.*rerun the fit"):
        repro.method("fitprune", "ratio:0.5", artifact=tmp_path / "old.json")
    for search, message in [({"reduction": [50]}, "unknown fitprune search key"),
                            ({"reductions": [0, 50]}, "whole percentages in 1..99"),
                            ({"reductions": 50}, "a list of percentages"),
                            ({"tolerance": 0.7}, "tolerance must be")]:
        with pytest.raises(ReproError, match=message):
            fit_request(MethodEntry("fitprune", {}, search=search))
    with pytest.raises(ReproError, match="contradicts `search:`"):
        fit_request(MethodEntry("fitprune", {"recipe": "official"}, search={}))


def test_a_sweep_fits_fitprune_once_and_every_cell_names_the_recipes(tmp_path):
    from repro.runner.spec import expand, load_spec
    from repro.runner.store import Store
    from repro.runner.sweep import run_sweep

    spec = tmp_path / "fitprune.yaml"
    spec.write_text(textwrap.dedent(f"""\
        profile: tiny
        models: [{MODEL}]
        tasks: [tinyworld_gqa, tinyworld_pope]
        limit: 3
        threads: 1
        methods:
          - name: fitprune
            budgets: [ratio:0.9, ratio:0.75]
            search: {{samples: 2, reductions: [30, 60]}}
        """))
    run_sweep(load_spec(spec), tmp_path / "store", progress=False)
    store = Store(tmp_path / "store")
    records = [store.read(c.key) for c in expand(load_spec(spec))]
    assert len(records) == 4 and all(r["fit"] == records[0]["fit"] for r in records)
    fit = records[0]["fit"]
    assert fit["schema"] == "repro-fitprune-recipes/1" and fit["calibration"] == "tinyworld" and fit["samples"] == 2
    artifact = RecipeArtifact.from_dict(store.read_artifact(fit["artifact"]))
    assert artifact.sha256 == fit["sha256"] and [r.reduction for r in artifact.recipes] == [30, 60]
    assert all(r["budget_stats"]["samples"] == 3 and r["budget_stats"]["budget_use"]["max"] <= 1 + 1e-12
               for r in records)
