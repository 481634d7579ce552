"""DOP studies that run searches (shared/docs/DOP.md, "Analyses to reproduce"):

- `samples_study`: search time and chosen-policy quality vs the number of calibration samples
  (25, 50, 100 in the paper). Quality is the true joint divergence of the chosen policy on
  held-out samples (disjoint from every calibration set), per budget.
- `transfer_study`: a policy searched on a source model applied to a target model (depths
  rescaled by L_target / L_source, `Policy.rescaled`; n_v kept, capped at the target's visual
  tokens) vs the policy searched on the target directly, by true KL on held-out target samples.

Each search runs separately and is timed by the search itself (`artifact.seconds`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from repro.errors import ReproError
from repro.methods.dop.artifact import SearchArtifact, SearchOptions
from repro.methods.dop.outputs import write_csv
from repro.methods.dop.policy import Policy
from repro.methods.dop.search import SampleRunner, policy_flops, search
from repro.report.plotting import pyplot, save


class HeldOut:
    """True divergence of policies on held-out samples (reference distributions computed once)."""

    def __init__(self, model, samples, options: SearchOptions):
        if not samples:
            raise ReproError("the held-out set is empty")
        self.runners = [SampleRunner(model, s.images, s.question, options) for s in samples]
        self.n_max = min(r.n_max for r in self.runners)

    def divergence(self, policy: Policy) -> float:
        policy = Policy(min(policy.n_visual, self.n_max), policy.depths)
        return float(np.mean([r.divergence(policy) for r in self.runners]))


def split_samples(samples: list, n_calibration: int, n_heldout: int) -> tuple[list, list]:
    """The first `n_calibration` samples calibrate, the next `n_heldout` are held out."""
    if len(samples) < n_calibration + n_heldout:
        raise ReproError(f"need {n_calibration + n_heldout} samples, got {len(samples)}")
    return samples[:n_calibration], samples[n_calibration:n_calibration + n_heldout]


def reducer_alone(artifact: SearchArtifact, card, ratio: float) -> Policy:
    """The reducer by itself at DOP's compute: every operation in every layer, with the most visual
    tokens whose FLOPs ratio stays within `ratio` (the baseline DOP must beat at equal TFLOPs)."""
    n_groups = len(artifact.groups)
    full = ((card.layers, card.layers),) * n_groups
    for n in range(artifact.shape.n_visual_max, -1, -1):
        cost, unpruned = policy_flops(artifact, card, Policy(n, full))
        if cost <= ratio * unpruned * (1 + 1e-9):
            return Policy(n, full)
    raise ReproError(f"the reducer alone cannot meet a FLOPs ratio of {ratio:.3g}")


def samples_study(model, samples: list, counts: list[int], n_heldout: int, budgets: list[str],
                  options: SearchOptions, *, source: str = "", progress: bool = False) -> list[dict]:
    """One search per calibration count (on the first `count` samples); rows per count and budget."""
    counts = sorted(set(counts))
    pool, heldout = split_samples(samples, counts[-1], n_heldout)
    truth = HeldOut(model, heldout, options)
    rows = []
    for count in counts:
        artifact = search(model, pool[:count], budgets, options, source=source, progress=progress)
        for chosen in artifact.budgets:
            alone = reducer_alone(artifact, model.card, chosen.ratio)
            alone_cost, unpruned = policy_flops(artifact, model.card, alone)
            rows.append({"model": model.name, "samples": count, "seconds": artifact.seconds,
                         "forward_passes": artifact.forward_passes, "budget": chosen.budget,
                         "policy": json.dumps(chosen.policy.as_dict()), "predicted_kl": chosen.predicted_divergence,
                         "ratio": chosen.ratio, "heldout_kl": truth.divergence(chosen.policy),
                         "reducer_alone_n_visual": alone.n_visual,
                         "reducer_alone_ratio": alone_cost / unpruned,
                         "reducer_alone_kl": truth.divergence(alone), "heldout_samples": len(heldout)})
    return rows


def transfer_study(source_model, target_model, samples: list, n_calibration: int, n_heldout: int,
                   budgets: list[str], options: SearchOptions, *, source: str = "", progress: bool = False) -> list[dict]:
    """Per budget: the source's policy transferred to the target vs the target's own search."""
    if source_model.name == target_model.name:
        raise ReproError("transfer needs two different models")
    calibration, heldout = split_samples(samples, n_calibration, n_heldout)
    searched = {m.name: search(m, calibration, budgets, options, source=source, progress=progress)
                for m in (source_model, target_model)}
    truth = HeldOut(target_model, heldout, options)
    target_art = searched[target_model.name]
    L_s, L_t = source_model.card.layers, target_model.card.layers
    rows = []
    for chosen_s, chosen_t in zip(searched[source_model.name].budgets, target_art.budgets):
        for kind, policy in (("transferred", chosen_s.policy.rescaled(L_s, L_t)), ("direct", chosen_t.policy)):
            cost, unpruned = policy_flops(target_art, target_model.card, policy)
            rows.append({"source": source_model.name, "target": target_model.name, "budget": chosen_t.budget,
                         "policy_kind": kind, "policy": json.dumps(policy.as_dict()), "target_ratio": cost / unpruned,
                         "heldout_kl": truth.divergence(policy), "calibration_samples": n_calibration,
                         "heldout_samples": n_heldout})
    return rows


def write_samples_study(rows: list[dict], out_dir: Path | str, name: str) -> list[Path]:
    out = Path(out_dir)
    table = write_csv(rows, out / f"{name}.csv")
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    timing = sorted({(r["samples"], r["seconds"]) for r in rows})
    left.plot(*zip(*timing), marker="o")
    left.set_xlabel("calibration samples")
    left.set_ylabel("search time (s)")
    for budget in dict.fromkeys(r["budget"] for r in rows):
        mine = sorted((r["samples"], r["heldout_kl"]) for r in rows if r["budget"] == budget)
        right.plot(*zip(*mine), marker="o", label=budget)
    right.set_xlabel("calibration samples")
    right.set_ylabel("held-out KL of the chosen policy")
    right.legend(fontsize=8)
    fig.suptitle(f"{rows[0]['model']}: DOP search vs calibration size")
    return [table, *save(fig, out / name)]


def write_transfer_study(rows: list[dict], out_dir: Path | str, name: str) -> list[Path]:
    out = Path(out_dir)
    table = write_csv(rows, out / f"{name}.csv")
    plt = pyplot()
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    x = np.arange(len(budgets))
    fig, ax = plt.subplots(figsize=(1.6 * len(budgets) + 3, 3.4))
    for offset, kind in ((-0.2, "direct"), (0.2, "transferred")):
        kl = [next(r["heldout_kl"] for r in rows if r["budget"] == b and r["policy_kind"] == kind) for b in budgets]
        ax.bar(x + offset, kl, width=0.4, label=kind)
    ax.set_xticks(x, budgets)
    ax.set_ylabel(f"held-out KL on {rows[0]['target']}")
    ax.set_title(f"policy from {rows[0]['source']} vs searched on {rows[0]['target']}")
    ax.legend(fontsize=8)
    return [table, *save(fig, out / name)]
