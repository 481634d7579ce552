"""The per-group DOP form (`groups="reducer"`, shared/docs/DOP.md): the additive estimate and the
budgeted enumeration over (n_v, (D_A, D_P) per reducer group).

Parameters: n_v, then D_A and D_P of each of the reducer's G token groups (2·G + 1 in all). The
reducer splits n_v into its groups itself (VisPruner: important and diverse tokens); the search
records the mean tokens per group at its sampled n_v (layout tokens, e.g. LLaVA-NeXT newlines,
count with group 0, as the reducer tags them) and this module interpolates them to every n_v
(linear, rounded so the groups sum to the sequence's visual tokens) for the FLOPs count.

Enumeration stays tractable without listing the (n_max+1)·(L+1)^(2G) grid: the MLP cost is
linear in tokens, so for each (n_v, D_A of every group, D_P of groups 1..G−1) the best D_P of the
last group is the prefix minimum of its curve up to the deepest depth the remaining budget
affords — (n_max+1)·(L+1)^(2G−1) scores, chunked over n_v.
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


def group_counts(artifact: dict) -> np.ndarray:
    """Integer tokens per group at every n_v in 0..n_max: array [n_max + 1, G] (layout in group 0)."""
    shape = artifact["shape"]
    points, counts = np.array(shape["group_tokens"]["points"]), np.array(shape["group_tokens"]["counts"], dtype=float)
    n_visual = np.arange(shape["n_visual_max"] + 1)
    per_group = np.stack([np.interp(n_visual, points, counts[:, g]) for g in range(counts.shape[1])], -1)
    total = n_visual + round(shape["n_layout"])
    cumulative = np.minimum(np.round(np.cumsum(per_group, -1)), total[:, None]).astype(np.int64)
    cumulative[:, -1] = total
    return np.diff(cumulative, axis=-1, prepend=0)


def curves(artifact: dict) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], float]:
    """Interpolated curves: D_v over n_v, and D_A, D_P of each group over depth; and D(θ₀)."""
    from repro.methods.dop.search import interpolate

    method, L, n_max = artifact["options"]["interpolation"], artifact["layers"], artifact["shape"]["n_visual_max"]

    def curve(name: str, size: int) -> np.ndarray:
        c = artifact["curves"][name]
        return interpolate(c["points"], c["values"], size, method)

    groups = artifact["groups"]
    return (curve("n_visual", n_max + 1), [curve(f"attention_depth.{g}", L + 1) for g in groups],
            [curve(f"mlp_depth.{g}", L + 1) for g in groups], artifact["reference_divergence"])


def estimate(artifact: dict, policies: list[Policy]) -> np.ndarray:
    """D̂ = Σ_p D_p(θ_p) − (P − 1)·D(θ₀) for each policy."""
    d_v, d_a, d_p, d0 = curves(artifact)
    n_params = 1 + 2 * len(d_a)
    return np.array([d_v[pol.n_visual] + sum(d_a[g][a] + d_p[g][p] for g, (a, p) in enumerate(pol.depths))
                     - (n_params - 1) * d0 for pol in policies])


def policy_cost(artifact: dict, card, policy: Policy) -> int:
    """Prefill FLOPs (paper convention) of a per-group policy on the calibration set's mean shape."""
    counts = group_counts(artifact)[policy.n_visual]
    depths = np.array(policy.depths)
    return int(grouped_flops(card, round(artifact["shape"]["n_other"]), counts, depths[:, 0], depths[:, 1], "paper",
                             artifact["options"]["mha_semantics"]))


def best_policy(artifact: dict, card, ceiling: float, chunk: int = 16) -> tuple[Policy, float] | None:
    """The canonical per-group policy with the smallest D̂ whose FLOPs are ≤ `ceiling` (None: none is)."""
    d_v, d_a, d_p, d0 = curves(artifact)
    semantics, L = artifact["options"]["mha_semantics"], artifact["layers"]
    n_other, counts = round(artifact["shape"]["n_other"]), group_counts(artifact)
    G = len(d_a)
    depth = np.arange(L + 1)
    bound = np.asarray(mlp_depth_bound(depth, L, semantics))
    a_grid = np.array(list(itertools.product(depth, repeat=G))).reshape(-1, G)  # [K, G]
    p_grid = np.array(list(itertools.product(depth, repeat=G - 1))).reshape(-1, G - 1)  # [J, G-1]
    canonical = (p_grid[None, :, :] <= bound[a_grid[:, None, :G - 1]]).all(-1)  # [K, J]
    fixed_score = (sum(d_a[g][a_grid[:, g]] for g in range(G))[:, None]
                   + sum(d_p[g][p_grid[:, g]] for g in range(G - 1)) - 2 * G * d0)  # [K, J]
    last = d_p[G - 1]
    prefix_min, prefix_arg = np.minimum.accumulate(last), _prefix_argmin(last)
    mlp_per_token = flops.token_flops(card, 0, 0, 1, "paper")
    best: tuple[float, int, int, int, int] | None = None
    for start in range(0, len(d_v), chunk):
        n = np.arange(start, min(start + chunk, len(d_v)))
        c = counts[n]  # [n, G]
        attention = grouped_flops(card, n_other, c[:, None, :], a_grid[None], np.zeros_like(a_grid)[None], "paper",
                                  semantics) - L * flops.token_flops(card, 0, 0, n_other, "paper")  # [n, K]
        mlp_fixed = mlp_per_token * (L * n_other + (c[:, None, :G - 1] * p_grid[None]).sum(-1))  # [n, J]
        remaining = ceiling - attention[:, :, None] - mlp_fixed[:, None, :]  # [n, K, J]
        per_layer = mlp_per_token * c[:, G - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            afford = np.where(per_layer[:, None, None] > 0, np.floor(remaining / per_layer[:, None, None]), L)
        afford = np.where(remaining < 0, -1, afford)
        deepest = np.minimum(afford, bound[a_grid[:, G - 1]][None, :, None]).astype(np.int64)  # [n, K, J]
        feasible = (deepest >= 0) & canonical[None]
        score = np.where(feasible, d_v[n][:, None, None] + fixed_score[None] + prefix_min[np.maximum(deepest, 0)],
                         np.inf)
        i = int(np.argmin(score))
        if np.isfinite(score.flat[i]) and (best is None or score.flat[i] < best[0]):
            ni, k, j = np.unravel_index(i, score.shape)
            best = (float(score.flat[i]), int(n[ni]), int(k), int(j), int(prefix_arg[deepest[ni, k, j]]))
    if best is None:
        return None
    score, n, k, j, last_depth = best
    mlp_depths = [*p_grid[j].tolist(), last_depth]
    return Policy(n, tuple((int(a), int(p)) for a, p in zip(a_grid[k], mlp_depths))), score


def _prefix_argmin(values: np.ndarray) -> np.ndarray:
    """Index of the first minimum of values[:i + 1], for every i."""
    out = np.zeros(len(values), dtype=np.int64)
    for i in range(1, len(values)):
        out[i] = i if values[i] < values[out[i - 1]] else out[i - 1]
    return out
