"""FitPrune: a fixed per-layer deletion recipe; which tokens, per sample, by head-max attention.

Card: docs/methods/fitprune.md (from shared/docs/METHODS.md §2.4, correction 1). At a layer whose
recipe deletes δ > 0 tokens, the layer's own attention runs on every current token; the head-max
attention map scores each visual token by (sum over the text rows) × (mean over the visual rows),
and the δ lowest lose their MLP and every later layer. Original positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from repro import flops
from repro.budget import Budget
from repro.engine import LayerOps, Sequence
from repro.errors import InfeasibleBudget
from repro.methods.base import Method, top_indices
from repro.methods.registry import register

REFERENCE_VISUAL = 576
# Deletions per layer of 32-layer LLaVA-1.5-7B for each --reduction_ratio (%), data copied from the
# official LLaVA_1.5/llava/model/language_model/modeling_llama.py (ywh187/FitPrune @ d28e418c92).
RECIPES: dict[int, tuple[int, ...]] = {
    0: (0,) * 32,
    10: (0, 0, 1, 2, 1, 0, 1, 4, 5, 5, 11, 4, 2, 2, 0, 0, 1, 1, 2, 4, 2, 10, 1, 1, 1, 2, 1, 1, 0, 1, 0, 0),
    20: (0, 0, 3, 3, 1, 1, 4, 16, 14, 15, 24, 4, 2, 3, 2, 0, 6, 0, 5, 13, 4, 19, 2, 1, 1, 1, 1, 1, 2, 1, 0, 0),
    30: (0, 0, 7, 6, 4, 5, 16, 40, 24, 21, 24, 4, 2, 3, 4, 0, 16, 0, 11, 26, 6, 32, 3, 1, 0, 1, 2, 2, 4, 0, 0, 0),
    40: (0, 1, 21, 13, 14, 11, 41, 53, 29, 15, 14, 5, 1, 4, 5, 1, 26, 1, 13, 28, 6, 27, 2, 1, 0, 0, 1, 1, 2, 0, 0, 0),
    50: (3, 7, 49, 24, 29, 17, 59, 41, 26, 8, 10, 6, 2, 5, 7, 2, 30, 3, 13, 27, 5, 23, 2, 1, 0, 0, 1, 1, 2, 0, 0, 0),
    55: (6, 17, 69, 31, 34, 19, 59, 30, 23, 6, 8, 7, 2, 5, 8, 2, 29, 4, 12, 25, 4, 19, 2, 1, 0, 0, 1, 0, 1, 0, 0, 0),
    60: (14, 33, 89, 36, 36, 20, 55, 21, 18, 4, 7, 5, 2, 5, 7, 4, 26, 5, 11, 24, 4, 18, 2, 1, 0, 0, 1, 0, 1, 0, 0, 0),
    70: (48, 79, 118, 41, 33, 17, 36, 9, 9, 2, 3, 2, 1, 3, 4, 8, 18, 7, 8, 20, 4, 13, 2, 1, 0, 0, 1, 0, 1, 0, 0, 0),
    80: (128, 127, 118, 35, 26, 8, 13, 3, 2, 1, 0, 0, 0, 2, 1, 8, 7, 8, 5, 11, 2, 6, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0),
    90: (262, 153, 80, 19, 13, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 1, 2, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0),
}
FIT_GAP = ("FitPrune's fitted recipe needs the generic calibration-fit step of the Method interface "
           "(issue 22), which is not in this build yet; use recipe='official' (the official tables)")


def scaled_recipe(ratio: int, n_layers: int, n_visual: int) -> list[int]:
    """Deletions per layer for a model `n_layers` deep with N visual tokens: the official table as
    is for 32 layers and N = 576; otherwise reference layer l moves to ⌊l·L/32⌋ and cumulative
    deletions scale by N/576 (rounded down), so survivors keep the table's fractions."""
    table = RECIPES[ratio]
    cumulative, total = [], 0
    for layer in range(n_layers):
        total += sum(d for ref, d in enumerate(table) if ref * n_layers // 32 == layer)
        cumulative.append(total * n_visual // REFERENCE_VISUAL)
    return [b - a for a, b in zip([0] + cumulative, cumulative)]


def visual_counts(recipe: list[int], n_visual: int) -> tuple[list[int], list[int]]:
    """(attention, MLP) visual counts per layer: layer l attends over n_l, its MLP runs n_l − δ_l."""
    attn, mlp, n = [], [], n_visual
    for d in recipe:
        attn.append(n)
        n = max(n - d, 0)
        mlp.append(n)
    return attn, mlp


def fitprune_scores(attention: Tensor, n_text: int) -> Tensor:
    """Cross × self score of each visual column from head-max attention rows (visual rows first,
    then text rows): Σ_text Â[t, j] · (1/n) Σ_visual Â[i, j]."""
    n_visual = attention.shape[0] - n_text
    cross = attention[n_visual:].sum(0)
    self_ = attention[:n_visual].sum(0) / max(n_visual, 1)
    return cross * self_


@register("fitprune", stage="in-llm",
          knob="official reduction table (0-90%): tokens:T takes the table nearest to a 1 - T/N "
               "reduction (64/128/192 of 576 -> 90/80/70)",
          reference="Ye et al., arXiv 2409.10197; github.com/ywh187/FitPrune @ d28e418c92",
          variants={"ratio": "the official table (%) when no budget (default 60: scripts/v1_5/eval/textvqa.sh)",
                    "recipe": "'official' (the repo's tables, default) or 'fitted' (needs the fit hook of issue 22; "
                              "a clear error until then)",
                    "inverse": "delete the highest-scored tokens (sanity check, not a method)"})
class FitPrune(Method):
    """Defaults: the official 60% table (the repository's evaluation script)."""

    def __init__(self, budget: Budget | None = None, *, ratio: int = 60, recipe: str = "official",
                 inverse: bool = False):
        super().__init__(budget)
        if recipe == "fitted":
            raise ValueError(FIT_GAP)
        if recipe != "official":
            raise ValueError(f"recipe must be 'official' or 'fitted', got {recipe!r}")
        if ratio not in RECIPES:
            raise ValueError(f"ratio must be one of the official tables {sorted(RECIPES)}, got {ratio!r}")
        self.ratio, self.inverse = ratio, inverse

    def planner(self, model, seq: Sequence) -> "FitPrunePlanner":
        n_layers, n_vis = model.card.layers, seq.visual.numel()
        return FitPrunePlanner(seq, scaled_recipe(self.choose(model, seq), n_layers, n_vis), self.inverse)

    def choose(self, model, seq: Sequence) -> int:
        """The table for this sample. tokens:T reads T as a visual-token reduction (1 − T/N) and
        takes the nearest table (ties: the milder), as the card maps 64/128/192 to 90/80/70;
        ratio/tflops take the mildest table whose paper FLOPs fit."""
        if self.budget is None:
            return self.ratio
        n_layers, n_vis, n_other = model.card.layers, seq.visual.numel(), seq.n_tokens - seq.visual.numel()
        if self.budget.kind == "tokens":
            target = 100 * (1 - min(self.budget.value, n_vis) / max(n_vis, 1))
            return min(sorted(RECIPES), key=lambda r: abs(r - target))

        def cost(ratio: int) -> float:
            attn, mlp = visual_counts(scaled_recipe(ratio, n_layers, n_vis), n_vis)
            return flops.prefill_flops(model.card, [flops.LayerTokens(n_other + a, n_other + a, n_other + m)
                                                    for a, m in zip(attn, mlp)], "paper")

        limit = self.budget.max_flops(cost(0))
        fits = [r for r in sorted(RECIPES) if cost(r) <= limit]
        if not fits:
            raise InfeasibleBudget(f"infeasible budget {self.budget} for FitPrune: even the 90% table exceeds it")
        return min(fits)  # the mildest table that fits: the most compute the budget allows


class FitPrunePlanner:
    """At each layer with deletions: attention on every current token, MLP on the survivors."""

    def __init__(self, seq: Sequence, recipe: list[int], inverse: bool):
        self.seq, self.recipe, self.inverse = seq, recipe, inverse
        self.others = seq.non_visual()
        self.visual = seq.visual
        end = int(seq.visual.max()) + 1 if seq.visual.numel() else seq.n_tokens
        self.text = torch.arange(end, seq.n_tokens, device=seq.visual.device)
        self.pruned = False

    def layer_ops(self, layer: int, probe) -> LayerOps:
        alive = torch.sort(torch.cat([self.others, self.visual])).values
        delete = min(self.recipe[layer], self.visual.numel())
        if delete:
            rows = torch.cat([self.visual, self.text])
            attention = probe.attention_rows(rows, reduce="max")[:, torch.searchsorted(probe.active, self.visual)]
            scores = fitprune_scores(attention, self.text.numel())
            gone = top_indices(scores, delete, inverse=not self.inverse)  # the lowest products go
            keep = torch.ones(self.visual.numel(), dtype=torch.bool, device=self.visual.device)
            keep[gone] = False
            self.visual = self.visual[keep]
            survivors = torch.sort(torch.cat([self.others, self.visual])).values
            was_pruned, self.pruned = self.pruned, True
            return LayerOps(attention=alive if was_pruned else None, mlp=survivors)
        if not self.pruned:
            return LayerOps()
        return LayerOps(attention=alive, mlp=alive)
