"""After a sweep, or from the store alone (`python -m repro tables`): the sweep's table
(paper_tables/<profile>/<table>.*) and figures (results/<profile>/figures). Never loads a model:
analyses that run one (`dop-proxy`) belong to `python -m repro analyze`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from repro.report.uncertainty import Bootstrap
from repro.runner.spec import Spec
from repro.runner.store import Store


def default_tables_dir(profile: str) -> Path:
    return Path("paper_tables") / profile


def default_figures_dir(profile: str) -> Path:
    return Path("results") / profile / "figures"


@dataclass
class Reports:
    paths: list[Path] = field(default_factory=list)
    missing: int = 0  # cells of the spec without an intact record
    notes: list[str] = field(default_factory=list)
    rel_avg_half_width: float | None = None  # the widest Rel. Avg interval of a pruned row (points)


def write_reports(spec: Spec, store: Store, tables_dir: Path | str, figures_dir: Path | str, *,
                  data_dir: Path | str | None = None, staged: Path | str | None = None,
                  boot: Bootstrap | None = None) -> Reports:
    from repro.report.figures import rel_avg_vs_tflops
    from repro.report.main_table import collect, require_store, write_accuracy_table
    from repro.report.task_metrics import task_metrics

    require_store(store)
    out = Reports()
    try:
        metrics = task_metrics(spec, data_dir, staged)
    except Exception as err:
        if spec.profile == "tiny":
            raise
        metrics = None
        out.notes.append(f"no intervals: the tasks' lmms-eval configs could not be read ({err})")
    table = collect(spec, store, metrics, boot)
    out.missing = sum(r.missing for r in table.rows)
    widths = [r.rel_avg.half_width for r in table.rows if not r.unpruned and r.rel_avg is not None
              and r.rel_avg.half_width == r.rel_avg.half_width]
    out.rel_avg_half_width = max(widths) if widths else None
    out.paths += write_accuracy_table(spec, table, tables_dir)
    out.paths += rel_avg_vs_tflops(table, figures_dir, f"{spec.table}-rel-avg-vs-tflops")
    if spec.profile == "paper":
        out.paths += reported_table(spec, store, tables_dir)
    if "dop-curves" in spec.figures:
        out.paths += dop_curves(spec, store, figures_dir)
    if "dop-proxy" in spec.figures:
        out.notes.append("dop-proxy runs the model: `python -m repro analyze dop-proxy --artifact "
                         f"{store.root}/artifacts/<dop artifact>.json`")
    return out


def dop_curves(spec: Spec, store: Store, figures_dir: Path | str) -> list[Path]:
    """The single-parameter divergence curves of every DOP search artifact the sweep used."""
    from repro.methods.dop import SearchArtifact, analyses
    from repro.runner.artifacts import artifact_name, fit_request
    from repro.runner.spec import expand

    paths = []
    names = dict.fromkeys(artifact_name(c, spec.profile) for c in expand(spec)
                          if c.search is not None and fit_request(c, spec.profile).cls.artifact_type is SearchArtifact)
    for name in names:
        body = store.read_artifact(name)
        if body is not None:
            artifact = SearchArtifact.from_dict(body, name)
            tag = f"{artifact.model}-{name.rsplit('-', 1)[-1]}"
            paths += analyses.write_curves(artifact, figures_dir, f"dop-curves-{tag}")
    return paths


def reported_table(spec: Spec, store: Store, tables_dir: Path | str) -> list[Path]:
    """`<table>-vs-reported.*`: every published number with a counterpart cell in this sweep, ours
    beside it, the difference and pass/fail/missing (tolerances of paper_tables/tolerances.yaml)."""
    from repro.check import (
        REPORTED,
        TOLERANCES,
        compare_reported,
        load_allowances,
        load_tolerances,
    )
    from repro.report.check_report import CHECK_COLUMNS, format_rows
    from repro.report.tables import write_table

    rows = compare_reported([spec], store, REPORTED, load_tolerances(TOLERANCES, "reported"),
                            load_allowances(TOLERANCES))
    return write_table(format_rows(rows), CHECK_COLUMNS, tables_dir, f"{spec.table}-vs-reported",
                       f"{spec.table}: reproduced vs reported (paper_tables/reported/)")
