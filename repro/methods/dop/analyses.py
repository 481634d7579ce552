"""DOP analyses: does the additive proxy rank policies like the true joint divergence, and what do
the single-parameter curves look like. Each writes a CSV and a PNG (matplotlib, Agg). Both work
on single and per-group (`groups="reducer"`) artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from repro.errors import ReproError
from repro.methods.dop import grouped
from repro.methods.dop.artifact import SearchArtifact
from repro.methods.dop.outputs import write_csv
from repro.methods.dop.policy import Policy, flops_grid, mlp_depth_bound
from repro.methods.dop.search import (
    SampleRunner,
    additive_estimate,
    curve,
    policy_flops,
)
from repro.report.plotting import pyplot, save


def is_grouped(artifact: SearchArtifact) -> bool:
    return artifact.grouped


def random_feasible_policies(artifact: SearchArtifact, card, n: int, seed: int = 0, max_ratio: float = 1.0) -> list[Policy]:
    """`n` distinct policies drawn uniformly from the canonical grid (D_P within its bound) whose
    FLOPs on the calibration set's mean shape are at most `max_ratio` of the unpruned ones."""
    if is_grouped(artifact):
        return _random_grouped_policies(artifact, card, n, seed, max_ratio)
    shape, semantics, L = artifact.shape, artifact.options.mha_semantics, artifact.layers
    n_max = shape.n_visual_max
    cost = flops_grid(card, shape.n_other, np.arange(n_max + 1) + round(shape.n_layout), "paper", semantics)
    depth = np.arange(L + 1)
    canonical = depth[None, None, :] <= mlp_depth_bound(depth, L, semantics)[None, :, None]
    feasible = np.argwhere(canonical & (cost <= max_ratio * cost.max()))
    if len(feasible) < n:
        raise ReproError(f"only {len(feasible)} feasible policies, {n} asked")
    rng = np.random.default_rng(seed)
    picks = feasible[rng.choice(len(feasible), size=n, replace=False)]
    return [Policy.single(int(v), int(a), int(p)) for v, a, p in picks]


def _random_grouped_policies(artifact: SearchArtifact, card, n: int, seed: int, max_ratio: float) -> list[Policy]:
    """Per-group form: uniform draws from the canonical grid, kept when within `max_ratio` (the grid
    has (n_max+1)·(L+1)^(2G) points, too many to list)."""
    L, G, n_max = artifact.layers, len(artifact.groups), artifact.shape.n_visual_max
    bound = mlp_depth_bound(np.arange(L + 1), L, artifact.options.mha_semantics)
    rng = np.random.default_rng(seed)
    found: dict[Policy, None] = {}
    for _ in range(200 * n):
        attention = rng.integers(0, L + 1, G)
        policy = Policy(int(rng.integers(0, n_max + 1)),
                        tuple((int(a), int(rng.integers(0, bound[a] + 1))) for a in attention))
        cost, unpruned = policy_flops(artifact, card, policy)
        if cost <= max_ratio * unpruned:
            found[policy] = None
            if len(found) == n:
                return list(found)
    raise ReproError(f"found only {len(found)} distinct feasible per-group policies, {n} asked")


def proxy_estimates(artifact: SearchArtifact, policies: list[Policy]) -> np.ndarray:
    """D̂ of each policy (single or per-group form)."""
    if is_grouped(artifact):
        return grouped.estimate(artifact, policies)
    grid = additive_estimate(artifact)
    return np.array([grid[p.n_visual, p.depths[0][0], p.depths[0][1]] for p in policies])


def proxy_vs_truth(model, artifact: SearchArtifact, samples, n_policies: int = 200, seed: int = 0, *,
                   heldout=(), progress: bool = False) -> dict:
    """Additive estimate D̂ vs the measured joint divergence D for random feasible policies.

    `samples` are the artifact's own calibration samples (in-sample ρ, the paper's setting);
    `heldout` samples the search never saw give the held-out ρ as well (`true_heldout` per row).
    Returns rows, Spearman's ρ and p (and `heldout_rho`, `heldout_p` with held-out samples).
    """
    from scipy.stats import spearmanr
    from tqdm import tqdm

    options = artifact.options
    policies = random_feasible_policies(artifact, model.card, n_policies, seed)
    runners = [SampleRunner(model, s.images, s.question, options) for s in samples]
    held = [SampleRunner(model, s.images, s.question, options) for s in heldout]
    rows = []
    estimates = proxy_estimates(artifact, policies)
    for policy, proxy in tqdm(list(zip(policies, estimates)), desc="dop proxy", unit="policy", disable=not progress):
        truth = float(np.mean([r.divergence(policy) for r in runners]))
        depths = {f"{p}{_suffix(artifact, g)}": d for g, pair in zip(artifact.groups, policy.depths)
                  for p, d in zip(grouped.DEPTH_PARAMETERS, pair)}
        row = {"n_visual": policy.n_visual, **depths, "proxy": float(proxy), "true": truth}
        if held:
            row["true_heldout"] = float(np.mean([r.divergence(policy) for r in held]))
        rows.append(row)
    rho, p_value = spearmanr([r["proxy"] for r in rows], [r["true"] for r in rows])
    result = {"rows": rows, "spearman_rho": float(rho), "p_value": float(p_value)}
    if held:
        rho, p_value = spearmanr([r["proxy"] for r in rows], [r["true_heldout"] for r in rows])
        result.update(heldout_rho=float(rho), heldout_p=float(p_value), heldout_samples=len(held))
    return result


def _suffix(artifact: SearchArtifact, group: str) -> str:
    return f".{group}" if is_grouped(artifact) else ""


def write_proxy_analysis(result: dict, out_dir: Path | str, name: str) -> list[Path]:
    out = Path(out_dir)
    table = write_csv(result["rows"], out / f"{name}.csv")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter([r["proxy"] for r in result["rows"]], [r["true"] for r in result["rows"]], s=10)
    ax.set_xlabel("additive estimate D̂")
    ax.set_ylabel("measured joint KL")
    title = f"Spearman ρ = {result['spearman_rho']:.3f} (p = {result['p_value']:.1e})"
    if "heldout_rho" in result:
        title += f"; held-out ρ = {result['heldout_rho']:.3f}"
    ax.set_title(title, fontsize=9)
    return [table, *save(fig, out / name)]


def write_curves(artifact: SearchArtifact, out_dir: Path | str, name: str) -> list[Path]:
    """Every single-parameter divergence curve: sampled points and the interpolation."""
    out = Path(out_dir)
    curves = artifact.curves
    rows = [{"parameter": p, "value": x, "divergence": y}
            for p, c in curves.items() for x, y in zip(c.points, c.values)]
    table = write_csv(rows, out / f"{name}.csv")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.7 * len(curves), 3.2), squeeze=False)
    for ax, (parameter, sampled) in zip(axes[0], curves.items()):
        values = curve(artifact, parameter)
        ax.plot(np.arange(len(values)), values, lw=1)
        ax.scatter(sampled.points, sampled.values, s=12)
        ax.set_xlabel(parameter)
        ax.set_ylabel("KL to unpruned")
    fig.suptitle(f"{artifact.model}: single-parameter divergence curves")
    return [table, *save(fig, out / name)]

