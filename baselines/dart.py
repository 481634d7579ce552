"""DART: keep pivots and the visual tokens least similar to them (duplicates go) after layer K−1.

Card: docs/methods/dart.md (from shared/docs/METHODS.md §2.5). Pivots are the 4 visual and 4
text tokens with the largest L1 norm of their layer-(K−1) post-RoPE keys; each pivot, in the
iteration order of a Python set of their sequence indices, takes the ⌊T/8⌋ remaining visual
candidates least cosine-similar to it, on layer K−1's output through the model's final norm.
Layers ≥ K run the prefix, the kept visual tokens and the text at their original positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from repro import flops
from repro.budget import Budget, solve_knob
from repro.engine import LayerOps, Sequence
from repro.errors import ReproError
from repro.methods.base import Method, top_indices
from repro.methods.registry import register
from baselines.fastv import fastv_layers


def dart_count(n_visual: int, t: int, n_image_pivots: int, n_pivots: int, *, next_mode: bool = False) -> int:
    """Visual tokens DART keeps for knob T: image pivots + n_pivots·⌊T'/n_pivots⌋ picks, where
    T' = min(T, N − image pivots) on LLaVA-NeXT, capped by the candidates there are."""
    n_img = min(n_image_pivots, n_visual)
    if t >= n_visual:
        return n_visual  # a budget of every visual token keeps them all (harness rule, see card)
    quota = per_pivot_quota(n_visual, t, n_img, n_pivots, next_mode=next_mode)
    return n_img + min(n_visual - n_img, n_pivots * quota)


def per_pivot_quota(n_visual: int, t: int, n_image_pivots: int, n_pivots: int, *, next_mode: bool = False) -> int:
    """k = ⌊T / (4 + 4)⌋ (the reference divides by 8 = image + text pivots)."""
    if next_mode:
        t = min(t, n_visual - n_image_pivots)
    return max(t, 0) // max(n_pivots, 1)


def pivot_order(pivots: list[int], order: str) -> list[int]:
    """The order pivots pick in: the reference iterates a Python set built from [image…, text…]
    (KEEP: hash order of the ints, not sorted); `sorted` is the OPTION."""
    return sorted(pivots) if order == "sorted" else list(set(pivots))


def ranked(scores: Tensor, k: int, inverse: bool = False) -> Tensor:
    """Positions of the k highest scores in rank order (ties: the earlier), as `topk` lists them:
    the order the pivots enter the reference's set, which decides its iteration order when two
    ints share a hash slot."""
    return torch.argsort(scores if inverse else -scores, stable=True)[:k]


def dart_select(key_norms: Tensor, states: Tensor, visual: Tensor, text: Tensor, quota: int, *,
                n_image_pivots: int = 4, n_text_pivots: int = 4, order: str = "python_set",
                inverse: bool = False) -> Tensor:
    """Sequence indices (ascending) of the visual tokens DART keeps.

    key_norms: (N,) L1 norms of every token's keys; states: (N, d) normed hidden states;
    visual/text: sequence indices of the visual tokens and of the tokens after the span.
    `inverse` takes the lowest-norm pivots and the most similar candidates (sanity variant).
    """
    img_piv = visual[ranked(key_norms[visual], n_image_pivots, inverse)]
    txt_piv = text[ranked(key_norms[text], n_text_pivots, inverse)]
    unit = F.normalize(states.float(), dim=-1)
    order_ = pivot_order(img_piv.tolist() + txt_piv.tolist(), order)
    sims_all = unit[visual] @ unit[order_].T  # (N, pivots): one product, counted as probe cost
    candidate = ~torch.isin(visual, img_piv)
    picked = [img_piv]
    for col in range(len(order_)):
        pool = candidate.nonzero().flatten()
        if not pool.numel() or quota == 0:
            break
        sims = sims_all[pool, col]
        take = pool[top_indices(sims, min(quota, pool.numel()), inverse=not inverse)]  # least similar
        candidate[take] = False
        picked.append(visual[take])
    return torch.sort(torch.cat(picked)).values


@register("dart", stage="in-llm",
          knob="visual tokens T after layer K (K=2): realized 4 + 8⌊T/8⌋ (NeXT: T' = min(T, N-4))",
          reference="Wen et al., EMNLP 2025, arXiv 2502.11494; github.com/ZichenWen1/DART "
                    "(vendored in Chenfei-Liao/VTC-Bench @ 983e443ebb)",
          variants={"k": "pruning layer K (default 2)",
                    "reduction_ratio": "T = N·(1 − ratio) when no budget (default 0.778, the scripts' value)",
                    "retain_next": "LLaVA-NeXT T when no budget (default 320: the official v1_6 runs)",
                    "pivot_order": "'python_set' (reference) or 'sorted'",
                    "pivot_image/pivot_text": "pivots per kind (default 4 and 4; the quota is T / their sum)",
                    "inverse": "lowest-norm pivots, most similar picks (sanity check, not a method)"})
class DART(Method):
    """Defaults: K = 2, 4 image + 4 text pivots, the official scripts' T."""

    def __init__(self, budget: Budget | None = None, *, k: int = 2, reduction_ratio: float = 0.778,
                 retain_next: int = 320, pivot_image: int = 4, pivot_text: int = 4,
                 pivot_order: str = "python_set", inverse: bool = False):
        super().__init__(budget)
        if k < 1:
            raise ValueError(f"DART needs K >= 1 (its pivots come from layer K-1), got {k}")
        if not 0 <= reduction_ratio <= 1:
            raise ValueError(f"reduction_ratio must be in [0, 1], got {reduction_ratio}")
        if pivot_order not in ("python_set", "sorted"):
            raise ValueError(f"pivot_order must be 'python_set' or 'sorted', got {pivot_order!r}")
        if min(pivot_image, pivot_text) < 0 or pivot_image + pivot_text == 0 or retain_next < 0:
            raise ValueError("pivot counts and retain_next must be >= 0, with at least one pivot")
        self.k, self.reduction_ratio, self.retain_next = k, reduction_ratio, retain_next
        self.pivot_image, self.pivot_text, self.order, self.inverse = pivot_image, pivot_text, pivot_order, inverse

    def planner(self, model, seq: Sequence) -> "DARTPlanner":
        if self.k >= model.card.layers:
            raise ReproError(f"DART K={self.k} must be below the model's {model.card.layers} layers")
        next_mode = model.family == "llava-next"
        n_vis = seq.visual.numel()
        n_text = seq.n_tokens - 1 - int(seq.visual.max()) if n_vis else 0
        n_pivots = min(self.pivot_image, n_vis) + min(self.pivot_text, n_text)
        t = self.knob(model, seq, n_pivots, next_mode)
        quota = per_pivot_quota(n_vis, t, min(self.pivot_image, n_vis), n_pivots, next_mode=next_mode)
        if t >= n_vis:
            quota = n_vis  # every candidate is picked: the full budget is the unpruned model
        return DARTPlanner(seq, self.k, quota, self)

    def min_flops(self, card, n_visual: int, n_other: int) -> int:
        """T = 0 from layer K on: the image pivots alone."""
        dropped = n_visual - dart_count(n_visual, 0, self.pivot_image, self.pivot_image + self.pivot_text)
        k = min(self.k, card.layers)
        return flops.prefill_flops(card, fastv_layers(card.layers, k, n_other + n_visual, dropped), "paper")

    def knob(self, model, seq: Sequence, n_pivots: int, next_mode: bool) -> int:
        """T for this sample: the budget's, solved on the realized count, or the scripts' default."""
        n_vis, n = seq.visual.numel(), seq.n_tokens
        if self.budget is None:
            return self.retain_next if next_mode else int(n_vis * (1 - self.reduction_ratio))
        if self.budget.kind == "tokens":
            return int(self.budget.value)

        def cost(t: int) -> float:
            kept = dart_count(n_vis, t, self.pivot_image, n_pivots, next_mode=next_mode)
            return flops.prefill_flops(model.card, fastv_layers(model.card.layers, self.k, n, n_vis - kept), "paper")

        return solve_knob(range(n_vis + 1), cost, self.budget.max_flops(cost(n_vis)))


class DARTPlanner:
    """Full layers before K; key norms at K−1; the duplicate-free set from K on."""

    def __init__(self, seq: Sequence, k: int, quota: int, method: DART):
        self.seq, self.k, self.quota, self.method = seq, k, quota, method
        self.key_norms: Tensor | None = None
        self.kept: Tensor | None = None

    def layer_ops(self, layer: int, probe) -> LayerOps:
        if layer == self.k - 1:
            norms = torch.zeros(self.seq.n_tokens, device=probe.hidden_states.device)
            norms[probe.active] = probe.keys().float().abs().sum(dim=(0, 2))  # all KV heads concatenated
            self.key_norms = norms
        if layer == self.k:
            self.kept = self._select(probe)
        if layer < self.k:
            return LayerOps()
        return LayerOps(attention=self.kept, mlp=self.kept)

    def _select(self, probe) -> Tensor:
        seq, m = self.seq, self.method
        states = probe.decoder.norm(probe.hidden_states)  # the model's final norm (KEEP)
        visual = seq.visual
        text = torch.arange(int(visual.max()) + 1 if visual.numel() else seq.n_tokens, seq.n_tokens,
                            device=visual.device)
        n_piv = min(m.pivot_image, visual.numel()) + min(m.pivot_text, text.numel())
        probe.cost.flops += 2 * n_piv * visual.numel() * states.shape[-1]  # cosine similarities
        chosen = dart_select(self.key_norms, states, visual, text, self.quota, n_image_pivots=m.pivot_image,
                             n_text_pivots=m.pivot_text, order=m.order, inverse=m.inverse)
        return torch.sort(torch.cat([seq.non_visual(), chosen])).values
