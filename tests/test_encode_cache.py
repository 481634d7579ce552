"""Encode once (repro/models/encodings.py): every registered method gives bit-identical results
with the caches of processor outputs and encodings on and off, over the four tiny families and
prompts of several lengths; the caches are content-addressed (encodings: same image, any question
is a hit, another image or processor option a miss; processor outputs: same pixels and question)
and bounded in memory; the latency protocol's path bypasses them."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, make_image

import repro
from repro.errors import ReproError
from repro.methods import specs
from repro.models.encodings import DEFAULT_CAPACITY_BYTES, EncodingCache, nbytes

QUESTIONS = ["What?", "Describe the colours of the objects in the picture, from left to right, in a few words."]


OPTIONS = {"prumerge_plus": {"mode": "fixed"}}  # a budget needs the fixed-count mode


def example_method(name: str, model):
    """A runnable instance of every registered method (DOP with a fixed policy, no search)."""
    if name == "dop":
        layers = model.card.layers
        return repro.method("dop", policy=(8, layers // 2, layers - 1), reducer="vispruner")
    for budget in ("tokens:8", "ratio:0.9"):
        try:
            return repro.method(name, budget, **OPTIONS.get(name, {}))
        except (ReproError, ValueError, TypeError):
            continue
    pytest.fail(f"method {name!r}: no example instance; teach tests/test_encode_cache.py:example_method")


def run_all(model, images) -> list:
    out = []
    for name in sorted(s.name for s in specs()):
        method = example_method(name, model)
        for image, question in zip(images, QUESTIONS * len(images)):
            try:
                r = model.generate(image, question, method=method, max_new_tokens=2)
            except ReproError as err:  # a method this family does not define: the same error both ways
                out.append((name, str(err), None, torch.zeros(1), None))
                continue
            out.append((name, r.text, r.tokens, r.first_token_logprobs, r.stats.as_dict()))
    return out


@pytest.mark.parametrize("name", TINY)
def test_every_method_is_bit_identical_with_and_without_the_cache(name):
    model = repro.load(name)
    images = [make_image(0), make_image(1, (90, 120)), make_image(0)]  # the third repeats the first
    model.cache(0)
    off = run_all(model, images)
    model.cache(DEFAULT_CAPACITY_BYTES)
    on = run_all(model, images)
    assert model.encodings.misses == 2  # each image encoded once
    assert model.preparations.misses == 2  # each (image, question) processed once
    for a, b in zip(off, on):
        assert a[:3] == b[:3] and a[4] == b[4], a[0]
        assert torch.equal(a[3], b[3]), a[0]


def test_key_is_the_image_content_and_processor_options_not_the_question(tiny_models):
    model = tiny_models["tiny-qwen2.5-vl"]["sdpa"]
    a = model.prepare(make_image(0), "What?")
    assert model.prepare(make_image(0), "Something else entirely?").encoding_key == a.encoding_key
    assert model.prepare(make_image(0).copy(), "What?").encoding_key == a.encoding_key
    assert model.prepare(make_image(1), "What?").encoding_key != a.encoding_key
    small = repro.load("tiny-qwen2.5-vl", max_pixels=56 * 56)
    assert small.prepare(make_image(0), "What?").encoding_key != a.encoding_key
    assert model.adapter.prepare([], "No image.").encoding_key is None  # (Model.prepare needs an image)


def test_processor_outputs_are_keyed_by_pixels_and_question_and_returned_as_shells():
    model = repro.load("tiny-llava-1.5")
    a = model.prepare(make_image(0), "What?")
    assert model.prepare(make_image(0).copy(), "What?").inputs["pixel_values"] is a.inputs["pixel_values"]
    assert model.preparations.hits == 1
    other = model.prepare(make_image(0), "Something else?")  # the question is part of the key
    assert model.preparations.misses == 2 and other.prompt != a.prompt
    assert model.prepare(make_image(1), "What?").encoding_key != a.encoding_key
    b = model.prepare(make_image(0), "What?")
    b.inputs["input_ids"] = torch.zeros(1, 1, dtype=torch.long)  # a caller rebinding a field
    assert torch.equal(model.prepare(make_image(0), "What?").inputs["input_ids"], a.inputs["input_ids"])


def test_internvl_key_names_the_tiles_of_each_image(tiny_models):
    model = tiny_models["tiny-internvl3"]["sdpa"]
    one, two = make_image(0, (200, 60)), make_image(1)
    keys = {model.prepare([one, two], "What?").encoding_key, model.prepare([two, one], "What?").encoding_key}
    assert len(keys) == 2


def test_cache_is_bounded_in_bytes_and_least_recently_used_goes_first():
    model = repro.load("tiny-llava-1.5")
    prepared = [model.prepare(make_image(i), "What?") for i in range(4)]
    size = nbytes(model.adapter.encode(prepared[0]))
    model.encodings = EncodingCache(int(2.5 * size))
    for p in prepared[:3]:
        model.encode(p)
    assert len(model.encodings) == 2 and model.encodings.nbytes() <= 2.5 * size
    model.encode(prepared[1])  # a hit: now the most recent
    model.encode(prepared[3])  # evicts prepared[2], not prepared[1]
    hits = model.encodings.hits
    model.encode(prepared[1])
    assert model.encodings.hits == hits + 1
    model.encode(prepared[2])
    assert model.encodings.hits == hits + 1  # was evicted: encoded again


def test_signals_computed_later_count_against_the_budget():
    model = repro.load("tiny-llava-1.5")
    prepared = model.prepare(make_image(0), "What?")
    visual = model.encode(prepared)
    before = nbytes(visual)
    visual.signals.cls_attention()
    visual.signals.keys(0)
    assert nbytes(visual) > before
    model.encode(model.prepare(make_image(1), "What?"))  # re-measures the previous entry
    assert model.encodings._total == model.encodings.nbytes()


def test_returned_encodings_do_not_share_their_metadata_dict():
    model = repro.load("tiny-llava-1.5")
    prepared = model.prepare(make_image(0), "What?")
    a = model.encode(prepared)
    a.meta["group"] = torch.zeros(len(a), dtype=torch.long)
    assert "group" not in model.encode(prepared).meta
