"""Budgets: parsing, round-trips, ceilings, and the knob solver."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repro.budget import Budget, as_budget, solve_knob
from repro.errors import ReproError


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("tokens:64", "tokens", 64),
        ("tokens:0", "tokens", 0),
        ("ratio:0.14", "ratio", 0.14),
        ("ratio:1", "ratio", 1.0),
        ("tflops:2.5", "tflops", 2.5),
        (" RATIO : 0.23 ", "ratio", 0.23),
    ],
)
def test_parse_valid(text, kind, value):
    budget = Budget.parse(text)
    assert (budget.kind, budget.value) == (kind, value)


@pytest.mark.parametrize(
    "text",
    ["", "64", "tokens", "tokens:", "tokens:-1", "tokens:1.5", "ratio:0", "ratio:1.2", "ratio:-0.1",
     "ratio:nan", "tflops:0", "tflops:-3", "tflops:inf", "flops:3", "ratio:abc", "tokens=64"],
)
def test_parse_invalid_names_the_forms(text):
    with pytest.raises(ReproError) as err:
        Budget.parse(text)
    message = str(err.value)
    for form in ("tokens:N", "ratio:R", "tflops:X", "ratio:0.14"):
        assert form in message


def test_str_forms():
    assert str(Budget.parse("tokens:64")) == "tokens:64"
    assert str(Budget.parse("ratio:0.14")) == "ratio:0.14"
    assert str(Budget.parse("tflops:3")) == "tflops:3.0"


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(
        st.builds(lambda n: Budget("tokens", n), st.integers(0, 10**6)),
        st.builds(lambda r: Budget("ratio", r), st.floats(min_value=1e-9, max_value=1.0)),
        st.builds(lambda x: Budget("tflops", x), st.floats(min_value=1e-9, max_value=1e6)),
    )
)
def test_round_trip(budget):
    assert Budget.parse(str(budget)) == budget


def test_constructor_validates():
    with pytest.raises(ReproError):
        Budget("ratio", 2.0)
    with pytest.raises(ReproError):
        Budget("watts", 1.0)


def test_max_flops():
    assert Budget.parse("ratio:0.25").max_flops(8e12) == pytest.approx(2e12)
    assert Budget.parse("tflops:1.5").max_flops(8e12) == pytest.approx(1.5e12)
    assert Budget.parse("tokens:64").max_flops(8e12) is None
    assert Budget.parse("tokens:64").tokens == 64
    assert Budget.parse("ratio:0.5").tokens is None


def test_as_budget():
    b = Budget("tokens", 8)
    assert as_budget(None) is None
    assert as_budget(b) is b
    assert as_budget("tokens:8") == b
    with pytest.raises(ReproError):
        as_budget(3)


def test_solve_knob_basic():
    cost = lambda k: 10.0 * k + 5  # noqa: E731
    assert solve_knob([0, 1, 2, 3, 4], cost, 25) == 2
    assert solve_knob([0, 1, 2, 3, 4], cost, 24.9) == 1
    assert solve_knob([0, 1, 2, 3, 4], cost, 1e9) == 4
    assert solve_knob([3], cost, 35) == 3


def test_solve_knob_infeasible_is_an_error():
    with pytest.raises(ReproError, match=r"infeasible budget.*cheapest setting \(8\) costs 2 TFLOPs > 1 TFLOPs"):
        solve_knob([8, 16], lambda k: k * 0.25e12, 1e12)


def test_solve_knob_rejects_bad_candidates():
    with pytest.raises(ValueError):
        solve_knob([], lambda k: 0.0, 1.0)
    with pytest.raises(ValueError):
        solve_knob([1, 3, 2], lambda k: 0.0, 1.0)


def test_solve_knob_is_logarithmic():
    calls = []

    def cost(k: int) -> float:
        calls.append(k)
        return float(k)

    assert solve_knob(range(100_000), cost, 54_321.5) == 54_321
    assert len(calls) <= 2 + math.ceil(math.log2(100_000))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=40, unique=True).map(sorted),
    st.lists(st.integers(0, 50), min_size=40, max_size=40),
    st.integers(-10, 2000),
)
def test_solve_knob_matches_linear_scan(candidates, steps, max_cost):
    # a non-decreasing cost with plateaus
    table = {}
    total = 0
    for c, step in zip(candidates, steps):
        total += step
        table[c] = total
    feasible = [c for c in candidates if table[c] <= max_cost]
    if not feasible:
        with pytest.raises(ReproError):
            solve_knob(candidates, table.__getitem__, max_cost)
    else:
        assert solve_knob(candidates, table.__getitem__, max_cost) == max(feasible)
