"""The sweep runner end to end on tinyworld-llava (a few documents per task): resume after SIGKILL,
corrupt records, determinism, two sweeps on one store, and the SLURM executor (submitit, local)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from repro.report.sweep import write_reports
from repro.runner.executors import SlurmOptions
from repro.runner.spec import expand, load_spec
from repro.runner.store import Store
from repro.runner.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SPEC = textwrap.dedent("""\
    profile: tiny
    table: main
    models: [tinyworld-llava]
    tasks: [tinyworld_gqa, tinyworld_pope]
    limit: 4
    threads: 1
    budgets: [ratio:0.6]
    methods:
      - name: none
      - name: random
      - name: fastv
        options: {k: 1}
      - name: dop
        search: {samples: 2}
""")
N_CELLS = 8


def _sweep_cmd(spec: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "repro", "sweep", str(spec), "--store", str(store), "--tables", str(store / "tables"),
            "--figures", str(store / "figures")]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _computed(stdout: str) -> int:
    return int(re.search(r"sweep done in \d+ s: (\d+) computed", stdout).group(1))


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "main.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def concurrent(spec_path, tmp_path_factory):
    """Two sweeps started together on one store (they share it through per-cell locks)."""
    store = tmp_path_factory.mktemp("shared")
    procs = [subprocess.Popen(_sweep_cmd(spec_path, store), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return store, outs


def test_two_sweeps_on_one_store_compute_each_cell_once(concurrent, spec_path):
    store, outs = concurrent
    assert sum(_computed(o) for o in outs) == N_CELLS
    s = Store(store)
    assert all(s.status(c.key) == "done" for c in expand(load_spec(spec_path)))
    assert len(list((store / "artifacts").glob("dop-*.json"))) == 1  # searched once


def test_killed_sweep_resumes_without_recomputing(concurrent, spec_path, tmp_path):
    reference = (concurrent[0] / "tables" / "main.md").read_bytes()
    cells = expand(load_spec(spec_path))
    store = Store(tmp_path)
    proc = subprocess.Popen(_sweep_cmd(spec_path, tmp_path), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and sum(store.status(c.key) == "done" for c in cells) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    finished = {c.key: store.record_path(c.key).stat().st_mtime_ns for c in cells if store.status(c.key) == "done"}
    assert 3 <= len(finished) < N_CELLS
    out = subprocess.run(_sweep_cmd(spec_path, tmp_path), check=False, cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{len(finished)} finished, {N_CELLS - len(finished)} to compute" in out.stdout
    assert _computed(out.stdout) == N_CELLS - len(finished)
    assert {k: store.record_path(k).stat().st_mtime_ns for k in finished} == finished  # untouched
    assert (tmp_path / "tables" / "main.md").read_bytes() == reference  # byte-identical to an uninterrupted run
    # same seed twice: every answer and score equal across the two stores
    other = Store(concurrent[0])
    for c in cells:
        assert store.read(c.key)["metrics"] == other.read(c.key)["metrics"]
        assert [s["resps"] for s in store.read_samples(c.key)] == [s["resps"] for s in other.read_samples(c.key)]


def test_corrupt_record_is_detected_and_recomputed(concurrent, spec_path, tmp_path):
    import shutil

    store_dir = tmp_path / "store"
    shutil.copytree(concurrent[0], store_dir)
    spec = load_spec(spec_path)
    victim = expand(spec)[3]
    path = Store(store_dir).record_path(victim.key)
    path.write_text(path.read_text()[:200])  # truncated by hand
    result = run_sweep(spec, store_dir, progress=False)
    assert result.outcome.recomputed == [victim.key] and result.outcome.computed == [victim.key]
    assert Store(store_dir).status(victim.key) == "done"
    write_reports(spec, Store(store_dir), tmp_path / "t", tmp_path / "f")
    assert (tmp_path / "t" / "main.md").read_bytes() == (concurrent[0] / "tables" / "main.md").read_bytes()


def test_slurm_executor_through_submitit_local(concurrent, spec_path, tmp_path, capsys):
    spec = load_spec(spec_path)
    result = run_sweep(spec, tmp_path, executor="slurm", progress=False,
                       slurm=SlurmOptions(cluster="local", gpus_per_job=0, cpus_per_job=1, rows_per_job=2,
                                          timeout_min=10))
    assert len(result.outcome.computed) == N_CELLS
    assert "submitted 2 job(s) (8 cells)" in capsys.readouterr().out  # 4 rows, 2 per job
    write_reports(spec, Store(tmp_path), tmp_path / "t", tmp_path / "f")
    assert (tmp_path / "t" / "main.md").read_bytes() == (concurrent[0] / "tables" / "main.md").read_bytes()


def test_tables_and_figures(concurrent):
    store = concurrent[0]
    md = re.sub(r" +", " ", (store / "tables" / "main.md").read_text())  # tabulate pads the columns
    for label in ("unpruned", "chance level", "random", "fastv", "dop"):
        assert f"| {label} |" in md
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert re.search(r"\| GQA( °)? \| POPE( °)? \| Avg \| Rel. Avg \| Significant vs \|", header)
    assert " ± " in md and "bootstrap over documents" in md and "torch CPU capability AVX" in md
    for ext in ("md", "tex", "csv"):
        assert (store / "tables" / f"main.{ext}").is_file()
    assert {p.suffix for p in (store / "figures").iterdir()} == {".png", ".pdf"}


def test_an_infeasible_budget_is_recorded_not_fatal(tmp_path):
    """FastV at K=3 cannot reach 10% of the FLOPs (three full layers already cost more): every sample
    is recorded as infeasible, the sweep goes on to the next cell, and the table says so."""
    path = tmp_path / "infeasible.yaml"
    path.write_text(textwrap.dedent("""\
        profile: tiny
        table: main
        models: [tinyworld-llava]
        tasks: [tinyworld_gqa]
        limit: 3
        threads: 1
        budgets: [ratio:0.1]
        methods:
          - name: none
          - name: fastv
            options: {k: 3}
    """))
    spec = load_spec(path)
    result = run_sweep(spec, tmp_path / "store", progress=False)
    assert len(result.outcome.computed) == 2
    fastv = next(c for c in expand(spec) if c.method == "fastv")
    stats = Store(tmp_path / "store").read(fastv.key)["budget_stats"]
    assert stats == {"samples": 0, "infeasible": 3}
    write_reports(spec, Store(tmp_path / "store"), tmp_path / "tables", tmp_path / "figures")
    text = (tmp_path / "tables" / "main.md").read_text()
    assert "ratio:0.1 (infeasible 3 of 3)" in text


def test_a_failed_slurm_job_does_not_stop_the_others(tmp_path, capsys):
    """Every job is waited for and reported as it ends; failures are summarized at the end."""
    import submitit

    from repro.errors import ReproError
    from repro.runner.executors import _collect

    def job_ok():  # nested: cloudpickle sends them by value to the job processes
        from repro.runner.executors import Outcome

        return Outcome(computed=["a", "b"])

    def job_fails():
        raise RuntimeError("CUDA out of memory")

    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="local")
    executor.update_parameters(timeout_min=5, gpus_per_node=0)
    jobs = [executor.submit(job_fails), executor.submit(job_ok)]
    with pytest.raises(ReproError, match=r"(?s)1 of 2 job\(s\) failed.*RuntimeError: CUDA out of memory"):
        _collect(jobs, tmp_path)
    out = capsys.readouterr().out
    assert "FAILED: " in out and "2 computed" in out  # the second job still ran and was counted
