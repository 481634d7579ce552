"""FitPrune inside the LLM: at a layer that deletes, the layer attends over every current token;
its head-max attention rows decide which visual tokens skip its MLP and every later layer.

Which tokens go is a rule: a fixed recipe's δ_l lowest cross × self products at inference
(`RecipeRule`), or the offline fit's mass thresholds at one α (`fit.MassRule`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from repro.engine import LayerOps, Sequence
from repro.methods.base import top_indices


def fitprune_scores(attention: Tensor, n_text: int) -> Tensor:
    """Cross × self score of each visual column from head-max attention rows (visual rows first,
    then text rows): Σ_text Â[t, j] · (1/n) Σ_visual Â[i, j]."""
    n_visual = attention.shape[0] - n_text
    cross = attention[n_visual:].sum(0)
    self_ = attention[:n_visual].sum(0) / max(n_visual, 1)
    return cross * self_


class DeletionRule(Protocol):
    def wants(self, layer: int) -> bool:
        """Whether `layer` may delete (the attention probe runs only then)."""

    def delete(self, layer: int, attention: Tensor, n_text: int) -> Tensor:
        """Positions among the current visual tokens that go, from the head-max rows (visual, text)."""


class RecipeRule:
    """Inference: the recipe's δ_l tokens with the lowest products (ties: the earlier token);
    `inverse` deletes the highest (the sanity variant)."""

    def __init__(self, recipe: list[int], inverse: bool = False):
        self.recipe, self.inverse = recipe, inverse

    def wants(self, layer: int) -> bool:
        return self.recipe[layer] > 0

    def delete(self, layer: int, attention: Tensor, n_text: int) -> Tensor:
        scores = fitprune_scores(attention, n_text)
        return top_indices(scores, min(self.recipe[layer], scores.numel()), inverse=not self.inverse)


class FitPrunePlanner:
    """At each layer with deletions: attention on every current token, MLP on the survivors."""

    def __init__(self, seq: Sequence, rule: DeletionRule):
        self.seq, self.rule = seq, rule
        self.others = seq.non_visual()
        self.visual = seq.visual
        end = int(seq.visual.max()) + 1 if seq.visual.numel() else seq.n_tokens
        self.text = torch.arange(end, seq.n_tokens, device=seq.visual.device)
        self.pruned = False

    def layer_ops(self, layer: int, probe) -> LayerOps:
        alive = torch.sort(torch.cat([self.others, self.visual])).values
        if self.visual.numel() and self.rule.wants(layer):
            rows = torch.cat([self.visual, self.text])
            attention = probe.attention_rows(rows, reduce="max")[:, torch.searchsorted(probe.active, self.visual)]
            gone = self.rule.delete(layer, attention, self.text.numel())
            if gone.numel():
                keep = torch.ones(self.visual.numel(), dtype=torch.bool, device=self.visual.device)
                keep[gone] = False
                self.visual = self.visual[keep]
                survivors = torch.sort(torch.cat([self.others, self.visual])).values
                was_pruned, self.pruned = self.pruned, True
                return LayerOps(attention=alive if was_pruned else None, mlp=survivors)
        if not self.pruned:
            return LayerOps()
        return LayerOps(attention=alive, mlp=alive)
