"""DOP's policy search by additive approximation (shared/docs/DOP.md, "Additive approximation").

1. Reference θ₀ = (n_max, L, L): the reducer at its largest budget, every layer.
2. Each parameter is swept alone at sparse points, the others at θ₀; one pass per point and
   sample gives the mean divergence from the unpruned model's first-token distribution(s).
3. Each curve is interpolated over its integer range.
4. D̂(θ) = Σ_p D_p(θ_p) − (P − 1)·D(θ₀).
5. Every policy of the grid whose prefill FLOPs (validation set's mean shape) fit the budget is
   scored analytically; the smallest D̂ wins. A new budget needs no new forward passes.

Groups (`groups`, a [choice] of DOP.md): `single` sweeps (n_v, D_A, D_P) for all visual tokens;
`reducer` gives each of the reducer's token groups (VisPruner: important, diverse) its own D_A and
D_P: 2·G + 1 curves, each depth swept for one group with every other group at θ₀, and the
enumeration of `grouped.py` (module docstring: how group sizes are counted, how it stays small).

Speed: per sample, the vision encoding, the reduction and the reference distribution are
computed once; depth sweeps resume from the reference run's hidden states at the shallowest layer
they change (the engine's `Prefix`), so they skip the shared prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from repro import flops
from repro.budget import Budget, as_budget
from repro.engine import Prefix
from repro.errors import ReproError
from repro.methods.dop import grouped
from repro.methods.dop.artifact import Choice, Curve, GroupTokens, SearchArtifact, SearchOptions, Shape
from repro.methods.dop.policy import (
    Policy,
    effective_mlp_depth,
    flops_grid,
    mlp_depth_bound,
    policy_schedule,
)
from repro.methods.fitting import Calibration, as_artifact
from repro.methods.registry import method as build_method
from repro.methods.registry import method_spec


def reducer_options(reducer: str, options: dict) -> dict:
    """The reducer's options under DOP: a reducer whose default on LLaVA-NeXT is the official
    all-crop-patches packing runs on the model's own sequence (unpadded, newline tokens kept), which
    DOP's FLOPs model and search describe (`n_layout`), unless the options say otherwise."""
    spec = method_spec(reducer)
    if spec is not None and "full_crops" in spec.faithful_options():
        return {"full_crops": False, **options}
    return dict(options)

def reduce_to(model, prepared, visual, reducer: str, options: dict, n_visual: int):
    """The reducer's tokens, `n_visual` of them in all: DOP's n_v counts the whole sample, while a
    reducer's `tokens:N` is its own knob (one pool for some, N per image for most, as their
    references run one row per image). On a sample of several images the largest knob whose tokens
    stay within `n_visual` is searched by bisection (the reducer runs a few times)."""
    def run(n: int):
        return build_method(reducer, f"tokens:{n}", **reducer_options(reducer, options)).reduce(model, prepared, visual)

    if len(prepared.images) <= 1:
        return run(n_visual)
    lo, hi, best = 0, n_visual, None
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            reduced = run(mid)
        except ReproError:  # more tokens per image than an image offers
            reduced = None
        if reduced is not None and reduced.patches.numel() <= n_visual:
            best, lo = reduced, mid + 1
        else:
            hi = mid - 1
    return best if best is not None else run(0)


log = logging.getLogger(__name__)
PARAMETERS = ("n_visual", "attention_depth", "mlp_depth")


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
        # θ₀'s sequence: the full one, or (per-group form) the reducer's at n_max, which tags groups
        self.top, self.resumable = self.full, True
        if options.groups == "reducer":
            self.top = self._reduced(self.n_max)
            self.resumable = same_sequence(self.top, self.full)

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

    def _reduced(self, n_visual: int):
        opts, model = self.options, self.model
        reducer = build_method(opts.reducer, "tokens:1", **reducer_options(opts.reducer, opts.reducer_options))
        reduced = reduce_to(model, self.prepared, self.visual, opts.reducer, opts.reducer_options, n_visual)
        seq = model.assemble(self.prepared, reduced, reducer.position_mode(model))
        if opts.groups == "reducer" and seq.visual_groups is None:
            raise ReproError(f"reducer {opts.reducer!r} did not tag its token groups (meta['group'])")
        return seq

    def sequence(self, n_visual: int):
        """The prefill sequence with the reducer's `n_visual` tokens (θ₀'s at n_max)."""
        return self.top if n_visual >= self.n_max else self._reduced(n_visual)

    def divergence(self, policy: Policy, seq=None) -> float:
        """D(θ) on this sample; depth-only policies resume from the reference's shared prefix."""
        opts, model = self.options, self.model
        seq = self.sequence(policy.n_visual) if seq is None else seq
        groups = seq.visual_groups if opts.groups == "reducer" else None
        schedule = policy_schedule(policy, seq.n_tokens, seq.visual, groups, model.card.layers, opts.mha_semantics)
        resume = None
        if seq is self.top and self.resumable:
            start = first_changed_layer(policy, opts.mha_semantics, model.card.layers)
            if start in self.captured:
                resume = Prefix(start, self.captured[start])
        return kl(self.reference, self._first_tokens(seq, schedule, resume=resume), opts.kl_direction)


def same_sequence(a, b) -> bool:
    """Whether two sequences feed the decoder the same tokens at the same positions."""
    return (a.n_tokens == b.n_tokens and torch.equal(a.visual, b.visual) and torch.equal(a.positions, b.positions)
            and torch.equal(a.embeds, b.embeds))


def first_changed_layer(policy: Policy, mha_semantics: str, n_layers: int) -> int:
    """The shallowest layer where a full-token policy differs from running every operation."""
    return min(min(a, effective_mlp_depth(a, p, mha_semantics, n_layers)) for a, p in policy.depths)


def sweep_policies(points: dict[str, list[int]], n_max: int, n_layers: int, groups: list[str]) -> dict[str, list[Policy]]:
    """θ₀ and, per parameter, the policies of its sweep (every other parameter at θ₀)."""
    L, top = n_layers, ((n_layers, n_layers),) * len(groups)

    def at(g: int, pair: tuple[int, int]) -> tuple[tuple[int, int], ...]:
        return top[:g] + (pair,) + top[g + 1:]

    sweeps = {"reference": [Policy(n_max, top)], "n_visual": [Policy(n, top) for n in points["n_visual"]]}
    for g, name in enumerate(groups):
        suffix = "" if groups == ["visual"] else f".{name}"
        sweeps[f"attention_depth{suffix}"] = [Policy(n_max, at(g, (a, L))) for a in points["attention_depth"]]
        sweeps[f"mlp_depth{suffix}"] = [Policy(n_max, at(g, (L, p))) for p in points["mlp_depth"]]
    return sweeps


def search(model, samples: Iterable, budgets: list[str], options: SearchOptions | None = None, *,
           source: str = "", excluded: tuple[str, ...] = (), progress: bool = True) -> SearchArtifact:
    """Run the additive search over `samples` ((id, images, question) items); returns the artifact."""
    options = options or SearchOptions()
    options.check()
    samples = list(samples)
    if not samples:
        raise ReproError("the search needs at least one calibration sample")
    L = model.card.layers
    options = options.resolved(L)
    groups = options.group_names()
    start = time.perf_counter()
    shapes: list[tuple[int, int, int]] = []  # per sample: non-visual tokens, layout tokens, forward/layer passes
    values: dict[str, list] = {}
    group_tokens: list[list[list[int]]] = []
    points: dict[str, list[int]] | None = None
    depth_sweeps = sweep_policies(sweep_points(1, L, options), 1, L, groups)
    capture = {first_changed_layer(p, options.mha_semantics, L) for k, ps in depth_sweeps.items()
               if k not in ("reference", "n_visual") for p in ps} - {0}
    for sample in tqdm(samples, desc="dop search", disable=not progress):
        runner = SampleRunner(model, sample.images, sample.question, options, capture)
        n_max = runner.n_max
        if points is None:
            points = sweep_points(n_max, L, options)
        elif points != sweep_points(n_max, L, options):
            raise ReproError("calibration samples must share the visual-token count (use one image size)")
        counts = []
        for name, policies in sweep_policies(points, n_max, L, groups).items():
            row = []
            for policy in policies:
                seq = runner.sequence(policy.n_visual)
                if name == "n_visual" and options.groups == "reducer":
                    counts.append(torch.bincount(seq.visual_groups.cpu(), minlength=len(groups)).tolist())
                row.append(runner.divergence(policy, seq))
            values.setdefault(name, []).append(row)
        group_tokens.append(counts)
        full = runner.full
        shapes.append((full.n_tokens - full.visual.numel(), full.visual.numel() - n_max, runner.passes,
                       runner.layer_passes))
        del runner  # its cached prefix states are large on real models; keep only the numbers
    mean = {k: np.mean(np.array(v), axis=0).tolist() for k, v in values.items()}
    n_other, n_layout, passes, layer_passes = np.array(shapes, dtype=float).T
    tokens = None
    if options.groups == "reducer":  # mean tokens per group at each sampled n_v (layout tokens in group 0)
        counts = np.mean(np.array(group_tokens, dtype=float), axis=0).tolist()
        tokens = GroupTokens(tuple(points["n_visual"]), tuple(tuple(c) for c in counts))
    artifact = SearchArtifact(
        model=model.name, layers=L, options=options, groups=tuple(groups),
        calibration=Calibration(source, tuple(s.id for s in samples), tuple(excluded)),
        shape=Shape(n_max, float(n_other.mean()), float(n_layout.mean()), tokens),
        curves={name: Curve(tuple(points[name.split(".")[0]]), tuple(mean[name])) for name in mean if name != "reference"},
        reference_divergence=mean["reference"][0], forward_passes=int(passes.sum()),
        layer_passes=int(layer_passes.sum()), seconds=time.perf_counter() - start)
    return replace(artifact, budgets=tuple(choose(artifact, model.card, b) for b in budgets))


def curve(artifact: SearchArtifact, name: str) -> np.ndarray:
    """The interpolated curve of parameter `name` over its whole integer range."""
    c = artifact.curves[name]
    size = artifact.shape.n_visual_max + 1 if name == "n_visual" else artifact.layers + 1
    return interpolate(list(c.points), list(c.values), size, artifact.options.interpolation)


def predicted_divergence(artifact: SearchArtifact) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The interpolated single-parameter curves over their integer ranges, and D(θ₀)."""
    return (curve(artifact, "n_visual"), curve(artifact, "attention_depth"), curve(artifact, "mlp_depth"),
            artifact.reference_divergence)


def additive_estimate(artifact: SearchArtifact) -> np.ndarray:
    """D̂ for every single-group policy: array [n_visual, D_A, D_P]."""
    d_v, d_a, d_p, d0 = predicted_divergence(artifact)
    return d_v[:, None, None] + d_a[None, :, None] + d_p[None, None, :] - 2 * d0


def unpruned_flops(artifact: SearchArtifact, card) -> int:
    """Prefill FLOPs (paper convention) of the unpruned model on the calibration mean shape."""
    shape = artifact.shape
    return flops.unpruned_prefill_flops(card, round(shape.n_other + shape.n_visual_max + shape.n_layout), "paper")


def choose(artifact: SearchArtifact, card, budget: Budget | str) -> Choice:
    """The feasible policy with the smallest D̂ under `budget` (analytic, no forward passes)."""
    budget = as_budget(budget)
    if budget.kind == "tokens":
        raise ReproError("DOP budgets are FLOPs budgets: use ratio:R or tflops:X")
    shape, semantics = artifact.shape, artifact.options.mha_semantics
    L, n_max = artifact.layers, shape.n_visual_max
    unpruned = unpruned_flops(artifact, card)
    ceiling = budget.max_flops(unpruned)
    if artifact.grouped:
        return _choose_grouped(artifact, card, budget, ceiling, unpruned)
    n_visual = np.arange(n_max + 1)
    cost = flops_grid(card, shape.n_other, n_visual + round(shape.n_layout), "paper", semantics)
    # layout tokens (LLaVA-NeXT newlines) follow the visual depths, so they count with n_visual
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
    return Choice(str(budget), Policy.single(int(n), int(a), int(p)), float(score[n, a, p]),
                  float(cost[n, a, p]) / 1e12, float(cost[n, a, p] / unpruned))


def policy_flops(artifact: SearchArtifact, card, policy: Policy) -> tuple[float, float]:
    """(prefill FLOPs of `policy`, of the unpruned model), `paper` convention, on the artifact's
    calibration mean shape; n_visual is capped at what the images have."""
    shape, semantics = artifact.shape, artifact.options.mha_semantics
    policy = Policy(min(policy.n_visual, shape.n_visual_max), policy.depths)
    unpruned = unpruned_flops(artifact, card)
    if artifact.grouped:
        return float(grouped.policy_cost(artifact, card, policy)), float(unpruned)
    (a, p), = policy.depths
    grid = flops_grid(card, shape.n_other, np.array([policy.n_visual + round(shape.n_layout)]), "paper", semantics)
    return float(grid[0, a, p]), float(unpruned)


def _choose_grouped(artifact: SearchArtifact, card, budget: Budget, ceiling: float, unpruned: int) -> Choice:
    found = grouped.best_policy(artifact, card, ceiling)
    if found is None:
        cheapest = grouped.policy_cost(artifact, card, Policy(0, ((0, 0),) * len(artifact.groups)))
        raise ReproError(f"no DOP policy meets {budget}: the cheapest costs {cheapest / 1e12:.4g} TFLOPs "
                         f"> {ceiling / 1e12:.4g} allowed (on the calibration set's mean shape)")
    policy, score = found
    cost = grouped.policy_cost(artifact, card, policy)
    return Choice(str(budget), policy, float(score), cost / 1e12, cost / unpruned)


def save_artifact(artifact: SearchArtifact, path: Path | str) -> Path:
    return artifact.save(path)


def load_artifact(path: Path | str | SearchArtifact) -> SearchArtifact:
    """A search artifact from its JSON file (or itself); a missing, damaged or stale file is a ReproError."""
    try:
        return as_artifact(SearchArtifact, path)
    except ReproError as err:
        if isinstance(path, (str, Path)) and not Path(path).exists():
            raise ReproError(f"no DOP artifact at {path}; create one with `python -m repro search dop ...`") from None
        raise err
