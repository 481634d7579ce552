"""Accuracy tables from the store: per model, rows = unpruned + each method at each budget (with
the realized prefill TFLOPs), columns = benchmarks + Avg + Rel. Avg.

Scores are on a 0-100 scale (see repro.runner.benchmarks). `Avg` is the plain mean over
benchmarks; `Rel. Avg` is the mean over benchmarks of score / unpruned score x 100 (the CDPruner /
VisPruner convention), over the benchmarks where the unpruned score is above zero. Seeds are
averaged. The table holds no timings or dates, so the same records always give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from repro.runner.spec import UNPRUNED, Spec, expand
from repro.runner.store import Store


@dataclass
class Row:
    model: str
    method: str  # display label
    budget: str
    benchmarks: dict[str, float] = field(default_factory=dict)
    tflops: float = math.nan
    ratio: float = math.nan
    rel_avg: float = math.nan
    missing: int = 0
    unpruned: bool = False
    infeasible: int = 0  # samples without an answer: the budget is below the method's cheapest setting
    samples: int = 0
    max_budget_use: float = math.nan  # largest per-sample realized / allowed FLOPs (budget_stats.budget_use.max)

    @property
    def avg(self) -> float:
        vals = list(self.benchmarks.values())
        return sum(vals) / len(vals) if vals and not self.missing else math.nan


def collect(spec: Spec, store: Store) -> tuple[list[Row], list[str]]:
    """Rows in spec order and the benchmark columns; cells without a record count as missing."""
    from repro.runner import benchmarks

    columns = list(dict.fromkeys(benchmarks.headline(t).benchmark for t in spec.tasks))
    acc: dict[tuple, dict] = {}
    for cell in expand(spec):
        ident = (cell.model, cell.label, cell.budget_shown)
        slot = acc.setdefault(ident, {"scores": {}, "flops": [], "missing": 0, "unpruned": cell.method == UNPRUNED,
                                      "infeasible": 0, "samples": 0})
        record = store.read(cell.key)
        if record is None:
            slot["missing"] += 1
            continue
        slot["scores"].setdefault(record["metrics"]["benchmark"], []).append(record["metrics"]["score"])
        stats = record.get("budget_stats") or {}
        if stats.get("tflops_paper"):
            slot["flops"].append((stats["tflops_paper"]["mean"], stats["samples"]))
        slot["infeasible"] += stats.get("infeasible", 0)
        slot["samples"] += stats.get("samples", 0) + stats.get("infeasible", 0)
        if "budget_use" in stats:
            slot["use"] = max(slot.get("use", 0.0), stats["budget_use"]["max"])
    rows = []
    for (model, label, budget), slot in acc.items():
        n = sum(w for _, w in slot["flops"])
        rows.append(Row(model, label, budget, {b: sum(v) / len(v) for b, v in slot["scores"].items()},
                        sum(f * w for f, w in slot["flops"]) / n if n else math.nan, missing=slot["missing"],
                        unpruned=slot["unpruned"], infeasible=slot["infeasible"], samples=slot["samples"],
                        max_budget_use=slot.get("use", math.nan)))
    for row in rows:
        base = next((r for r in rows if r.model == row.model and r.unpruned), None)
        if base is None:
            continue
        row.ratio = row.tflops / base.tflops if base.tflops else math.nan
        rel = [row.benchmarks[b] / base.benchmarks[b] * 100 for b in columns
               if b in row.benchmarks and base.benchmarks.get(b, 0) > 0]
        row.rel_avg = sum(rel) / len(rel) if rel and not row.missing else math.nan
    return rows, columns


def table_columns(columns: list[str]) -> list[str]:
    return ["Model", "Method", "Budget", "TFLOPs", "FLOPs ratio", *columns, "Avg", "Rel. Avg"]


def _fmt(x: float, digits: int) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table_rows(rows: list[Row], columns: list[str]) -> list[dict]:
    out = []
    for r in rows:
        budget = f"{r.budget} (infeasible {r.infeasible} of {r.samples})" if r.infeasible else r.budget
        d = {"Model": r.model, "Method": r.method, "Budget": budget,
             "TFLOPs": "–" if math.isnan(r.tflops) else f"{r.tflops:#.4g}", "FLOPs ratio": _fmt(r.ratio, 3)}
        d.update({b: _fmt(r.benchmarks.get(b, math.nan), 1) for b in columns})
        d["Avg"], d["Rel. Avg"] = _fmt(r.avg, 1), _fmt(r.rel_avg, 1)
        out.append(d)
    return out


def write_accuracy_table(spec: Spec, store: Store, out_dir: Path | str, name: str | None = None) -> list[Path]:
    from repro.report.tables import write_table

    rows, columns = collect(spec, store)
    missing = sum(r.missing for r in rows)
    caption = (f"{spec.table} ({spec.profile} profile, {Path(spec.path).name}): scores 0-100 (MME/20), "
               f"limit {spec.limit or 'all'} per task, seeds {list(spec.seeds)}; TFLOPs = realized prefill TFLOPs "
               "(paper convention, mean over samples); Rel. Avg = mean of score/unpruned x 100 over benchmarks "
               "where unpruned > 0; an infeasible sample (budget below the method's cheapest setting) is "
               "scored as an empty answer and counted in the Budget column"
               + (f"; {missing} cell(s) missing" if missing else ""))
    return write_table(table_rows(rows, columns), table_columns(columns), out_dir, name or spec.table, caption)
