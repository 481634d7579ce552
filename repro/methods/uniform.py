"""Spatially uniform visual-token subsampling: the dependency-free reducer (DOP's fallback)."""

from __future__ import annotations

import torch

from repro.budget import Budget
from repro.methods.base import Method, split_budget, visual_tokens_for_budget
from repro.methods.registry import register
from repro.models.adapter import LAYOUT


def evenly_spaced(n: int, k: int) -> torch.Tensor:
    """`k` of `n` positions spread evenly (the centre of each of k equal strides)."""
    return ((torch.arange(k) + 0.5) * n / max(k, 1)).long().clamp(max=n - 1) if k else torch.zeros(0, dtype=torch.long)


@register("uniform", stage="pre-llm", knob="visual tokens kept, evenly spread over each crop's grid",
          reference="harness baseline (no scores; DOP's dependency-free reducer)")
class Uniform(Method):
    """Keep evenly spaced patch tokens of each crop (row-major order); layout tokens stay."""

    positions = "contiguous"

    def __init__(self, budget: Budget | None = None):
        super().__init__(budget)
        if budget is None:
            raise ValueError("uniform needs a budget (tokens:N, ratio:R or tflops:X)")

    def reduce(self, model, prepared, visual):
        patches = visual.patches
        n_keep = visual_tokens_for_budget(model, prepared, patches.numel(), self.budget)
        crops = visual.meta["crop"][patches]
        pools = [(crops == c).nonzero().flatten() for c in torch.unique(crops)]
        kept = [pool[evenly_spaced(pool.numel(), share)]
                for pool, share in zip(pools, split_budget(n_keep, [p.numel() for p in pools]))]
        layout = (visual.meta["kind"] == LAYOUT).nonzero().flatten()
        return visual.select(torch.sort(torch.cat([patches[torch.cat(kept)], layout])).values)
