"""Compute budgets and the solver that maps a FLOPs budget to a method's knob.

Three kinds (DESIGN.md, "Budgets and fairness"):

* ``tokens:N`` -- a method's native retained-token count;
* ``ratio:R``  -- realized prefill FLOPs <= R x the unpruned model's prefill FLOPs on the same input;
* ``tflops:X`` -- an absolute prefill target in TFLOPs.

A budget that cannot be met is a ReproError, never a silent clamp.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from repro.errors import InfeasibleBudget, ReproError

KINDS = ("tokens", "ratio", "tflops")

_FORMS = "tokens:N (integer >= 0, e.g. tokens:64), ratio:R (0 < R <= 1, e.g. ratio:0.14) or tflops:X (X > 0, e.g. tflops:2.5)"


@dataclass(frozen=True)
class Budget:
    """A compute budget; `str(budget)` gives back the text `Budget.parse` accepts."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        _validate(self.kind, self.value)
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """Parse `tokens:N`, `ratio:R` or `tflops:X`; a ReproError naming the forms otherwise."""
        kind, sep, raw = str(text).strip().partition(":")
        kind, raw = kind.strip().lower(), raw.strip()
        if not sep or kind not in KINDS:
            raise ReproError(f"cannot parse budget {text!r}; expected {_FORMS}")
        try:
            value: float = int(raw) if kind == "tokens" else float(raw)
        except ValueError:
            raise ReproError(f"cannot parse budget {text!r}; expected {_FORMS}") from None
        return cls(kind, value)

    @property
    def tokens(self) -> int | None:
        """The token count of a `tokens:N` budget, None for FLOPs budgets."""
        return int(self.value) if self.kind == "tokens" else None

    def max_flops(self, unpruned_flops: float) -> float | None:
        """FLOPs ceiling of a ratio or tflops budget (None for a token budget)."""
        if self.kind == "ratio":
            return self.value * unpruned_flops
        if self.kind == "tflops":
            return self.value * 1e12
        return None

    def __str__(self) -> str:
        if self.kind == "tokens":
            return f"tokens:{int(self.value)}"
        return f"{self.kind}:{float(self.value)!r}"


def _validate(kind: str, value: float) -> None:
    """Raise a ReproError when (kind, value) is not a meaningful budget."""
    problem = None
    if kind not in KINDS:
        problem = f"unknown budget kind {kind!r}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problem = f"budget value must be a finite number, got {value!r}"
    elif kind == "tokens" and (value < 0 or value != int(value)):
        problem = f"tokens budget must be an integer >= 0, got {value!r}"
    elif kind == "ratio" and not 0 < value <= 1:
        problem = f"ratio budget must satisfy 0 < R <= 1, got {value!r}"
    elif kind == "tflops" and not value > 0:
        problem = f"tflops budget must be > 0, got {value!r}"
    if problem:
        raise ReproError(f"{problem}; expected {_FORMS}")


def as_budget(x: "Budget | str | None") -> Budget | None:
    """Accept a Budget, its text form, or None (no budget)."""
    if x is None or isinstance(x, Budget):
        return x
    if isinstance(x, str):
        return Budget.parse(x)
    raise ReproError(f"cannot use {x!r} as a budget; expected {_FORMS}")


def solve_knob(candidates: Sequence[int], cost: Callable[[int], float], max_cost: float) -> int:
    """Largest candidate whose cost fits `max_cost` (binary search).

    `candidates` must be strictly ascending and `cost` non-decreasing over them. When even the
    smallest candidate is too expensive the budget is infeasible: a ReproError, no clamping.
    """
    if len(candidates) == 0:
        raise ValueError("solve_knob needs at least one candidate")
    if any(a >= b for a, b in zip(candidates, candidates[1:])):
        raise ValueError("candidates must be strictly ascending")
    cheapest = cost(candidates[0])
    if cheapest > max_cost:
        raise InfeasibleBudget(
            f"infeasible budget: the cheapest setting ({candidates[0]}) costs "
            f"{cheapest / 1e12:.4g} TFLOPs > {max_cost / 1e12:.4g} TFLOPs allowed"
        )
    lo, hi = 0, len(candidates) - 1  # invariant: cost(candidates[lo]) <= max_cost
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(candidates[mid]) <= max_cost:
            lo = mid
        else:
            hi = mid - 1
    return candidates[lo]
