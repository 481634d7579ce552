"""Accuracy tables from the store: per model, rows = unpruned + each method at each budget (with
the realized prefill TFLOPs), columns = benchmarks + Avg + Rel. Avg, each with a bootstrap interval.

Scores are on a 0-100 scale (repro.runner.benchmarks). `Avg` is the plain mean over benchmarks;
`Rel. Avg` is the mean of score / unpruned score x 100 (the CDPruner / VisPruner convention). The
paper profile averages it over the benchmarks where unpruned > 0 (the paper's definition); the
tiny profile only over informative benchmarks, where the unpruned model is significantly above the
task's chance level (repro.report.uncertainty.chance_score). Seeds are averaged.

A row with a missing cell is incomplete: it gets no Avg, Rel. Avg or FLOPs ratio, and neither do
the other rows of its model when the unpruned row is the incomplete one. The table holds no
timings or dates, so the same records always give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repro.errors import ReproError
from repro.report.uncertainty import (
    Bootstrap,
    Estimate,
    TaskMetric,
    chance_score,
    clusters,
    draws,
    point_score,
    replicate_scores,
)
from repro.runner.records import CellRecord, SampleRecord
from repro.runner.spec import UNPRUNED, Spec, expand
from repro.runner.store import Store


@dataclass
class Row:
    model: str
    method: str  # display label
    budget: str
    expected: int = 0  # cells the spec asks for
    present: int = 0  # cells with an intact record
    unpruned: bool = False
    benchmarks: dict[str, Estimate] = field(default_factory=dict)
    tflops: float = math.nan
    ratio: float = math.nan
    avg: Estimate | None = None
    rel_avg: Estimate | None = None
    differs_from_unpruned: bool | None = None  # Rel. Avg interval of the paired difference excludes 0
    differs_from_best_other: bool | None = None  # ... from the best other method at the same budget
    note: str = ""  # why Avg / Rel. Avg / ratio are absent
    infeasible: int = 0  # samples without an answer: the budget is below the method's cheapest setting
    samples: int = 0
    max_budget_use: float = math.nan  # largest per-sample realized / allowed FLOPs (budget_stats.budget_use.max)
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def missing(self) -> int:
        return self.expected - self.present

    @property
    def complete(self) -> bool:
        return self.present == self.expected


@dataclass
class Columns:
    """The benchmark columns of a table, with per-model chance levels and which are informative."""

    names: list[str]
    chance: dict[tuple[str, str], float | None] = field(default_factory=dict)  # (model, benchmark)
    informative: dict[tuple[str, str], bool] = field(default_factory=dict)


@dataclass
class Table:
    rows: list[Row]
    columns: Columns
    boot: Bootstrap
    profile: str
    provenance: list[str]


def require_store(store: Store) -> None:
    if not store.root.is_dir():
        raise ReproError(f"no results store at {store.root}; pass the --store the sweep wrote "
                         "(default results/<profile>/store) or run `python -m repro sweep SPEC` first")
    if not store.has_records():
        raise ReproError(f"the results store {store.root} holds no cell records; pass the --store the sweep "
                         "wrote or run `python -m repro sweep SPEC --store ...` first")


def collect(spec: Spec, store: Store, metrics: dict[str, TaskMetric] | None = None,
            boot: Bootstrap | None = None) -> Table:
    """Rows in spec order with intervals. `metrics=None` gives point values only (no intervals,
    every benchmark with unpruned > 0 informative)."""
    from repro.runner import benchmarks

    require_store(store)
    boot = boot or Bootstrap()
    names = list(dict.fromkeys(benchmarks.headline(t).benchmark for t in spec.tasks))
    rows: dict[tuple, Row] = {}
    cells_of: dict[tuple, list[tuple[str, CellRecord, list[SampleRecord]]]] = {}
    records: list[CellRecord] = []
    for cell in expand(spec):
        ident = (cell.model, cell.label, cell.budget_shown)
        row = rows.setdefault(ident, Row(*ident, unpruned=cell.method == UNPRUNED))
        row.expected += 1
        rec = store.read_cell(cell.key)
        if rec is None:
            continue
        row.present += 1
        row.infeasible += rec.budget_stats.get("infeasible", 0)
        row.samples += rec.budget_stats.get("samples", 0) + rec.budget_stats.get("infeasible", 0)
        if "budget_use" in rec.budget_stats:
            use = rec.budget_stats["budget_use"]["max"]
            row.max_budget_use = use if math.isnan(row.max_budget_use) else max(row.max_budget_use, use)
        records.append(rec)
        samples = store.read_sample_records(cell.key) if metrics else []
        cells_of.setdefault(ident, []).append((cell.task, rec, samples))
    cols = Columns(names)
    _scores(list(rows.values()), cells_of, metrics, boot)
    _flops(list(rows.values()), cells_of)
    _informative(list(rows.values()), cells_of, cols, metrics, spec.profile)
    _averages(list(rows.values()), cols, spec.profile)
    _significance(list(rows.values()))
    return Table(list(rows.values()), cols, boot, spec.profile, provenance_lines(records))


def _scores(rows: list[Row], cells_of: dict, metrics: dict[str, TaskMetric] | None, boot: Bootstrap) -> None:
    """Per row and benchmark: the seed-averaged score, and its replicates under shared draws."""
    groups: dict[str, tuple[list, np.ndarray]] = {}
    for row in rows:
        per_bench: dict[str, list[tuple[float, np.ndarray | None]]] = {}
        for task, rec, samples in cells_of.get((row.model, row.method, row.budget), []):
            reps = None
            if metrics:
                metric = metrics[task]
                if task not in groups:
                    g = clusters(samples, metric.metric)
                    groups[task] = (g, draws(task, len(g), boot))
                point = point_score(metric, samples)
                if not math.isclose(point, rec.metrics.score, rel_tol=1e-9, abs_tol=1e-9):
                    raise ReproError(f"{task}: lmms-eval's aggregation of the stored samples gives {point}, the "
                                     f"record says {rec.metrics.score} (record {rec.key}); the store is inconsistent")
                reps = replicate_scores(metric, samples, *groups[task])
            per_bench.setdefault(rec.metrics.benchmark, []).append((rec.metrics.score, reps))
        for bench, vals in per_bench.items():
            value = float(np.mean([v for v, _ in vals]))
            if metrics:
                reps = np.mean([r for _, r in vals], axis=0)
                row.replicates[bench] = reps
                row.benchmarks[bench] = Estimate.of(value, reps, boot.level)
            else:
                row.benchmarks[bench] = Estimate(value, math.nan, math.nan)


def _flops(rows: list[Row], cells_of: dict) -> None:
    for row in rows:
        if not row.complete:
            continue
        pairs = [(rec.tflops_paper_mean, rec.budget_stats.get("samples", 0))
                 for _, rec, _ in cells_of.get((row.model, row.method, row.budget), [])]
        pairs = [(f, n) for f, n in pairs if f is not None and n]
        n = sum(w for _, w in pairs)
        row.tflops = sum(f * w for f, w in pairs) / n if n else math.nan


def _base(rows: list[Row], row: Row) -> Row | None:
    return next((r for r in rows if r.model == row.model and r.unpruned), None)


def _informative(rows: list[Row], cells_of: dict, cols: Columns, metrics, profile: str) -> None:
    """Chance level per (model, benchmark) from the unpruned cell's documents; informative when the
    unpruned score's interval lies above it (tiny), or when unpruned > 0 (paper definition)."""
    for base in (r for r in rows if r.unpruned):
        by_bench = {rec.metrics.benchmark: (task, samples) for task, rec, samples in
                    cells_of.get((base.model, base.method, base.budget), [])}
        for bench in cols.names:
            est = base.benchmarks.get(bench)
            chance = None
            if metrics and bench in by_bench:
                task, samples = by_bench[bench]
                chance = chance_score(metrics[task], samples)
            cols.chance[(base.model, bench)] = chance
            if est is None:
                ok = False
            elif profile == "paper" or chance is None:
                ok = est.value > 0
            else:
                ok = not math.isnan(est.low) and est.low > chance
            cols.informative[(base.model, bench)] = ok


def _averages(rows: list[Row], cols: Columns, profile: str) -> None:
    for row in rows:
        base = _base(rows, row)
        if not row.complete:
            row.note = f"incomplete ({row.present} of {row.expected})"
            continue
        level = 0.95
        vals = [row.benchmarks[b] for b in cols.names if b in row.benchmarks]
        reps = [row.replicates[b] for b in cols.names if b in row.replicates]
        avg = float(np.mean([v.value for v in vals]))
        row.avg = Estimate.of(avg, np.mean(reps, axis=0), level) if reps else Estimate(avg, math.nan, math.nan)
        if base is None:
            continue
        if not base.complete:
            row.note = f"unpruned incomplete ({base.present} of {base.expected})"
            continue
        row.ratio = row.tflops / base.tflops if base.tflops else math.nan
        used = [b for b in cols.names if cols.informative.get((row.model, b)) and base.benchmarks[b].value > 0]
        if not used:
            row.note = "no informative benchmark"
            continue
        value = float(np.mean([row.benchmarks[b].value / base.benchmarks[b].value * 100 for b in used]))
        if base.replicates:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.array([row.replicates[b] / np.where(base.replicates[b] > 0, base.replicates[b], np.nan)
                                   for b in used]) * 100
            row.replicates["rel_avg"] = np.nanmean(ratios, axis=0)
            row.rel_avg = Estimate.of(value, row.replicates["rel_avg"], level)
        else:
            row.rel_avg = Estimate(value, math.nan, math.nan)


def _significance(rows: list[Row]) -> None:
    """Paired Rel. Avg differences: against the unpruned row (100) and against the best other
    method at the same budget (highest Rel. Avg; the best row is compared with the runner-up)."""
    level = 0.95
    ready = [r for r in rows if r.rel_avg is not None and "rel_avg" in r.replicates]
    for row in ready:
        if row.unpruned:
            continue
        row.differs_from_unpruned = row.rel_avg.excludes(100.0) if not math.isnan(row.rel_avg.low) else None
        others = [r for r in ready if r is not row and r.model == row.model and r.budget == row.budget
                  and not r.unpruned]
        if not others:
            continue
        best = max(others, key=lambda r: r.rel_avg.value)
        diff = row.replicates["rel_avg"] - best.replicates["rel_avg"]
        row.differs_from_best_other = Estimate.of(row.rel_avg.value - best.rel_avg.value, diff, level).excludes(0.0)


def provenance_lines(records: list[CellRecord]) -> list[str]:
    """Where the cells ran, one line per distinct platform (CPU capability, BLAS, threads, device)."""
    seen: dict[str, int] = {}
    for rec in records:
        p = rec.provenance
        plat = p.get("platform")
        where = (f"torch CPU capability {plat.get('cpu_capability')}, BLAS {plat.get('blas')}, "
                 f"{plat.get('threads')} torch threads" if plat else "CPU capability and BLAS unrecorded")
        text = (f"{p.get('device_name', '?')}; {where}; torch {p.get('packages', {}).get('torch', '?')}, "
                f"lock {p.get('lock_sha256', '?')}")
        seen[text] = seen.get(text, 0) + 1
    return [f"{n} cell(s): {t}" for t, n in seen.items()]


# --------------------------------------------------------------------------- rendering


def _num(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(e: Estimate | None) -> str:
    if e is None:
        return "–"
    if math.isnan(e.low):
        return _num(e.value)
    return f"{_num(e.value)} ± {_num(e.half_width)}"


def _flag(x: bool | None) -> str:
    return "" if x is None else ("yes" if x else "no")


def display_columns(table: Table) -> list[str]:
    return ["Model", "Method", "Budget", "TFLOPs", "FLOPs ratio", *[_header(table, b) for b in table.columns.names],
            "Avg", "Rel. Avg", "Significant vs"]


def _header(table: Table, bench: str) -> str:
    models = {r.model for r in table.rows if r.unpruned}
    flat = models and all(not table.columns.informative.get((m, bench), True) for m in models)
    return f"{bench} °" if flat and table.profile != "paper" else bench


def display_rows(table: Table) -> list[list[str]]:
    out = []
    names = table.columns.names
    for r in table.rows:
        rel = r.note if r.note and r.rel_avg is None else _pm(r.rel_avg)
        sig = [w for w, f in (("unpruned", r.differs_from_unpruned), ("best other", r.differs_from_best_other)) if f]
        budget = f"{r.budget} (infeasible {r.infeasible} of {r.samples})" if r.infeasible else r.budget
        out.append([r.model, r.method, budget, "–" if math.isnan(r.tflops) else f"{r.tflops:#.4g}",
                    _num(r.ratio, 3), *[_pm(r.benchmarks.get(b)) for b in names],
                    r.note if r.avg is None else _pm(r.avg), rel, ", ".join(sig)])
        if r.unpruned and any(c is not None for c in table.columns.chance.values()):
            chance = [table.columns.chance.get((r.model, b)) for b in names]
            marks = ["" if table.columns.informative.get((r.model, b), True) else " °" for b in names]
            out.append([r.model, "chance level", "-", "", "", *[("–" if c is None else _num(c)) + m
                                                               for c, m in zip(chance, marks)], "", "", ""])
    return out


def csv_columns(table: Table) -> list[str]:
    cols = ["model", "method", "budget", "cells_present", "cells_expected", "tflops", "flops_ratio"]
    for b in [*table.columns.names, "Avg", "Rel. Avg"]:
        cols += [b, f"{b} low", f"{b} high", f"{b} half-width"]
    return cols + ["differs_from_unpruned", "differs_from_best_other", "note"]


def csv_rows(table: Table) -> list[list]:
    def est(e: Estimate | None) -> list:
        return ["", "", "", ""] if e is None else [_csv(e.value), _csv(e.low), _csv(e.high), _csv(e.half_width)]

    out = []
    for r in table.rows:
        line = [r.model, r.method, r.budget, r.present, r.expected, _csv(r.tflops), _csv(r.ratio)]
        for b in table.columns.names:
            line += est(r.benchmarks.get(b))
        line += est(r.avg) + est(r.rel_avg)
        out.append(line + [_flag(r.differs_from_unpruned), _flag(r.differs_from_best_other), r.note])
        if r.unpruned and any(c is not None for c in table.columns.chance.values()):
            line = [r.model, "chance level", "-", "", "", "", ""]
            for b in table.columns.names:
                c = table.columns.chance.get((r.model, b))
                line += ["" if c is None else _csv(c), "", "", ""]
            informative = [b for b in table.columns.names if table.columns.informative.get((r.model, b))]
            out.append(line + [""] * 10 + ["informative: " + "; ".join(informative)])
    return out


def _csv(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def caption(spec: Spec, table: Table) -> str:
    scale = "MME/10: tiny MME is out of 1000" if spec.profile == "tiny" else "MME/20"
    if spec.profile == "paper":
        rel = "Rel. Avg = mean of score/unpruned x 100 over benchmarks where unpruned > 0 (the paper's definition)"
    else:
        rel = ("Rel. Avg = mean of score/unpruned x 100 over the informative benchmarks only: those where the "
               "unpruned model is significantly above the task's chance level (the best score of one fixed answer "
               "from the task's own answer distribution; ° marks the others)")
    missing = sum(r.missing for r in table.rows)
    return (f"{spec.table} ({spec.profile} profile, {Path(spec.path).name}): scores 0-100 ({scale}), limit "
            f"{spec.limit or 'all'} per task, seeds {list(spec.seeds)}; value ± half-width of the "
            f"{table.boot.describe()}; TFLOPs = realized prefill TFLOPs (paper convention, mean over samples); "
            f"{rel}; 'Significant vs' names the rows whose paired Rel. Avg difference from the unpruned model or "
            f"from the best other method at the same budget excludes 0; an infeasible sample (budget below the "
            f"method's cheapest setting) is scored as an empty answer and counted in the Budget column"
            + (f"; {missing} cell(s) missing" if missing else ""))


def write_accuracy_table(spec: Spec, table: Table, out_dir: Path | str, name: str | None = None) -> list[Path]:
    from repro.report.tables import write_table

    footer = [f"provenance: {line}" for line in table.provenance]
    return write_table(display_rows(table), display_columns(table), out_dir, name or spec.table, caption(spec, table),
                       footer=footer, csv_columns=csv_columns(table), csv_rows=csv_rows(table))
