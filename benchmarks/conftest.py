"""Benchmark helpers: interleaved timing, and a summary of ratios measured in one run.

These machines are shared and noisy, so variants that are compared are timed interleaved: every
round runs each variant once, in rotating order, and ratios are taken between per-variant medians
of the same rounds. pytest-benchmark times the whole round; the per-variant medians, their ratios
to the group's baseline (the first variant) and the FLOPs ratios are printed at the end of the
session and written to results/benchmarks/<group>.json with the machine they ran on.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

RESULTS = Path(__file__).resolve().parent.parent / "results" / "benchmarks"
_RECORDS = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[_RECORDS] = {}


@pytest.fixture
def interleaved(request, benchmark):
    """Time `variants` (label -> (fn, extra info)) interleaved; record medians and ratios for `group`."""
    records = request.config.stash[_RECORDS]

    def run(group: str, variants: dict[str, tuple[Callable[[], object], dict]], rounds: int = 12, warmup: int = 2):
        labels = list(variants)
        times: dict[str, list[float]] = {label: [] for label in labels}
        counter = {"round": 0}

        def one_round():
            k = counter["round"]
            counter["round"] += 1
            for label in labels[k % len(labels):] + labels[: k % len(labels)]:
                start = time.perf_counter()
                variants[label][0]()
                times[label].append(time.perf_counter() - start)

        benchmark.group = group
        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=warmup)
        if benchmark.stats is None:  # --benchmark-disable: bodies ran once, nothing to report
            return {}
        rows = [{"label": label, "median_s": statistics.median(times[label][warmup:]), **variants[label][1]}
                for label in labels]
        base = rows[0]
        for row in rows:
            row["time_ratio"] = row["median_s"] / base["median_s"]
            if "flops" in row and "flops" in base:
                row["flops_ratio"] = row["flops"] / base["flops"]
        benchmark.extra_info["rows"] = rows
        records[group] = rows
        return {row["label"]: row for row in rows}

    return run


def pytest_terminal_summary(terminalreporter, config):
    records = config.stash.get(_RECORDS, {})
    if not records:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    for group, rows in records.items():
        terminalreporter.write_sep("-", f"{group}: medians of interleaved rounds, ratios to '{rows[0]['label']}'")
        for row in rows:
            flops_txt = f"  flops ratio {row['flops_ratio']:.3f}" if "flops_ratio" in row else ""
            terminalreporter.write_line(f"  {row['label']:<26} {row['median_s'] * 1e3:9.2f} ms  "
                                        f"time ratio {row['time_ratio']:.3f}{flops_txt}")
        (RESULTS / f"{group}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
