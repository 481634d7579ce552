"""Uncertainty of table entries: a paired bootstrap over documents, from lmms-eval's own
per-sample metric values and aggregation functions.

Every cell of a task is resampled with the same draws of documents, so differences between rows
(and each row's ratio to the unpruned row) are paired. A document cluster is one document, except
where the task's aggregation scores documents jointly: MME scores a question pair per image
(`question_id`) and MMBench's circular accuracy all rotations of a question (`circular_id`); those
are resampled as wholes and each drawn copy gets its own id, so the official aggregation sees
distinct pairs / circular groups. Percentile intervals at 95 %.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from repro.errors import ReproError
from repro.runner.records import SampleRecord

REPLICATES = 1000
SEED = 0
LEVEL = 0.95
#: per-sample dict fields that tie documents into one scoring unit (lmms-eval's MME / our MMBench)
CLUSTER_FIELDS = ("question_id", "circular_id")


@dataclass(frozen=True)
class Bootstrap:
    replicates: int = REPLICATES
    seed: int = SEED
    level: float = LEVEL

    def describe(self) -> str:
        return (f"{self.level:.0%} paired percentile bootstrap over documents ({self.replicates} replicates, "
                f"seed {self.seed})")


@dataclass(frozen=True)
class Estimate:
    """A point value with its bootstrap interval."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @classmethod
    def of(cls, value: float, replicates: np.ndarray, level: float) -> Estimate:
        reps = replicates[~np.isnan(replicates)]
        if not len(reps) or np.isnan(value):
            return cls(value, float("nan"), float("nan"))
        a = (1 - level) / 2
        lo, hi = np.quantile(reps, [a, 1 - a])
        return cls(float(value), float(lo), float(hi))

    def excludes(self, x: float) -> bool:
        return not np.isnan(self.low) and (x < self.low or x > self.high)


@dataclass(frozen=True)
class TaskMetric:
    """A task's headline metric as lmms-eval computes it: per-sample values in, aggregate out."""

    task: str
    metric: str  # metric name (no filter)
    aggregate: Callable[[list], float]
    per_sample: Callable[[dict, Any, str], Any] | None  # (doc, target, answer) -> per-sample value; for chance
    scale: float  # table score = aggregate * scale


def scored(samples: Sequence[SampleRecord], metric: str) -> list[SampleRecord]:
    """The documents lmms-eval scored for `metric` (as its aggregation sees them), in doc order."""
    return sorted((s for s in samples if s.has(metric)), key=lambda s: s.doc_id)


def clusters(samples: Sequence[SampleRecord], metric: str) -> list[list[int]]:
    """Documents (by doc_id) grouped into the units the aggregation scores jointly."""
    groups: dict[Any, list[int]] = {}
    for s in scored(samples, metric):
        v = s.value(metric)
        key = next((("c", f, v[f]) for f in CLUSTER_FIELDS if isinstance(v, dict) and f in v), ("d", s.doc_id))
        groups.setdefault(key, []).append(s.doc_id)
    return list(groups.values())


def draws(task: str, n_clusters: int, boot: Bootstrap) -> np.ndarray:
    """(replicates, n_clusters) cluster indices; a task's draws depend only on the seed and its name."""
    rng = np.random.default_rng([boot.seed, zlib.crc32(task.encode())])
    return rng.integers(0, n_clusters, size=(boot.replicates, n_clusters))


def _relabel(value: Any, copy: int) -> Any:
    return {k: (f"{v}#{copy}" if k in CLUSTER_FIELDS else v) for k, v in value.items()}


def _copies(values: list[list[Any]]) -> Callable[[int, int], list[Any]]:
    """(cluster, copy) -> the cluster's values as that drawn copy: relabeled where a value carries a
    cluster field (each distinct pair built once), the stored values themselves otherwise."""
    if not any(isinstance(v, dict) and any(f in v for f in CLUSTER_FIELDS) for g in values for v in g):
        return lambda c, _j: values[c]
    built: dict[tuple[int, int], list[Any]] = {}

    def copy(c: int, j: int) -> list[Any]:
        if (c, j) not in built:
            built[c, j] = [_relabel(v, j) if isinstance(v, dict) else v for v in values[c]]
        return built[c, j]
    return copy


def replicate_scores(metric: TaskMetric, samples: Sequence[SampleRecord], groups: list[list[int]],
                     picks: np.ndarray) -> np.ndarray:
    """The cell's score (table scale) under each bootstrap draw of document clusters."""
    by_doc = {s.doc_id: s.value(metric.metric) for s in scored(samples, metric.metric)}
    missing = {d for g in groups for d in g} - set(by_doc)
    if missing:
        raise ReproError(f"{metric.task}: cells of one table hold different documents (e.g. doc {min(missing)}); "
                         "the store mixes runs of different limits")
    values = [[by_doc[d] for d in g] for g in groups]
    if all(len(g) == 1 for g in values) and all(isinstance(g[0], (int, float, bool)) for g in values) \
            and getattr(metric.aggregate, "__name__", "") == "mean":
        flat = np.array([float(g[0]) for g in values])
        return flat[picks].mean(axis=1) * metric.scale
    out = np.empty(len(picks))
    copy = _copies(values)
    with _quiet(metric.aggregate):
        for b, row in enumerate(picks.tolist()):
            items = [v for j, c in enumerate(row) for v in copy(c, j)]
            out[b] = float(metric.aggregate(items)) * metric.scale
    return out


@contextmanager
def _quiet(fn: Callable):
    """lmms-eval's aggregations log each category score through loguru; a bootstrap calls them
    a thousand times, so their module's records are held back meanwhile."""
    from loguru import logger

    module = getattr(fn, "__module__", None) or ""
    logger.disable(module)
    try:
        yield
    finally:
        logger.enable(module)


def point_score(metric: TaskMetric, samples: Sequence[SampleRecord]) -> float:
    with _quiet(metric.aggregate):
        return float(metric.aggregate([s.value(metric.metric) for s in scored(samples, metric.metric)])) \
            * metric.scale


def chance_score(metric: TaskMetric, samples: Sequence[SampleRecord]) -> float | None:
    """The task's chance level from its own answer distribution: the best score a model reaches by
    giving one fixed answer to every document, over the answers that occur as targets, scored by
    the task's own per-sample function and aggregation. None when the task's per-sample function
    is unavailable."""
    samples = scored(samples, metric.metric)
    if metric.per_sample is None or not samples:
        return None
    answers: dict[str, None] = {}
    for s in samples:
        for t in (s.target if isinstance(s.target, list) else [s.target]):
            answers[str(t)] = None
    ordered = samples
    best = None
    for a in answers:
        try:
            with _quiet(metric.aggregate):
                score = float(metric.aggregate([metric.per_sample(s.doc, s.target, a) for s in ordered])) \
                    * metric.scale
        except Exception:  # noqa: BLE001 - a task function that needs what the log lacks (an image)
            return None
        best = score if best is None else max(best, score)
    return best
