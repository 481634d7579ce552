"""Figures (PNG + PDF): Rel. Avg vs realized TFLOPs per model from the store, and the shared
saving helper the DOP analyses use."""

from __future__ import annotations

import math
from pathlib import Path

from repro.report.main_table import Row


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path_stem: Path) -> list[Path]:
    """`<stem>.png` and `<stem>.pdf`, then close the figure; PDFs carry no creation date so reruns
    give the same bytes. Every figure of the harness goes through here."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    png, pdf = path_stem.with_name(path_stem.name + ".png"), path_stem.with_name(path_stem.name + ".pdf")
    fig.savefig(png, dpi=120, metadata={"Software": None})
    fig.savefig(pdf, metadata={"CreationDate": None, "Producer": None, "Creator": None})
    pyplot().close(fig)
    return [png, pdf]


def rel_avg_vs_tflops(rows: list[Row], out_dir: Path | str, name: str) -> list[Path]:
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for model in dict.fromkeys(r.model for r in rows):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        mine = [r for r in rows if r.model == model and not math.isnan(r.tflops) and not math.isnan(r.rel_avg)]
        for method in dict.fromkeys(r.method for r in mine):
            pts = sorted((r.tflops, r.rel_avg) for r in mine if r.method == method)
            if all(r.unpruned for r in mine if r.method == method):
                ax.scatter(*zip(*pts), marker="*", s=120, color="black", label=method, zorder=3)
            else:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xlabel("realized prefill TFLOPs (paper convention)")
        ax.set_ylabel("Rel. Avg (% of unpruned)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        if mine:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no Rel. Avg (unpruned scores are all 0)", ha="center", transform=ax.transAxes)
        paths += save(fig, out / f"{name}-{model}")
    return paths
