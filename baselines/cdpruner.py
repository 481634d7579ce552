"""CDPruner: instruction-conditioned diversity by greedy MAP inference of a DPP.

Card: docs/methods/cdpruner.md (METHODS.md §2.8, §0.2, §0.9). Pre-LLM. Kernel L = diag(q)·S·diag(q):
S the cosine similarity of the projected visual tokens, q the instruction relevance: the negated
mean cosine between CLIP's image-side embeddings of the patches and CLIP text embeddings of the
instruction (77-token segments), min-max normalised over the whole sample. Greedy MAP by
incremental Cholesky, T steps. Per crop on LLaVA-NeXT (every patch of every crop, no newline
tokens, as the official code), per tile on InternVL3, per image elsewhere.

Qwen2.5-VL and InternVL3 have no CLIP text tower and no official code: their relevance is the
harness variant `relevance="llm_embed"` (the projected visual tokens against the LLM's own input
embeddings of the instruction tokens), labelled on the card.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.vispruner import packing_key
from repro.budget import Budget
from repro.methods.base import Method, per_image_budgets, split_budget
from repro.methods.registry import register
from repro.models.adapter import PatchPool

FORMAT_SUFFIXES = ("\nAnswer the question using a single word or phrase.",
                   "\nAnswer with the option's letter from the given choices directly.")
TINY_D2 = 1e-10  # FIX: floor of a non-positive residual before its square root (the reference has none)


def instruction_text(question: str) -> str:
    """The question without the answer-format suffix, as CDPruner's loaders pass it."""
    for suffix in FORMAT_SUFFIXES:
        if question.endswith(suffix):
            return question[: -len(suffix)]
    return question.replace("<image>", " ").strip() if "<image>" in question else question


def normalised_relevance(image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """q = minmax(mean_m(−cos(e_i, t_m))) with +1e-6 in the numerator, over all rows jointly."""
    rho = -(F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T).mean(-1)
    return (rho - rho.min() + 1e-6) / (rho.max() - rho.min())


def similarity(features: Tensor) -> Tensor:
    """Cosine similarity of the projected tokens: normalised in their own dtype, then fp32 (§0.2)."""
    unit = features / features.norm(dim=-1, keepdim=True)
    unit = unit.float()
    return unit @ unit.T


def dpp_greedy(kernel: Tensor, k: int) -> Tensor:
    """Greedy MAP of a DPP with kernel `kernel` (incremental Cholesky): `k` positions, ascending.
    Ties go to the earlier position; a residual ≤ 0 is floored at 1e-10 (FIX: the reference's NaN)."""
    n = kernel.shape[0]
    k = min(k, n)
    d2 = torch.diagonal(kernel).clone().double()
    chol = torch.zeros(k, n, dtype=torch.float64, device=kernel.device)
    chosen: list[int] = []
    kernel = kernel.double()
    for t in range(k):
        j = int(d2.argmax())
        chosen.append(j)
        residual = d2[j] if d2[j] > 0 else d2.new_tensor(TINY_D2)  # only a residual <= 0 is floored
        e = (kernel[j] - chol[:t, j] @ chol[:t]) / torch.sqrt(residual)
        chol[t] = e
        d2 = d2 - e * e
        d2[chosen] = float("-inf")
    return torch.sort(torch.tensor(chosen, dtype=torch.long, device=kernel.device)).values


def cdpruner_select(features: Tensor, relevance: Tensor, k: int) -> Tensor:
    """Positions (ascending) of the `k` tokens CDPruner keeps out of one pool."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    q = relevance.float()
    return dpp_greedy(q[:, None] * similarity(features) * q[None, :], k)


def llm_instruction_embeds(model, question: str) -> Tensor:
    """The LLM's input embeddings of the instruction's tokens (no template, no format suffix)."""
    ids = model.tokenizer(instruction_text(question), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if ids.numel() == 0:
        ids = torch.tensor([model.tokenizer.eos_token_id or 0])
    return model.adapter.decoder.embed_tokens(ids.to(model.adapter.device)).float()


@register("cdpruner", stage="pre-llm",
          knob="visual tokens kept per image (shared equally over crops/tiles where per crop)",
          reference="Zhang et al., NeurIPS 2025, arXiv 2506.10967; github.com/Theia-4869/CDPruner",
          variants={"relevance": "'llm_embed': harness variant (the LLM's instruction embeddings against the projected "
                                 "tokens), the default on Qwen2.5-VL/InternVL3 which have no CLIP text tower",
                    "full_crops": "False: LLaVA-NeXT's unpadded patches and newline tokens instead of every crop patch",
                    "text_tower": "a hub id or folder of the CLIP checkpoint (default: the model's registered one)"})
class CDPruner(Method):
    """Defaults: CLIP relevance where a CLIP text tower exists, per crop, every NeXT crop patch."""

    positions = "contiguous"
    requires = ("text_tower",)

    def __init__(self, budget: Budget | None = None, *, relevance: str | None = None, full_crops: bool = True,
                 per_crop: bool = True, text_tower: str | None = None):
        super().__init__(budget)
        if budget is None:
            raise ValueError("CDPruner needs a budget (tokens:N per image, ratio:R or tflops:X)")
        if relevance not in (None, "clip", "llm_embed"):
            raise ValueError(f"relevance must be 'clip' or 'llm_embed', not {relevance!r}")
        self.relevance, self.full_crops, self.per_crop, self.text_tower = relevance, full_crops, per_crop, text_tower

    def _relevance(self, model, prepared, pool: PatchPool) -> Tensor:
        source = self.relevance or ("clip" if model.family in ("llava-1.5", "llava-next") else "llm_embed")
        if source == "llm_embed":
            return normalised_relevance(pool.tokens.features, llm_instruction_embeds(model, prepared.question))
        tower = model.text_tower(self.text_tower)
        image = tower.image_embeds(pool.signals.post_norm(pool.pre_projector()))
        return normalised_relevance(image, tower.embed_segments(instruction_text(prepared.question)))

    def reduce(self, model, prepared, visual):
        pool = PatchPool(visual, full_crops=self.full_crops and model.family == "llava-next")
        meta = pool.tokens.meta
        relevance = self._relevance(model, prepared, pool)
        per_crop = self.per_crop and model.family in ("llava-next", "internvl3")
        crops = meta["crop"] if per_crop else meta["image"]
        images = pool.images()
        n_other = prepared.input_ids.numel() - len(visual) + len(pool.layout)
        budgets = per_image_budgets(model, prepared, [i.numel() for i in images], self.budget, n_other=n_other)
        kept = []
        for image, n_keep in zip(images, budgets):
            pools = [image[crops[image] == c] for c in torch.unique(crops[image])]
            for p, share in zip(pools, split_budget(n_keep, [q.numel() for q in pools])):
                kept.append(p[cdpruner_select(pool.tokens.features[p], relevance[p], share)])
        kept = torch.cat(kept) if kept else meta["index"][:0]
        if pool.full_crops:
            return pool.tokens.select(kept[torch.argsort(packing_key(meta)[kept])])
        return pool.with_layout(pool.tokens.select(torch.sort(kept).values))
