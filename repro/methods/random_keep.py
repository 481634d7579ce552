"""Random visual-token dropping before the LLM: the floor every scoring method must beat."""

from __future__ import annotations

import torch

from repro.budget import Budget
from repro.methods.base import Method, visual_tokens_for_budget
from repro.methods.registry import register


@register("random", stage="pre-llm", knob="visual tokens kept (uniformly at random)", reference="harness baseline")
class RandomKeep(Method):
    """Keep a uniformly random subset of the visual tokens (layout tokens count as visual).

    `keep` (a fraction) or a budget sets how many; the subset is drawn from a generator seeded
    with `seed`, so runs are reproducible.
    """

    def __init__(self, budget: Budget | None = None, *, keep: float | None = None, seed: int = 0):
        super().__init__(budget)
        if (keep is None) == (budget is None):
            raise ValueError("give exactly one of a budget or keep=<fraction>")
        if keep is not None and not 0 <= keep <= 1:
            raise ValueError(f"keep must be a fraction in [0, 1], got {keep}")
        self.keep, self.seed = keep, seed

    def reduce(self, model, prepared, visual):
        n = len(visual)
        n_keep = round(self.keep * n) if self.keep is not None else visual_tokens_for_budget(model, prepared, n, self.budget)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return visual.select(torch.sort(order[:n_keep]).values)
