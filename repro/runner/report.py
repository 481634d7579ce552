"""After a sweep: its table (paper_tables/<profile>/<table>.*) and figures (results/<profile>/figures)."""

from __future__ import annotations

from pathlib import Path

from repro.runner.spec import Spec
from repro.runner.store import Store


def default_tables_dir(profile: str) -> Path:
    return Path("paper_tables") / profile


def default_figures_dir(profile: str) -> Path:
    return Path("results") / profile / "figures"


def write_reports(spec: Spec, store: Store, tables_dir: Path | str, figures_dir: Path | str) -> list[Path]:
    from repro.report.figures import rel_avg_vs_tflops
    from repro.report.main_table import collect, write_accuracy_table

    paths = write_accuracy_table(spec, store, tables_dir)
    rows, _ = collect(spec, store)
    paths += rel_avg_vs_tflops(rows, figures_dir, f"{spec.table}-rel-avg-vs-tflops")
    if spec.profile == "paper":
        paths += reported_table(spec, store, tables_dir)
    if {"dop-curves", "dop-proxy"} & set(spec.figures):
        paths += dop_figures(spec, store, figures_dir)
    return paths


def dop_figures(spec: Spec, store: Store, figures_dir: Path | str, proxy_policies: int = 50) -> list[Path]:
    """For every DOP search artifact the sweep used: the single-parameter divergence curves
    (`dop-curves`) and the additive proxy vs the measured divergence scatter (`dop-proxy`)."""
    from repro.methods.dop import analyses
    from repro.runner.artifacts import artifact_name, fit_request
    from repro.runner.spec import expand

    paths = []
    from repro.methods.dop import SearchArtifact

    cells = {artifact_name(c, spec.profile): c for c in expand(spec)
             if c.search is not None and fit_request(c, spec.profile).cls.artifact_type is SearchArtifact}
    for name, cell in cells.items():
        body = store.read_artifact(name)
        if body is None:
            continue
        artifact = SearchArtifact.from_dict(body, name)
        tag = f"{artifact.model}-{name.rsplit('-', 1)[-1]}"
        if "dop-curves" in spec.figures:
            paths += analyses.write_curves(artifact, figures_dir, f"dop-curves-{tag}")
        if "dop-proxy" in spec.figures:
            import repro
            from repro.calibration import calibration_samples

            cal = artifact.calibration
            model = repro.load(cell.model, dtype=cell.dtype, device=cell.device, attn_implementation=cell.attn)
            samples = calibration_samples(cal.source, len(cal.samples), staged=spec.staged)
            result = analyses.proxy_vs_truth(model, artifact, samples, proxy_policies, 0)
            paths += analyses.write_proxy_analysis(result, figures_dir, f"dop-proxy-{tag}")
    return paths


def reported_table(spec: Spec, store: Store, tables_dir: Path | str) -> list[Path]:
    """`<table>-vs-reported.*`: every published number with a counterpart cell in this sweep, ours
    beside it, the difference and pass/fail/missing (tolerances of paper_tables/tolerances.yaml)."""
    from repro.check import (
        CHECK_COLUMNS,
        REPORTED,
        TOLERANCES,
        compare_reported,
        format_rows,
        load_tolerances,
    )
    from repro.report.tables import write_table

    rows = compare_reported(spec, store, REPORTED, load_tolerances(TOLERANCES, "reported"))
    return write_table(format_rows(rows), CHECK_COLUMNS, tables_dir, f"{spec.table}-vs-reported",
                       f"{spec.table}: reproduced vs reported (paper_tables/reported/)")
