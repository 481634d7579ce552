"""Prefill time against realized FLOPs for the in-LLM baselines on the benchmark-size LLaVA.

Run: .venv/bin/python -m pytest benchmarks/test_bench_in_llm.py --benchmark-only
Group `prefill-in-llm`: PDrop, SparseVLM, FitPrune and DART at ratio:0.6 and ratio:0.4, each timed
twice: with its planner (probes, clustering included) and replaying the token sets it chose
(compute only; not possible for SparseVLM, whose merged tokens are made during the prefill). The
target, time reduction ≥ 0.8 × FLOPs reduction, is asserted on the replays; the probe overhead is
the difference between the two rows and the probe FLOPs are reported next to them.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from PIL import Image

import repro
from repro import flops
from repro.engine import Schedule

from test_bench_engine import bench  # noqa: F401  (the benchmark-size LLaVA fixture)

QUESTION = "What colour is the small square in the top left corner?"
METHODS = ("pdrop", "sparsevlm", "fitprune", "dart")
BUDGETS = ("ratio:0.6", "ratio:0.4")


class Recording:
    """Wraps a planner and keeps the LayerOps it returned, to replay them as a static Schedule."""

    def __init__(self, planner):
        self.planner, self.ops = planner, []
        self.renumber = getattr(planner, "renumber", False)

    def layer_ops(self, layer, probe):
        ops = self.planner.layer_ops(layer, probe)
        self.ops.append(ops)
        return ops


def _planned(model, method, seq):
    return model.engine.prefill(seq, method.planner(model, seq))


@pytest.fixture(scope="module")
def bench_seq(bench):  # noqa: F811
    model, _ = bench
    image = Image.fromarray((np.random.RandomState(0).rand(336, 336, 3) * 255).astype("uint8"))
    prepared = model.prepare(image, QUESTION)
    return model.assemble(prepared, model.encode(prepared))


def test_in_llm_prefill_time_follows_flops(interleaved, bench, bench_seq):  # noqa: F811
    model, seq = bench[0], bench_seq
    full = Schedule.full(model.card.layers)
    variants = {"unpruned": (partial(model.engine.prefill, seq, full),
                             {"flops": flops.unpruned_prefill_flops(model.card, seq.n_tokens, "paper")})}
    for name in METHODS:
        for budget in BUDGETS:
            method = repro.method(name, budget)
            planner = method.planner(model, seq)
            merges = hasattr(planner, "merge_after")  # a Recording would hide the merges
            recording = Recording(planner)
            out = model.engine.prefill(seq, planner if merges else recording)
            total = flops.prefill_flops(model.card, [flops.LayerTokens(r.queries, r.keys, r.mlp) for r in out.records],
                                        "paper")
            info = {"flops": total, "probe_flops": out.probe_flops}
            variants[f"{name} {budget} planned"] = (partial(_planned, model, method, seq), info)
            if not merges:
                replay = Schedule(tuple(recording.ops), renumber=recording.renumber)
                variants[f"{name} {budget} replay"] = (partial(model.engine.prefill, seq, replay), info)
    rows = interleaved("prefill-in-llm", variants, rounds=6, warmup=1)
    for label, row in rows.items():
        if label.endswith("replay"):
            assert 1 - row["time_ratio"] >= 0.8 * (1 - row["flops_ratio"]) - 1e-9, row
