"""Evaluation throughput of a multi-method sweep on tinyworld-llava (group `eval-throughput`).

Run: PYTHONPATH=$PWD .venv/bin/python -m pytest benchmarks/test_bench_throughput.py --benchmark-only -s

The sweep is the tiny main table's own rows (sweeps/tiny/main.yaml: unpruned and every method at
its three budgets; the two rows with a one-off fit, DOP and fitted FitPrune, left out) on two of its
tasks at 24 documents: each image meets 37 rows, as in the table. One round, every variant on a
fresh store, in one run (a sweep is minutes, so the variants are not repeated; read the figures
with the machine's load, which the JSON records):
- `batch 1, 1 process`: the baseline, one thread, caches off;
- `encode cache`: the same with the caches of processor outputs and encodings (each image
  processed and encoded once for all rows);
- `2 workers`: this process and one spawned worker process, one thread each, caches off;
- `cache + 2 workers`: both (the issue's target: >= 2x the baseline on 2 free cores);
- `packed (batch 4)`: one process, caches off, four samples per pass (engine/packed.py). On a CPU
  the decoder is compute-bound, so no gain is expected here; it is for accelerators.

Two throughputs per variant: end to end (the sweep call: the spawned worker's start, imports, task
registry and model load included) and in-cell (first cell start to last cell end, from the
records' own `seconds` and write times). Speedups are over the baseline's. Results are also checked
equal across the variants.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from repro.runner.executors import available_cores
from repro.runner.spec import expand, load_spec
from repro.runner.store import Store
from repro.runner.sweep import run_sweep

MAIN = Path(__file__).resolve().parent.parent / "sweeps" / "tiny" / "main.yaml"
TASKS = ["tinyworld_pope", "tinyworld_gqa"]
LIMIT = 24
VARIANTS = {  # label -> (workers, cache MiB, batch size)
    "batch 1, 1 process": (1, 0, 1),
    "encode cache": (1, None, 1),
    "2 workers": (2, 0, 1),
    "cache + 2 workers": (2, None, 1),
    "packed (batch 4)": (1, 0, 4),
}


def _in_cell_span(store: Store, cells) -> float:
    """Seconds from the first cell's start to the last cell's end (records' mtime - seconds)."""
    ends = [store.record_path(c.key).stat().st_mtime for c in cells]
    starts = [end - store.read(c.key)["seconds"] for c, end in zip(cells, ends)]
    return max(ends) - min(starts)


def _answers(store: Store, cells) -> list:
    return [[(s["doc_id"], s["resps"]) for s in store.read_samples(c.key)] for c in cells]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    raw = yaml.safe_load(MAIN.read_text())
    raw.update(tasks=TASKS, limit=LIMIT, methods=[m for m in raw["methods"] if "search" not in m])
    path = tmp_path_factory.mktemp("spec") / "throughput.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path)


def test_eval_throughput(interleaved, spec, tmp_path):
    cells = expand(spec)
    samples = len(cells) * LIMIT
    runs: dict[str, dict] = {}

    def variant(label: str):
        workers, cache_mb, batch_size = VARIANTS[label]

        def run():
            root = tmp_path / f"{label.replace(' ', '_').replace(',', '')}-{len(runs.get(label, {}))}"
            t0 = time.perf_counter()
            run_sweep(spec, root, progress=False, workers=workers, encode_cache_mb=cache_mb, batch_size=batch_size)
            runs[label] = {"end_to_end_s": time.perf_counter() - t0, "store": Store(root)}
        return run, {"workers": workers, "encode_cache": cache_mb is None, "batch_size": batch_size,
                     "samples": samples}

    load_before = os.getloadavg()
    rows = interleaved("eval-throughput", {label: variant(label) for label in VARIANTS}, rounds=1, warmup=0)
    if not rows:
        return
    base = runs["batch 1, 1 process"]
    base_span = _in_cell_span(base["store"], cells)
    reference = _answers(base["store"], cells)
    for label, row in rows.items():
        run = runs[label]
        span = _in_cell_span(run["store"], cells)
        row.update(samples_per_s=samples / run["end_to_end_s"], speedup=base["end_to_end_s"] / run["end_to_end_s"],
                   in_cell_samples_per_s=samples / span, in_cell_speedup=base_span / span,
                   cores=available_cores(), load_before=load_before, load_after=os.getloadavg())
        print(f"{label:<20} {row['samples_per_s']:6.2f} samples/s end to end (x{row['speedup']:.2f}), "
              f"{row['in_cell_samples_per_s']:6.2f} in cells (x{row['in_cell_speedup']:.2f})")
        assert _answers(run["store"], cells) == reference, label  # the same answers, every variant
