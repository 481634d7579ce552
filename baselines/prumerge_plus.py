"""PruMerge+: IQR outliers of [CLS] attention plus spatially sampled tokens, the rest merged in.

Card: docs/methods/prumerge_plus.md (METHODS.md §2.10). Pre-LLM, text-agnostic, per crop. Scores:
one softmax of the [CLS] query against all keys over the full width of the last CLIP layer's
projections (the layer after the one LLaVA reads); keys for merging from the same layer; merged
features are the features LLaVA reads, before the projector. Each kept token adds its 32 most
key-similar tokens weighted by their raw [CLS] attention, and one extra token carries the
attention-weighted sum of every token not kept.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.visionzip import merged_output
from repro.budget import Budget
from repro.methods.base import Method, per_image_budgets, split_budget
from repro.methods.registry import register
from repro.models.adapter import PatchPool

log = logging.getLogger(__name__)
NEIGHBOURS = 32


def iqr_outliers(scores: Tensor) -> int:
    """How many scores lie above Q3 + 1.5·IQR (quartiles by linear interpolation, numpy's default)."""
    q1, q3 = torch.quantile(scores.double(), torch.tensor([0.25, 0.75], dtype=torch.float64, device=scores.device))
    return int((scores.double() > q3 + 1.5 * (q3 - q1)).sum())


def prumerge_plus_keep(scores: Tensor, n_keep: int | None = None) -> Tensor:
    """Positions kept, in the reference's order: attention picks (descending), then the spatial
    samples (ascending). Adaptive (`n_keep=None`): the IQR outliers plus every Δ-th position below
    n−1 not already picked, Δ = int(int(1/ϱ)/3), ϱ = outliers/n. Fixed: the IQR set (or its top
    `n_keep`), filled to exactly `n_keep` by stride int(n/n_keep) and then by attention.

    FIX: with no outliers the reference divides by zero; the top token counts as the one outlier.
    """
    n = scores.numel()
    order = torch.argsort(-scores.float(), stable=True)
    n_out = iqr_outliers(scores)
    if n_keep is None:
        if n_out == 0:
            log.debug("PruMerge+: no IQR outlier; keeping the top token as one")
        n_out = max(1, n_out)
        picks = order[:n_out]
        delta = max(1, int(int(n / n_out) / 3))  # FIX: a ratio above 1/3 gives a zero stride
        samples = [p for p in range(0, n - 1, delta) if p not in set(picks.tolist())]
        return torch.cat([picks, torch.tensor(samples, dtype=torch.long, device=scores.device)])
    if n_keep == 0:
        return order[:0]
    if n_out >= n_keep:
        return order[:n_keep]
    chosen = order[:n_out].tolist()
    taken = set(chosen)
    for p in range(0, n, max(1, n // n_keep)):
        if len(chosen) == n_keep:
            break
        if p not in taken:
            chosen.append(p)
            taken.add(p)
    chosen += [p for p in order.tolist() if p not in taken][: n_keep - len(chosen)]
    return torch.tensor(chosen, dtype=torch.long, device=scores.device)


def prumerge_plus_merge(scores: Tensor, keys: Tensor, features: Tensor, keep: Tensor,
                        neighbours: int = NEIGHBOURS) -> tuple[Tensor, Tensor]:
    """(merged features of the kept tokens in `keep` order, the extra token). Kept token i becomes
    F_i + Σ a_j F_j over its `neighbours` most key-similar other tokens (kept or not; cosine;
    earlier tokens win ties); the extra token is Σ a_j F_j over the tokens not kept."""
    unit = F.normalize(keys.float(), dim=-1)
    x, a = features.float(), scores.float()
    sims = unit[keep] @ unit.T
    sims[torch.arange(keep.numel()), keep] = float("-inf")
    k = min(neighbours, scores.numel() - 1)
    near = torch.sort(torch.argsort(-sims, dim=-1, stable=True)[:, :k], dim=-1).values
    merged = x[keep] + (a[near][..., None] * x[near]).sum(1)
    rest = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    rest[keep] = False
    extra = (a[rest][:, None] * x[rest]).sum(0)
    return merged.to(features.dtype), extra.to(features.dtype)


@register("prumerge_plus", stage="pre-llm",
          knob="visual tokens per image incl. one extra merged token per crop (mode='fixed'); adaptive by default",
          reference="Shang et al., ICCV 2025, arXiv 2403.15388; github.com/42Shawn/LLaVA-PruMerge",
          variants={"mode": "'fixed': exactly the budget (IQR set filled by stride); the reference is adaptive",
                    "full_crops": "False: LLaVA-NeXT's unpadded patches and newline tokens instead of every crop patch"})
class PruMergePlus(Method):
    """Defaults: adaptive count (the reference), 32 neighbours, the last vision layer's q/k."""

    positions = "contiguous"
    token_groups = ("kept", "extra")

    def __init__(self, budget: Budget | None = None, *, mode: str = "adaptive", neighbours: int = NEIGHBOURS,
                 layer: int | None = None, full_crops: bool = True):
        super().__init__(budget)
        if mode not in ("adaptive", "fixed"):
            raise ValueError(f"mode must be 'adaptive' or 'fixed', not {mode!r}")
        if mode == "adaptive" and budget is not None:
            raise ValueError("PruMerge+ is adaptive by default (it chooses its own count); pass mode='fixed' "
                             "to meet a budget")
        if mode == "fixed" and budget is None:
            raise ValueError("PruMerge+ mode='fixed' needs a budget (tokens:N per image, ratio:R or tflops:X)")
        if neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {neighbours}")
        self.mode, self.neighbours, self.layer, self.full_crops = mode, neighbours, layer, full_crops

    def _scores(self, pool: PatchPool, model) -> tuple[Tensor, Tensor]:
        if model.family in ("llava-1.5", "llava-next"):
            layer = self.layer if self.layer is not None else pool.signals.default_layer() + 1
            return pool.cls_attention_one_head(layer), pool.keys(layer)
        # harness: towers without the reference's layer use the model's [CLS] (or substitute) signal
        return pool.cls_attention(self.layer).float().mean(-1), pool.keys(self.layer)

    def reduce(self, model, prepared, visual):
        pool = PatchPool(visual, full_crops=self.full_crops and model.family == "llava-next")
        crops, meta = pool.crops(), pool.tokens.meta
        scores, keys = self._scores(pool, model)
        pre = pool.pre_projector()
        crop_image = [int(meta["image"][c[0]]) for c in crops]
        images = sorted(set(crop_image))
        shares: list[int | None] = [None] * len(crops)
        if self.mode == "fixed":
            capacity = [sum(crops[k].numel() + 1 for k, i in enumerate(crop_image) if i == img) for img in images]
            n_other = prepared.input_ids.numel() - len(visual) + len(pool.layout)
            for img, n_keep in zip(images, per_image_budgets(model, prepared, capacity, self.budget, n_other=n_other)):
                mine = [k for k, i in enumerate(crop_image) if i == img]
                for k, share in zip(mine, split_budget(n_keep, [crops[k].numel() + 1 for k in mine])):
                    shares[k] = share - 1  # the extra token counts in the budget (-1: crop gets nothing)
        by_index = model.family == "llava-next" and not pool.full_crops
        rows = []
        for k, crop in enumerate(crops):
            if shares[k] == -1:
                continue
            keep = prumerge_plus_keep(scores[crop], shares[k])
            merged, extra = prumerge_plus_merge(scores[crop], keys[crop], pre[crop], keep, self.neighbours)
            for rank, (j, f) in enumerate(zip(keep.tolist(), merged)):
                p = int(crop[j])
                rows.append(((int(meta["index"][p]), 0) if by_index else (k, rank), p, f, 0))
            last = int(crop[-1])
            rows.append(((int(meta["index"][last]), 1) if by_index else (k, keep.numel()), last, extra, 1))
        return merged_output(visual, pool, rows)
