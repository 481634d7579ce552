"""TRIM: CLIP image-text similarity, IQR selection, plus one mean token of the rest.

Card: docs/methods/trim.md (METHODS.md §2.11, §0.4). Pre-LLM, inside the CLIP tower.
σ = softmax over a crop's patches of the negated dot product between CLIP's image-side
embeddings of the patches and the CLIP text embedding of the question (77 tokens, not
normalised); keep the top n by σ (n from the IQR outliers of σ, or a fixed count) in sequence
order, plus the plain mean of the other patches' features; all go through the projector.

LLaVA-NeXT, faithfully (§0.4): the IQR ratio is pooled over every crop, and only the base crop's
selected tokens and its mean token reach the LLM (the official packing cuts the rest).
Qwen2.5-VL and InternVL3: relevance from the LLM's instruction embeddings (harness variant, as CDPruner).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.cdpruner import llm_instruction_embeds
from baselines.prumerge_plus import iqr_outliers
from baselines.visionzip import merged_output
from repro.budget import Budget
from repro.methods.base import Method, per_image_budgets, split_budget
from repro.methods.registry import register
from repro.models.adapter import PatchPool


def trim_scores(image_embeds: Tensor, text_embed: Tensor) -> Tensor:
    """σ = softmax_i(−e_i·t) over one crop's patches (fp32, nothing normalised)."""
    return (-(image_embeds.float() @ text_embed.float())).softmax(-1)


def trim_keep(sigma: Tensor, n_keep: int) -> Tensor:
    """Positions (ascending) of the `n_keep` largest σ; earlier tokens win ties."""
    return torch.sort(torch.argsort(-sigma, stable=True)[:n_keep]).values


def trim_merge(features: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """(kept features in sequence order, the plain mean of the others' features; zeros if none)."""
    rest = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    rest[keep] = False
    if not bool(rest.any()):
        return features[keep], features.new_zeros(features.shape[-1])
    # the reference's form, in the features' dtype: the masked sum over every token / the count
    mean = (features * rest[:, None].to(features.dtype)).sum(0) / rest.sum().to(features.dtype)
    return features[keep], mean


@register("trim", stage="pre-llm",
          knob="visual tokens per image incl. the mean token (fixed fraction); adaptive IQR when no budget",
          reference="Song et al., COLING 2025, arXiv 2409.10994; github.com/FreedomIntelligence/TRIM",
          variants={"base_crop_only": "False on LLaVA-NeXT: every crop keeps its tokens and mean token (harness); "
                                      "the official packing keeps the base crop's only",
                    "relevance": "'llm_embed': harness variant for towers without a CLIP text tower (Qwen2.5-VL, InternVL3)",
                    "text_tower": "a hub id or folder of the CLIP checkpoint (default: the model's registered one)"})
class TRIM(Method):
    """Defaults: adaptive IQR count without a budget (TRIM:-1), the mean token counted in a budget."""

    positions = "contiguous"
    requires = ("text_tower",)
    token_groups = ("selected", "mean")

    def __init__(self, budget: Budget | None = None, *, relevance: str | None = None, base_crop_only: bool = True,
                 text_tower: str | None = None):
        super().__init__(budget)
        if relevance not in (None, "clip", "llm_embed"):
            raise ValueError(f"relevance must be 'clip' or 'llm_embed', not {relevance!r}")
        self.relevance, self.base_crop_only, self.text_tower = relevance, base_crop_only, text_tower

    def _scores(self, model, prepared, pool: PatchPool, crops: list[Tensor]) -> Tensor:
        source = self.relevance or ("clip" if model.family in ("llava-1.5", "llava-next") else "llm_embed")
        if source == "llm_embed":
            text = F.normalize(llm_instruction_embeds(model, prepared.question).mean(0), dim=-1)
            image = F.normalize(pool.tokens.features.float(), dim=-1)
        else:
            tower = model.text_tower(self.text_tower)
            text = tower.embed(prepared.question.replace("<image>", " "))
            image = tower.image_embeds(pool.signals.post_norm(pool.pre_projector()))
        sigma = torch.zeros(len(pool.tokens), device=image.device)
        for crop in crops:
            sigma[crop] = trim_scores(image[crop], text)
        return sigma

    def reduce(self, model, prepared, visual):
        next_official = model.family == "llava-next" and self.base_crop_only
        pool = PatchPool(visual, full_crops=model.family == "llava-next")
        meta = pool.tokens.meta
        crops = pool.crops()
        sigma = self._scores(model, prepared, pool, crops)
        crop_image = [int(meta["image"][c[0]]) for c in crops]
        images = sorted(set(crop_image))
        used = [k for k, i in enumerate(crop_image)
                if not next_official or int(meta["crop"][crops[k][0]]) == min(
                    int(meta["crop"][crops[j][0]]) for j, i2 in enumerate(crop_image) if i2 == i)]
        counts: dict[int, int] = {}
        if self.budget is None:  # adaptive: the IQR ratio (pooled over an image's crops on NeXT)
            for img in images:
                mine = [k for k, i in enumerate(crop_image) if i == img]
                pooled = torch.cat([sigma[crops[k]] for k in mine]) if model.family == "llava-next" else None
                for k in mine:
                    s = pooled if pooled is not None else sigma[crops[k]]
                    counts[k] = int(crops[k].numel() * (iqr_outliers(s) / s.numel()))
        else:
            capacity = [sum(crops[k].numel() + 1 for k in used if crop_image[k] == img) for img in images]
            n_other = prepared.input_ids.numel() - len(visual)
            for img, n_keep in zip(images, per_image_budgets(model, prepared, capacity, self.budget, n_other=n_other)):
                mine = [k for k in used if crop_image[k] == img]
                for k, share in zip(mine, split_budget(n_keep, [crops[k].numel() + 1 for k in mine])):
                    counts[k] = share - 1  # the mean token counts in the budget (-1: nothing for this crop)
        pre = pool.pre_projector()
        rows = []
        for k in used:
            if counts.get(k, -1) < 0:
                continue
            crop = crops[k]
            keep = trim_keep(sigma[crop], counts[k])
            kept, mean = trim_merge(pre[crop], keep)
            rows += [((k, 0, r), int(crop[j]), f, 0) for r, (j, f) in enumerate(zip(keep.tolist(), kept))]
            rows.append(((k, 1, 0), int(crop[-1]), mean, 1))
        return merged_output(visual, pool, rows)
