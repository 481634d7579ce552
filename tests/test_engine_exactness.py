"""The engine computes exactly what the model computes.

- full schedule == the HF model's own forward (first-token log-probs) and HF `generate` (text);
- random schedules == an independent masking reference, for the prefill and several decode steps.
"""

from __future__ import annotations

import pytest
import torch
from reference import masked_logits

from repro.engine import Schedule, random_schedule, visual_schedule
from repro.methods import ScheduleMethod

from conftest import MROPE, TINY, make_image

QUESTION = "What is in the image? Answer with one word."


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("image_size", [(120, 90), (60, 130), (64, 64)])
def test_full_schedule_equals_hf_forward_and_generate(tiny_models, name, backend, image_size):
    model = tiny_models[name][backend]
    image = make_image(1, image_size)
    result = model.generate(image, QUESTION, max_new_tokens=12)
    inputs = model.prepare(image, QUESTION).inputs
    with torch.inference_mode():
        ref = model.hf(**inputs).logits[0, -1].float().log_softmax(-1)
        hf_ids = model.hf.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert (result.first_token_logprobs - ref).abs().max() < 1e-5
    hf_text = model.tokenizer.decode(hf_ids, skip_special_tokens=True)
    assert result.text == hf_text
    assert result.tokens == [t for t in hf_ids.tolist() if t not in model.eos_ids()][: len(result.tokens)]


CASES = [(name, variant) for name in TINY for variant in ("drop", "kv_only", "renumber")
         if not (variant == "renumber" and name in MROPE)]  # renumbering is 1-D RoPE only (see below)


@pytest.mark.parametrize("name, variant", CASES)
@pytest.mark.parametrize("seed", range(4))
def test_random_schedule_equals_masking_reference(tiny_models, name, seed, variant):
    model = tiny_models[name]["sdpa"]
    prepared = model.prepare(make_image(seed), QUESTION)
    seq = model.assemble(prepared, model.encode(prepared))
    gen = torch.Generator().manual_seed(seed)
    schedule = random_schedule(seq.n_tokens, seq.visual, model.card.layers, gen, keep=0.4 + 0.1 * seed,
                               kv_only=variant == "kv_only", renumber=variant == "renumber")
    out = model.engine.prefill(seq, schedule)
    tokens = [int(out.logits.argmax())]
    logits = [out.logits]
    for step in range(3):
        logits.append(model.engine.decode_step(tokens[-1], out.cache, step))
        tokens.append(int(logits[-1].argmax()))
    ref = masked_logits(model, seq, schedule, tokens[:3])
    for step, got in enumerate(logits):
        assert (got.log_softmax(-1) - ref[step].log_softmax(-1)).abs().max() < 1e-5, f"step {step}"
    # The pruned run really differs from the unpruned one (the comparison is not vacuous).
    full = model.engine.prefill(seq, Schedule.full(model.card.layers))
    assert (full.logits - out.logits).abs().max() > 1e-4


def test_generate_with_schedule_method_matches_engine(tiny_models):
    model = tiny_models["tiny-llava-next"]["sdpa"]
    image = make_image(3)
    gen = torch.Generator().manual_seed(0)
    method = ScheduleMethod(lambda seq: random_schedule(seq.n_tokens, seq.visual, model.card.layers, gen, keep=0.3))
    result = model.generate(image, QUESTION, method=method, max_new_tokens=4)
    visual = [r.visual_queries for r in result.stats.layers]
    assert max(visual) < result.stats.visual_tokens  # tokens really were dropped
    assert result.stats.tflops["paper"] < model.generate(image, QUESTION, max_new_tokens=1).stats.tflops["paper"]


def test_stop_strings_and_token_limit(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    image = make_image(0)
    free = model.generate(image, QUESTION, max_new_tokens=10)
    assert len(free.tokens) <= 10
    if len(free.text) > 2:
        stop = free.text[1:3]
        cut = model.generate(image, QUESTION, max_new_tokens=10, stop=[stop])
        assert stop not in cut.text and free.text.startswith(cut.text)


@pytest.mark.parametrize("name", TINY)
def test_skipping_dead_operations_changes_nothing_but_cost(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    image = make_image(5)

    def build(seq):
        return random_schedule(seq.n_tokens, seq.visual, model.card.layers, torch.Generator().manual_seed(5), keep=0.5)

    kept = model.generate(image, QUESTION, method=ScheduleMethod(build), max_new_tokens=6)
    skipped = model.generate(image, QUESTION, method=ScheduleMethod(build, skip_dead_ops=True), max_new_tokens=6)
    assert (kept.first_token_logprobs - skipped.first_token_logprobs).abs().max() < 1e-5
    assert kept.tokens == skipped.tokens
    assert (kept.stats.dead_ops, skipped.stats.dead_ops) == ("kept", "skipped")
    assert skipped.stats.tflops["exact"] < kept.stats.tflops["exact"]
    # In the last layer only the last token's query and MLP can reach the output.
    assert (skipped.stats.layers[-1].queries, skipped.stats.layers[-1].mlp) == (1, 1)


@pytest.mark.parametrize("name", sorted(MROPE))
def test_renumbering_m_rope_positions_is_refused(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    prepared = model.prepare(make_image(0), QUESTION)
    seq = model.assemble(prepared, model.encode(prepared))
    schedule = random_schedule(seq.n_tokens, seq.visual, model.card.layers, torch.Generator(), renumber=True)
    with pytest.raises(ValueError, match="1-D positions only"):
        model.engine.prefill(seq, schedule)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("seed", range(2))
def test_pre_llm_reduction_equals_masking_the_dropped_tokens(tiny_models, name, seed):
    """A shortened sequence (original positions) == the full sequence with dropped tokens masked in
    every layer, for the prefill and 3 decode steps: decode positions must continue after the
    *original* length (the rope-delta trap of M-RoPE models)."""
    model = tiny_models[name]["sdpa"]
    prepared = model.prepare(make_image(seed, (140, 100)), QUESTION)
    visual = model.encode(prepared)
    keep = torch.sort(torch.randperm(len(visual), generator=torch.Generator().manual_seed(seed))[: len(visual) // 3]).values
    short = model.assemble(prepared, visual.select(keep))
    out = model.engine.prefill(short)
    tokens, logits = [int(out.logits.argmax())], [out.logits]
    for step in range(3):
        logits.append(model.engine.decode_step(tokens[-1], out.cache, step))
        tokens.append(int(logits[-1].argmax()))
    full = model.assemble(prepared, visual)
    kept = full.visual[keep]
    layers = model.card.layers
    masked = visual_schedule(full.n_tokens, full.visual, [kept] * layers, [kept] * layers)
    ref = masked_logits(model, full, masked, tokens[:3])
    for step, got in enumerate(logits):
        assert (got.log_softmax(-1) - ref[step].log_softmax(-1)).abs().max() < 1e-5, f"step {step}"
