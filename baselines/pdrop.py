"""PDrop (PyramidDrop): rank-and-drop visual tokens at stage boundaries, a fraction λ each time.

Card: docs/methods/pdrop.md (from shared/docs/METHODS.md §2.2). Stage s keeps int(N·λ^s) of the
N visual tokens. At a boundary b the last prompt token's head-mean attention, computed with
layer b's own norm and q/k on the current states (a probe at b), ranks the surviving visual
tokens. Positions are renumbered per stage (original M-RoPE positions on Qwen2.5-VL).
"""

from __future__ import annotations

import torch
from torch import Tensor

from repro import flops
from repro.budget import Budget, solve_knob
from repro.engine import LayerOps, Sequence
from repro.errors import InfeasibleBudget
from repro.methods.base import Method, stage_layers, top_indices
from repro.methods.registry import register

REFERENCE_LAYERS = (8, 16, 24)  # official layer_list for 32-layer LLaVA-1.5-7B
LAMBDA_GRID = 10_000  # λ is solved on i / LAMBDA_GRID


def stage_counts(n_visual: int, lam: float, n_stages: int) -> list[int]:
    """Visual tokens kept in stage s = 0..n_stages: int(N·λ^s) (the reference's int(), KEEP)."""
    return [n_visual] + [int(n_visual * lam ** s) for s in range(1, n_stages + 1)]


def per_layer_counts(n_layers: int, boundaries: tuple[int, ...], counts: list[int]) -> list[int]:
    """The visual count each layer runs with: counts[s] on layers [b_s, b_{s+1})."""
    edges = (0, *boundaries, n_layers)
    return [c for c, a, b in zip(counts, edges, edges[1:]) for _ in range(a, b)]


@register("pdrop", stage="in-llm",
          knob="layer-average visual tokens (λ solved, layer_list fixed; official: λ=0.5, [8,16,24])",
          reference="Xing et al., CVPR 2025, arXiv 2410.17247; github.com/Cooperx521/PyramidDrop @ 6444f304ae",
          variants={"layers": "stage boundaries (default: [8,16,24] scaled by L/32 on an L-layer model; "
                              "the card's 64/128/192 rows use [2,8,16])",
                    "lam": "λ when no budget is given (default 0.5)",
                    "positions": "'reference' (renumbered per stage; original on M-RoPE) or 'original'",
                    "inverse": "keep the lowest-scored tokens (sanity check, not a method)"})
class PDrop(Method):
    """Defaults: the official layer_list and λ = 0.5 (ratios 0.5/0.25/0.125) when no budget."""

    def __init__(self, budget: Budget | None = None, *, layers: tuple[int, ...] | None = None, lam: float = 0.5,
                 positions: str = "reference", inverse: bool = False):
        super().__init__(budget)
        if not 0 <= lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if positions not in ("reference", "original"):
            raise ValueError(f"positions must be 'reference' or 'original', got {positions!r}")
        self.layers, self.lam, self.positions_option, self.inverse = layers, lam, positions, inverse

    def planner(self, model, seq: Sequence) -> "PDropPlanner":
        bounds = stage_layers("PDrop", self.layers, REFERENCE_LAYERS, model.card.layers, scale="always")
        counts = stage_counts(seq.visual.numel(), self.solve_lambda(model, seq, bounds), len(bounds))
        renumber = self.positions_option == "reference" and seq.positions.dim() == 1
        return PDropPlanner(seq, bounds, counts, self.inverse, renumber)

    def min_flops(self, card, n_visual: int, n_other: int) -> int:
        """λ = 0: every visual token gone at the first boundary."""
        bounds = stage_layers("PDrop", self.layers, REFERENCE_LAYERS, card.layers, scale="always")
        counts = per_layer_counts(card.layers, bounds, stage_counts(n_visual, 0.0, len(bounds)))
        return flops.visual_per_layer_flops(card, n_other, counts)

    def solve_lambda(self, model, seq: Sequence, bounds: tuple[int, ...]) -> float:
        """λ for this sample: the largest on a 1e-4 grid whose layer-average visual count (tokens:T)
        or paper-convention prefill FLOPs (ratio:R, tflops:X) fits the budget."""
        if self.budget is None:
            return self.lam
        n_vis, n_other, n_layers = seq.visual.numel(), seq.n_tokens - seq.visual.numel(), model.card.layers
        grid = [i / LAMBDA_GRID for i in range(LAMBDA_GRID + 1)]

        def per_layer(i: int) -> list[int]:
            return per_layer_counts(n_layers, bounds, stage_counts(n_vis, grid[i], len(bounds)))

        if self.budget.kind == "tokens":
            def cost(i: int) -> float:
                return sum(per_layer(i)) / n_layers
            limit = float(self.budget.value)
            if cost(0) > limit:
                raise InfeasibleBudget(f"infeasible budget {self.budget} for PDrop: the layers before its first "
                                 f"boundary alone average {cost(0):.1f} visual tokens; use earlier layers")
        else:
            def cost(i: int) -> float:
                return flops.visual_per_layer_flops(model.card, n_other, per_layer(i))
            limit = self.budget.max_flops(cost(LAMBDA_GRID))
        return grid[solve_knob(range(len(grid)), cost, limit)]


class PDropPlanner:
    """Full layers before the first boundary; at each boundary a probe re-ranks the survivors."""

    def __init__(self, seq: Sequence, bounds: tuple[int, ...], counts: list[int], inverse: bool, renumber: bool):
        self.seq, self.bounds, self.counts, self.inverse, self.renumber = seq, bounds, counts, inverse, renumber
        self.others = seq.non_visual()
        self.visual = seq.visual
        self.kept: Tensor | None = None

    def layer_ops(self, layer: int, probe) -> LayerOps:
        if layer in self.bounds:
            stage = self.bounds.index(layer) + 1
            last = torch.tensor([self.seq.n_tokens - 1], device=self.visual.device)
            row = probe.attention_rows(last)[0]  # layer b's q/k on layer b-1's output, over the survivors
            scores = row[torch.searchsorted(probe.active, self.visual)]
            self.visual = self.visual[top_indices(scores, self.counts[stage], inverse=self.inverse)]
            self.kept = torch.sort(torch.cat([self.others, self.visual])).values
        if self.kept is None:
            return LayerOps()
        return LayerOps(attention=self.kept, mlp=self.kept)
