"""Invariants of schedules over random inputs (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repro.engine import LayerOps, Schedule, visual_schedule


@st.composite
def layouts(draw):
    """(n_tokens, visual indices, per-layer attention/mlp/kv-only visual subsets)."""
    n_prefix = draw(st.integers(1, 4))
    n_visual = draw(st.integers(0, 20))
    n_text = draw(st.integers(1, 6))
    n = n_prefix + n_visual + n_text
    visual = torch.arange(n_prefix, n_prefix + n_visual)
    n_layers = draw(st.integers(1, 5))

    def subset():
        mask = draw(st.lists(st.booleans(), min_size=n_visual, max_size=n_visual))
        return visual[torch.tensor(mask, dtype=torch.bool)] if n_visual else visual

    attention = [draw(st.one_of(st.none(), st.builds(subset))) for _ in range(n_layers)]
    mlp = [draw(st.one_of(st.none(), st.builds(subset))) for _ in range(n_layers)]
    kv = [None if a is None else visual[~torch.isin(visual, a)][: draw(st.integers(0, n_visual))] for a in attention]
    return n, visual, attention, mlp, kv


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_visual_schedules_are_valid_and_keep_every_text_token(layout):
    n, visual, attention, mlp, kv = layout
    schedule = visual_schedule(n, visual, attention, mlp, kv)
    others = torch.tensor([i for i in range(n) if i not in set(visual.tolist())])
    schedule.validate(n, others)
    for ops in schedule.layers:
        for idx in (ops.attention_set(n), ops.mlp_set(n), ops.kv_set(n)):
            assert torch.equal(idx, torch.unique(idx))  # sorted, unique
            assert idx.numel() == 0 or (0 <= idx.min() and idx.max() < n)
        assert torch.isin(others, ops.attention_set(n)).all() and torch.isin(others, ops.mlp_set(n)).all()
        assert torch.isin(ops.attention_set(n), ops.kv_set(n)).all()


@settings(max_examples=150, deadline=None)
@given(layouts())
def test_dead_op_elimination_only_removes_unread_work(layout):
    n, visual, attention, mlp, kv = layout
    schedule = visual_schedule(n, visual, attention, mlp, kv)
    lean = schedule.without_dead_ops(n)
    others = torch.tensor([i for i in range(n) if i not in set(visual.tolist())])
    lean.validate(n, others)
    for layer, (before, after) in enumerate(zip(schedule.layers, lean.layers)):
        assert torch.equal(before.kv_set(n), after.kv_set(n))  # every key/value still provided
        assert torch.isin(after.attention_set(n), before.attention_set(n)).all()
        assert torch.isin(after.mlp_set(n), before.mlp_set(n)).all()
        read_later = {n - 1}
        for later in schedule.layers[layer + 1:]:
            read_later |= set(later.kv_set(n).tolist())
        removed = set(before.mlp_set(n).tolist()) - set(after.mlp_set(n).tolist())
        assert not removed & read_later
    again = lean.without_dead_ops(n)  # idempotent
    for a, b in zip(again.layers, lean.layers):
        assert torch.equal(a.mlp_set(n), b.mlp_set(n)) and torch.equal(a.attention_set(n), b.attention_set(n))


@pytest.mark.parametrize("bad, message", [
    (LayerOps(attention=torch.tensor([0, 2, 1, 9])), "sorted"),
    (LayerOps(attention=torch.tensor([0, 1, 1, 9])), "sorted"),
    (LayerOps(mlp=torch.tensor([0, 3, 10])), "out of range"),
    (LayerOps(attention=torch.tensor([-1, 9])), "out of range"),
    (LayerOps(attention=torch.tensor([[0, 9]])), "1-D"),
    (LayerOps(attention=torch.tensor([0.0, 9.0])), "integer"),
    (LayerOps(attention=torch.tensor([0, 1, 2, 3, 9]), kv_only=torch.tensor([3, 4])), "overlaps"),
    (LayerOps(attention=torch.tensor([0, 1, 9])), "non-visual"),
    (LayerOps(mlp=torch.tensor([0, 1, 2, 3, 4])), "last token"),
])
def test_malformed_schedules_raise_value_error(bad, message):
    required = torch.tensor([0, 1, 2, 3, 9])  # tokens 4..8 are visual
    with pytest.raises(ValueError, match=message):
        Schedule((bad,)).validate(10, required)


def test_engine_rejects_a_malformed_schedule(tiny_models):
    from conftest import make_image

    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    prepared = model.prepare(make_image(0), "Is there a star?")
    seq = model.assemble(prepared, model.encode(prepared))
    bad = Schedule(tuple(LayerOps(attention=torch.tensor([1, 0]) if i == 2 else None) for i in range(model.card.layers)))
    with pytest.raises(ValueError, match="layer 2 attention"):
        model.engine.prefill(seq, bad)
