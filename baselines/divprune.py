"""DivPrune: keep a max-min diverse subset of the projected visual tokens.

Card: docs/methods/divprune.md (METHODS.md §2.9). Pre-LLM, text-agnostic, one global pool over
the whole visual span (LLaVA-NeXT newline tokens included, as the reference pools the packed
features), on the LLM-space (projected) tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from repro.budget import Budget
from repro.methods.base import Method, visual_tokens_for_budget
from repro.methods.registry import register


def divprune_select(features: Tensor, k: int, *, fp32: bool = True) -> Tensor:
    """Positions (ascending) of `k` tokens picked greedily by max-min cosine distance.

    First pick: the token farthest from its nearest neighbour (the second-smallest entry of its
    distance column, the smallest being its self-distance). Then, repeatedly, the token whose
    distance to the selected set (minimum over the set) is largest; ties go to the earlier token.
    Selected tokens are masked (FIX: with duplicate tokens the reference can pick one twice).
    """
    n = features.shape[0]
    if k <= 0 or n == 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    x = features.float() if fp32 else features
    unit = F.normalize(x, dim=-1)
    distance = 1 - unit @ unit.T
    first = int(torch.sort(distance, dim=0).values[1].argmax()) if n > 1 else 0
    chosen = [first]
    nearest = distance[first].clone()
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    taken[first] = True
    while len(chosen) < min(k, n):
        j = int(nearest.masked_fill(taken, float("-inf")).argmax())
        chosen.append(j)
        taken[j] = True
        nearest = torch.minimum(nearest, distance[j])
    return torch.sort(torch.tensor(chosen, device=features.device)).values


@register("divprune", stage="pre-llm", knob="visual tokens kept, one pool over the whole visual span",
          reference="Alvar et al., CVPR 2025, arXiv 2503.02175; github.com/vbdi/divprune",
          variants={"fp32_distances": "True: distances in fp32 (default: the features' dtype, as the reference)"})
class DivPrune(Method):
    """Defaults: the reference's SUBSET_RATIO 0.098 when no budget; distances in the features' dtype."""

    positions = "contiguous"  # the reference rebuilds a shorter sequence (renumbered)

    def __init__(self, budget: Budget | None = None, *, subset_ratio: float = 0.098, fp32_distances: bool = False):
        super().__init__(budget)
        if not 0 <= subset_ratio <= 1:
            raise ValueError(f"subset_ratio must be in [0, 1], got {subset_ratio}")
        self.subset_ratio, self.fp32_distances = subset_ratio, fp32_distances

    def reduce(self, model, prepared, visual):
        n = len(visual)
        if self.budget is None:
            k = int(round(self.subset_ratio * n))
        else:
            k = visual_tokens_for_budget(model, prepared, n, self.budget)
        return visual.select(divprune_select(visual.features, k, fp32=self.fp32_distances))
