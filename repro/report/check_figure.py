"""The check's figure: reproduced against reported values per model, on one 0-100 scale."""

from __future__ import annotations

from pathlib import Path

from repro.report.plotting import pyplot, save

# onto the scale of the papers' "Acc." column: MME (max 2000) / 20, OCRBench (max 1000) / 10
PERCENT_SCALE = {"MME": 1 / 20, "OCRBench": 1 / 10}


def reproduced_vs_reported(rows: list, out_dir: Path | str, name: str) -> list[Path]:
    """One figure per model: each compared value against its reference, the identity line, and a
    bar of ± its tolerance; methods coloured."""
    plt = pyplot()
    paths = []
    compared = [r for r in rows if r.reproduced is not None and not isinstance(r.reference, str)]
    for model in dict.fromkeys(r.model for r in compared):
        fig, ax = plt.subplots(figsize=(5, 4.2))
        mine = [r for r in compared if r.model == model]
        for method in dict.fromkeys(r.method for r in mine):
            pts = [r for r in mine if r.method == method]
            scale = [PERCENT_SCALE.get(r.benchmark, 1.0) for r in pts]
            ax.errorbar([r.reference * k for r, k in zip(pts, scale)], [r.reproduced * k for r, k in zip(pts, scale)],
                        yerr=[r.tolerance * k for r, k in zip(pts, scale)], fmt="o", ms=4, capsize=2, label=method)
        ax.plot([0, 100], [0, 100], color="grey", lw=0.8, zorder=0)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("reported (MME/20, OCRBench/10)")
        ax.set_ylabel("reproduced (bar: ± tolerance)")
        ax.set_title(f"{model}: {sum(r.status == 'pass' for r in mine)} of {len(mine)} within tolerance")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths += save(fig, Path(out_dir) / f"{name}-{model}")
    return paths
