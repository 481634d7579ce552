"""`python -m repro check` as a command: run the golden sweep or read the paper cells, compare
(repro.check holds the comparison logic), print the verdicts, write the check table, exit status."""

from __future__ import annotations

import math
from pathlib import Path

from repro.check import (
    GOLDEN,
    PAPER_SPECS,
    REPO,
    REPORTED,
    TOLERANCES,
    CheckRow,
    compare_golden,
    compare_reported,
    environment_note,
    golden_rows,
    load_allowances,
    load_kernel_tolerances,
    load_tolerances,
    write_golden,
)
from repro.errors import ReproError
from repro.runner.spec import expand, load_spec
from repro.runner.store import Store

CHECK_COLUMNS = ["model", "method", "budget", "benchmark", "metric", "reference", "reproduced", "delta", "tolerance",
                 "status", "source", "alternates"]
SHOWN_COLUMNS = CHECK_COLUMNS[:-2]  # the console leaves out the citations


def format_rows(rows: list[CheckRow]) -> list[dict]:
    def num(x: float | str | None) -> str:
        if isinstance(x, str):
            return x
        return "–" if x is None or math.isnan(x) else f"{x:.6g}"

    return [{"model": r.model, "method": r.method, "budget": r.budget, "benchmark": r.benchmark, "metric": r.metric,
             "reference": num(r.reference), "reproduced": num(r.reproduced), "delta": num(r.delta),
             "tolerance": num(r.tolerance), "status": r.status, "source": r.source, "alternates": r.alternates}
            for r in rows]


def run_check(*, profile: str, spec_path: str | None, store: str | None, reference: str | None,
              tolerances: str | Path = TOLERANCES, update_golden: bool, out: str | None) -> int:
    from repro.report.text import plain_table
    from repro.runner.sweep import default_store, run_sweep

    store_obj = Store(store or default_store(profile))
    if out:
        from repro.paths import check_output_dir

        check_output_dir(out, "--out")
    if profile == "tiny":  # everything a user gives is checked before the sweep computes anything
        from repro.check import GOLDEN_REQUIRED, UPDATE_COMMAND, read_registry

        spec = load_spec(spec_path or REPO / "sweeps" / "tiny" / "golden.yaml")
        golden = Path(reference) if reference else GOLDEN
        if update_golden:
            from repro.paths import check_output_file

            check_output_file(golden, "--reference")
        else:
            load_tolerances(tolerances, "golden")
            if not golden.is_file():
                raise ReproError(f"no golden registry at {golden}; create it with `{UPDATE_COMMAND}`")
            read_registry(golden, GOLDEN_REQUIRED)
        run_sweep(spec, store_obj.root, progress=False)
        if update_golden:
            print(f"wrote {write_golden(golden_rows(spec, store_obj), golden)}")
            return 0
        rows = compare_golden(spec, store_obj, golden, load_tolerances(tolerances, "golden"),
                              load_kernel_tolerances(tolerances))
        cells = expand(spec)
    else:
        if update_golden:
            raise ReproError("--update-golden is for the tiny profile (the paper profile compares published numbers)")
        specs = [load_spec(path) for path in ([spec_path] if spec_path else PAPER_SPECS)]
        rows = compare_reported(specs, store_obj, Path(reference) if reference else REPORTED,
                                load_tolerances(tolerances, "reported"), load_allowances(tolerances))
        if not any(r.reproduced is not None for r in rows):
            raise ReproError(f"nothing to compare: none of the {len(rows)} reference values has a reproduced cell "
                             f"in {store_obj.root}; run the sweep first (./run_all.sh --profile paper) or pass "
                             "--store")
        cells = list({c.key: c for s in specs for c in expand(s)}.values())
    table = format_rows(rows)
    print(plain_table(SHOWN_COLUMNS, [[t[c] for c in SHOWN_COLUMNS] for t in table]))
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "missing", "kernel")}
    print(f"check ({profile}): {counts['pass']} pass, {counts['fail']} fail, {counts['missing']} missing "
          f"of {len(rows)} reference values")
    kernels = sorted({r.kernel for r in rows if r.kernel})
    if kernels:
        print(f"CPU kernels: the golden registry was made on another torch CPU capability ({', '.join(kernels)}); "
              f"kernel-sensitive cells ({', '.join(sorted({r.method for r in rows if r.kernel}))}) were compared "
              f"with their declared tolerances (paper_tables/tolerances.yaml), {counts['kernel']} answer digest(s) "
              "changed")
    note = environment_note([store_obj.read(c.key) for c in cells])
    if note:
        print(note)
    if out:
        from repro.report.tables import write_table

        paths = write_table(table, CHECK_COLUMNS, out, f"check-{profile}", f"repro check --profile {profile}")
        if profile == "paper":
            from repro.report.check_figure import reproduced_vs_reported

            paths += reproduced_vs_reported(rows, out, f"check-{profile}")
        for path in paths:
            print(f"wrote {path}")
    for r in rows:
        if r.status == "fail":
            delta = "" if r.delta is None else f"delta {r.delta:+.3g}, tolerance {r.tolerance:g}; "
            print(f"FAIL {r.model} {r.method} {r.budget} {r.benchmark} {r.metric}: reproduced {r.reproduced}, "
                  f"reference {r.reference} ({delta}{r.source})")
    return 1 if counts["fail"] else 0
