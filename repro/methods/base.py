"""The Method interface: what a token-reduction method may decide, as data.

A method may reduce visual tokens before the LLM (`reduce`) and plan the per-layer token sets of
the prefill (`planner`), statically or from probes. It never touches the model's modules: all
sequence surgery happens in the adapter and the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from repro import flops
from repro.budget import Budget, solve_knob
from repro.engine import Planner, Schedule, Sequence
from repro.errors import ReproError
from repro.models.adapter import Prepared, VisualTokens

if TYPE_CHECKING:
    from repro.methods.fitting import FitArtifact
    from repro.models.cards import ArchCard
    from repro.models.model import Model


class Method:
    """The unpruned model; subclasses override the hooks they need."""

    name = "unpruned"
    positions = "original"  # how a reduced sequence is numbered: "original" or "contiguous"
    skip_dead_ops = False  # ask the engine to skip operations that cannot reach the output
    token_groups: tuple[str, ...] = ()  # a reducer's groups of kept tokens, tagged as meta["group"]

    def __init__(self, budget: Budget | None = None):
        self.budget = budget

    def reduce(self, model: "Model", prepared: Prepared, visual: VisualTokens) -> VisualTokens:
        """Pre-LLM: select or merge visual tokens."""
        return visual

    def position_mode(self, model: "Model") -> str:
        """How this model numbers a reduced sequence: `positions`, except that M-RoPE models keep
        original 3-D positions (no reference renumbers them; METHODS.md §1.2)."""
        return "original" if model.family == "qwen2.5-vl" else self.positions

    def planner(self, model: "Model", seq: Sequence) -> Planner:
        """In-LLM: the token sets of every layer's operations."""
        return Schedule.full(model.card.layers)

    def min_flops(self, card: "ArchCard", n_visual: int, n_other: int) -> int:
        """The least prefill FLOPs (paper convention) this method realizes on a prompt of N visual
        and `n_other` other tokens: a ratio:/tflops: budget below it is infeasible there (the dry
        run warns per model, method and budget). Default, a pre-LLM reducer's: no visual token left.
        In-LLM methods override it with their knob's cheapest setting."""
        return flops.unpruned_prefill_flops(card, n_other, "paper")

    # The fit hook (contract in methods/fitting.py): a method that fits on calibration data
    # overrides both classmethods and accepts `artifact=` (path or artifact) as an option.

    artifact_type: "type[FitArtifact] | None" = None  # set by a method that fits: its artifact class

    @classmethod
    def fits(cls) -> bool:
        """Whether this method has a fit step on calibration data."""
        return cls.artifact_type is not None

    @classmethod
    def fit_config(cls, options: dict, fit: dict) -> Any:
        """Validate a fit request (the method's options, its fit keys); a frozen dataclass of
        everything that changes the fit's result. ReproError on bad input."""
        raise ReproError(f"method {cls.name!r} has no fit step on calibration data (no `search:` for it)")

    @classmethod
    def fit(cls, model: "Model", samples: list, config: Any, *, source: str = "", excluded: tuple[str, ...] = (),
            budgets: tuple[str, ...] = (), progress: bool = True) -> "FitArtifact":
        """Fit on `samples` from calibration `source`; returns a typed `FitArtifact`."""
        raise ReproError(f"method {cls.name!r} has no fit step on calibration data")


def visual_tokens_for_budget(model: "Model", prepared: Prepared, n_visual: int, budget: Budget, *,
                             n_other: int | None = None) -> int:
    """How many visual tokens a pre-LLM reducer may keep on this sample under `budget`.

    `tokens:N` is taken as is; more than the `n_visual` tokens available is a ReproError, never a
    silent clamp. `ratio:R` and `tflops:X` are solved for the sample's real sequence shape with the
    paper FLOPs convention; `n_other` (default: the prompt's other tokens) is what the LLM sees
    besides the reducer's pool (e.g. LLaVA-NeXT newline tokens a method keeps).
    """
    if budget.kind == "tokens":
        if int(budget.value) > n_visual:
            raise ReproError(f"budget {budget} asks for more visual tokens than the {n_visual} this sample offers "
                             f"the method; use at most tokens:{n_visual} (or a ratio:/tflops: budget)")
        return int(budget.value)
    if n_other is None:
        n_other = prepared.input_ids.numel() - n_visual

    def cost(n_keep: int) -> float:
        return flops.unpruned_prefill_flops(model.card, n_other + n_keep, "paper")

    unpruned = flops.unpruned_prefill_flops(model.card, prepared.input_ids.numel(), "paper")
    return solve_knob(range(n_visual + 1), cost, budget.max_flops(unpruned))


def per_image_budgets(model: "Model", prepared: Prepared, capacities: list[int], budget: Budget, *,
                      n_other: int | None = None, extra: int = 0) -> list[int]:
    """Tokens each image keeps. The references apply their T to each image (one row per image),
    so `tokens:N` is N per image (`extra` tokens a method adds per image, e.g. a merged token,
    count in N); `ratio:`/`tflops:` solve the sample's total, shared equally over the images."""
    if budget.kind == "tokens":
        for capacity in capacities:
            visual_tokens_for_budget(model, prepared, capacity + extra, budget)
        return [int(budget.value) - extra] * len(capacities)
    if n_other is None:
        n_other = prepared.input_ids.numel() - sum(capacities)
    total = visual_tokens_for_budget(model, prepared, sum(capacities) + extra * len(capacities), budget,
                                     n_other=n_other)
    return [max(0, share - extra) for share in split_budget(total, [c + extra for c in capacities])]


def top_indices(scores: Tensor, k: int, *, inverse: bool = False) -> Tensor:
    """Positions of the `k` highest scores (lowest with `inverse`), in ascending position order.

    Ties go to the earlier position, so selections are deterministic. `inverse` is the sanity
    variant every score-based method offers: keeping the worst tokens must do worse.
    """
    order = torch.argsort(scores if inverse else -scores, stable=True)
    return torch.sort(order[:k]).values


def stage_layers(method: str, layers: "tuple[int, ...] | None", reference: tuple[int, ...], n_layers: int,
                 *, first: int = 1, last: int | None = None, scale: str = "when-deeper") -> tuple[int, ...]:
    """A method's decoder layers on a model `n_layers` deep, checked.

    `layers=None` takes the reference list (written for 32-layer LLaVA-1.5-7B) scaled by
    n_layers/32 (rounded, duplicates merged): with `scale="always"` on any other depth (PDrop's
    card), with `"when-deeper"` only when the list does not fit the model (SparseVLM's card).
    Given layers must be strictly ascending and inside [first, last] (default n_layers - 1).
    """
    last = n_layers - 1 if last is None else last
    if layers is None:
        layers = reference
        if (scale == "always" and n_layers != 32) or max(reference) > last:
            layers = tuple(sorted({min(max(round(b * n_layers / 32), first), last) for b in reference}))
    layers = tuple(int(b) for b in layers)
    if not layers or any(a >= b for a, b in zip(layers, layers[1:])):
        raise ReproError(f"{method}: stage layers must be a non-empty ascending list, got {list(layers)}")
    bad = [b for b in layers if not first <= b <= last]
    if bad:
        raise ReproError(f"{method}: stage layer(s) {bad} outside [{first}, {last}] for this model's "
                         f"{n_layers} decoder layers; pass layers inside that range")
    return layers


def split_budget(n_keep: int, capacities: list[int]) -> list[int]:
    """Share `n_keep` as equally as possible over pools of the given sizes (exact when it fits)."""
    shares = [0] * len(capacities)
    left = min(n_keep, sum(capacities))
    while left:
        open_pools = [i for i, c in enumerate(capacities) if shares[i] < c]
        each = max(1, left // len(open_pools))
        for i in open_pools:
            give = min(each, capacities[i] - shares[i], left)
            shares[i] += give
            left -= give
            if not left:
                break
    return shares


@dataclass
class ScheduleMethod(Method):
    """A fixed schedule computed from the assembled sequence (tests, benchmarks, analyses)."""

    build: Callable[[Sequence], Schedule]
    skip_dead_ops: bool = False
    name: str = "schedule"

    def planner(self, model: "Model", seq: Sequence) -> Planner:
        return self.build(seq)
