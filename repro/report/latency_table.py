"""The latency table: per model, method and budget, TFLOPs and prefill latency, their reductions
against the unpruned model and the ratio of the two (from `repro.latency` records)."""

from __future__ import annotations

from pathlib import Path

from repro.latency import LatencyRecord, check_same_backend

COLUMNS = ["model", "method", "budget", "tflops", "prefill_ms", "prefill_iqr_ms", "tflops_reduction_pct",
           "latency_reduction_pct", "latency_per_tflops_reduction", "end_to_end_ms", "device"]


def table_rows(records: list[LatencyRecord]) -> list[dict]:
    """Per model, method and budget: TFLOPs, prefill latency, reductions vs unpruned and their ratio."""
    check_same_backend(records)
    base = {r.model: r for r in records if r.method == "unpruned"}
    rows = []
    for r in records:
        ref = base.get(r.model)
        prefill = r.stages["prefill"]["median_ms"]
        row = {"model": r.model, "method": r.method, "budget": r.budget, "tflops": r.tflops,
               "prefill_ms": prefill, "prefill_iqr_ms": r.stages["prefill"]["iqr_ms"],
               "end_to_end_ms": r.stages["end_to_end"]["median_ms"], "device": r.environment["device_name"]}
        if ref is not None:
            tflops_cut = 1 - r.tflops / ref.tflops
            latency_cut = 1 - prefill / ref.stages["prefill"]["median_ms"]
            row.update(tflops_reduction_pct=100 * tflops_cut, latency_reduction_pct=100 * latency_cut,
                       latency_per_tflops_reduction=latency_cut / tflops_cut if tflops_cut > 0 else float("nan"))
        rows.append(row)
    return rows


def write_latency_table(rows: list[dict], out_dir: Path | str, caption: str) -> list[Path]:
    from repro.report.tables import write_table

    return write_table(rows, COLUMNS, out_dir, "latency", caption)
