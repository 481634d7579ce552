"""The per-group DOP form (`groups="reducer"`, shared/docs/DOP.md): the additive estimate and the
budgeted enumeration over (n_v, (D_A, D_P) per reducer group).

Parameters: n_v, then D_A and D_P of each of the reducer's G token groups (2·G + 1 in all). The
reducer splits n_v into its groups itself (VisPruner: important and diverse tokens); the search
records the mean tokens per group at its sampled n_v (layout tokens, e.g. LLaVA-NeXT newlines,
count with group 0, as the reducer tags them) and this module interpolates them to every n_v
(linear, rounded so the groups sum to the sequence's visual tokens) for the FLOPs count.

Enumeration stays tractable without listing the (n_max+1)·(L+1)^(2G) grid: the MLP cost is
linear in tokens, so for each (n_v, canonical (D_A, D_P) of groups 1..G−1, D_A of group G) the
best D_P of the last group is the prefix minimum of its curve up to the deepest depth the
remaining budget affords — about (n_max+1)·((L+1)(L+2)/2)^(G−1)·(L+1) scores, chunked over n_v
(LLaVA-NeXT-7B, 2880 tokens, G = 2: about 3 s per budget on one CPU core).
"""

from __future__ import annotations

import itertools

import numpy as np

from repro import flops
from repro.methods.dop.policy import Policy, grouped_flops, mlp_depth_bound

DEPTH_PARAMETERS = ("attention_depth", "mlp_depth")


def parameter_names(groups: list[str]) -> list[str]:
    """n_visual, then `attention_depth.<group>` and `mlp_depth.<group>` for each group."""
    return ["n_visual"] + [f"{p}.{g}" for g in groups for p in DEPTH_PARAMETERS]


def group_counts(artifact) -> np.ndarray:
    """Integer tokens per group at every n_v in 0..n_max: array [n_max + 1, G] (layout in group 0)."""
    shape = artifact.shape
    points, counts = np.array(shape.group_tokens.points), np.array(shape.group_tokens.counts, dtype=float)
    n_visual = np.arange(shape.n_visual_max + 1)
    per_group = np.stack([np.interp(n_visual, points, counts[:, g]) for g in range(counts.shape[1])], -1)
    total = n_visual + round(shape.n_layout)
    cumulative = np.minimum(np.round(np.cumsum(per_group, -1)), total[:, None]).astype(np.int64)
    cumulative[:, -1] = total
    return np.diff(cumulative, axis=-1, prepend=0)


def curves(artifact) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], float]:
    """Interpolated curves: D_v over n_v, and D_A, D_P of each group over depth; and D(θ₀)."""
    from repro.methods.dop.search import curve

    groups = artifact.groups
    return (curve(artifact, "n_visual"), [curve(artifact, f"attention_depth.{g}") for g in groups],
            [curve(artifact, f"mlp_depth.{g}") for g in groups], artifact.reference_divergence)


def estimate(artifact, policies: list[Policy]) -> np.ndarray:
    """D̂ = Σ_p D_p(θ_p) − (P − 1)·D(θ₀) for each policy."""
    d_v, d_a, d_p, d0 = curves(artifact)
    n_params = 1 + 2 * len(d_a)
    return np.array([d_v[pol.n_visual] + sum(d_a[g][a] + d_p[g][p] for g, (a, p) in enumerate(pol.depths))
                     - (n_params - 1) * d0 for pol in policies])


def policy_cost(artifact, card, policy: Policy) -> int:
    """Prefill FLOPs (paper convention) of a per-group policy on the calibration set's mean shape."""
    counts = group_counts(artifact)[policy.n_visual]
    depths = np.array(policy.depths)
    return int(grouped_flops(card, round(artifact.shape.n_other), counts, depths[:, 0], depths[:, 1], "paper",
                             artifact.options.mha_semantics))


def best_policy(artifact, card, ceiling: float, chunk: int = 32) -> tuple[Policy, float] | None:
    """The canonical per-group policy with the smallest D̂ whose FLOPs are ≤ `ceiling` (None: none is)."""
    d_v, d_a, d_p, d0 = curves(artifact)
    semantics, L = artifact.options.mha_semantics, artifact.layers
    n_other, counts = round(artifact.shape.n_other), group_counts(artifact)
    G = len(d_a)
    depth = np.arange(L + 1)
    bound = np.asarray(mlp_depth_bound(depth, L, semantics))
    # heads: canonical (D_A, D_P) of groups 1..G-1 and D_A of group G; D_P of group G is solved
    pairs = np.array([(a, p) for a in depth for p in range(int(bound[a]) + 1)])
    heads = np.array([[*np.concatenate(combo).tolist(), a_last]
                      for combo in itertools.product(pairs, repeat=G - 1) for a_last in depth]).reshape(-1, 2 * G - 1)
    attention_depths = np.concatenate([heads[:, 0:2 * G - 2:2], heads[:, -1:]], 1)  # [H, G]
    mlp_depths = heads[:, 1:2 * G - 2:2]  # [H, G-1]
    head_score = (sum(d_a[g][attention_depths[:, g]] for g in range(G))
                  + sum(d_p[g][mlp_depths[:, g]] for g in range(G - 1)) - 2 * G * d0)  # [H]
    last = d_p[G - 1]
    prefix_min, prefix_arg = np.minimum.accumulate(last), _prefix_argmin(last)
    last_bound = bound[attention_depths[:, -1]]  # [H]
    mlp_per_token = flops.token_flops(card, 0, 0, 1, "paper")
    a_grid = np.array(list(itertools.product(depth, repeat=G)))  # [K, G]: attention cost depends on these only
    head_a = np.ravel_multi_index(tuple(attention_depths.T), (L + 1,) * G)  # [H] -> row of a_grid
    no_mlp = np.zeros_like(a_grid)
    best: tuple[float, int, int, int] | None = None
    for start in range(0, len(d_v), chunk):
        n = np.arange(start, min(start + chunk, len(d_v)))
        c = counts[n][:, None, :]  # [n, 1, G]
        fixed = grouped_flops(card, n_other, c, a_grid[None], no_mlp[None], "paper", semantics)[:, head_a]
        fixed = fixed + mlp_per_token * (c[..., :G - 1] * mlp_depths[None]).sum(-1)  # [n, H]
        remaining = ceiling - fixed
        per_layer = mlp_per_token * c[..., G - 1]  # [n, 1]: one more layer of the last group's MLP
        with np.errstate(divide="ignore", invalid="ignore"):
            afford = np.where(per_layer > 0, np.floor(remaining / np.maximum(per_layer, 1)), L)
        deepest = np.where(remaining < 0, -1, np.minimum(afford, last_bound[None])).astype(np.int64)
        score = np.where(deepest >= 0, d_v[n][:, None] + head_score[None] + prefix_min[np.maximum(deepest, 0)], np.inf)
        i = int(np.argmin(score))
        if np.isfinite(score.flat[i]) and (best is None or score.flat[i] < best[0]):
            ni, h = np.unravel_index(i, score.shape)
            best = (float(score.flat[i]), int(n[ni]), int(h), int(prefix_arg[deepest[ni, h]]))
    if best is None:
        return None
    score, n, h, last_depth = best
    mlp = [*mlp_depths[h].tolist(), last_depth]
    return Policy(n, tuple((int(a), int(p)) for a, p in zip(attention_depths[h], mlp))), score


def _prefix_argmin(values: np.ndarray) -> np.ndarray:
    """Index of the first minimum of values[:i + 1], for every i."""
    out = np.zeros(len(values), dtype=np.int64)
    for i in range(1, len(values)):
        out[i] = i if values[i] < values[out[i - 1]] else out[i - 1]
    return out
