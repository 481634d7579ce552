"""FastV (in-LLM) and VisPruner (pre-LLM): hand-built cases with known answers and bad input.

The registry-wide contract (full budget, counts, ratios, FLOPs, instance scope, determinism) is in
test_method_contract.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import repro
from baselines.fastv import FastVPlanner
from baselines.vispruner import vispruner_select
from repro.engine import Sequence
from repro.errors import ReproError
from repro.methods.base import split_budget, top_indices
from repro.models.adapter import LAYOUT, PATCH, VisualTokens

from conftest import make_image

QUESTION = "What colour is the small square?"
IMAGE = (300, 200)  # large enough that every tiny family has a real visual budget to play with


def run(model, method=None, image=None, tokens=4):
    return model.generate(image or make_image(7, IMAGE), QUESTION, method=method, max_new_tokens=tokens)


def n_patches(model):
    visual = model.encode(model.prepare(make_image(7, IMAGE), QUESTION))
    return visual.patches.numel(), len(visual)


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
    method = repro.method("vispruner", "tokens:4", important_ratio=1.0)
    kept = method.reduce(SimpleNamespace(family="llava-next"), None, visual).meta["index"]
    assert kept.tolist() == [0, 1, 4, 5, 8]  # 2 from each crop, the newline stays
    pooled = repro.method("vispruner", "tokens:4", important_ratio=1.0, per_crop=False)
    assert pooled.reduce(SimpleNamespace(family="llava-next"), None, visual).meta["index"].tolist() == [0, 1, 2, 4, 8]


def test_infeasible_budgets_and_bad_options_are_clear_errors(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    with pytest.raises(ReproError, match="infeasible"):
        run(model, repro.method("fastv", "ratio:0.3"))  # layers 0-1 alone cost more
    with pytest.raises(ReproError, match="K >= 1"):
        repro.method("fastv", k=0)
    with pytest.raises(ReproError, match="needs a budget"):
        repro.method("vispruner")
