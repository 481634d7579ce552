"""DOP analyses: does the additive proxy rank policies like the true joint divergence, and what do
the single-parameter curves look like. Each writes a CSV and a PNG (matplotlib, Agg)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from repro.errors import ReproError
from repro.methods.dop.policy import Policy, flops_grid, mlp_depth_bound
from repro.methods.dop.search import PARAMETERS, SampleRunner, SearchOptions, additive_estimate, predicted_divergence


def random_feasible_policies(artifact: dict, card, n: int, seed: int = 0, max_ratio: float = 1.0) -> list[Policy]:
    """`n` distinct policies drawn uniformly from the canonical grid (D_P within its bound) whose
    FLOPs on the calibration set's mean shape are at most `max_ratio` of the unpruned ones."""
    shape, semantics, L = artifact["shape"], artifact["options"]["mha_semantics"], artifact["layers"]
    n_max = shape["n_visual_max"]
    cost = flops_grid(card, shape["n_other"], np.arange(n_max + 1) + round(shape["n_layout"]), "paper", semantics)
    depth = np.arange(L + 1)
    canonical = depth[None, None, :] <= mlp_depth_bound(depth, L, semantics)[None, :, None]
    feasible = np.argwhere(canonical & (cost <= max_ratio * cost.max()))
    if len(feasible) < n:
        raise ReproError(f"only {len(feasible)} feasible policies, {n} asked")
    rng = np.random.default_rng(seed)
    picks = feasible[rng.choice(len(feasible), size=n, replace=False)]
    return [Policy.single(int(v), int(a), int(p)) for v, a, p in picks]


def proxy_vs_truth(model, artifact: dict, samples, n_policies: int = 200, seed: int = 0) -> dict:
    """Additive estimate D̂ vs the measured joint divergence D for random feasible policies.

    Uses the artifact's own calibration samples and options; returns rows and Spearman's ρ, p.
    """
    from scipy.stats import spearmanr

    options = SearchOptions(**artifact["options"])
    policies = random_feasible_policies(artifact, model.card, n_policies, seed)
    runners = [SampleRunner(model, s.images, s.question, options) for s in samples]
    estimate = additive_estimate(artifact)
    rows = []
    for policy in policies:
        (a, p), = policy.depths
        truth = float(np.mean([r.divergence(policy) for r in runners]))
        rows.append({"n_visual": policy.n_visual, "attention_depth": a, "mlp_depth": p,
                     "proxy": float(estimate[policy.n_visual, a, p]), "true": truth})
    rho, p_value = spearmanr([r["proxy"] for r in rows], [r["true"] for r in rows])
    return {"rows": rows, "spearman_rho": float(rho), "p_value": float(p_value)}


def write_proxy_analysis(result: dict, out_dir: Path | str, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / f"{name}.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        writer.writeheader()
        writer.writerows(result["rows"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter([r["proxy"] for r in result["rows"]], [r["true"] for r in result["rows"]], s=10)
    ax.set_xlabel("additive estimate D̂")
    ax.set_ylabel("measured joint KL")
    ax.set_title(f"Spearman ρ = {result['spearman_rho']:.3f} (p = {result['p_value']:.1e})")
    return [table, _save(plt, fig, out / f"{name}.png")]


def write_curves(artifact: dict, out_dir: Path | str, name: str) -> list[Path]:
    """The three single-parameter divergence curves: sampled points and the interpolation."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / f"{name}.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["parameter", "value", "divergence"])
        for parameter in PARAMETERS:
            curve = artifact["curves"][parameter]
            writer.writerows([parameter, x, y] for x, y in zip(curve["points"], curve["values"]))
    plt = _pyplot()
    interpolated = predicted_divergence(artifact)[:3]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, parameter, line in zip(axes, PARAMETERS, interpolated):
        curve = artifact["curves"][parameter]
        ax.plot(np.arange(len(line)), line, lw=1)
        ax.scatter(curve["points"], curve["values"], s=12)
        ax.set_xlabel(parameter)
        ax.set_ylabel("KL to unpruned")
    fig.suptitle(f"{artifact['model']}: single-parameter divergence curves")
    return [table, _save(plt, fig, out / f"{name}.png")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
