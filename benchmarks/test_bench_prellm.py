"""Pre-LLM baselines on a benchmark-size LLaVA (hidden 512, 8 layers, 576 visual tokens).

Run: .venv/bin/python -m pytest benchmarks/test_bench_prellm.py --benchmark-only
- `prellm-prefill`: the prefill of each new method's reduced sequence at one FLOPs budget, next to
  the unpruned prefill, with the realized FLOPs ratios (target: time reduction ≥ 0.8 × FLOPs
  reduction, as the engine's own keep benchmark);
- `prellm-reduce`: encode + reduce per method (the scoring overhead outside the FLOPs budget), next
  to encode alone.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

import repro
from repro.models.cards import ArchCard
from repro.models.loading import ADAPTERS
from repro.models.model import Model
from repro.models.tiny import bench_llava15

METHODS = {"visionzip": {}, "cdpruner": {}, "divprune": {}, "prumerge_plus": {"mode": "fixed"}, "trim": {},
           "resize": {}}
BUDGET = "ratio:0.33"
QUESTION = "What colour is the small square in the top left corner?"


@pytest.fixture(scope="module")
def bench():
    torch.set_num_threads(1)
    hf, processor = bench_llava15()
    model = Model("bench-llava", hf, processor, ADAPTERS["llava"](hf, processor), ArchCard.from_hf_config(hf.config),
                  random_weights=True)
    image = Image.fromarray((np.random.RandomState(0).rand(336, 336, 3) * 255).astype("uint8"))
    return model, model.prepare(image, QUESTION)


@torch.inference_mode()
def encode_reduce(model, prepared, method=None):
    visual = model.encode(prepared)
    return visual if method is None else method.reduce(model, prepared, visual)


def test_prefill_time_follows_realized_flops(interleaved, bench):
    model, prepared = bench
    variants = {}
    for name, options in {"unpruned": None, **METHODS}.items():
        method = None if options is None else repro.method(name, BUDGET, **options)
        visual = encode_reduce(model, prepared, method)
        seq = model.assemble(prepared, visual, method.position_mode(model) if method else "original")
        planner = method.planner(model, seq) if method else None
        stats = model.stats(seq, model.engine.prefill(seq, planner))
        variants[name] = (partial(model.engine.prefill, seq, planner),
                          {"flops": stats.tflops["paper"] * 1e12, "visual_tokens": stats.visual_tokens})
    rows = interleaved("prellm-prefill", variants)
    for row in rows.values():
        assert 1 - row["time_ratio"] >= 0.8 * (1 - row["flops_ratio"]) - 1e-9, row


def test_encode_and_reduce_time(interleaved, bench):
    model, prepared = bench
    variants = {"encode only": (partial(encode_reduce, model, prepared), {})}
    for name, options in METHODS.items():
        method = repro.method(name, BUDGET, **options)
        variants[f"encode + {name}"] = (partial(encode_reduce, model, prepared, method), {})
    interleaved("prellm-reduce", variants, rounds=6, warmup=1)
