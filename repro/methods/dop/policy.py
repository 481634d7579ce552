"""DOP policies: which visual-token operations run, as (n_v, D_A, D_P) per visual group.

Layers l < D_A: visual tokens take part in attention; l ≥ D_A: `drop` removes them from
attention (no query, no key/value) while `query_skip` keeps their frozen keys/values. Layers
l < D_P: visual tokens pass through the MLP. Prefix and text tokens run every operation.
An MLP whose output nobody reads is not run (D_P is clamped to D_A − 1 under `drop`, to D_A
under `query_skip`), and the FLOPs count follows what runs (shared/docs/DOP.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from repro import flops
from repro.engine import LayerOps, Schedule
from repro.models.cards import ArchCard

MHA_SEMANTICS = ("drop", "query_skip")


@dataclass(frozen=True)
class Policy:
    """n_visual visual tokens from the reducer; per group g, depths (D_A, D_P).

    The single-group form has one pair; the `reducer` groups form has one pair per group of the
    reducer (e.g. VisPruner's important and diverse tokens), in group order.
    """

    n_visual: int
    depths: tuple[tuple[int, int], ...]

    @classmethod
    def single(cls, n_visual: int, attention_depth: int, mlp_depth: int) -> "Policy":
        return cls(n_visual, ((attention_depth, mlp_depth),))

    def validate(self, n_layers: int) -> None:
        if self.n_visual < 0:
            raise ValueError(f"n_visual must be >= 0, got {self.n_visual}")
        for a, p in self.depths:
            if not (0 <= a <= n_layers and 0 <= p <= n_layers):
                raise ValueError(f"depths must lie in [0, {n_layers}], got D_A={a}, D_P={p}")

    def rescaled(self, source_layers: int, target_layers: int) -> "Policy":
        """The policy for a model of another depth: depths scale by L_target / L_source and round."""
        scale = target_layers / source_layers
        return Policy(self.n_visual, tuple((round(a * scale), round(p * scale)) for a, p in self.depths))

    def as_dict(self) -> dict:
        return {"n_visual": self.n_visual, "depths": [list(d) for d in self.depths]}

    @classmethod
    def from_dict(cls, data: dict) -> "Policy":
        return cls(int(data["n_visual"]), tuple((int(a), int(p)) for a, p in data["depths"]))


def mlp_depth_bound(attention_depth, n_layers: int, mha_semantics: str):
    """Visual MLPs at layers ≥ this bound cannot reach the output: under `drop` nothing reads a
    visual state after layer D_A − 1; under `query_skip` the state freezes at D_A; and no state
    after the last layer is ever read. Works on ints and numpy arrays."""
    if mha_semantics == "query_skip":
        return np.minimum(attention_depth, n_layers - 1)
    return np.maximum(attention_depth - 1, 0)


def effective_mlp_depth(attention_depth: int, mlp_depth: int, mha_semantics: str, n_layers: int) -> int:
    """D_P as executed: the requested depth, clamped to what can reach the output."""
    return int(min(mlp_depth, mlp_depth_bound(attention_depth, n_layers, mha_semantics)))


def policy_schedule(policy: Policy, n_tokens: int, visual: Tensor, groups: Tensor | None, n_layers: int,
                    mha_semantics: str = "drop") -> Schedule:
    """The engine schedule of a policy; `groups[i]` is the group of visual token i (None: one group)."""
    if mha_semantics not in MHA_SEMANTICS:
        raise ValueError(f"mha_semantics must be one of {MHA_SEMANTICS}, got {mha_semantics!r}")
    policy.validate(n_layers)
    if groups is None and len(policy.depths) > 1:
        raise ValueError(f"a policy with {len(policy.depths)} depth pairs needs the visual tokens' groups")
    groups = torch.zeros_like(visual) if groups is None else groups.to(visual.device)
    if groups.numel() and int(groups.max()) >= len(policy.depths):
        raise ValueError(f"the sequence has {int(groups.max()) + 1} visual groups, the policy {len(policy.depths)}")
    attn_depth = torch.tensor([a for a, _ in policy.depths], device=visual.device)[groups]
    mlp_depth = torch.tensor([effective_mlp_depth(a, p, mha_semantics, n_layers) for a, p in policy.depths],
                             device=visual.device)[groups]
    others = torch.ones(n_tokens, dtype=torch.bool, device=visual.device)
    others[visual] = False
    other = others.nonzero().flatten()

    def with_others(keep: Tensor) -> Tensor | None:
        return None if keep.numel() == visual.numel() else torch.sort(torch.cat([other, keep])).values

    layers = []
    for layer in range(n_layers):
        attends = visual[attn_depth > layer]
        kv_only = visual[attn_depth <= layer] if mha_semantics == "query_skip" else None
        layers.append(LayerOps(attention=with_others(attends), mlp=with_others(visual[mlp_depth > layer]),
                               kv_only=kv_only if kv_only is not None and kv_only.numel() else None))
    return Schedule(tuple(layers), name="dop")


def flops_grid(card: ArchCard, n_other: float, n_visual: np.ndarray, convention: str = "paper",
               mha_semantics: str = "drop") -> np.ndarray:
    """Prefill FLOPs of every single-group policy: array [n_visual index, D_A, D_P] (D_P raw).

    `n_other` is the (mean) number of non-visual tokens. Per layer the cost splits into an
    attention part (queries × keys) and an MLP part, which makes the sum over layers closed-form.
    """
    L = card.layers
    n_o, n_v = round(n_other), np.asarray(n_visual, dtype=np.int64)
    attn_in = flops.token_flops(card, n_o + n_v, n_o + n_v, 0, convention)
    attn_out = flops.token_flops(card, n_o, n_o + n_v if mha_semantics == "query_skip" else n_o, 0, convention)
    attn_out = np.broadcast_to(attn_out, n_v.shape)
    mlp_in, mlp_out = flops.token_flops(card, 0, 0, n_o + n_v, convention), flops.token_flops(card, 0, 0, n_o, convention)
    depth = np.arange(L + 1)
    d_a = depth[None, :, None]
    d_p = np.minimum(depth[None, None, :], mlp_depth_bound(d_a, L, mha_semantics))
    v = (slice(None), None, None)
    return (d_a * attn_in[v] + (L - d_a) * attn_out[v] + d_p * mlp_in[v] + (L - d_p) * mlp_out).astype(np.float64)


def grouped_flops(card: ArchCard, n_other: int, counts: np.ndarray, attention_depths: np.ndarray,
                  mlp_depths: np.ndarray, convention: str = "paper", mha_semantics: str = "drop") -> np.ndarray:
    """Prefill FLOPs of per-group policies, element-wise over leading axes.

    `counts`, `attention_depths`, `mlp_depths`: integer arrays [..., G] (tokens, D_A, raw D_P per
    group); D_P is clamped to its bound as the engine does. With the depths sorted, the layers
    between consecutive depths see a fixed set of groups, so the sum over layers has G + 1 terms.
    """
    L = card.layers
    counts, d_a = np.asarray(counts, dtype=np.int64), np.asarray(attention_depths, dtype=np.int64)
    d_p = np.minimum(np.asarray(mlp_depths, dtype=np.int64), mlp_depth_bound(d_a, L, mha_semantics))
    counts, d_a, d_p = np.broadcast_arrays(counts, d_a, d_p)
    order = np.argsort(d_a, axis=-1)
    depth = np.take_along_axis(d_a, order, -1)  # ascending; layers [depth[j-1], depth[j]) see groups ranked >= j
    active = np.flip(np.cumsum(np.flip(np.take_along_axis(counts, order, -1), -1), -1), -1)  # suffix sums
    span = np.diff(depth, axis=-1, prepend=0)
    all_keys = n_other + counts.sum(-1)
    total = (L - depth[..., -1]) * flops.token_flops(card, n_other, all_keys if mha_semantics == "query_skip"
                                                     else n_other, 0, convention)
    for j in range(counts.shape[-1]):
        queries = n_other + active[..., j]
        keys = all_keys if mha_semantics == "query_skip" else queries
        total = total + span[..., j] * flops.token_flops(card, queries, keys, 0, convention)
    mlp_tokens = L * n_other + (counts * d_p).sum(-1)  # the MLP is linear in tokens
    return total + flops.token_flops(card, 0, 0, mlp_tokens, convention)
