"""FastV: drop visual tokens after layer K by the attention the last prompt token pays them at K−1.

Card: shared/docs/METHODS.md §2.1. Layers < K run every token; the last prompt token's
head-mean attention row at layer K−1 (the layer's own q/k, via a probe) ranks the visual tokens;
layers ≥ K run the prefix, the top-T visual tokens and the text, at their original positions,
with static per-layer KV caches for decoding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from repro import flops
from repro.budget import Budget, solve_knob
from repro.engine import LayerOps, Sequence
from repro.errors import ReproError
from repro.methods.base import Method, top_indices
from repro.methods.registry import register


def fastv_layers(n_layers: int, k: int, n_tokens: int, n_dropped: int) -> list[flops.LayerTokens]:
    """Per-layer token counts of FastV: all tokens before K, n − dropped from K on."""
    return [flops.LayerTokens(n, n, n) for n in [n_tokens] * k + [n_tokens - n_dropped] * (n_layers - k)]


@register("fastv", stage="in-llm", knob="visual tokens kept from layer K on (K fixed, default 2)",
          reference="Chen et al., ECCV 2024, arXiv 2403.06764; github.com/pkunlp-icler/FastV",
          variants={"inverse": "keep the lowest-scored tokens (sanity check, not a method)"})
class FastV(Method):
    """Defaults: K = 2 and half of the visual tokens dropped (the paper's setting) when no budget."""

    def __init__(self, budget: Budget | None = None, *, k: int = 2, keep_ratio: float = 0.5,
                 inverse: bool = False):
        super().__init__(budget)
        if k < 1:
            raise ValueError(f"FastV needs K >= 1 (its scores come from layer K-1), got {k}")
        if not 0 <= keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
        self.k, self.keep_ratio, self.inverse = k, keep_ratio, inverse

    def planner(self, model, seq: Sequence) -> "FastVPlanner":
        if self.k >= model.card.layers:
            raise ReproError(f"FastV K={self.k} must be below the model's {model.card.layers} layers")
        return FastVPlanner(seq, self.k, self.n_keep(model, seq), self.inverse)

    def min_flops(self, card, n_visual: int, n_other: int) -> int:
        """Every visual token dropped from layer K on."""
        k = min(self.k, card.layers)
        return flops.prefill_flops(card, fastv_layers(card.layers, k, n_other + n_visual, n_visual), "paper")

    def n_keep(self, model, seq: Sequence) -> int:
        """T for this sample: from the budget (solved on the sample's real shape) or keep_ratio."""
        n_vis, n = seq.visual.numel(), seq.n_tokens
        if self.budget is None:
            return round(n_vis * self.keep_ratio)
        if self.budget.kind == "tokens":
            return min(int(self.budget.value), n_vis)

        def cost(t: int) -> float:
            return flops.prefill_flops(model.card, fastv_layers(model.card.layers, self.k, n, n_vis - t), "paper")

        return solve_knob(range(n_vis + 1), cost, self.budget.max_flops(cost(n_vis)))


class FastVPlanner:
    """Full layers until K−1, where the probe ranks the visual tokens; the kept set from K on."""

    def __init__(self, seq: Sequence, k: int, n_keep: int, inverse: bool):
        self.seq, self.k, self.n_keep, self.inverse = seq, k, n_keep, inverse
        self.kept: Tensor | None = None

    def layer_ops(self, layer: int, probe) -> LayerOps:
        if layer == self.k - 1:
            last = torch.tensor([self.seq.n_tokens - 1], device=self.seq.visual.device)
            row = probe.attention_rows(last)[0]  # over the active keys = every token before K
            scores = row[torch.searchsorted(probe.active, self.seq.visual)]
            chosen = self.seq.visual[top_indices(scores, self.n_keep, inverse=self.inverse)]
            self.kept = torch.sort(torch.cat([self.seq.non_visual(), chosen])).values
        if layer < self.k:
            return LayerOps()
        return LayerOps(attention=self.kept, mlp=self.kept)
