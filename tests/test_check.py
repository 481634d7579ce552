"""`python -m repro check` (golden tiny results, reported numbers), the paper plan and the refusal
to start with missing inputs, and run_all.sh's defaults."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repro.check import (
    compare_reported,
    load_allowances,
    load_tolerances,
    reported_references,
)
from repro.errors import ReproError
from repro.report.check_report import run_check
from repro.runner.spec import expand, load_spec
from repro.runner.store import Store

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "paper_tables" / "golden" / "tiny.csv"


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    # run_all.sh uses .venv/bin/python when the checkout has one, else `python3` from PATH: put this
    # interpreter first so a clean clone tested from another venv (.ci/run) runs the same Python
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(args, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def golden_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("golden-store")
    out = _run([sys.executable, "-m", "repro", "check", "--profile", "tiny", "--store", str(store)])
    return store, out


def test_golden_tiny_results_reproduce(golden_store):
    """CI's regression guard of the harness (refresh: python -m repro check --profile tiny --update-golden)."""
    _, out = golden_store
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " 0 fail, 0 missing" in out.stdout


def _check_tiny(store: Path, reference: Path) -> int:
    return run_check(profile="tiny", spec_path=str(ROOT / "sweeps" / "tiny" / "golden.yaml"), store=str(store), reference=str(reference),
                     tolerances=str(ROOT / "paper_tables" / "tolerances.yaml"), update_golden=False, out=None)


def test_a_moved_number_fails_the_check(golden_store, tmp_path, capsys):
    store, _ = golden_store
    rows = list(csv.DictReader(GOLDEN.open()))
    rows[0]["value"] = repr(float(rows[0]["value"]) + 1.0)
    bad = tmp_path / "golden.csv"
    with bad.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert _check_tiny(store, bad) == 1
    out = capsys.readouterr().out
    assert "1 fail" in out and "FAIL tinyworld-llava" in out


def test_golden_from_other_weights_names_the_refresh_command(golden_store, tmp_path):
    store, _ = golden_store
    stale = tmp_path / "golden.csv"
    stale.write_text(GOLDEN.read_text().replace("shipped:", "shipped:0ld"))
    with pytest.raises(ReproError, match="--update-golden"):
        _check_tiny(store, stale)


PAPER_SPEC = textwrap.dedent("""\
    profile: paper
    models: [llava-1.5-7b]
    tasks: [gqa, mme]
    budgets: [tokens:64]
    methods:
      - name: none
      - name: fastv
""")


def test_reported_numbers_are_compared_on_their_scale(tmp_path):
    spec_path = tmp_path / "paper.yaml"
    spec_path.write_text(PAPER_SPEC)
    spec = load_spec(spec_path)
    store = Store(tmp_path / "store")
    raw = {("none", "gqa"): 0.62, ("none", "mme"): 1508.0, ("fastv", "gqa"): 0.30}  # fastv mme: not run
    for cell in expand(spec):
        if (cell.method, cell.task) in raw:
            store.write(cell.key, {"metrics": {"benchmark": "x", "raw": raw[(cell.method, cell.task)]}}, [])
    rows = compare_reported([spec], store, ROOT / "paper_tables" / "reported",
                            load_tolerances(ROOT / "paper_tables" / "tolerances.yaml", "reported"))
    by = {(r.method, r.benchmark, r.status) for r in rows}
    assert ("Vanilla", "GQA", "pass") in by and ("Vanilla", "MME", "pass") in by
    assert ("FastV", "GQA", "fail") in by and ("FastV", "MME", "missing") in by
    assert all("csv" in r.source for r in rows)  # provenance travels with every row
    code = run_check(profile="paper", spec_path=str(spec_path), store=str(tmp_path / "store"), reference=None,
                     tolerances=str(ROOT / "paper_tables" / "tolerances.yaml"), update_golden=False, out=None)
    assert code == 1


def test_one_reference_per_identity_with_the_alternates_shown():
    refs = reported_references(ROOT / "paper_tables" / "reported")
    # FastV@64 SQA on LLaVA-1.5-7B: CDPruner page 70.1, VisPruner page 51.1 -> CDPruner preferred
    sqa = refs[("llava-1.5-7b", "FastV", "tokens:64", "ScienceQA-IMG")]
    assert [v.value for v in sqa] == [70.1, 51.1] and sqa[0].file == "baselines_cdpruner.csv"
    # a method's own publication wins over a re-run ...
    own = refs[("llava-1.5-7b", "VisPruner", "tokens:64", "GQA")]
    assert own[0].file == "baselines_vispruner.csv"
    assert refs[("llava-1.5-7b", "VisionZip", "tokens:64", "GQA")][0].source.startswith("VisionZip")
    # ... unless its protocol differs: VisionZip ran LLaVA-NeXT at native anyres, not the fixed grid
    nxt = refs[("llava-next-7b", "VisionZip", "tokens:640", "GQA")]
    assert nxt[0].file == "baselines_cdpruner.csv" and any(v.file == "other_papers.csv" for v in nxt[1:])


def test_each_identity_is_checked_once_with_protocol_allowances(tmp_path):
    spec_path = tmp_path / "paper.yaml"
    spec_path.write_text(PAPER_SPEC.replace("[gqa, mme]", "[gqa, textvqa_val]"))
    twin = tmp_path / "budgets.yaml"
    twin.write_text(PAPER_SPEC.replace("[gqa, mme]", "[gqa, textvqa_val]").replace("tokens:64", "tokens:128"))
    store = Store(tmp_path / "store")
    tol_file = ROOT / "paper_tables" / "tolerances.yaml"
    rows = compare_reported([load_spec(spec_path), load_spec(twin)], store, ROOT / "paper_tables" / "reported",
                            load_tolerances(tol_file, "reported"), load_allowances(tol_file))
    idents = [(r.model, r.method, r.budget, r.benchmark) for r in rows]
    assert len(idents) == len(set(idents))  # the unpruned cells shared by both specs count once
    assert ("llava-1.5-7b", "Vanilla", "-", "GQA") in idents
    text = {r.budget: r.tolerance for r in rows if r.benchmark == "TextVQA" and r.method == "Vanilla"}
    gqa = {r.budget: r.tolerance for r in rows if r.benchmark == "GQA" and r.method == "Vanilla"}
    assert text["-"] == gqa["-"] + 5.0  # no OCR tokens in lmms-eval's TextVQA prompt


def test_nothing_to_compare_is_an_error(tmp_path):
    spec_path = tmp_path / "paper.yaml"
    spec_path.write_text(PAPER_SPEC)
    with pytest.raises(ReproError, match="nothing to compare"):
        run_check(profile="paper", spec_path=str(spec_path), store=str(tmp_path / "empty"), reference=None,
                  update_golden=False, out=None)


def test_paper_check_writes_the_reproduced_vs_reported_figure(tmp_path):
    spec_path = tmp_path / "paper.yaml"
    spec_path.write_text(PAPER_SPEC)
    store = Store(tmp_path / "store")
    for cell in expand(load_spec(spec_path)):
        if cell.task == "gqa":
            store.write(cell.key, {"metrics": {"benchmark": "x", "raw": 0.6}}, [])
    run_check(profile="paper", spec_path=str(spec_path), store=str(tmp_path / "store"), reference=None,
              update_golden=False, out=str(tmp_path / "out"))
    assert (tmp_path / "out" / "check-paper-llava-1.5-7b.png").stat().st_size > 0
    header = (tmp_path / "out" / "check-paper.csv").read_text().splitlines()[0]
    assert header.endswith("source,alternates")


def test_paper_dry_run_lists_the_plan_and_what_is_missing(tmp_path):
    out = _run(["./run_all.sh", "--table", "main", "--profile", "paper", "--dry-run", "--", "--staged",
                str(tmp_path / "nothing")])
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("profile: paper")
    assert any(line.startswith("plan: 4537 cells") for line in lines)  # 349 rows, the in-LLM and pre-LLM baselines
    # budgets a method cannot reach on a model's nominal prompt are warned about per model x method x budget
    assert ("fastv on llava-next-7b at ratio:0.0784: its cheapest run is 0.090 of the unpruned prefill FLOPs "
            "(2880 visual + 99 text tokens)") in out.stdout
    assert "ratio:0.2366 (flops-of-tokens:64)" in out.stdout  # token budgets at equal TFLOPs, per model
    assert "CLIP text tower of llava-1.5-7b for cdpruner, trim (openai/clip-vit-large-patch14-336)" in out.stdout
    assert "GPU hours" in out.stdout
    assert f"dataset gqa in {tmp_path / 'nothing' / 'gqa'}" in out.stdout
    assert "hf download lmms-lab-encoder/GQA --repo-type dataset" in out.stdout  # as the installed YAML reads
    assert "model options: llava-next-7b: protocol=fixed" in out.stdout
    assert "model options: qwen2.5-vl-7b: min_pixels=200704, max_pixels=1605632" in out.stdout


def test_missing_inputs_stop_the_run_before_any_compute(tmp_path):
    store = tmp_path / "store"
    out = _run([sys.executable, "-m", "repro", "sweep", "sweeps/paper/main.yaml", "--store", str(store),
                "--staged", str(tmp_path / "nothing")])
    assert out.returncode == 2
    assert "are missing; stage them first" in out.stderr and "hf download" in out.stderr
    assert not (store / "cells").exists()


def test_run_all_defaults_to_the_tiny_main_table():
    out = _run(["./run_all.sh", "--dry-run"])
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.splitlines()[:2]
    assert first.startswith("profile: tiny (default")
    assert second.startswith("table: main (sweep sweeps/tiny/main.yaml")
    assert "plan: 559 cells" in out.stdout  # (unpruned + 14 method rows x 3 budgets) x 13 tasks


def _tables(spec: str, store: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "repro", "tables", spec, "--store", str(store), "--tables", str(out / "t"),
                 "--figures", str(out / "f"), *extra])


def test_a_missing_unpruned_cell_gives_incomplete_rows_and_a_failing_exit(golden_store, tmp_path):
    import shutil

    store, _ = golden_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    spec = load_spec(ROOT / "sweeps" / "tiny" / "golden.yaml")
    victim = next(c for c in expand(spec) if c.method == "none" and c.task == "tinyworld_gqa")
    Store(copy).record_path(victim.key).unlink()
    out = _tables("sweeps/tiny/golden.yaml", copy, tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "1 cell(s) of" in out.stderr and "--allow-missing" in out.stderr
    rows = {line.split("|")[2].strip(): line for line in (tmp_path / "t" / "golden.md").read_text().splitlines()
            if line.startswith("| tinyworld-llava")}
    n = len(spec.tasks)
    assert f"incomplete ({n - 1} of {n})" in rows["unpruned"]
    for method in ("random", "fastv", "vispruner", "dop"):
        cells = [c.strip() for c in rows[method].split("|")]
        assert cells[-3] == f"unpruned incomplete ({n - 1} of {n})"  # Rel. Avg: never against an incomplete row
        assert cells[5] == "–"  # FLOPs ratio
    csv_rows = list(csv.DictReader((tmp_path / "t" / "golden.csv").open()))
    assert all(r["Rel. Avg"] == "" and r["flops_ratio"] == "" for r in csv_rows if r["method"] != "chance level")
    assert _tables("sweeps/tiny/golden.yaml", copy, tmp_path, "--allow-missing").returncode == 0


def test_a_wrong_or_empty_store_is_an_error(tmp_path):
    out = _tables("sweeps/tiny/golden.yaml", tmp_path / "typo", tmp_path)
    assert out.returncode == 2 and "no results store at" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "empty").mkdir()
    out = _tables("sweeps/tiny/golden.yaml", tmp_path / "empty", tmp_path)
    assert out.returncode == 2 and "holds no cell records" in out.stderr
    assert not (tmp_path / "t").exists()  # no table of dashes


def test_vispruner_cells_from_another_cpu_capability_use_the_declared_tolerance(golden_store, tmp_path, capsys):
    """VisPruner's near-tie argsort may flip between AVX2 and AVX512 kernels: across capabilities its
    golden cells are compared within the declared tolerance and changed answers are reported; every
    other method stays exact."""
    from repro.check import load_kernel_tolerances

    store, _ = golden_store
    tol = load_kernel_tolerances(ROOT / "paper_tables" / "tolerances.yaml")["vispruner"]
    rows = list(csv.DictReader(GOLDEN.open()))
    for r in rows:
        r["cpu_capability"] = "AVX2-elsewhere"
    vis = [r for r in rows if r["method"] == "vispruner"]
    score = next(r for r in vis if r["metric"] not in ("tflops_paper", "responses_sha256"))
    score["value"] = repr(float(score["value"]) + 0.5 * tol["default"])
    next(r for r in vis if r["metric"] == "responses_sha256")["value"] = "0123456789e01234"  # reads as a number
    moved = tmp_path / "golden.csv"
    with moved.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert _check_tiny(store, moved) == 0
    out = capsys.readouterr().out
    assert "0 fail" in out and "1 answer digest(s) changed" in out and "AVX2-elsewhere ->" in out
    fastv = next(r for r in rows if r["method"] == "fastv" and r["metric"] == "responses_sha256")
    fastv["value"] = "f" * 16
    with moved.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert _check_tiny(store, moved) == 1  # FastV does not depend on the kernels: exact everywhere
