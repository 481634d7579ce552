"""matplotlib without a display, and `save`, the one PNG + PDF writer every figure of the harness uses."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path_stem: Path) -> list[Path]:
    """`<stem>.png` and `<stem>.pdf`, then close the figure; PDFs carry no creation date so reruns
    give the same bytes."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    png, pdf = path_stem.with_name(path_stem.name + ".png"), path_stem.with_name(path_stem.name + ".pdf")
    fig.savefig(png, dpi=120, metadata={"Software": None})
    fig.savefig(pdf, metadata={"CreationDate": None, "Producer": None, "Creator": None})
    pyplot().close(fig)
    return [png, pdf]
