"""The local executor with several worker processes (repro/runner/executors.py): the same records
as one worker, every cell computed exactly once, cells handed out task by task."""

from __future__ import annotations

import textwrap

import pytest
import torch

from repro.errors import ReproError
from repro.runner.executors import (
    Outcome,
    _merge,
    _results,
    default_workers,
    task_major,
)
from repro.runner.spec import expand, load_spec
from repro.runner.store import Store
from repro.runner.sweep import run_sweep

SPEC = textwrap.dedent("""\
    profile: tiny
    table: main
    models: [tinyworld-llava]
    tasks: [tinyworld_pope, tinyworld_gqa]
    limit: 3
    threads: 1
    budgets: [ratio:0.6]
    methods:
      - name: none
      - name: random
      - name: vispruner
""")


def _answers(store: Store, key: str) -> list:
    return [(s["doc_id"], s["resps"], s["target"], s["token_counts"][0]["repro"]["stats"])
            for s in store.read_samples(key)]


def test_two_workers_store_what_one_worker_stores(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)
    cells = expand(spec)
    one = run_sweep(spec, tmp_path / "one", progress=False, workers=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = run_sweep(spec, tmp_path / "two", progress=False, workers=2)  # this process is one of the two
        assert torch.get_num_threads() == 2  # its one-thread setting was for the sweep only
    finally:
        torch.set_num_threads(before)
    keys = sorted(c.key for c in cells)
    assert sorted(one.outcome.computed) == sorted(two.outcome.computed) == keys  # each cell once
    a, b = Store(tmp_path / "one"), Store(tmp_path / "two")
    for cell in cells:
        ra, rb = a.read(cell.key), b.read(cell.key)
        assert ra["metrics"] == rb["metrics"] and ra["budget_stats"] == rb["budget_stats"], cell.describe()
        assert _answers(a, cell.key) == _answers(b, cell.key), cell.describe()
    again = run_sweep(spec, tmp_path / "two", progress=False, workers=2)
    assert again.outcome.computed == [] and sorted(again.outcome.skipped) == keys


def test_cells_go_task_by_task_and_rows_keep_their_order(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    cells = expand(load_spec(path))  # row-major: (none, pope), (none, gqa), (random, pope), ...
    ordered = task_major(cells)
    assert [c.task for c in ordered] == ["tinyworld_pope"] * 3 + ["tinyworld_gqa"] * 3
    assert [c.method for c in ordered] == ["none", "random", "vispruner"] * 2
    assert sorted(c.key for c in ordered) == sorted(c.key for c in cells)


def test_default_workers_follow_the_cores_on_cpu_only():
    assert default_workers("cpu", 1) >= 1
    assert default_workers("cpu", 10_000) == 1
    assert default_workers("cuda", 1) == 1


def test_outcomes_merge_without_double_counting():
    merged = _merge([Outcome(computed=["a", "c"], skipped=["b", "x"]), Outcome(computed=["b"], skipped=["a", "c", "x"])])
    assert merged.computed == ["a", "c", "b"] and merged.skipped == ["x"]


def test_workers_must_be_a_positive_integer(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC + "workers: 0\n")
    with pytest.raises(ReproError, match="workers"):
        load_spec(path)


def test_a_worker_that_dies_without_a_result_is_one_clear_error():
    import multiprocessing as mp
    import os

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=os._exit, args=(3,))  # a real process, gone before sending its outcome
    proc.start()
    send.close()
    with pytest.raises(ReproError, match=r"worker 1 died \(exit code 3\).*finished cells are kept"):
        _results([proc], [recv])
    proc.join()
