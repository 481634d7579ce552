"""How the method contract suite (test_method_contract.py) exercises each registered method.

One row per registry name, in the spirit of Composer's algorithm_settings.py: a method registered
without a row fails the suite. A named variant that changes the rule (e.g. SparseVLM v2.0) gets a
row of its own, keyed "<method> <variant>", with `variant_of` and its `options`. A row says how to build the method for a budget, what `tokens:T`
must realize (the card's per-layer visual counts), which ratios to check, and which checks do not
apply, with the reason. Adding a method = adding a row; most rows need only `count`.

Fields (all optional except `count`):
  count(shape, T)  -> the per-layer visual query counts the card gives for tokens:T
  tokens(shape)    -> the T the count check runs (default: half the visual tokens)
  full             -> "visual" or "patches": the full budget is tokens:<that many> (default "visual")
  options          -> constructor options added to every build
  full_options     -> extra options for the full-budget check only (e.g. a packing that is the
                      model's own sequence)
  build(budget, shape) -> the Method, when a budget alone cannot build it (DOP)
  ratios           -> ratio:R budgets to check: realized paper FLOPs in [floor·R, R]
  ratio_floor      -> the lower bound's factor (default 0.98); coarser knobs document theirs
  infeasible       -> a budget the method must refuse with an "infeasible" ReproError
  inverse_budget   -> the tokens:T of the inverse check on tinyworld-llava
  not_applicable   -> {check name: reason} for checks that do not apply (no silent skips)
  variant_of       -> for a variant row: the registered method it builds
  xfail            -> {check name: reason} for known, measured failures (strict xfail)
  undefined        -> {family: what its clear error says} where the method is not defined
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import repro
from baselines import dart, fitprune, pdrop, sparsevlm


class Shape(NamedTuple):
    """The test input as a family's model sees it."""

    family: str
    n_layers: int
    n_visual: int  # visual tokens in the LLM input (LLaVA-NeXT: patches + row newlines)
    n_patches: int  # of which image patches
    n_crops: int = 1  # LLaVA-NeXT: the base image and its tiles


CHECKS = ("full", "tokens", "ratio", "flops", "inverse", "alternating", "determinism")


@dataclass(frozen=True)
class MethodSettings:
    count: Callable[[Shape, int], list[int]]
    tokens: Callable[[Shape], int] = lambda s: s.n_visual // 2
    full: str = "visual"
    options: dict = field(default_factory=dict)
    full_options: dict = field(default_factory=dict)
    build: Callable[[str, Shape], object] | None = None
    ratios: tuple[float, ...] = (0.8,)
    ratio_floor: float = 0.98
    infeasible: str | None = None
    inverse_budget: str = "tokens:36"
    not_applicable: dict[str, str] = field(default_factory=dict)
    xfail: dict[str, str] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    variant_of: str | None = None  # a named variant: the registered method it runs (with `options`)

    def make(self, name: str, budget: str | None, shape: Shape, **extra):
        if self.build is not None:
            return self.build(budget, shape)
        return repro.method(self.variant_of or name, budget, **{**self.options, **extra})


def every_layer(count: Callable[[Shape, int], int]) -> Callable[[Shape, int], list[int]]:
    """Pre-LLM methods: the same visual count in every layer."""
    return lambda s, t: [count(s, t)] * s.n_layers


def pdrop_count(s: Shape, t: int) -> list[int]:
    """The largest λ (1e-4 grid) whose layer-average visual count is at most T (card §2.2)."""
    bounds = tuple(sorted({round(b * s.n_layers / 32) for b in pdrop.REFERENCE_LAYERS}))
    def counts(i: int) -> list[int]:
        return pdrop.per_layer_counts(s.n_layers, bounds, pdrop.stage_counts(s.n_visual, i / pdrop.LAMBDA_GRID, len(bounds)))

    lo, hi = 0, pdrop.LAMBDA_GRID  # the average is non-decreasing in λ: bisect for the last fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if sum(counts(mid)) <= t * s.n_layers else (lo, mid - 1)
    return counts(lo)


def sparsevlm_count(s: Shape, t: int) -> list[int]:
    """Stage keeps of the budget's row plus the recycled clusters, sparse layers [0, 1, 2] on 4 layers."""
    layers = tuple(sorted({round(b * s.n_layers / 32) for b in sparsevlm.REFERENCE_LAYERS}))
    counts = sparsevlm.visual_counts(s.n_visual, sparsevlm.stage_keeps(s.n_visual, t))
    return sparsevlm.per_layer_visual(s.n_layers, layers, counts, s.n_visual)


def sparsevlm_v2_count(s: Shape, t: int) -> list[int]:
    """v2.0: its own rows, no recycled tokens."""
    layers = tuple(sorted({round(b * s.n_layers / 32) for b in sparsevlm.REFERENCE_LAYERS}))
    counts = sparsevlm.visual_counts(s.n_visual, sparsevlm.stage_keeps(s.n_visual, t, sparsevlm.SCHEDULES_V2),
                                     recycle=False)
    return sparsevlm.per_layer_visual(s.n_layers, layers, counts, s.n_visual)


def dart_count(s: Shape, t: int) -> list[int]:
    """4 + 8⌊T/8⌋ from layer K = 2 (LLaVA-NeXT: T' = min(T, N − 4))."""
    kept = dart.dart_count(s.n_visual, t, 4, 8, next_mode=s.family == "llava-next")
    return [s.n_visual] * 2 + [kept] * (s.n_layers - 2)


def fitprune_count(s: Shape, t: int) -> list[int]:
    """Attention visual counts of the table nearest to a 1 − T/N reduction (card: 64/128/192 of
    576 → 90/80/70)."""
    target = 100 * (1 - t / s.n_visual)
    ratio = min(sorted(fitprune.RECIPES), key=lambda r: abs(r - target))
    return fitprune.visual_counts(fitprune.scaled_recipe(ratio, s.n_layers, s.n_visual), s.n_visual)[0]


def dop_build(budget: str | None, s: Shape):
    """DOP with an explicit policy (its budget is chosen by a search, tested in test_dop.py):
    tokens:T keeps T uniform patches in every operation of every layer."""
    t = int(budget.split(":")[1])
    return repro.method("dop", policy=(t, s.n_layers, s.n_layers), reducer="uniform")


NO_SCORES = "keeps tokens without scores, so there is nothing to invert"
NO_INVERSE = ("the reference has no inverse variant; its scores are checked by the hand-built cases in "
              "tests/test_baselines_prellm.py")
MERGES = "merges the tokens it drops into the kept ones, as the reference does, so no budget is the unpruned input"
IN_TINYWORLD_TESTS = "runs in tests/test_tinyworld_llava.py over 192 samples"
SETTINGS: dict[str, MethodSettings] = {
    "fastv": MethodSettings(
        count=lambda s, t: [s.n_visual] * 2 + [t] * (s.n_layers - 2),
        ratios=(0.85,), infeasible="ratio:0.3",  # layers 0-1 alone cost more than 0.3
        not_applicable={"inverse": IN_TINYWORLD_TESTS}),
    "vispruner": MethodSettings(  # official NeXT packing: every crop patch, no newline tokens
        count=every_layer(lambda s, t: t), full="patches", full_options={"full_crops": False},
        tokens=lambda s: s.n_patches // 2, ratios=(0.6, 0.8),
        not_applicable={"inverse": IN_TINYWORLD_TESTS + " (a strict xfail: [CLS] attention is untrained there)"}),
    "uniform": MethodSettings(
        count=every_layer(lambda s, t: t + s.n_visual - s.n_patches), full="patches",
        tokens=lambda s: s.n_patches // 2, ratios=(0.5, 0.8), not_applicable={"inverse": NO_SCORES}),
    "random": MethodSettings(
        count=every_layer(lambda s, t: t), ratios=(0.5, 0.8), infeasible="ratio:0.01",
        not_applicable={"inverse": NO_SCORES}),
    "dop": MethodSettings(
        count=every_layer(lambda s, t: t + s.n_visual - s.n_patches), full="patches",
        tokens=lambda s: s.n_patches // 2, build=dop_build,
        not_applicable={"ratio": "a FLOPs budget selects a searched policy (tests/test_dop.py)",
                        "inverse": "its reducer's scores are checked under the reducer's own name"}),
    "pdrop": MethodSettings(count=pdrop_count, infeasible="tokens:1", inverse_budget="tokens:54"),
    "sparsevlm": MethodSettings(count=sparsevlm_count, ratios=(0.7, 0.8)),
    "sparsevlm v2.0": MethodSettings(count=sparsevlm_v2_count, ratios=(0.7, 0.8), options={"version": "2.0"},
                                     variant_of="sparsevlm"),
    "fitprune": MethodSettings(
        count=fitprune_count, infeasible="ratio:0.05", inverse_budget="tokens:60",
        ratio_floor=0.9),  # eleven official tables: the nearest below R can be ~7% under it
    "dart": MethodSettings(
        count=dart_count, ratios=(0.85,), infeasible="ratio:0.3",
        ratio_floor=0.9),  # realized counts move in steps of 8 tokens on 54-112 visual tokens
    "divprune": MethodSettings(count=every_layer(lambda s, t: t), ratios=(0.5, 0.8), infeasible="ratio:0.01",
                               not_applicable={"inverse": NO_INVERSE}),
    "visionzip": MethodSettings(  # official NeXT packing: every crop patch, no newline tokens
        count=every_layer(lambda s, t: t), full="patches", tokens=lambda s: s.n_patches // 2, ratios=(0.6, 0.8),
        not_applicable={"full": MERGES, "inverse": NO_INVERSE}),
    "cdpruner": MethodSettings(
        count=every_layer(lambda s, t: t), full="patches", full_options={"full_crops": False},
        tokens=lambda s: s.n_patches // 2, ratios=(0.6, 0.8), not_applicable={"inverse": NO_INVERSE}),
    "prumerge_plus": MethodSettings(
        count=every_layer(lambda s, t: t), full="patches", options={"mode": "fixed"},
        tokens=lambda s: s.n_patches // 2, ratios=(0.6, 0.8), not_applicable={"full": MERGES, "inverse": NO_INVERSE}),
    "trim": MethodSettings(  # 8 tokens: on LLaVA-NeXT only the base crop reaches the LLM (reference)
        count=every_layer(lambda s, t: t), full="patches", tokens=lambda s: 8,
        not_applicable={"full": MERGES + " (TRIM's mean token)", "inverse": NO_INVERSE,
                        "ratio": "on LLaVA-NeXT only the base crop reaches the LLM, so most ratios cannot be met "
                                 "from below; the shared per-image ratio solver is checked with the other methods"}),
    "resize": MethodSettings(
        count=every_layer(lambda s, t: s.n_crops * math.isqrt(t // s.n_crops) ** 2),  # s x s per crop
        full="patches", tokens=lambda s: 9 * s.n_crops, ratios=(0.8,),
        ratio_floor=0.5,  # pooled grids are squares: the realized count moves in steps of 2s+1 tokens
        not_applicable={"inverse": NO_SCORES,
                        "full": "LLaVA-NeXT: the grids are pooled without their newline tokens, so even the "
                                "full budget is not the unpruned sequence (LLaVA-1.5 reproduces it)"},
        undefined={"qwen2.5-vl": "max_pixels", "internvl3": "max_tiles"}),
}
