"""VisPruner: important tokens by [CLS] attention, then diverse tokens by duplicate removal.

Card: shared/docs/METHODS.md §2.7. Pre-LLM and text-agnostic. Per crop on LLaVA-NeXT (base view
and tiles) and per tile on InternVL3, as the official code does for LLaVA-NeXT; one pool on
LLaVA-1.5 and Qwen2.5-VL (whose [CLS] signal is the adapter's substitute, see docs).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from repro.budget import Budget
from repro.methods.base import Method, split_budget, top_indices, visual_tokens_for_budget
from repro.methods.registry import register
from repro.models.adapter import LAYOUT

log = logging.getLogger(__name__)
PER_CROP_FAMILIES = ("llava-next", "internvl3")


def vispruner_select(scores: Tensor, features: Tensor, n_keep: int, important_ratio: float,
                     *, inverse: bool = False) -> Tensor:
    """Positions (ascending) of the `n_keep` tokens VisPruner keeps out of one pool."""
    return torch.sort(torch.cat(vispruner_split(scores, features, n_keep, important_ratio, inverse=inverse))).values


def vispruner_split(scores: Tensor, features: Tensor, n_keep: int, important_ratio: float,
                    *, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """Positions of the important and of the diverse tokens VisPruner keeps out of one pool.

    The top `int(n_keep·r)` by score are important; the rest of the pool, in descending score
    order, is thinned by rounds that split it into even/odd list positions, find each even token's
    most similar odd token (cosine) and drop up to 8 of the most redundant evens, until the
    diverse budget is left. The official code needs an even residual; when it is odd, one more
    token is counted as important (LightCompress's fix).
    """
    n = scores.numel()
    n_keep = min(n_keep, n)
    n_important = int(n_keep * important_ratio)
    if (n - n_important) % 2 and n_important < n_keep:
        n_important += 1
        log.debug("VisPruner: odd residual, one more important token (%d)", n_important)
    order = torch.argsort(scores if inverse else -scores, stable=True)
    important, residual = order[:n_important], order[n_important:]
    n_diverse = n_keep - n_important
    unit = F.normalize(features.float(), dim=-1)
    while residual.numel() > n_diverse:
        if n_diverse == 0:
            residual = residual[:0]
            break
        step = min(8, residual.numel() - n_diverse)
        even, odd = residual[0::2], residual[1::2]
        redundancy = (unit[even] @ unit[odd].T).amax(-1)
        ranked = torch.argsort(redundancy, descending=True, stable=True)
        residual = torch.cat([even[ranked[step:]], odd])
    return important, residual


@register("vispruner", stage="pre-llm",
          knob="visual tokens kept = important + diverse (summed over crops/tiles where per crop)",
          reference="Zhang et al., ICCV 2025, arXiv 2412.01818; github.com/Theia-4869/VisPruner",
          variants={"inverse": "keep the least important tokens (sanity check, not a method)",
                    "per_crop": "False: one pool over all crops/tiles (the official code is per crop)"})
class VisPruner(Method):
    """Defaults: important ratio 0.5 and the layer the model reads features from."""

    positions = "contiguous"  # the official code feeds a shorter sequence (renumbered)
    token_groups = ("important", "diverse")  # meta["group"] 0 / 1; layout tokens count as 0

    def __init__(self, budget: Budget | None = None, *, important_ratio: float = 0.5, layer: int | None = None,
                 per_crop: bool = True, inverse: bool = False):
        super().__init__(budget)
        if budget is None:
            raise ValueError("VisPruner needs a budget (tokens:N, ratio:R or tflops:X)")
        if not 0 <= important_ratio <= 1:
            raise ValueError(f"important_ratio must be in [0, 1], got {important_ratio}")
        self.important_ratio, self.layer, self.per_crop, self.inverse = important_ratio, layer, per_crop, inverse

    def reduce(self, model, prepared, visual):
        patches = visual.patches
        n_keep = visual_tokens_for_budget(model, prepared, patches.numel(), self.budget)
        scores = visual.signals.cls_attention(self.layer)[patches]
        features = visual.signals.pre_projector()[patches]
        crops = visual.meta["crop"][patches]
        if not (self.per_crop and model.family in PER_CROP_FAMILIES):
            crops = torch.zeros_like(crops)
        pools = [(crops == c).nonzero().flatten() for c in torch.unique(crops)]
        group = torch.zeros_like(visual.meta["kind"])
        kept = []
        for pool, share in zip(pools, split_budget(n_keep, [p.numel() for p in pools])):
            important, diverse = vispruner_split(scores[pool], features[pool], share, self.important_ratio,
                                                 inverse=self.inverse)
            kept += [pool[important], pool[diverse]]
            group[patches[pool[diverse]]] = 1
        layout = (visual.meta["kind"] == LAYOUT).nonzero().flatten()  # newline tokens stay
        visual = replace(visual, meta={**visual.meta, "group": group})
        return visual.select(torch.sort(torch.cat([patches[torch.cat(kept)], layout])).values)
