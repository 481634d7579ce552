"""The analytic FLOPs count equals what the engine really executes (FlopCounterMode).

Runs under the `eager` backend: FlopCounterMode has no formula for PyTorch's CPU SDPA kernel,
while eager attention is plain matmuls, so every multiply-add of the prefill is counted.
Excluded from both sides alike: norms, RoPE, softmax, activations, embedding lookup, gathers and
scatters (none is a matmul). The LM head runs on the last token only and is counted (1 token).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from repro import flops
from repro.engine import Schedule, random_schedule

from conftest import TINY, make_image


def measured_and_analytic(model, seq, schedule):
    with FlopCounterMode(display=False) as counter:
        out = model.engine.prefill(seq, schedule)
    layers = [flops.LayerTokens(r.queries, r.keys, r.mlp) for r in out.records]
    return counter.get_total_flops(), flops.prefill_flops(model.card, layers, "exact", lm_head_tokens=1)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("seed", range(12))
def test_random_schedules_flops_match_flopcounter(tiny_models, name, seed):
    model = tiny_models[name]["eager"]
    prepared = model.prepare(make_image(seed, (100 + 7 * seed, 80)), "How many shapes are there?")
    seq = model.assemble(prepared, model.encode(prepared))
    gen = torch.Generator().manual_seed(seed)
    schedule = random_schedule(seq.n_tokens, seq.visual, model.card.layers, gen, keep=0.1 + 0.07 * seed,
                               kv_only=seed % 3 == 1)
    if seed % 4 == 3:
        schedule = schedule.without_dead_ops(seq.n_tokens)
    measured, analytic = measured_and_analytic(model, seq, schedule)
    assert measured == analytic


@pytest.mark.parametrize("name", TINY)
def test_full_schedule_flops_match_flopcounter_and_unpruned_formula(tiny_models, name):
    model = tiny_models[name]["eager"]
    prepared = model.prepare(make_image(0), "What colour is the star?")
    seq = model.assemble(prepared, model.encode(prepared))
    measured, analytic = measured_and_analytic(model, seq, Schedule.full(model.card.layers))
    assert measured == analytic
    unpruned = flops.unpruned_prefill_flops(model.card, seq.n_tokens, "exact") + flops.lm_head_flops(model.card, 1)
    assert analytic == unpruned


def test_generate_stats_report_both_conventions(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    stats = model.generate(make_image(0), "What colour is the star?", max_new_tokens=1).stats
    n = stats.n_tokens
    assert stats.tflops["paper"] == pytest.approx(flops.unpruned_prefill_flops(model.card, n, "paper") / 1e12)
    assert stats.tflops["exact"] == pytest.approx(flops.unpruned_prefill_flops(model.card, n, "exact") / 1e12)
    assert stats.tflops["exact"] < stats.tflops["paper"]  # the tiny decoder uses GQA
