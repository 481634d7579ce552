"""Analytic FLOPs: formulas, the MODELS.md section 8 sanity table, and invariants."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repro.errors import ReproError
from repro.flops import (
    CONVENTION_DOCS,
    CONVENTIONS,
    LayerTokens,
    layer_flops,
    layer_terms,
    lm_head_flops,
    prefill_flops,
    unpruned_layers,
    unpruned_prefill_flops,
    vision_flops,
)
from repro.models.cards import ArchCard, VisionCard
from repro.models.registry import get_entry

VISION = VisionCard("v", layers=2, hidden=8, heads=2, mlp=16, image_size=28, patch_size=14, has_cls=True, tokens_rule="")
# A GQA card with every width distinct, so a swapped factor would show.
TINY = ArchCard(layers=3, hidden=12, heads=4, kv_heads=2, head_dim=5, mlp=7, vocab=11, vision=VISION, visual_tokens=4)


def test_conventions_declared():
    assert CONVENTIONS == ("paper", "exact")
    assert set(CONVENTION_DOCS) == set(CONVENTIONS)


# (model, total tokens, convention, TFLOPs) from MODELS.md section 8.
SANITY = [
    ("llava-1.5-7b", 675, "paper", 8.98),
    ("llava-1.5-7b", 675, "exact", 8.98),
    ("llava-1.5-7b", 576, "paper", 7.63),
    ("llava-1.5-13b", 675, "exact", 17.50),
    ("llava-next-7b", 2979, "exact", 43.24),
    ("llava-next-7b", 2979, "paper", 43.24),
    ("llava-next-7b", 2880, "paper", 41.65),  # CDPruner anchor, vanilla 41.7 T
    ("llava-next-7b", 320, "paper", 4.20),  # CDPruner 320-token row
    ("llava-next-7b", 2439, "exact", 34.71),
    ("llava-next-13b", 2979, "exact", 82.86),
    ("llava-next-13b", 2880, "paper", 79.88),
    ("qwen2.5-vl-7b", 1395, "exact", 18.99),
    ("qwen2.5-vl-7b", 1395, "paper", 20.71),
    ("qwen2.5-vl-7b", 490, "exact", 6.49),
    ("qwen2.5-vl-7b", 2147, "paper", 32.52),
    ("internvl3-8b", 3427, "exact", 49.44),
    ("internvl3-8b", 3427, "paper", 53.66),
    ("internvl3-8b", 355, "exact", 4.68),
]


@pytest.mark.parametrize("name,n,convention,tflops", SANITY)
def test_models_md_sanity_table(name, n, convention, tflops):
    card = get_entry(name).card
    assert unpruned_prefill_flops(card, n, convention) / 1e12 == pytest.approx(tflops, abs=0.01)


def test_layer_terms_paper_by_hand():
    t = LayerTokens(queries=3, keys=5, mlp=2)
    d, ff = 12, 7
    assert layer_terms(TINY, t, "paper") == {
        "q": 2 * 3 * d * d,
        "k": 2 * 5 * d * d,
        "v": 2 * 5 * d * d,
        "o": 2 * 3 * d * d,
        "scores": 2 * 3 * 5 * d,
        "weighted_sum": 2 * 3 * 5 * d,
        "mlp": 6 * 2 * d * ff,
    }


def test_layer_terms_exact_by_hand():
    t = LayerTokens(queries=3, keys=5, mlp=2)
    d, dq, dkv, ff = 12, 20, 10, 7
    assert TINY.d_q == dq and TINY.d_kv == dkv
    assert layer_terms(TINY, t, "exact") == {
        "q": 2 * 3 * d * dq,
        "k": 2 * 5 * d * dkv,
        "v": 2 * 5 * d * dkv,
        "o": 2 * 3 * dq * d,
        "scores": 2 * 3 * 5 * dq,
        "weighted_sum": 2 * 3 * 5 * dq,
        "mlp": 6 * 2 * d * ff,
    }
    assert layer_flops(TINY, t, "exact") == sum(layer_terms(TINY, t, "exact").values())


def test_results_are_python_ints():
    card = get_entry("llava-next-13b").card
    assert type(unpruned_prefill_flops(card, 2979, "paper")) is int
    assert type(vision_flops(card, 5)) is int


def test_conventions_agree_without_gqa():
    card = get_entry("llava-1.5-13b").card
    for n in (0, 1, 675):
        assert unpruned_prefill_flops(card, n, "paper") == unpruned_prefill_flops(card, n, "exact")


def test_prefill_checks_layer_count():
    with pytest.raises(ValueError, match="expected 3"):
        prefill_flops(TINY, unpruned_layers(TINY, 4)[:2], "paper")


def test_lm_head_only_in_exact():
    layers = unpruned_layers(TINY, 4)
    base = prefill_flops(TINY, layers, "exact")
    assert prefill_flops(TINY, layers, "exact", lm_head_tokens=1) == base + 2 * 12 * 11
    assert lm_head_flops(TINY, 3) == 2 * 3 * 12 * 11
    with pytest.raises(ValueError, match="paper"):
        prefill_flops(TINY, layers, "paper", lm_head_tokens=1)
    assert prefill_flops(TINY, layers, "paper", lm_head_tokens=0) == prefill_flops(TINY, layers, "paper")


def test_unknown_convention_is_user_error():
    with pytest.raises(ReproError, match="paper, exact"):
        layer_flops(TINY, LayerTokens(1, 1, 1), "gsop")


def test_negative_tokens_rejected():
    with pytest.raises(ValueError):
        LayerTokens(-1, 0, 0)


def test_pruned_schedule_is_sum_of_layers():
    layers = [LayerTokens(10, 10, 10), LayerTokens(4, 10, 3), LayerTokens(0, 0, 0)]
    assert prefill_flops(TINY, layers, "exact") == sum(layer_flops(TINY, t, "exact") for t in layers)
    assert layer_flops(TINY, LayerTokens(0, 0, 0), "paper") == 0


counts = st.integers(min_value=0, max_value=5000)


@settings(max_examples=60, deadline=None)
@given(counts, counts, counts, st.integers(0, 3), st.sampled_from(CONVENTIONS))
def test_monotone_in_every_count(nq, nk, nm, which, convention):
    base = LayerTokens(nq, nk, nm)
    bumped = LayerTokens(nq + (which == 0), nk + (which == 1), nm + (which == 2))
    assert layer_flops(TINY, bumped, convention) >= layer_flops(TINY, base, convention)


@settings(max_examples=60, deadline=None)
@given(counts, counts, counts)
def test_exact_not_above_paper_under_gqa(nq, nk, nm):
    card = get_entry("qwen2.5-vl-7b").card  # d_q == d, d_kv < d
    t = LayerTokens(nq, nk, nm)
    assert layer_flops(card, t, "exact") <= layer_flops(card, t, "paper")


def test_vision_clip_by_hand():
    card = get_entry("llava-1.5-7b").card
    n, p, h, mlp, d = 577, 576, 1024, 4096, 4096
    layer = 8 * n * h * h + 4 * n * n * h + 4 * n * h * mlp
    encoder = 2 * p * (3 * 14 * 14) * h + 24 * layer
    projector = 2 * p * (h * d + d * d)
    assert vision_flops(card, 1, include_projector=False) == encoder
    assert vision_flops(card, 1) == encoder + projector
    assert vision_flops(card, 5) == 5 * vision_flops(card, 1)
    assert vision_flops(card, 0) == 0
    assert vision_flops(card, 1) / 1e12 == pytest.approx(0.406, abs=0.005)  # ~0.38 T encoder (MODELS.md 8)


def test_vision_windowed_attention_is_cheaper():
    card = get_entry("qwen2.5-vl-7b").card
    v = card.vision
    assert v.patches == 72 * 72 and v.llm_tokens == 1296 and card.vision_units == 1
    n, h = v.patches, v.hidden
    windowed_layers = v.layers - len(v.full_attention_blocks)
    full = replace(card, vision=replace(v, window=0))
    saved = windowed_layers * 4 * n * (n - 64) * h
    assert vision_flops(full, 1) - vision_flops(card, 1) == saved


def test_default_vision_units():
    assert get_entry("llava-next-7b").card.vision_units == 5
    assert get_entry("internvl3-8b").card.vision_units == 13
    assert get_entry("llava-1.5-7b").card.vision_units == 1
