"""FitPrune: a per-layer deletion recipe, chosen per FLOPs reduction; which tokens, per sample, by
head-max attention.

Card: docs/methods/fitprune.md (from shared/docs/METHODS.md §2.4, correction 1). At a layer whose
recipe deletes δ > 0 tokens, the layer's own attention runs on every current token; the head-max
attention map scores each visual token by (sum over the text rows) × (mean over the visual rows),
and the δ lowest lose their MLP and every later layer. Original positions.

Recipes: the official tables (recipes.py, the default), or recipes fitted on calibration data
through the fit hook (fit.py; a sweep entry's `search:` or `artifact=`).
"""

from __future__ import annotations

from pathlib import Path

from baselines.fitprune.fit import fit_recipes
from baselines.fitprune.planner import FitPrunePlanner, RecipeRule, fitprune_scores
from baselines.fitprune.recipes import (
    RECIPES,
    REFERENCE_VISUAL,
    FitConfig,
    RecipeArtifact,
    rescale,
    scaled_recipe,
    visual_counts,
)
from repro import flops
from repro.budget import Budget
from repro.engine import Sequence
from repro.errors import InfeasibleBudget, ReproError
from repro.methods.base import Method
from repro.methods.fitting import as_artifact
from repro.methods.registry import register

__all__ = ["FitPrune", "FitPrunePlanner", "RecipeRule", "RecipeArtifact", "FitConfig", "RECIPES",
           "fitprune_scores", "scaled_recipe", "visual_counts"]
RECIPE_KINDS = ("official", "fitted")
FIT_KEYS = ("reductions", "tolerance")


@register("fitprune", stage="in-llm",
          knob="reduction table: tokens:T takes the table nearest to a 1 - T/N reduction (64/128/192 of 576 -> "
               "90/80/70); ratio:/tflops: the mildest table that fits",
          reference="Ye et al., arXiv 2409.10197; github.com/ywh187/FitPrune @ d28e418c92",
          variants={"ratio": "the table (%) when no budget (default 60: scripts/v1_5/eval/textvqa.sh)",
                    "recipe": "'official' (the repo's LLaVA-1.5-7B tables, rescaled to other models; default) or "
                              "'fitted' (recipes fitted on this model: `search:` in a sweep, or artifact=PATH)",
                    "inverse": "delete the highest-scored tokens (sanity check, not a method)"})
class FitPrune(Method):
    """Defaults: the official 60% table (the repository's evaluation script)."""

    artifact_type = RecipeArtifact

    def __init__(self, budget: Budget | None = None, *, ratio: int = 60, recipe: str | None = None,
                 artifact: str | Path | RecipeArtifact | None = None, inverse: bool = False):
        super().__init__(budget)
        recipe = recipe or ("fitted" if artifact is not None else "official")
        if recipe not in RECIPE_KINDS:
            raise ValueError(f"recipe must be 'official' or 'fitted', got {recipe!r}")
        if recipe == "fitted" and artifact is None:
            raise ValueError("recipe='fitted' needs a fit on this model: give the sweep entry "
                             "`search: {calibration: ..., samples: N}`, or artifact=PATH of a stored fit")
        if recipe == "official" and artifact is not None:
            raise ValueError("artifact= holds fitted recipes; drop recipe='official' or the artifact")
        self.artifact = as_artifact(RecipeArtifact, artifact) if artifact is not None else None
        known = self.artifact.tables() if self.artifact is not None else RECIPES
        if ratio not in known and (budget is None or self.artifact is None):  # used only without a budget
            raise ValueError(f"ratio must be one of the {recipe} tables {sorted(known)}, got {ratio!r}")
        self.ratio, self.inverse = ratio, inverse

    # ------------------------------------------------------------------ the fit hook (methods/fitting.py)

    @classmethod
    def fit_config(cls, options: dict, fit: dict) -> FitConfig:
        unknown = sorted(set(fit) - set(FIT_KEYS))
        if unknown:
            raise ReproError(f"unknown fitprune search key(s) {', '.join(unknown)}; allowed: calibration, samples, "
                             f"{', '.join(FIT_KEYS)}")
        if options.get("recipe", "fitted") != "fitted":
            raise ReproError(f"recipe={options['recipe']!r} contradicts `search:` (a fit makes fitted recipes)")
        reductions = fit.get("reductions", FitConfig.reductions)
        if not isinstance(reductions, (list, tuple)):
            raise ReproError(f"fitprune reductions must be a list of percentages, got {reductions!r}")
        config = FitConfig(tuple(sorted(set(reductions))), fit.get("tolerance", FitConfig.tolerance)).check()
        if "ratio" in options and options["ratio"] not in (0, *config.reductions):
            raise ReproError(f"ratio={options['ratio']!r} is not among the fitted reductions {list(config.reductions)}")
        return config

    @classmethod
    def fit(cls, model, samples, config: FitConfig, *, source: str = "", excluded=(), budgets=(),
            progress: bool = True) -> RecipeArtifact:
        """The reference's offline fit (fit.py); `budgets` are not needed: the tables serve every budget."""
        return fit_recipes(model, samples, config, source=source, excluded=tuple(excluded), progress=progress)

    # ------------------------------------------------------------------ running a recipe

    def tables(self, model, n_visual: int) -> dict[int, list[int]]:
        """Deletions per layer of every table, for this model and a sample with N visual tokens."""
        if self.artifact is not None and self.artifact.model != model.name:
            raise ReproError(f"these FitPrune recipes were fitted on {self.artifact.model!r}, not {model.name!r}; "
                             "fit this model (a `search:` entry), or use recipe='official'")
        return self.tables_for(model.card.layers, n_visual)

    def tables_for(self, n_layers: int, n_visual: int) -> dict[int, list[int]]:
        if self.artifact is None:
            return {r: rescale(t, REFERENCE_VISUAL, n_layers, n_visual) for r, t in RECIPES.items()}
        return {r: rescale(t, self.artifact.n_visual, n_layers, n_visual) for r, t in self.artifact.tables().items()}

    def planner(self, model, seq: Sequence) -> FitPrunePlanner:
        tables = self.tables(model, seq.visual.numel())
        return FitPrunePlanner(seq, RecipeRule(tables[self.choose(model, seq, tables)], self.inverse))

    def min_flops(self, card, n_visual: int, n_other: int) -> int:
        """The strongest table it has (the official 90 %, or the largest reachable fitted one)."""
        tables = self.tables_for(card.layers, n_visual)
        return table_flops(card, tables[max(tables)], n_visual, n_other)

    def choose(self, model, seq: Sequence, tables: dict[int, list[int]]) -> int:
        """The table for this sample. tokens:T reads T as a visual-token reduction (1 − T/N) and
        takes the nearest table (ties: the milder), as the card maps 64/128/192 to 90/80/70;
        ratio/tflops take the mildest table whose paper FLOPs fit."""
        if self.budget is None:
            return self.ratio
        n_vis = seq.visual.numel()
        if self.budget.kind == "tokens":
            target = 100 * (1 - min(self.budget.value, n_vis) / max(n_vis, 1))
            return min(sorted(tables), key=lambda r: abs(r - target))
        n_other = seq.n_tokens - n_vis
        limit = self.budget.max_flops(table_flops(model.card, tables[0], n_vis, n_other))
        fits = [r for r in sorted(tables) if table_flops(model.card, tables[r], n_vis, n_other) <= limit]
        if not fits:
            raise InfeasibleBudget(f"infeasible budget {self.budget} for FitPrune: even the {max(tables)}% table "
                                   "exceeds it")
        return min(fits)  # the mildest table that fits: the most compute the budget allows


def table_flops(card, recipe: list[int], n_visual: int, n_other: int) -> int:
    """Paper-convention prefill FLOPs of a recipe: layer l attends over n_l visual tokens, its MLP
    runs n_l − δ_l."""
    attn, mlp = visual_counts(recipe, n_visual)
    return flops.prefill_flops(card, [flops.LayerTokens(n_other + a, n_other + a, n_other + m)
                                      for a, m in zip(attn, mlp)], "paper")
