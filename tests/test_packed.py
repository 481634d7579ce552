"""Packed batches (repro/engine/packed.py, Model.generate_batch) equal batch size 1: for every
registered method, over the four tiny families and prompts of different lengths, the same text
and tokens, the same per-layer token counts, and first-token logits within 1e-5 (fp32)."""

from __future__ import annotations

import re

import pytest
import torch

from repro.engine.packed import PackedEngine
from repro.errors import ReproError
from repro.methods import specs

from conftest import TINY, make_image
from test_encode_cache import example_method

REQUESTS = [
    (make_image(0), "What?"),
    (make_image(1, (90, 120)), "Describe the colours of the objects in the picture, from left to right, in a few words."),
    (make_image(2, (150, 80)), "Is there a red square? Answer yes or no."),
]


@pytest.mark.parametrize("name", TINY)
def test_packed_equals_batch_one_for_every_method(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    for method_name in sorted(s.name for s in specs()) + ["none"]:
        method = None if method_name == "none" else example_method(method_name, model)
        try:
            single = [model.generate(img, q, method=method, max_new_tokens=4) for img, q in REQUESTS]
        except ReproError as err:  # a method this family does not define: the pack says the same
            with pytest.raises(ReproError, match=re.escape(str(err))):
                model.generate_batch(REQUESTS, method=method, max_new_tokens=4)
            continue
        packed = model.generate_batch(REQUESTS, method=method, max_new_tokens=4)
        for a, b in zip(single, packed):
            assert (a.text, a.tokens, a.prompt) == (b.text, b.tokens, b.prompt), method_name
            assert a.stats.as_dict() == b.stats.as_dict(), method_name
            assert (a.first_token_logprobs - b.first_token_logprobs).abs().max() < 1e-5, method_name


def test_packed_decode_logits_and_samples_leaving_the_pack(tiny_models):
    model = tiny_models["tiny-qwen2.5-vl"]["sdpa"]  # M-RoPE: per-sample 3-row positions while decoding
    seqs = [model.assemble(p, model.encode(p)) for p in (model.prepare(img, q) for img, q in REQUESTS)]
    engine, packed = model.engine, PackedEngine(model.engine)
    single = [engine.prefill(s) for s in seqs]
    outs = packed.prefill(seqs, [None] * len(seqs))
    tokens = [int(o.logits.argmax()) for o in single]
    for step in range(3):
        want = torch.stack([engine.decode_step(t, o.cache, step) for t, o in zip(tokens, single)])
        got = packed.decode_step(tokens, [o.cache for o in outs], [step] * len(outs))
        assert (want - got).abs().max() < 1e-5
        tokens = [int(x.argmax()) for x in want]
    # different stopping points: a stop rule ends sample 0 early, the others run on
    fresh = packed.prefill(seqs, [None] * len(seqs))
    stops = [lambda toks: len(toks) >= 1, None, None]
    got = packed.greedy(fresh, 5, set(), stops)
    ref = [list(engine.greedy(engine.prefill(s), 5, set(), stop)) for s, stop in zip(seqs, stops)]
    assert got == ref and len(got[0]) == 1 and len(got[1]) == 5


def test_packed_refuses_mismatched_planners(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    p = model.prepare(make_image(0), "What?")
    with pytest.raises(ValueError, match="one planner"):
        PackedEngine(model.engine).prefill([model.assemble(p, model.encode(p))], [])
