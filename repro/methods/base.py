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


def visual_tokens_for_budget(model: "Model", prepared: Prepared, n_visual: int, budget: Budget) -> int:
    """How many visual tokens a pre-LLM reducer may keep on this sample under `budget`.

    `tokens:N` is taken as is (capped at what the image has); `ratio:R` and `tflops:X` are solved
    for the sample's real sequence shape with the paper FLOPs convention.
    """
    if budget.kind == "tokens":
        return min(int(budget.value), n_visual)
    n_other = prepared.input_ids.numel() - n_visual

    def cost(n_keep: int) -> float:
        return flops.unpruned_prefill_flops(model.card, n_other + n_keep, "paper")

    return solve_knob(range(n_visual + 1), cost, budget.max_flops(cost(n_visual)))


def top_indices(scores: Tensor, k: int, *, inverse: bool = False) -> Tensor:
    """Positions of the `k` highest scores (lowest with `inverse`), in ascending position order.

    Ties go to the earlier position, so selections are deterministic. `inverse` is the sanity
    variant every score-based method offers: keeping the worst tokens must do worse.
    """
    order = torch.argsort(scores if inverse else -scores, stable=True)
    return torch.sort(order[:k]).values


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
