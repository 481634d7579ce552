"""VisPruner: important tokens by [CLS] attention, then diverse tokens by duplicate removal.

Card: docs/methods/vispruner.md (METHODS.md §2.7, §0.9-0.10). Pre-LLM and text-agnostic. T per
image (the official code runs one row per image). Per crop on LLaVA-NeXT (base view and tiles,
every patch including padding, no newline tokens, as the official code) and per tile on InternVL3;
one pool per image on LLaVA-1.5 and Qwen2.5-VL (whose [CLS] signal is the adapter's substitute).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from repro.budget import Budget
from repro.methods.base import Method, per_image_budgets, split_budget
from repro.methods.registry import register
from repro.models.adapter import PatchPool

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
    unit = F.normalize(features, dim=-1)  # in the features' dtype, as the reference (fp16 there)
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
          knob="visual tokens kept per image = important + diverse (shared equally over crops/tiles where per crop)",
          reference="Zhang et al., ICCV 2025, arXiv 2412.01818; github.com/Theia-4869/VisPruner",
          variants={"inverse": "keep the least important tokens (sanity check, not a method)",
                    "per_crop": "False: one pool over all crops/tiles (the official code is per crop)",
                    "full_crops": "False: choose among LLaVA-NeXT's unpadded patches and keep every newline token, "
                                  "uncounted (the official code uses all 576 patches of every crop, no newlines)"})
class VisPruner(Method):
    """Defaults: important ratio 0.5, the layer the model reads features from, and on LLaVA-NeXT
    the official packing: every patch of every crop is a candidate (padding included), no newline
    tokens, the base crop's kept tokens first and then the tiles' in raster order of the stitched grid."""

    positions = "contiguous"  # the official code feeds a shorter sequence (renumbered)
    token_groups = ("important", "diverse")  # meta["group"] 0 / 1; layout tokens count as 0

    def __init__(self, budget: Budget | None = None, *, important_ratio: float = 0.5, layer: int | None = None,
                 per_crop: bool = True, full_crops: bool = True, inverse: bool = False):
        super().__init__(budget)
        if budget is None:
            raise ValueError("VisPruner needs a budget (tokens:N, ratio:R or tflops:X)")
        if not 0 <= important_ratio <= 1:
            raise ValueError(f"important_ratio must be in [0, 1], got {important_ratio}")
        self.important_ratio, self.layer, self.per_crop, self.inverse = important_ratio, layer, per_crop, inverse
        self.full_crops = full_crops

    def reduce(self, model, prepared, visual):
        pool = PatchPool(visual, full_crops=self.full_crops and model.family == "llava-next")
        tokens, meta = pool.tokens, pool.tokens.meta
        scores = pool.cls_attention(self.layer).float().mean(-1)
        features = pool.pre_projector()
        crops = meta["crop"] if self.per_crop and model.family in PER_CROP_FAMILIES else meta["image"]
        n_other = prepared.input_ids.numel() - len(visual) + len(pool.layout)
        images = [(meta["image"] == i).nonzero().flatten() for i in torch.unique(meta["image"])]
        budgets = per_image_budgets(model, prepared, [i.numel() for i in images], self.budget, n_other=n_other)
        group = torch.zeros(len(tokens), dtype=torch.long, device=scores.device)
        kept = []
        for image, n_keep in zip(images, budgets):
            pools = [image[crops[image] == c] for c in torch.unique(crops[image])]
            for p, share in zip(pools, split_budget(n_keep, [q.numel() for q in pools])):
                important, diverse = vispruner_split(scores[p], features[p], share, self.important_ratio,
                                                     inverse=self.inverse)
                kept += [p[important], p[diverse]]
                group[p[diverse]] = 1
        kept = torch.cat(kept) if kept else group[:0]
        tokens = replace(tokens, meta={**meta, "group": group})
        if pool.full_crops:
            return tokens.select(kept[torch.argsort(packing_key(meta)[kept])])
        return pool.with_layout(tokens.select(torch.sort(kept).values))  # unpadded variant: newlines stay


def packing_key(meta: dict[str, Tensor]) -> Tensor:
    """Sort key of the official LLaVA-NeXT packing without unpadding, per image: the base crop's
    tokens in patch order, then the tiles' tokens in raster order of the stitched grid."""
    image, crop = meta["image"], meta["crop"]
    base = torch.zeros_like(crop)
    for i in torch.unique(image):
        base[image == i] = crop[image == i].min()
    is_tile = (crop != base).long()
    span = int(max(meta["row"].max(), meta["col"].max(), meta["patch"].max())) + 1
    within = torch.where(is_tile.bool(), meta["row"] * span + meta["col"], meta["patch"])
    return (image * 2 + is_tile) * span * span + within
