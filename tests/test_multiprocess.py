"""Data parallelism inside a cell through accelerate, as lmms-eval does it: a sweep launched with
two CPU processes stores the same metrics and samples as a one-process sweep (lmms-eval shards
the documents by rank and gathers them on rank 0, which alone writes the record)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from repro.runner.spec import expand, load_spec
from repro.runner.store import Store
from repro.runner.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SPEC = textwrap.dedent("""\
    profile: tiny
    table: main
    models: [tinyworld-llava]
    tasks: [tinyworld_pope]
    limit: 5
    threads: 1
    methods:
      - name: none
      - name: random
        options: {keep: 0.5, seed: 0}
""")
# `accelerate launch` (this module is its CLI; `--multi_gpu` starts N processes through torchrun,
# and on a cpu device repro.eval.parallel builds a gloo group; accelerate's `--cpu` alone starts
# one process unless mpirun is installed).
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def _env() -> dict:  # as tests/test_runner.py: offline, one thread
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_two_processes_store_what_one_process_stores(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC)
    spec = load_spec(spec_path)
    one, two = tmp_path / "one", tmp_path / "two"
    run_sweep(spec, one, progress=False)
    cmd = [*LAUNCH, "-m", "repro", "sweep", str(spec_path), "--store", str(two), "--tables", str(two / "tables"),
           "--figures", str(two / "figures")]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("sweep done") == 1  # rank 0 reports
    cells = expand(spec)
    assert len(cells) == 2
    for cell in cells:
        a, b = Store(one).read(cell.key), Store(two).read(cell.key)
        assert (a["processes"], b["processes"]) == (1, 2)
        assert b["metrics"] == a["metrics"]
        sa, sb = Store(one).read_samples(cell.key), Store(two).read_samples(cell.key)
        assert [s["doc_id"] for s in sb] == [s["doc_id"] for s in sa] == list(range(5))
        assert [(s["resps"], s["target"]) for s in sb] == [(s["resps"], s["target"]) for s in sa]
        assert [s["token_counts"][0]["repro"]["visual_tokens"] for s in sb] == \
            [s["token_counts"][0]["repro"]["visual_tokens"] for s in sa]
    assert (two / "tables" / "main.md").is_file()


def test_a_launch_without_multi_gpu_is_refused_with_the_right_command(tmp_path):
    """accelerate's simple launcher runs one process whatever --num_processes says; the sweep
    refuses it before any work and names `--multi_gpu`."""
    from repro.eval.parallel import single_process_launch

    assert single_process_launch({"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1"})
    assert not single_process_launch({"ACCELERATE_MIXED_PRECISION": "no"})  # one process asked for
    assert not single_process_launch({"ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "x", "WORLD_SIZE": "2"})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC)
    simple = [a for a in LAUNCH if a != "--multi_gpu"]
    out = subprocess.run([*simple, "-m", "repro", "sweep", str(spec_path), "--store", str(tmp_path / "s")], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode != 0 and "error: accelerate launch started one process" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "s" / "cells").exists()
