"""FastV (in-LLM) and VisPruner (pre-LLM) on the Method interface, on all four tiny families."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import repro
from baselines.fastv import FastVPlanner
from baselines.vispruner import vispruner_select
from repro import flops
from repro.engine import Sequence
from repro.errors import ReproError
from repro.methods.base import split_budget, top_indices
from repro.models.adapter import LAYOUT, PATCH, VisualTokens

from conftest import TINY, make_image

QUESTION = "What colour is the small square?"
IMAGE = (300, 200)  # large enough that every tiny family has a real visual budget to play with


def run(model, method=None, image=None, tokens=4):
    return model.generate(image or make_image(7, IMAGE), QUESTION, method=method, max_new_tokens=tokens)


def n_patches(model):
    visual = model.encode(model.prepare(make_image(7, IMAGE), QUESTION))
    return visual.patches.numel(), len(visual)


# ------------------------------------------------------------------------------ exactness

@pytest.mark.parametrize("name", TINY)
def test_full_budget_reproduces_the_unpruned_model(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    plain = run(model, tokens=8)
    patches, visual = n_patches(model)
    # on LLaVA-NeXT the official VisPruner packing (all crop patches, no newlines) is not the
    # model's own sequence; the unpadded variant at full budget is
    for method in (repro.method("fastv", f"tokens:{visual}"), repro.method("vispruner", f"tokens:{patches}", full_crops=False)):
        result = run(model, method, tokens=8)
        assert (result.first_token_logprobs - plain.first_token_logprobs).abs().max() < 1e-5, method.name
        assert result.text == plain.text and result.tokens == plain.tokens, method.name


# ------------------------------------------------------------------------------ hand-built cases

def test_top_indices_orders_ties_and_inverse():
    scores = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.5])
    assert top_indices(scores, 2).tolist() == [1, 3]
    assert top_indices(scores, 3).tolist() == [1, 3, 4]  # tie between 1 and 4: both kept
    assert top_indices(torch.tensor([0.5, 0.5, 0.5]), 2).tolist() == [0, 1]  # earlier position wins
    assert top_indices(scores, 2, inverse=True).tolist() == [0, 2]


class FakeProbe:
    def __init__(self, row, n):
        self.row, self.active = row, torch.arange(n)

    def attention_rows(self, queries, keys=None, reduce="mean"):
        assert queries.tolist() == [self.active.numel() - 1]  # the last prompt token asks
        return self.row[None]


def fake_sequence(n_prefix, n_visual, n_text):
    n = n_prefix + n_visual + n_text
    return Sequence(torch.zeros(n, 4), torch.arange(n), torch.arange(n_prefix, n_prefix + n_visual), torch.zeros(n))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fastv_keeps_the_top_visual_tokens_of_layer_k_minus_1(k):
    seq = fake_sequence(2, 4, 3)  # visual tokens at 2..5
    row = torch.tensor([0.3, 0.0, 0.1, 0.5, 0.2, 0.9, 0.0, 0.0, 0.0])  # card example: [0.1, 0.5, 0.2, 0.9]
    planner = FastVPlanner(seq, k=k, n_keep=2, inverse=False)
    ops = [planner.layer_ops(layer, FakeProbe(row, 9)) for layer in range(k + 2)]
    assert all(o.attention is None and o.mlp is None for o in ops[:k])  # every token before K
    kept = [0, 1, 3, 5, 6, 7, 8]  # prefix, visual offsets {1, 3}, text
    assert all(o.attention.tolist() == kept and o.mlp.tolist() == kept for o in ops[k:])


def test_vispruner_important_tokens_are_the_top_cls_attention():
    scores = torch.tensor([0.05, 0.30, 0.10, 0.40, 0.15])
    features = torch.eye(5)
    assert vispruner_select(scores, features, 2, important_ratio=1.0).tolist() == [1, 3]
    assert vispruner_select(scores, features, 2, important_ratio=1.0, inverse=True).tolist() == [0, 2]


def test_vispruner_diverse_round_removes_duplicates():
    """Card example: residual [e0, o1, e2, o3, e4, o5], e0 = o1 and e2 = o3, e4 orthogonal to all,
    diverse budget 4: one round drops e0 and e2."""
    # important token first (highest score), then the residual in descending score order
    scores = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    a, b, c, d, other = torch.eye(5)
    features = torch.stack([other, a, a, b, b, c, d])
    kept = vispruner_select(scores, features, 5, important_ratio=0.2)
    assert kept.tolist() == [0, 2, 4, 5, 6]  # important 0; e0=1 and e2=3 dropped; e4=5, odds 2, 4, 6 kept


def test_vispruner_ratio_one_has_no_diverse_step_and_odd_residual_is_fixed():
    scores = torch.arange(7, 0, -1).float()
    assert vispruner_select(scores, torch.randn(7, 3), 3, important_ratio=1.0).tolist() == [0, 1, 2]
    # 7 tokens, keep 4 at r = 0.5: 2 important leaves an odd residual of 5, so 3 become important
    kept = vispruner_select(scores, torch.eye(7), 4, important_ratio=0.5)
    assert kept.numel() == 4 and kept[:3].tolist() == [0, 1, 2]


def test_split_budget_is_exact_and_respects_capacity():
    assert split_budget(10, [4, 4, 4]) == [4, 3, 3]
    assert split_budget(10, [2, 8, 8]) == [2, 4, 4]
    assert split_budget(5, [1, 1]) == [1, 1]
    assert sum(split_budget(37, [16, 12, 16, 12, 16])) == 37


def test_vispruner_is_per_crop_on_llava_next():
    """Two crops of 4 patches + a newline: tokens:4 keeps 2 per crop, by each crop's own scores."""
    meta = {"index": torch.arange(9), "image": torch.zeros(9, dtype=torch.long),
            "crop": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, -1]), "patch": torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, -1]),
            "row": torch.zeros(9, dtype=torch.long), "col": torch.zeros(9, dtype=torch.long),
            "kind": torch.tensor([PATCH] * 8 + [LAYOUT])}
    cls = torch.tensor([0.9, 0.8, 0.1, 0.0, 0.05, 0.04, 0.03, 0.02, 0.0])
    signals = SimpleNamespace(cls_attention=lambda layer=None: cls, pre_projector=lambda: torch.eye(9))
    visual = VisualTokens(torch.zeros(9, 4), meta, signals)
    cls = cls[:, None]  # one head
    signals = SimpleNamespace(cls_attention=lambda layer=None, reduce="none": cls, pre_projector=lambda: torch.eye(9))
    visual = VisualTokens(torch.zeros(9, 4), meta, signals)
    prepared = SimpleNamespace(input_ids=torch.zeros(20))
    method = repro.method("vispruner", "tokens:4", important_ratio=1.0, full_crops=False)
    kept = method.reduce(SimpleNamespace(family="llava-next"), prepared, visual).meta["index"]
    assert kept.tolist() == [0, 1, 4, 5, 8]  # 2 from each crop, the newline stays
    pooled = repro.method("vispruner", "tokens:4", important_ratio=1.0, per_crop=False, full_crops=False)
    assert pooled.reduce(SimpleNamespace(family="llava-next"), prepared, visual).meta["index"].tolist() == [0, 1, 2, 4, 8]


# ------------------------------------------------------------------------------ budgets

@pytest.mark.parametrize("name", TINY)
def test_token_budgets_are_realized_exactly(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    patches, visual = n_patches(model)
    fastv = run(model, repro.method("fastv", "tokens:7"), tokens=1).stats
    assert [r.visual_queries for r in fastv.layers] == [visual] * 2 + [7] * (model.card.layers - 2)
    prepared = model.prepare(make_image(7, IMAGE), QUESTION)
    reduced = repro.method("vispruner", "tokens:11").reduce(model, prepared, model.encode(prepared))
    assert int((reduced.meta["kind"] == PATCH).sum()) == len(reduced) == 11  # official: no newline tokens
    reduced = repro.method("vispruner", "tokens:11", full_crops=False).reduce(model, prepared, model.encode(prepared))
    assert int((reduced.meta["kind"] == PATCH).sum()) == 11
    assert len(reduced) == 11 + (visual - patches)  # the unpadded variant keeps LLaVA-NeXT's newlines


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method, ratio", [("fastv", 0.85), ("vispruner", 0.6), ("vispruner", 0.8)])
def test_ratio_budgets_are_met_within_two_percent(tiny_models, name, method, ratio):
    model = tiny_models[name]["sdpa"]
    full = run(model, tokens=1).stats.tflops["paper"]
    got = run(model, repro.method(method, f"ratio:{ratio}"), tokens=1).stats.tflops["paper"]
    assert (ratio - 0.02) * full <= got <= ratio * full * (1 + 1e-12)


def test_infeasible_budgets_and_bad_options_are_clear_errors(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    with pytest.raises(ReproError, match="infeasible"):
        run(model, repro.method("fastv", "ratio:0.3"))  # layers 0-1 alone cost more
    with pytest.raises(ReproError, match="K >= 1"):
        repro.method("fastv", k=0)
    with pytest.raises(ReproError, match="needs a budget"):
        repro.method("vispruner")


# ------------------------------------------------------------------------------ FLOPs

@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method, budget", [("fastv", "tokens:5"), ("vispruner", "tokens:9")])
def test_analytic_flops_equal_flopcounter(tiny_models, name, method, budget):
    model = tiny_models[name]["eager"]
    m = repro.method(method, budget)
    prepared = model.prepare(make_image(7, IMAGE), QUESTION)
    seq = model.assemble(prepared, m.reduce(model, prepared, model.encode(prepared)), m.position_mode(model))
    with FlopCounterMode(display=False) as counter:
        out = model.engine.prefill(seq, m.planner(model, seq))
    layers = [flops.LayerTokens(r.queries, r.keys, r.mlp) for r in out.records]
    analytic = flops.prefill_flops(model.card, layers, "exact", lm_head_tokens=1)
    assert counter.get_total_flops() == analytic + out.probe_flops  # scoring is counted apart
    assert (out.probe_flops > 0) == (method == "fastv")


# ------------------------------------------------------------------------------ instance scope

def test_two_methods_on_one_model_alternating_equal_each_alone(tiny_models):
    model = tiny_models["tiny-llava-next"]["sdpa"]
    images = [make_image(i, IMAGE) for i in range(3)]
    fastv, vispruner = repro.method("fastv", "tokens:9"), repro.method("vispruner", "tokens:12")
    alone = [run(model, fastv, image).tokens for image in images] + [run(model, vispruner, image).tokens for image in images]
    mixed = []
    for image in images:
        mixed.append((run(model, fastv, image).tokens, run(model, vispruner, image).tokens))
    assert [a for a, _ in mixed] + [b for _, b in mixed] == alone
