"""SparseVLM: text raters prune visual tokens at three layers (v1.0 also recycles the pruned ones).

Card: docs/methods/sparsevlm.md (from shared/docs/METHODS.md §2.3, §0.3). The raters are the text
tokens whose embeddings the visual embeddings attend to more than average. At each sparse layer
(which itself runs every current token) the raters' head-mean attention ranks the visual tokens;
the top k_s stay. v1.0 / v1.5: the best 30% of the rest are clustered (DPC-kNN) on the layer's
output and averaged into merged tokens the engine inserts after the kept visual tokens; positions
are renumbered (original on M-RoPE). v2.0 (SparseVLM+): the attention is first divided by RoPE's
own logit pattern and only the 14 heads with the most rater→visual attention are averaged; no
recycling; original positions; its own schedule rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from repro import flops
from repro.budget import Budget, solve_knob
from repro.engine import LayerOps, Merge, Sequence
from repro.methods.base import Method, stage_layers
from repro.methods.registry import register

REFERENCE_LAYERS = (2, 6, 15)  # pruning_loc for 32-layer LLaVA-1.5-7B
REFERENCE_VISUAL = 576
SCHEDULES = {  # score.py, v1.0: RETAIN_TOKN -> tokens kept after each sparse layer (N = 576)
    64: (66, 30, 17),
    96: (238, 48, 26),
    128: (303, 110, 36),
    192: (300, 200, 110),
}
SCHEDULES_V2 = {  # score.py with USE_VERSION=2_0
    64: (66, 34, 20),
    96: (246, 54, 28),
    128: (238, 108, 60),
    192: (300, 200, 118),
}
VERSIONS = ("1.0", "1.5", "2.0")
V2_HEADS = 14  # select_attn_head_by_sum: topk(14)


def stage_keeps(n_visual: int, t: int, schedules: dict = SCHEDULES) -> tuple[int, ...] | None:
    """The k_s of each sparse layer for budget T on N visual tokens (None: no pruning at all).

    T·576/N picks the reference row r (the smallest of 64/96/128/192 at or above it) and the row is
    scaled by T/r (LLaVA-NeXT "640" = 5 × the "128" row, "160" = 2.5 × the "64" row, as the card
    says); above 192·N/576 the counts move linearly from the scaled "192" row to N at T = N.
    """
    if t >= n_visual:
        return None
    t_ref = t * REFERENCE_VISUAL / n_visual
    if t_ref > 192:
        w = (t_ref - 192) / (REFERENCE_VISUAL - 192)
        return tuple(int((c + w * (REFERENCE_VISUAL - c)) * n_visual / REFERENCE_VISUAL) for c in schedules[192])
    r = min(b for b in schedules if b >= t_ref)
    return tuple(int(c * t / r) for c in schedules[r])


def recycled(n_removed: int) -> tuple[int, int]:
    """(candidates, clusters) for n removed tokens: int(0.3·n) + 1 best removed, int(that/10) + 1."""
    if n_removed <= 0:
        return 0, 0
    n_cand = min(int(0.3 * n_removed) + 1, n_removed)
    return n_cand, min(int(n_cand / 10) + 1, n_cand)


def visual_counts(n_visual: int, keeps: tuple[int, ...] | None, recycle: bool = True) -> list[int]:
    """Visual tokens after each sparse layer: k_s plus the merged tokens (card: "192" on 576 →
    309 / 204 / 113). A stage whose k_s is not below the current count prunes nothing."""
    counts, v = [], n_visual
    for k in keeps or ():
        if k < v:
            v = k + (recycled(v - k)[1] if recycle else 0)
        counts.append(v)
    return counts


def per_layer_visual(n_layers: int, layers: tuple[int, ...], counts: list[int], n_visual: int) -> list[int]:
    """Visual count of every layer: a sparse layer runs the pre-pruning count."""
    out, v, stage = [], n_visual, 0
    for layer in range(n_layers):
        out.append(v)
        if stage < len(layers) and layer == layers[stage]:
            v = counts[stage] if counts else v
            stage += 1
    return out


def choose_raters(visual_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """Offsets (into the text) of the raters: softmax over the text of E_V·E_Tᵀ, column mean,
    above-average columns."""
    relevance = (visual_embeds.float() @ text_embeds.float().T).softmax(dim=-1).mean(0)
    return (relevance > relevance.mean()).nonzero().flatten()


def dpc_knn(x: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """Cluster index (0..c-1, c = n_clusters) of each row of x: DPC-kNN as in SparseVLM's
    cluster_and_merge (k = c neighbours, distances / √C, density noise 1e-6, centres by ρ·δ)."""
    m, dim = x.shape
    x = x.float()
    sq = (x * x).sum(-1)
    dist = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0).sqrt() / math.sqrt(dim)
    nearest = torch.topk(dist, n_clusters, dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(-1)).exp() + torch.rand(m, generator=generator).to(x.device) * 1e-6
    higher = density[None, :] > density[:, None]
    delta = torch.where(higher, dist, dist.max()).amin(-1)
    centres = torch.argsort(-(density * delta), stable=True)[:n_clusters]
    assign = dist[:, centres].argmin(-1)
    assign[centres] = torch.arange(n_clusters, device=x.device)
    return assign


def v2_scores(probs: Tensor, rope: Tensor, n_heads: int = V2_HEADS) -> Tensor:
    """v2.0's score of each visual column from per-head rater rows (heads, raters, visual): divided
    by the RoPE pattern (raters, visual), then the mean over the `n_heads` heads with the largest
    sums (ties: the earlier head) and over the raters."""
    corrected = probs / rope
    heads = torch.argsort(-corrected.sum((1, 2)), stable=True)[:n_heads]
    return corrected[heads].mean(0).mean(0)


def merge_clusters(states: Tensor, assign: Tensor, n_clusters: int) -> Tensor:
    """The plain mean of each cluster's members, (c, d)."""
    sums = torch.zeros(n_clusters, states.shape[-1], dtype=torch.float32, device=states.device)
    sums.index_add_(0, assign, states.float())
    return (sums / torch.bincount(assign, minlength=n_clusters).clamp_min(1)[:, None]).to(states.dtype)


@register("sparsevlm", stage="in-llm",
          knob="budget row T (64/96/128/192 on 576 tokens, scaled to the model's N); stage keeps after the "
               "sparse layers, recycled tokens on top (layer average exceeds T, as in the reference)",
          reference="Zhang et al., ICML 2025, arXiv 2410.04417; github.com/Gumpest/SparseVLMs @ 26a5f48813 (v1.0)",
          variants={"version": "'1.0' (default; recycling), '1.5' (same rule, flash-compatible in the reference: "
                               "identical here) or '2.0' (SparseVLM+: RoPE-corrected scores, 14 heads, no "
                               "recycling, original positions, its own rows)",
                    "layers": "sparse layers (default [2,6,15]; scaled by L/32 on a model too shallow for it)",
                    "retain": "the official row used when no budget is given (64/96/128/192, default 192)",
                    "recycle": "merge the best pruned tokens back (default: True for v1.x; v2.0 has none)",
                    "seed": "seed of the density noise of the clustering (default 0)",
                    "inverse": "keep the lowest-scored tokens (sanity check, not a method)"})
class SparseVLM(Method):
    """Defaults: v1.0, pruning_loc [2, 6, 15], the "192" row when no budget is given."""

    def __init__(self, budget: Budget | None = None, *, version: str = "1.0", layers: tuple[int, ...] | None = None,
                 retain: int = 192, recycle: bool | None = None, seed: int = 0, inverse: bool = False):
        super().__init__(budget)
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(map(repr, VERSIONS))}, got {version!r}")
        if version == "2.0" and recycle:
            raise ValueError("SparseVLM v2.0 has no recycling (the reference cancels the merge); drop recycle=True")
        if retain not in SCHEDULES:
            raise ValueError(f"retain must be one of the reference rows {sorted(SCHEDULES)}, got {retain}")
        self.version, self.layers, self.retain = version, layers, retain
        self.recycle = version != "2.0" if recycle is None else recycle
        self.schedules = SCHEDULES_V2 if version == "2.0" else SCHEDULES
        self.seed, self.inverse = seed, inverse

    def sparse_layers(self, n_layers: int) -> tuple[int, ...]:
        return stage_layers("SparseVLM", self.layers, REFERENCE_LAYERS, n_layers, first=0, last=n_layers - 2)

    def flops_at(self, card, t: int, n_visual: int, n_other: int) -> int:
        """Paper prefill FLOPs of budget T: the realized counts, recycled tokens included, each
        sparse layer at its pre-pruning count."""
        counts = visual_counts(n_visual, stage_keeps(n_visual, t, self.schedules), self.recycle)
        per_layer = per_layer_visual(card.layers, self.sparse_layers(card.layers), counts, n_visual)
        return flops.visual_per_layer_flops(card, n_other, per_layer)

    def min_flops(self, card, n_visual: int, n_other: int) -> int:
        """T = 0: every stage keeps nothing but its recycled tokens."""
        return self.flops_at(card, 0, n_visual, n_other)

    def planner(self, model, seq: Sequence) -> "SparseVLMPlanner":
        keeps = stage_keeps(seq.visual.numel(), self.knob(model, seq), self.schedules)
        return SparseVLMPlanner(seq, self.sparse_layers(model.card.layers), keeps, self.recycle, self.seed,
                                self.inverse, v2=self.version == "2.0")

    def knob(self, model, seq: Sequence) -> int:
        """T for this sample: tokens:T as is; ratio/tflops solved on the realized counts."""
        n_vis = seq.visual.numel()
        if self.budget is None:
            return round(self.retain * n_vis / REFERENCE_VISUAL)
        if self.budget.kind == "tokens":
            return int(self.budget.value)
        n_other = seq.n_tokens - n_vis

        def cost(t: int) -> float:
            return self.flops_at(model.card, t, n_vis, n_other)

        return solve_knob(range(n_vis + 1), cost, self.budget.max_flops(cost(n_vis)))


class SparseVLMPlanner:
    """Every current token through each layer; the sparse layers decide, the engine merges after."""

    def __init__(self, seq: Sequence, layers: tuple[int, ...], keeps: tuple[int, ...] | None, recycle: bool,
                 seed: int, inverse: bool, v2: bool = False):
        self.seq, self.layers, self.keeps, self.recycle, self.inverse, self.v2 = seq, layers, keeps, recycle, inverse, v2
        # v1.x renumbers (M-RoPE keeps original ids); v2.0 keeps original positions
        self.renumber = seq.positions.dim() == 1 and not v2
        self.generator = torch.Generator().manual_seed(seed)
        self.visual = seq.visual  # current visual tokens (merged ones included), sequence indices
        self.others = seq.non_visual()
        self.raters: Tensor | None = None
        self.pending: tuple[Tensor, Tensor] | None = None  # (kept visual, recycling candidates)
        last = int(seq.visual.max()) if seq.visual.numel() else seq.n_tokens - 2
        self.span_end = last + 1  # merged tokens go here: after the visual tokens, before the text
        self.merged_position = seq.positions[..., last:last + 1]  # the last visual token's (harness)

    def alive(self) -> Tensor:
        return torch.sort(torch.cat([self.others, self.visual])).values

    def layer_ops(self, layer: int, probe) -> LayerOps:
        if self.keeps is None:
            return LayerOps()
        if layer in self.layers:
            self._decide(self.keeps[self.layers.index(layer)], probe)
        if self.visual.numel() == self.seq.visual.numel() and layer <= self.layers[0]:
            return LayerOps()  # nothing pruned yet: the unpruned layer
        alive = self.alive()
        return LayerOps(attention=alive, mlp=alive)

    def _decide(self, k: int, probe) -> None:
        if k >= self.visual.numel():
            return
        if self.raters is None:
            self.raters = self._raters(probe)
        columns = torch.searchsorted(probe.active, self.visual)
        if self.v2:
            probs = probe.attention_rows(self.raters, reduce=None)[:, :, columns]  # (heads, raters, visual)
            scores = v2_scores(probs, probe.rope_pattern(self.raters, self.visual))
        else:
            scores = probe.attention_rows(self.raters)[:, columns].mean(0)  # head mean, then rater mean
        scores = -scores if self.inverse else scores
        order = torch.argsort(-scores, stable=True)
        kept = torch.sort(self.visual[order[:k]]).values
        n_cand, _ = recycled(self.visual.numel() - k) if self.recycle else (0, 0)
        self.pending = (kept, self.visual[order[k:k + n_cand]])

    def _raters(self, probe) -> Tensor:
        seq = self.seq
        text = torch.arange(int(seq.visual.max()) + 1, seq.n_tokens, device=seq.visual.device)
        probe.cost.flops += 2 * seq.visual.numel() * text.numel() * seq.embeds.shape[-1]
        return text[choose_raters(seq.embeds[seq.visual], seq.embeds[text])]

    def merge_after(self, layer: int, probe) -> Merge | None:
        """After a sparse layer: cluster the recycling candidates on its output, hand the engine
        their means to insert after the visual span, and move every index to the new numbering."""
        if self.pending is None:
            return None
        kept, candidates = self.pending
        self.pending = None
        self.visual = kept
        if not candidates.numel():
            return None
        n_clusters = min(int(candidates.numel() / 10) + 1, candidates.numel())
        states = probe.hidden_states[candidates]
        probe.cost.flops += 2 * candidates.numel() ** 2 * states.shape[-1]  # pairwise distances
        merged = merge_clusters(states, dpc_knn(states, n_clusters, self.generator), n_clusters)
        at = self.span_end
        merge = Merge(at, merged, self.merged_position.expand(*self.merged_position.shape[:-1], n_clusters).clone())
        self.others, self.visual = merge.remap(self.others), torch.cat([merge.remap(kept), merge.new_indices(kept.device)])
        self.raters = merge.remap(self.raters)
        self.span_end = at + n_clusters
        return merge
