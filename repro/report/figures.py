"""Figures (PNG + PDF): Rel. Avg vs realized TFLOPs per model from the store, with the bootstrap
intervals as error bars; incomplete rows are left out."""

from __future__ import annotations

import math
from pathlib import Path

from repro.report.main_table import Row, Table
from repro.report.plotting import pyplot, save


def _yerr(rows: list[Row]) -> list[list[float]] | None:
    if any(math.isnan(r.rel_avg.low) for r in rows):
        return None
    return [[r.rel_avg.value - r.rel_avg.low for r in rows], [r.rel_avg.high - r.rel_avg.value for r in rows]]


def rel_avg_vs_tflops(table: Table, out_dir: Path | str, name: str) -> list[Path]:
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for model in dict.fromkeys(r.model for r in table.rows):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        mine = [r for r in table.rows if r.model == model and r.rel_avg is not None and not math.isnan(r.tflops)]
        for method in dict.fromkeys(r.method for r in mine):
            pts = sorted((r for r in mine if r.method == method), key=lambda r: r.tflops)
            x, y = [r.tflops for r in pts], [r.rel_avg.value for r in pts]
            if all(r.unpruned for r in pts):
                ax.errorbar(x, y, yerr=_yerr(pts), fmt="*", ms=12, color="black", capsize=3, label=method, zorder=3)
            else:
                ax.errorbar(x, y, yerr=_yerr(pts), fmt="-o", capsize=3, label=method)
        ax.set_xlabel("realized prefill TFLOPs (paper convention)")
        ax.set_ylabel("Rel. Avg (% of unpruned)")
        ax.set_title(model + ("" if not mine or _yerr(mine) is None else f" ({table.boot.level:.0%} intervals)"))
        ax.grid(alpha=0.3)
        if mine:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no Rel. Avg (incomplete rows or no informative benchmark)", ha="center",
                    transform=ax.transAxes)
        paths += save(fig, out / f"{name}-{model}")
    return paths
