"""VisionZip: dominant tokens by [CLS] attention, contextual tokens merged from the rest.

Card: docs/methods/visionzip.md (METHODS.md §2.6). Pre-LLM, text-agnostic, per crop. Dominant:
[CLS] (where the model has one to feed) plus the top patches by [CLS] attention summed over heads.
Contextual: C targets taken by a fixed stride over the remaining tokens; every other remaining
token is averaged into its most key-similar target (cosine of head-averaged keys), and the
target's own feature is added. Merging happens on the vision features before the projector.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from repro.budget import Budget
from repro.methods.base import Method, per_image_budgets, split_budget
from repro.methods.registry import register
from repro.models.adapter import PatchPool

CONTEXTUAL_SHARE = 10 / 64  # the README's 54 + 10 split (108 + 20, 162 + 30, 27 + 5 per NeXT crop)


@dataclass
class ZipResult:
    dominant: Tensor  # positions of the dominant patches (sequence order)
    targets: Tensor  # positions of the contextual targets (target order)
    contextual: Tensor  # (C, d) merged contextual features: target + mean of its assigned tokens


def visionzip_crop(scores: Tensor, keys: Tensor, features: Tensor, n_dominant: int, n_contextual: int,
                   *, heads: int = 1) -> ZipResult:
    """One crop's VisionZip. `scores` (n,) [CLS] attention summed over heads; `keys` (n, heads·d_h)
    are averaged over `heads` before the cosine; `n_dominant` counts patches only (no [CLS]).

    Ties: the earlier token wins the dominant ranking and, as in the reference, a token equally
    similar to several targets goes to the first of them.
    """
    n = scores.numel()
    dominant = torch.sort(torch.argsort(-scores, stable=True)[:n_dominant]).values
    rest_mask = torch.ones(n, dtype=torch.bool, device=scores.device)
    rest_mask[dominant] = False
    rest = rest_mask.nonzero().flatten()
    if n_contextual == 0 or rest.numel() == 0:
        empty = rest[:0]
        return ZipResult(dominant, empty, features.new_zeros((0, features.shape[-1])))
    step = max(1, rest.numel() // n_contextual)
    target_slots = torch.arange(0, rest.numel(), step, device=scores.device)[:n_contextual]
    is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=scores.device)
    is_target[target_slots] = True
    unit = F.normalize(keys[rest].float().view(rest.numel(), heads, -1).mean(1), dim=-1)
    others = (~is_target).nonzero().flatten()
    assign = (unit[others] @ unit[target_slots].T).argmax(-1)  # first maximum on ties
    x = features[rest].float()
    sums = torch.zeros(target_slots.numel(), x.shape[-1], device=x.device).index_add_(0, assign, x[others])
    counts = torch.bincount(assign, minlength=target_slots.numel()).clamp(min=1)[:, None]
    contextual = x[target_slots] + sums / counts
    return ZipResult(dominant, rest[target_slots], contextual.to(features.dtype))


def split_dominant(n_keep: int, share: float = CONTEXTUAL_SHARE) -> tuple[int, int]:
    """(D, C) of a crop keeping `n_keep` tokens: C = round(n_keep·share), D = the rest."""
    contextual = int(round(n_keep * share))
    return n_keep - contextual, contextual


@register("visionzip", stage="pre-llm",
          knob="visual tokens per image = dominant (incl. [CLS]) + contextual, split 54:10, equal over crops",
          reference="Yang et al., CVPR 2025, arXiv 2412.04467; github.com/dvlab-research/VisionZip",
          variants={"full_crops": "False: choose among LLaVA-NeXT's unpadded patches and keep its newline tokens "
                                  "(the reference uses every patch of every crop, no newlines)",
                    "contextual_share": "share of contextual tokens (default 10/64)"})
class VisionZip(Method):
    """Defaults: the README's 54:10 split, layer = the one the model reads, full crops on NeXT."""

    positions = "contiguous"
    token_groups = ("dominant", "contextual")

    def __init__(self, budget: Budget | None = None, *, contextual_share: float = CONTEXTUAL_SHARE,
                 layer: int | None = None, full_crops: bool = True):
        super().__init__(budget)
        if budget is None:
            raise ValueError("VisionZip needs a budget (tokens:N per image, ratio:R or tflops:X)")
        if not 0 <= contextual_share < 1:
            raise ValueError(f"contextual_share must be in [0, 1), got {contextual_share}")
        self.contextual_share, self.layer, self.full_crops = contextual_share, layer, full_crops

    def reduce(self, model, prepared, visual):
        pool = PatchPool(visual, full_crops=self.full_crops and model.family == "llava-next")
        with_cls = model.family in ("llava-1.5", "llava-next")  # InternVL/Qwen: no LLM slot for [CLS]
        by_index = model.family == "llava-next" and not pool.full_crops  # the unpadded variant
        crops, meta = pool.crops(), pool.tokens.meta
        attention = pool.cls_attention(self.layer).float()
        scores, heads = attention.sum(-1), attention.shape[-1]
        keys, pre = pool.keys(self.layer), pool.pre_projector()
        cls_pre = visual.signals.cls_feature() if with_cls else None
        crop_image = [int(meta["image"][c[0]]) for c in crops]
        images = sorted(set(crop_image))
        capacity = [sum(c.numel() + with_cls for c, i in zip(crops, crop_image) if i == img) for img in images]
        n_other = prepared.input_ids.numel() - len(visual) + len(pool.layout)
        per_image = per_image_budgets(model, prepared, capacity, self.budget, n_other=n_other)
        rows = []  # (order key, anchor position, pre-projector feature, group)
        for img, n_keep in zip(images, per_image):
            mine = [k for k, i in enumerate(crop_image) if i == img]
            for rank, (k, share) in enumerate(zip(mine, split_budget(n_keep, [crops[k].numel() + with_cls for k in mine]))):
                crop = crops[k]
                n_dom, n_ctx = split_dominant(share, self.contextual_share)
                z = visionzip_crop(scores[crop], keys[crop], pre[crop], n_dom - (with_cls and n_dom > 0), n_ctx,
                                   heads=heads)
                tile = rank > 0 and pool.full_crops  # official NeXT packing of the tiles (card)
                key = partial(_order_key, meta, by_index, tile, img, rank)
                if with_cls and n_dom > 0:
                    rows.append((key(0, 0, int(crop[0])), int(crop[0]), cls_pre[int(meta["crop"][crop[0]])], 0))
                for j in z.dominant.tolist():
                    rows.append((key(1, j, int(crop[j])), int(crop[j]), pre[crop[j]], 0))
                for t, target in enumerate(z.targets.tolist()):
                    rows.append((key(2, t, int(crop[target])), int(crop[target]), z.contextual[t], 1))
        return merged_output(visual, pool, rows)


def _order_key(meta, by_index: bool, tile: bool, img: int, rank: int, sub: int, pos: int, p: int) -> tuple:
    """Where a VisionZip output row goes (sub 0 [CLS], 1 dominant, 2 contextual; `p` its anchor)."""
    if by_index:  # the unpadded NeXT variant: sequence order
        return (int(meta["index"][p]), sub)
    if not tile:  # base crop / single crop / tile of a family without the NeXT packing
        return (img, 0, rank, sub, pos)
    if sub == 1:  # tiles' dominant patches: raster order over the stitched grid
        return (img, 1, int(meta["row"][p]), int(meta["col"][p]), 0)
    return (img, 2 if sub == 0 else 3, rank, pos, 0)  # then the tiles' [CLS], then their contextual


def merged_output(visual, pool: PatchPool, rows: list[tuple]):
    """VisualTokens from (order key, anchor, pre-projector feature, group) rows: sorted by key,
    projected with the model's projector; the pool's layout tokens (if any) join in index order."""
    rows = sorted(rows, key=lambda r: r[0])
    device = pool.tokens.meta["index"].device
    idx = torch.tensor([r[1] for r in rows], dtype=torch.long, device=device)
    pre = torch.stack([r[2] for r in rows]) if rows else pool.pre_projector()[:0]
    out = pool.tokens.merge(idx, visual.signals.project(pre))
    out.meta = {**out.meta, "group": torch.tensor([r[3] for r in rows], dtype=torch.long, device=device)}
    return pool.with_layout(out) if len(pool.layout) else out
