"""The method registry and the budget helper shared by pre-LLM reducers (shown with `random`)."""

from __future__ import annotations

import pytest

import repro
from repro.errors import ReproError
from repro.methods import specs

from conftest import make_image


def test_unknown_method_lists_registered_ones():
    with pytest.raises(ReproError, match="registered: .*random"):
        repro.method("fastvv")


def test_bad_options_are_a_clear_error():
    with pytest.raises(ReproError, match="bad options for method 'random'"):
        repro.method("random", keep=0.5, colour="red")


def test_registry_declares_stage_knob_and_reference():
    spec = {s.name: s for s in specs()}["random"]
    assert spec.stage == "pre-llm" and spec.knob and spec.reference


def test_token_budget_is_the_realized_visual_count(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    result = model.generate(make_image(0), "What?", method=repro.method("random", budget="tokens:10"), max_new_tokens=1)
    assert result.stats.visual_tokens == 10
    assert all(r.visual_queries == 10 for r in result.stats.layers)
    with pytest.raises(ReproError, match="more visual tokens than the 64"):  # never a silent clamp
        model.generate(make_image(0), "What?", method=repro.method("random", budget="tokens:1000"), max_new_tokens=1)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_ratio_budget_is_met_within_two_percent(tiny_models, ratio):
    model = tiny_models["tiny-llava-next"]["sdpa"]
    image = make_image(1)
    full = model.generate(image, "What?", max_new_tokens=1).stats.tflops["paper"]
    got = model.generate(image, "What?", method=repro.method("random", budget=f"ratio:{ratio}"),
                         max_new_tokens=1).stats.tflops["paper"]
    assert got <= ratio * full + 1e-15
    assert got >= (ratio - 0.02) * full


def test_infeasible_ratio_is_an_error_not_a_clamp(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    with pytest.raises(ReproError, match="infeasible"):
        model.generate(make_image(0), "What?", method=repro.method("random", budget="ratio:0.01"), max_new_tokens=1)


def test_random_keep_is_reproducible_and_full_keep_is_exact(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    image = make_image(2)
    a = model.generate(image, "What?", method=repro.method("random", keep=0.3, seed=1), max_new_tokens=3)
    b = model.generate(image, "What?", method=repro.method("random", keep=0.3, seed=1), max_new_tokens=3)
    assert a.tokens == b.tokens and (a.first_token_logprobs == b.first_token_logprobs).all()
    full = model.generate(image, "What?", method=repro.method("random", keep=1.0), max_new_tokens=3)
    plain = model.generate(image, "What?", max_new_tokens=3)
    assert (full.first_token_logprobs - plain.first_token_logprobs).abs().max() < 1e-5 and full.tokens == plain.tokens
