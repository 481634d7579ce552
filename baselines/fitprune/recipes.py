"""FitPrune's recipes: the official tables, their scaling to other models, FitPrune's own FLOPs
model, and the typed artifact of a fit on calibration data (methods/fitting.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from repro.errors import ReproError
from repro.models.cards import ArchCard
from repro.methods.fitting import Calibration, FitArtifact

REFERENCE_LAYERS, REFERENCE_VISUAL = 32, 576
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
OFFICIAL_REDUCTIONS = tuple(r for r in RECIPES if r)


def rescale(table: tuple[int, ...], n_visual_ref: int, n_layers: int, n_visual: int) -> list[int]:
    """Deletions per layer for a model `n_layers` deep with N visual tokens from a table written for
    len(table) layers and `n_visual_ref` tokens: reference layer l moves to ⌊l·L/L_ref⌋ and the
    cumulative deletions scale by N/N_ref (rounded down), so survivors keep the table's fractions.
    The identity when the shapes agree."""
    cumulative, total = [], 0
    for layer in range(n_layers):
        total += sum(d for ref, d in enumerate(table) if ref * n_layers // len(table) == layer)
        cumulative.append(total * n_visual // max(n_visual_ref, 1))
    return [b - a for a, b in zip([0] + cumulative, cumulative)]


def scaled_recipe(ratio: int, n_layers: int, n_visual: int) -> list[int]:
    """The official `ratio` % table on a model `n_layers` deep with N visual tokens."""
    return rescale(RECIPES[ratio], REFERENCE_VISUAL, n_layers, n_visual)


def visual_counts(recipe: list[int], n_visual: int) -> tuple[list[int], list[int]]:
    """(attention, MLP) visual counts per layer: layer l attends over n_l, its MLP runs n_l − δ_l."""
    attn, mlp, n = [], [], n_visual
    for d in recipe:
        attn.append(n)
        n = max(n - d, 0)
        mlp.append(n)
    return attn, mlp


# FitPrune's own FLOPs model (statistical_analysis.py `rest_flops`, `calculate_origin_flops`):
# multiply-adds of the visual tokens only, text ignored; dimensions from the config (FIX: the
# reference hard-codes LLaVA-1.5-7B's, and MHA).

def attention_cost(card: ArchCard, n: int) -> int:
    """q/k/v projections and the two attention products of n visual tokens."""
    return n * card.hidden * (card.d_q + 2 * card.d_kv) + 2 * n * n * card.d_q


def output_cost(card: ArchCard, n: int) -> int:
    """The output projection and the MLP of n visual tokens."""
    return n * card.d_q * card.hidden + 3 * n * card.hidden * card.mlp


def layer_cost(card: ArchCard, n: int) -> int:
    return attention_cost(card, n) + output_cost(card, n)


@dataclass(frozen=True)
class FitConfig:
    """Everything that changes a fit's result: the FLOPs reductions (%) to fit a recipe for (by
    default the official tables' set) and the bisection's α tolerance (0.01, as the reference)."""

    reductions: tuple[int, ...] = OFFICIAL_REDUCTIONS
    tolerance: float = 0.01

    def check(self) -> "FitConfig":
        bad = [r for r in self.reductions if isinstance(r, bool) or not isinstance(r, int) or not 0 < r < 100]
        if not self.reductions or bad:
            raise ReproError(f"fitprune reductions must be whole percentages in 1..99, got {list(self.reductions)}")
        if not 0 < self.tolerance < 0.5:
            raise ReproError(f"fitprune tolerance must be in (0, 0.5), got {self.tolerance!r}")
        return self


@dataclass(frozen=True)
class FittedRecipe:
    """One reduction's recipe: the bisection's α at its upper end (the side that meets the budget)
    and the deletions per layer; both None when no α reached the reduction on the calibration set."""

    reduction: int
    alpha: float | None
    deletions: tuple[int, ...] | None


@dataclass(frozen=True)
class RecipeArtifact(FitArtifact):
    """FitPrune's fitted recipes for one model; `n_visual` is the calibration set's mean visual count
    (the recipes' reference for rescaling to a sample with another count)."""

    schema: ClassVar[str] = "repro-fitprune-recipes"
    version: ClassVar[int] = 1

    model: str
    layers: int
    n_visual: int
    config: FitConfig
    calibration: Calibration
    recipes: tuple[FittedRecipe, ...]
    forward_passes: int = 0
    seconds: float = 0.0

    def tables(self) -> dict[int, tuple[int, ...]]:
        """The reachable recipes by reduction, with the empty 0 % recipe (the unpruned model)."""
        found = {r.reduction: r.deletions for r in self.recipes if r.deletions is not None}
        return {0: (0,) * self.layers, **dict(sorted(found.items()))}
