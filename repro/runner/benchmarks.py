"""Which lmms-eval metric is a task's headline number and how it is scaled for tables.

Tables show every benchmark on a 0-100 scale as the papers do ("Acc." divides MME by 20), so the
average and the relative average are computed on one scale. The raw lmms-eval value is kept too.
"""

from __future__ import annotations

from dataclasses import dataclass

from repro.errors import ReproError


@dataclass(frozen=True)
class Headline:
    benchmark: str  # column name
    metric: str  # "<metric>,<filter>" key in lmms-eval results
    scale: float  # score = raw * scale, on 0-100


def _tiny(name: str) -> Headline | None:
    from repro.tinyworld.suite import TASKS, VAL_SUFFIX

    base = name.removesuffix(VAL_SUFFIX)
    spec = next((t for t in TASKS if t.name == base), None)
    if spec is None:
        return None
    filt = "flexible-extract" if spec.key == "ai2d" else "none"
    return Headline(spec.mimics.split(" (")[0], f"{spec.main_metric},{filt}", 100.0 / spec.full_score)


# paper scores: fractions -> percent, MME perception (0-2000) / 20, OCRBench accuracy (0-1) -> percent
_PAPER_SCALE = {"mme": 1 / 20, "mmbench_en_dev": 1.0, "mmbench_cn_dev": 1.0, "ocrbench": 100.0}


def _paper(name: str) -> Headline | None:
    from repro.eval.tasks import PAPER_TASKS

    task = next((t for t in PAPER_TASKS if name in (t.name, t.task)), None)
    if task is None:
        return None
    return Headline(task.benchmark, task.main_metric, _PAPER_SCALE.get(task.name, 100.0))


def headline(task: str) -> Headline:
    found = _tiny(task) or _paper(task)
    if found is None:
        raise ReproError(f"no headline metric is declared for task {task!r} (repro/runner/benchmarks.py)")
    return found


def score(task: str, results: dict) -> tuple[float, float]:
    """(raw lmms-eval value, 0-100 score) of `task` in a `simple_evaluate` results dict."""
    h = headline(task)
    metrics = results["results"][task]
    if h.metric not in metrics:
        raise ReproError(f"lmms-eval results for {task} lack {h.metric} (have {sorted(metrics)})")
    raw = float(metrics[h.metric])
    return raw, raw * h.scale
