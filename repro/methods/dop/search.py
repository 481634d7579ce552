"""DOP's policy search by additive approximation (shared/docs/DOP.md, "Additive approximation").

1. Reference θ₀ = (n_max, L, L): the reducer at its largest budget, every layer.
2. Each parameter is swept alone at sparse points, the others at θ₀; one pass per point and
   sample gives the mean divergence from the unpruned model's first-token distribution(s).
3. Each curve is interpolated over its integer range.
4. D̂(θ) = Σ_p D_p(θ_p) − (P − 1)·D(θ₀).
5. Every policy of the grid whose prefill FLOPs (validation set's mean shape) fit the budget is
   scored analytically; the smallest D̂ wins. A new budget needs no new forward passes.

Speed: per sample, the vision encoding, the reduction and the reference distribution are
computed once; depth sweeps resume from the reference run's hidden states at the shallowest layer
they change (the engine's `Prefix`), so they skip the shared prefix.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from repro import flops
from repro.budget import Budget, as_budget
from repro.engine import Prefix, Schedule
from repro.errors import ReproError
from repro.methods.dop.policy import (MHA_SEMANTICS, Policy, effective_mlp_depth, flops_grid, mlp_depth_bound,
                                      policy_schedule)
from repro.methods.registry import method as build_method

log = logging.getLogger(__name__)
ARTIFACT_FORMAT = "repro-dop-search/1"
PARAMETERS = ("n_visual", "attention_depth", "mlp_depth")
KL_DIRECTIONS = ("forward", "reverse")
INTERPOLATIONS = ("linear", "pchip")


@dataclass(frozen=True)
class SearchOptions:
    """Every option that changes a search's result (recorded in, and checked against, the artifact)."""

    reducer: str = "vispruner"
    reducer_options: dict = field(default_factory=dict)
    mha_semantics: str = "drop"
    kl_direction: str = "forward"
    kl_tokens: int = 1
    interpolation: str = "linear"
    groups: str = "single"
    depth_step: int = 4
    visual_points: int = 8
    prefix_cache: bool = True  # resume depth sweeps from the reference's hidden states (speed only)

    def check(self) -> None:
        if self.mha_semantics not in MHA_SEMANTICS:
            raise ReproError(f"mha_semantics must be one of {MHA_SEMANTICS}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise ReproError(f"kl_direction must be one of {KL_DIRECTIONS}")
        if self.interpolation not in INTERPOLATIONS:
            raise ReproError(f"interpolation must be one of {INTERPOLATIONS}")
        if self.groups != "single":
            raise ReproError("only groups='single' is searched so far; the per-group form executes "
                             "(Policy with one depth pair per reducer group) but has no search yet")
        if self.kl_tokens < 1 or self.depth_step < 1 or self.visual_points < 2:
            raise ReproError("need kl_tokens >= 1, depth_step >= 1 and visual_points >= 2")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def kl(reference: torch.Tensor, logprobs: torch.Tensor, direction: str) -> float:
    """KL over the last dimension, averaged over the leading one (answer tokens)."""
    p, q = (reference, logprobs) if direction == "forward" else (logprobs, reference)
    return float((p.exp() * (p - q)).sum(-1).mean())


def sweep_points(n_max: int, n_layers: int, options: SearchOptions) -> dict[str, list[int]]:
    """Sparse sample points of each parameter (both ends included)."""
    depths = sorted(set(range(0, n_layers + 1, options.depth_step)) | {n_layers})
    visual = sorted(set(np.linspace(0, n_max, options.visual_points).round().astype(int).tolist()))
    return {"n_visual": visual, "attention_depth": depths, "mlp_depth": depths}


def interpolate(points: list[int], values: list[float], size: int, method: str) -> np.ndarray:
    """The curve over 0..size-1 from its sampled points."""
    grid = np.arange(size)
    if method == "pchip" and len(points) > 2:
        from scipy.interpolate import PchipInterpolator

        return PchipInterpolator(points, values)(grid)
    return np.interp(grid, points, values)


class SampleRunner:
    """Everything about one calibration sample that policies share, computed once."""

    def __init__(self, model, images, question: str, options: SearchOptions, capture: set[int] = frozenset()):
        self.model, self.options, self.capture = model, options, capture
        self.prepared = model.prepare(images, question)
        self.visual = model.encode(self.prepared)
        self.n_max = self.visual.patches.numel()
        self.full = model.assemble(self.prepared, self.visual)
        self.passes = 0
        self.layer_passes = 0
        self.captured: dict[int, torch.Tensor] = {}
        self.reference = self._first_tokens(self.full, None, reference=True)

    def _first_tokens(self, seq, schedule, *, reference=False, resume: Prefix | None = None) -> torch.Tensor:
        """Log-probs of the first `kl_tokens` answer tokens, teacher-forced on the unpruned answer."""
        engine, layers = self.model.engine, self.model.card.layers
        capture = self.capture if reference and self.options.kl_tokens == 1 and self.options.prefix_cache else ()
        out = engine.prefill(seq, schedule, resume=resume, capture=capture)
        self.passes += 1
        self.layer_passes += layers - (resume.layer if resume else 0)
        if reference:
            self.captured = out.captured
        rows = [out.logits.log_softmax(-1)]
        if self.options.kl_tokens > 1:
            answer = self.answer if not reference else self._greedy(out)
            for step, token in enumerate(answer[: self.options.kl_tokens - 1]):
                rows.append(engine.decode_step(token, out.cache, step).log_softmax(-1))
        return torch.stack(rows)

    def _greedy(self, out) -> list[int]:
        self.answer = list(self.model.engine.greedy(out, self.options.kl_tokens, set()))
        return self.answer

    def divergence(self, policy: Policy) -> float:
        """D(θ) on this sample; depth-only policies resume from the reference's shared prefix."""
        opts, model = self.options, self.model
        if policy.n_visual >= self.n_max:
            seq = self.full
        else:
            reducer = build_method(opts.reducer, f"tokens:{policy.n_visual}", **opts.reducer_options)
            seq = model.assemble(self.prepared, reducer.reduce(model, self.prepared, self.visual),
                                 reducer.position_mode(model))
        schedule = policy_schedule(policy, seq.n_tokens, seq.visual, None, model.card.layers, opts.mha_semantics)
        resume = None
        if seq is self.full:
            start = first_changed_layer(policy, opts.mha_semantics, model.card.layers)
            if start in self.captured:
                resume = Prefix(start, self.captured[start])
        return kl(self.reference, self._first_tokens(seq, schedule, resume=resume), opts.kl_direction)


def first_changed_layer(policy: Policy, mha_semantics: str, n_layers: int) -> int:
    """The shallowest layer where a full-token policy differs from running every operation."""
    a, p = policy.depths[0]
    return min(a, effective_mlp_depth(a, p, mha_semantics, n_layers))


def search(model, samples: Iterable, budgets: list[str], options: SearchOptions | None = None, *,
           source: str = "", progress: bool = True) -> dict:
    """Run the additive search over `samples` ((id, images, question) items); returns the artifact."""
    options = options or SearchOptions()
    options.check()
    samples = list(samples)
    if not samples:
        raise ReproError("the search needs at least one calibration sample")
    L = model.card.layers
    start = time.perf_counter()
    runners: list[SampleRunner] = []
    values: dict[str, list] = {"reference": [], **{p: [] for p in PARAMETERS}}
    points: dict[str, list[int]] | None = None
    for sample in tqdm(samples, desc="dop search", disable=not progress):
        depths = sweep_points(1, L, options)["attention_depth"]
        sweeps = [Policy.single(10**9, a, L) for a in depths] + [Policy.single(10**9, L, p) for p in depths]
        capture = {first_changed_layer(s, options.mha_semantics, L) for s in sweeps} - {0}
        runner = SampleRunner(model, sample.images, sample.question, options, capture)
        n_max = runner.n_max
        if points is None:
            points = sweep_points(n_max, L, options)
        elif points != sweep_points(n_max, L, options):
            raise ReproError("calibration samples must share the visual-token count (use one image size)")
        values["reference"].append(runner.divergence(Policy.single(n_max, L, L)))
        values["n_visual"].append([runner.divergence(Policy.single(n, L, L)) for n in points["n_visual"]])
        values["attention_depth"].append([runner.divergence(Policy.single(n_max, a, L)) for a in points["attention_depth"]])
        values["mlp_depth"].append([runner.divergence(Policy.single(n_max, L, p)) for p in points["mlp_depth"]])
        runners.append(runner)
    mean = {k: np.mean(np.array(v), axis=0).tolist() for k, v in values.items()}
    n_other = float(np.mean([r.full.n_tokens - r.full.visual.numel() for r in runners]))
    n_layout = float(np.mean([r.full.visual.numel() - r.n_max for r in runners]))
    artifact = {
        "format": ARTIFACT_FORMAT,
        "model": model.name,
        "layers": L,
        "options": options.as_dict(),
        "calibration": {"source": source, "samples": [s.id for s in samples]},
        "shape": {"n_visual_max": runners[0].n_max, "n_other": n_other, "n_layout": n_layout},
        "curves": {p: {"points": points[p], "values": mean[p]} for p in PARAMETERS},
        "reference_divergence": mean["reference"],
        "forward_passes": sum(r.passes for r in runners),
        "layer_passes": sum(r.layer_passes for r in runners),
        "seconds": time.perf_counter() - start,
    }
    artifact["budgets"] = [choose(artifact, model.card, b) for b in budgets]
    return artifact


def predicted_divergence(artifact: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The interpolated single-parameter curves over their integer ranges, and D(θ₀)."""
    curves, method = artifact["curves"], artifact["options"]["interpolation"]
    n_max, L = artifact["shape"]["n_visual_max"], artifact["layers"]
    d_v = interpolate(curves["n_visual"]["points"], curves["n_visual"]["values"], n_max + 1, method)
    d_a = interpolate(curves["attention_depth"]["points"], curves["attention_depth"]["values"], L + 1, method)
    d_p = interpolate(curves["mlp_depth"]["points"], curves["mlp_depth"]["values"], L + 1, method)
    return d_v, d_a, d_p, artifact["reference_divergence"]


def additive_estimate(artifact: dict) -> np.ndarray:
    """D̂ for every single-group policy: array [n_visual, D_A, D_P]."""
    d_v, d_a, d_p, d0 = predicted_divergence(artifact)
    return d_v[:, None, None] + d_a[None, :, None] + d_p[None, None, :] - 2 * d0


def choose(artifact: dict, card, budget: Budget | str) -> dict:
    """The feasible policy with the smallest D̂ under `budget` (analytic, no forward passes)."""
    budget = as_budget(budget)
    if budget.kind == "tokens":
        raise ReproError("DOP budgets are FLOPs budgets: use ratio:R or tflops:X")
    shape, semantics = artifact["shape"], artifact["options"]["mha_semantics"]
    L, n_max = artifact["layers"], shape["n_visual_max"]
    n_visual = np.arange(n_max + 1)
    cost = flops_grid(card, shape["n_other"], n_visual + round(shape["n_layout"]), "paper", semantics)
    # layout tokens (LLaVA-NeXT newlines) follow the visual depths, so they count with n_visual
    unpruned = flops.unpruned_prefill_flops(card, round(shape["n_other"] + n_max + shape["n_layout"]), "paper")
    ceiling = budget.max_flops(unpruned)
    estimate = additive_estimate(artifact)
    depth = np.arange(L + 1)
    bound = mlp_depth_bound(depth, L, semantics)
    canonical = depth[None, None, :] <= bound[None, :, None]  # D_P beyond its bound is the same policy
    feasible = (cost <= ceiling) & canonical
    if not feasible.any():
        raise ReproError(f"no DOP policy meets {budget}: the cheapest costs {cost.min() / 1e12:.4g} TFLOPs "
                         f"> {ceiling / 1e12:.4g} allowed (on the calibration set's mean shape)")
    score = np.where(feasible, estimate, np.inf)
    n, a, p = np.unravel_index(np.argmin(score), score.shape)
    return {"budget": str(budget), "policy": Policy.single(int(n), int(a), int(p)).as_dict(),
            "predicted_divergence": float(score[n, a, p]), "tflops": float(cost[n, a, p]) / 1e12,
            "ratio": float(cost[n, a, p] / unpruned)}


def save_artifact(artifact: dict, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(artifact, indent=2))
    tmp.replace(path)
    return path


def load_artifact(path: Path | str) -> dict:
    path = Path(path)
    try:
        artifact = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReproError(f"no DOP artifact at {path}; create one with `python -m repro search dop ...`") from None
    except json.JSONDecodeError as err:
        raise ReproError(f"DOP artifact {path} is corrupt ({err}); rerun the search") from None
    if artifact.get("format") != ARTIFACT_FORMAT:
        raise ReproError(f"{path} is not a DOP search artifact (format {artifact.get('format')!r})")
    return artifact
