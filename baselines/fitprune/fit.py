"""FitPrune's offline fit: a per-layer deletion recipe per FLOPs reduction, from attention
statistics on calibration samples (statistical_analysis.py of ywh187/FitPrune; card §2.4).

1. The unpruned model gives each sample's attention mass per layer: W_cross (text rows onto the
   visual columns, mean over text rows) and W_self (the visual block, over n), head max.
2. For one α, every sample runs with the mass rule at every layer (`MassRule`): per criterion the
   longest prefix of the ascending order whose removal keeps at least (1 − α)·W_l of the mass; the
   tokens in both prefixes go. This trajectory does not depend on the reduction.
3. `walk` replays the reference's layer loop on the trajectories: at layer l it adds the attention
   cost at the current counts and forecasts the rest (FitPrune's FLOPs model, recipes.py); once the
   sample mean is within (1 − reduction)·unpruned it stops, and deletions from layer l on do not
   count. The recipe is δ_l = ⌊Σ_samples δ_l / samples⌋.
4. α is bisected on [0, 1] to the tolerance: reached → hi = mid, else lo = mid. Trajectories are
   cached per α, so every reduction shares the forward passes of the α values it visits.

Deviations (FIX): a criterion whose loop never breaks deletes all but its largest token (the
reference reuses a stale count; the card's "use 0" would make a larger α delete fewer tokens,
against the bisection's premise); the recipe returned is the one at hi, which meets the budget (the reference returns the
last bisection step's); counts and dimensions come from the sample and the config; the order is a
stable sort (ties: the earlier token) and the masses are fp32 sums (the reference's are fp16).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from baselines.fitprune.planner import FitPrunePlanner
from baselines.fitprune.recipes import (
    FitConfig,
    FittedRecipe,
    RecipeArtifact,
    attention_cost,
    layer_cost,
    output_cost,
)
from repro.errors import ReproError
from repro.methods.fitting import Calibration
from repro.models.cards import ArchCard


def deletable(values: Tensor, mass: float, alpha: float) -> Tensor:
    """Positions of the longest prefix of `values` in ascending order (stable) whose removal keeps
    at least (1 − α)·`mass`: the reference stops at the first i < n where the rest falls below and
    deletes i − 1. When the rest never falls below, its loop ends without a count and reuses a stale
    one; here all but the largest go (FIX: what the loop gives at i = n, and monotone in α)."""
    order = torch.argsort(values, stable=True)
    ranked = values[order]
    remaining = values.sum() - (torch.cumsum(ranked, 0) - ranked)  # left after deleting the first i
    below = torch.nonzero(remaining < mass - mass * alpha)
    count = max(int(below[0]) - 1, 0) if below.numel() else max(values.numel() - 1, 0)
    return order[:count]


class MassRule:
    """The fit's deletion rule at one α, recording each layer's deletions. Without `masses` it
    deletes nothing and records the masses (the unpruned pass of step 1)."""

    def __init__(self, alpha: float = 0.0, masses: list[tuple[float, float]] | None = None):
        self.alpha, self.masses = alpha, masses
        self.recorded: list[tuple[float, float]] = []
        self.deleted: dict[int, int] = {}

    def wants(self, layer: int) -> bool:
        return True

    def delete(self, layer: int, attention: Tensor, n_text: int) -> Tensor:
        n = attention.shape[1]
        cross = attention[n:].sum(0) / max(n_text, 1)
        self_ = attention[:n].sum(0) / n
        if self.masses is None:
            self.recorded.append((float(cross.sum()), float(self_.sum())))
            return cross.new_zeros(0, dtype=torch.long)
        w_cross, w_self = self.masses[layer]
        by_cross = deletable(cross, w_cross, self.alpha)
        by_self = deletable(self_, w_self, self.alpha)
        gone = torch.sort(by_cross[torch.isin(by_cross, by_self)]).values
        self.deleted[layer] = gone.numel()
        return gone


def walk(card: ArchCard, n_visual: list[int], deletions: list[dict[int, int]], reduction: int) -> tuple[bool, list[int]]:
    """The reference's layer loop for one α (step 3): whether the reduction was reached, and the
    recipe (mean deletions per layer, rounded down) up to where it stopped."""
    counts, samples = list(n_visual), len(n_visual)
    target = sum(card.layers * layer_cost(card, n) for n in n_visual) / samples * (1 - reduction / 100)
    tally, spent = [0] * card.layers, 0
    for layer in range(card.layers):
        spent += sum(attention_cost(card, n) for n in counts)
        rest = sum(output_cost(card, n) + (card.layers - 1 - layer) * layer_cost(card, n) for n in counts)
        if (spent + rest) / samples <= target:
            return True, [t // samples for t in tally]
        for s, deleted in enumerate(deletions):
            tally[layer] += deleted.get(layer, 0)
            counts[s] -= deleted.get(layer, 0)
            spent += output_cost(card, counts[s])
    return False, [t // samples for t in tally]


class CalibrationRun:
    """One calibration sample's assembled sequence, run under a rule."""

    def __init__(self, model, sample):
        prepared = model.prepare(sample.images, sample.question)
        self.model, self.seq = model, model.assemble(prepared, model.encode(prepared))
        if not self.seq.visual.numel():
            raise ReproError(f"fitprune fit: calibration sample {sample.id!r} has no visual tokens")

    def run(self, rule: MassRule) -> MassRule:
        self.model.engine.prefill(self.seq, FitPrunePlanner(self.seq, rule))
        return rule


def fit_recipes(model, samples, config: FitConfig, *, source: str = "", excluded: tuple[str, ...] = (),
                progress: bool = True) -> RecipeArtifact:
    """Fit one recipe per reduction of `config` on `samples` (steps 1-4)."""
    if not samples:
        raise ReproError("fitprune fit: no calibration samples")
    start = time.perf_counter()
    runs = [CalibrationRun(model, s) for s in samples]
    masses = [run.run(MassRule()).recorded for run in runs]
    n_visual = [int(run.seq.visual.numel()) for run in runs]
    trajectories: dict[float, list[dict[int, int]]] = {}

    def deletions(alpha: float) -> list[dict[int, int]]:
        if alpha not in trajectories:
            trajectories[alpha] = [run.run(MassRule(alpha, m)).deleted for run, m in zip(runs, masses)]
        return trajectories[alpha]

    recipes = []
    for reduction in config.reductions:
        lo, hi, best = 0.0, 1.0, None
        while hi - lo > config.tolerance + 1e-6:
            mid = (lo + hi) / 2
            reached, recipe = walk(model.card, n_visual, deletions(mid), reduction)
            if reached:
                hi, best = mid, tuple(recipe)
            else:
                lo = mid
        recipes.append(FittedRecipe(reduction, hi if best is not None else None, best))
        if progress:
            print(f"fitprune fit: {reduction}% -> " + (f"alpha {hi:.4f}, {sum(best)} deletions" if best
                                                      else "not reached on the calibration set"), flush=True)
    return RecipeArtifact(
        model=model.name, layers=model.card.layers, n_visual=round(sum(n_visual) / len(n_visual)), config=config,
        calibration=Calibration(source, tuple(s.id for s in samples), tuple(excluded)), recipes=tuple(recipes),
        forward_passes=len(runs) * (1 + len(trajectories)), seconds=time.perf_counter() - start)
