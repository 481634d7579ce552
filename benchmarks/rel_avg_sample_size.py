"""How many documents per task the tiny main table needs for a Rel. Avg interval of at most ±2 points.

From a finished store: for the first m documents of every task (m = a quarter, half, ... of the
spec's limit), the same paired bootstrap the table uses gives each pruned row's Rel. Avg half-width
over the informative benchmarks of the full table, and half-width = c / sqrt(m), with c from the
full limit, projects the documents that reach the target (the smaller m show how the width falls;
at a few documents it falls faster than 1 / sqrt(m), so c is not fitted to them). Not a test: run it by hand after a sweep,

    python benchmarks/rel_avg_sample_size.py sweeps/tiny/main.yaml --store results/tiny/store
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def main() -> None:
    from repro.report.main_table import collect
    from repro.report.task_metrics import task_metrics
    from repro.report.uncertainty import Bootstrap, clusters, draws, replicate_scores
    from repro.runner import benchmarks
    from repro.runner.spec import expand, load_spec
    from repro.runner.store import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--store", required=True)
    parser.add_argument("--target", type=float, default=2.0, help="half-width to reach (points)")
    args = parser.parse_args()
    spec, store, boot = load_spec(args.spec), Store(args.store), Bootstrap()
    metrics = task_metrics(spec)
    table = collect(spec, store, metrics, boot)
    base = next(r for r in table.rows if r.unpruned)
    used = [b for b in table.columns.names if table.columns.informative.get((base.model, b))]
    keys = {(c.label, c.budget or "-", c.task): c.key for c in expand(spec)}
    tasks = [t for t in spec.tasks if benchmarks.headline(t).benchmark in used]
    limit = spec.limit or 300
    sizes = [m - m % 2 for m in (limit // 4, limit // 2, 3 * limit // 4, limit) if m >= 8]  # whole MME pairs
    print(f"informative benchmarks: {', '.join(used)}")
    print(f"{'row':28} " + " ".join(f"m={m:>4}" for m in sizes) + f"   docs for ±{args.target:g}")
    for row in (r for r in table.rows if not r.unpruned and r.complete):
        widths = []
        for m in sizes:
            ratios = []
            for task in tasks:
                metric = metrics[task]
                mine = [s for s in store.read_sample_records(keys[(row.method, row.budget, task)]) if s.doc_id < m]
                ref = [s for s in store.read_sample_records(keys[(base.method, base.budget, task)]) if s.doc_id < m]
                groups = clusters(ref, metric.metric)
                picks = draws(task, len(groups), boot)
                a, b = (replicate_scores(metric, s, groups, picks) for s in (mine, ref))
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratios.append(a / np.where(b > 0, b, np.nan) * 100)
            rel = np.nanmean(ratios, axis=0)
            lo, hi = np.nanquantile(rel, [0.025, 0.975])
            widths.append((hi - lo) / 2)
        c = widths[-1] * math.sqrt(sizes[-1])  # c / sqrt(m) from the full limit: smaller m shrink faster
        need = math.ceil((c / args.target) ** 2)
        print(f"{row.method + ' ' + row.budget:28} " + " ".join(f"{w:6.2f}" for w in widths) + f"   {need}")


if __name__ == "__main__":
    main()
