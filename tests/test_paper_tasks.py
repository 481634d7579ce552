"""The paper task set pointed at staged local data: override YAMLs over the official ones, scored
by lmms-eval's own code (MMBench statically, no API), on small fake parquet files staged offline
(tiny-world rows carry the official columns)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from repro.errors import ReproError
from repro.eval import tasks as pt

from conftest import PAPER_STAGE, stage_paper_tasks

STAGE = PAPER_STAGE


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    return stage_paper_tasks(tmp_path_factory.mktemp("paper"), [*STAGE, "gqa"], test_rows=8)


NAMES = [*STAGE, "gqa"]


def test_override_yamls_include_the_official_ones(staged, tmp_path):
    written = pt.write_task_folder(staged, tmp_path, NAMES)
    assert sorted(p.name for p in written) == sorted([f"{pt.paper_task(n).task}.yaml" for n in NAMES] + ["_repro_paper.yaml"])
    text = (tmp_path / "pope.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert cfg["include"].endswith("lmms_eval/tasks/pope/pope.yaml") and cfg["dataset_path"] == "parquet"
    assert cfg["dataset_kwargs"]["data_files"]["test"][0].endswith("pope/data/test-00000-of-00001.parquet")
    assert "!function 'repro_paper_utils.mmbench_cn_aggregate_static'" in (tmp_path / "mmbench_cn_dev_static.yaml").read_text()
    assert "dataset_name: null" in (tmp_path / "gqa.yaml").read_text()


def test_oracle_scores_perfectly_offline(staged, tmp_path, monkeypatch):
    import datasets
    from lmms_eval import evaluator
    from lmms_eval.api.model import lmms

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)

    class Oracle(lmms):
        def generate_until(self, requests):
            return [self.task_dict[t][s][d]["target_text"] for _, _, _, d, t, s in (r.args for r in requests)]

        def generate_until_multi_round(self, requests):
            return self.generate_until(requests)

        def loglikelihood(self, requests):
            raise NotImplementedError

    tm = pt.task_manager(staged, tmp_path / "tasks", NAMES)
    res = evaluator.simple_evaluate(model=Oracle(), tasks=[pt.GROUP], task_manager=tm, bootstrap_iters=0)["results"]
    assert len(NAMES) == 13  # every paper task, end to end on fake staged data
    for t in pt.PAPER_TASKS:
        assert res[t.task][t.main_metric] > 0, (t.task, res[t.task])
    assert res["pope"]["pope_f1_score,none"] == 1.0
    assert res["textvqa_val"]["exact_match,none"] == 1.0
    assert res["ocrbench"]["ocrbench_accuracy,none"] == 1.0
    assert res["gqa"]["exact_match,none"] == 1.0  # questions joined with the staged image set
    assert res["mmbench_en_dev_static"]["gpt_eval_score,none"] == 100.0
    assert res["mmbench_cn_dev_static"]["gpt_eval_score,none"] == 100.0
    assert {p.name for p in tmp_path.iterdir()} <= {"hf", "tasks"}  # no submission files (hf: cache, order-dependent)


def test_missing_and_corrupt_staged_data(staged, tmp_path):
    with pytest.raises(ReproError, match=r"no staged data for vqav2_val .*hf download lmms-lab-encoder/VQAv2"):
        pt.verify_staged(tmp_path / "empty", ["vqav2_val"])
    bad = tmp_path / "staged"
    shutil.copytree(staged / "pope", bad / "pope")
    (bad / "pope" / "data" / "test-00000-of-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(ReproError, match=r"test-00000-of-00001.parquet is not a readable parquet file"):
        pt.task_manager(bad, tmp_path / "tasks", ["pope"])


def test_unknown_paper_task():
    with pytest.raises(ReproError, match="the paper profile has: textvqa_val"):
        pt.paper_task("textvqa")


def test_staging_hints_name_the_repositories_of_the_installed_yamls():
    """The hub repository of each hint is the `dataset_path` of the installed lmms-eval YAML (or
    of a file it includes): a new lmms-eval that moves a dataset moves the hint with it."""
    from repro.eval.tasks import PAPER_TASKS, download_hint, official_dataset
    from repro.tinyworld.yamls import lmms_eval_tasks_dir

    tasks_dir = Path(lmms_eval_tasks_dir())
    for t in PAPER_TASKS:
        hub, _ = official_dataset(t)
        folder = (tasks_dir / t.include).parent
        assert any(f"dataset_path: {hub}" in f.read_text() for f in folder.iterdir() if f.is_file()), t.name
        assert f"hf download {hub} " in download_hint(t, Path("staged"))
    assert official_dataset(next(t for t in PAPER_TASKS if t.name == "ocrbench"))[0] == "echo840/OCRBench"


def test_reduced_run_keeps_pairs_circular_groups_and_splits(staged):
    """The seeded subset keeps MME's question pairs and MMBench's circular groups whole, POPE's
    splits in proportion, and is the same draw every time."""
    from repro.eval.subset import subset_rows

    mme, rows = pt.subset_table(staged, pt.paper_task("mme"), 3, seed=0)
    ids = mme.column("question_id").to_pylist()
    assert len(rows) >= 3 and all(ids.count(i) == 2 for i in ids)  # whole pairs only
    mmb, _ = pt.subset_table(staged, pt.paper_task("mmbench_en_dev"), 2, seed=0)
    full = pq.read_table(staged / "mmbench_en_dev" / STAGE["mmbench_en_dev"][1]).column("index").to_pylist()
    kept = mmb.column("index").to_pylist()
    for group in {i % 1_000_000 for i in kept}:  # every rotation of a kept question is kept
        assert sorted(i for i in kept if i % 1_000_000 == group) == sorted(i for i in full if i % 1_000_000 == group)
    cats = ["random"] * 30 + ["popular"] * 30 + ["adversarial"] * 60
    pope = subset_rows("pope", len(cats), {"category": cats}, 40, seed=0)
    drawn = [cats[i] for i in pope]
    assert (drawn.count("random"), drawn.count("popular"), drawn.count("adversarial")) == (10, 10, 20)
    assert pope == subset_rows("pope", len(cats), {"category": cats}, 40, seed=0)
    assert pope != subset_rows("pope", len(cats), {"category": cats}, 40, seed=1)
    assert subset_rows("gqa", 5, {}, 10, seed=0) == [0, 1, 2, 3, 4]  # a small split is kept whole


def test_reduced_task_folder_reads_only_the_subset(staged, tmp_path):
    pt.write_task_folder(staged, tmp_path, ["pope", "gqa"], subset=(4, 0))
    cfg = yaml.safe_load((tmp_path / "pope.yaml").read_text())
    files = cfg["dataset_kwargs"]["data_files"]["test"]
    assert files == [str((tmp_path / "_subset" / "pope" / "test-subset.parquet").resolve())]
    assert pq.read_table(files[0]).num_rows == len(pt.subset_table(staged, pt.paper_task("pope"), 4, 0)[1])
    assert pq.read_table(files[0]).num_rows < pq.read_table(staged / "pope" / STAGE["pope"][1]).num_rows


def test_a_reduced_paper_run_gives_every_score_an_interval(staged, tmp_path):
    """The paper profile's reduced run (`subset:`) end to end on staged data: the records name the
    drawn rows, and the tables give every cell, Avg and Rel. Avg a bootstrap interval."""
    import csv
    import textwrap

    from repro.report.sweep import write_reports
    from repro.runner.spec import expand, load_spec
    from repro.runner.store import Store
    from repro.runner.sweep import run_sweep

    spec_path = tmp_path / "reduced.yaml"
    spec_path.write_text(textwrap.dedent(f"""\
        profile: paper
        models: [tinyworld-llava]
        tasks: [pope, mme]
        staged: {staged}
        subset: {{docs: 6, seed: 0}}
        threads: 1
        methods:
          - name: none
          - name: fastv
            budgets: [ratio:0.9]
        """))
    spec = load_spec(spec_path)
    run_sweep(spec, tmp_path / "store", progress=False)
    store = Store(tmp_path / "store")
    for cell in expand(spec):
        assert store.read(cell.key)["subset"]["rows"]  # the drawn rows are in every record
    reports = write_reports(spec, store, tmp_path / "tables", tmp_path / "figures")
    assert not reports.notes and reports.rel_avg_half_width is not None
    rows = list(csv.DictReader(next(p for p in reports.paths if p.suffix == ".csv").open()))
    fastv = next(r for r in rows if r["method"] == "fastv")
    widths = [c for c in fastv if c.endswith(" half-width")]
    assert len(widths) == 4 and all(fastv[c] != "" for c in widths), fastv  # POPE, MME, Avg, Rel. Avg
    assert "±" in next(p for p in reports.paths if p.suffix == ".md").read_text()
