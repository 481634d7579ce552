"""The harness's driver of lmms-eval: `evaluate(model_args, tasks, ...)` calls `simple_evaluate`.

`simple_evaluate` raises on failure (the `lmms-eval` CLI logs the error and exits 0), and the
checks here turn the usual mistakes into `ReproError`s that name the fix before lmms-eval starts:
an unknown task name (with close matches and how to list tasks), damaged tiny-world data (the
rebuild command) or damaged/missing staged paper data, and unknown `model_args` keys.
"""

from __future__ import annotations

import difflib
import json
import logging
import time
from pathlib import Path
from typing import Any

from repro.errors import ReproError

log = logging.getLogger(__name__)


def model_args_string(model_args: str | dict[str, Any]) -> str:
    """`k=v,...` as lmms-eval's CLI takes it (JSON for dict values such as method options)."""
    if isinstance(model_args, str):
        return model_args
    parts = []
    for k, v in model_args.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, separators=(",", ":"), sort_keys=True)
        parts.append(f"{k}={v}")
    return ",".join(parts)


def ensure_registered() -> None:
    """The `repro` model comes from the `lmms_eval.models` entry point once the package is
    pip-installed; register it in-process when it is not (e.g. a source checkout on sys.path)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    try:
        MODEL_REGISTRY_V2.get_manifest("repro")
    except Exception:  # noqa: BLE001 - lmms-eval raises ValueError/KeyError depending on version
        from .manifests import register

        log.warning("lmms-eval entry point 'repro' not found (package not pip-installed?); registering in-process")
        register()


def check_tasks(task_manager, tasks: list[str]) -> None:
    """ReproError naming unknown tasks, close matches, and how to list the available ones."""
    known = set(task_manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if not unknown:
        return
    hints = []
    for t in unknown:
        close = difflib.get_close_matches(t, sorted(known), n=3, cutoff=0.6)
        hints.append(f"{t!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    raise ReproError(
        f"unknown lmms-eval task(s): {'; '.join(hints)}. {len(known)} tasks are available here; list them with "
        "`python -c \"from repro import tinyworld as tw; print(tw.task_manager(DIR).all_tasks)\"` for the tiny "
        "world or `lmms-eval tasks list` for lmms-eval's own")


def task_manager_for(data_dir: Path | str | None = None, *, staged: Path | str | None = None,
                     include_path: Path | str | None = None, subset: tuple[int, int] | None = None):
    """The TaskManager of one run: the tiny world in `data_dir`, the staged paper tasks of `staged`
    (see repro.eval.tasks; `subset`: the reduced run's documents per task and seed), or a plain
    `include_path` folder. Data are verified first."""
    from lmms_eval.tasks import TaskManager

    if sum(x is not None for x in (data_dir, staged, include_path)) != 1:
        raise ReproError("give exactly one of data_dir (tiny world), staged (paper data) or include_path")
    if data_dir is not None:
        from repro import tinyworld

        return tinyworld.task_manager(data_dir)
    if staged is not None:
        from .tasks import task_manager as paper_task_manager

        return paper_task_manager(staged, subset=subset)
    return TaskManager(include_path=str(include_path), include_defaults=False)


def evaluate(model_args: str | dict[str, Any], tasks: list[str] | str, *, data_dir: Path | str | None = None,
             staged: Path | str | None = None, include_path: Path | str | None = None, limit: int | float | None = None,
             output_dir: Path | str | None = None, log_samples: bool = True, task_manager=None, lm=None,
             seed: int = 0) -> dict[str, Any] | None:
    """Run lmms-eval's `simple_evaluate` with `--model repro` and return its results dict.

    Under `accelerate launch --num_processes N` (repro.eval.parallel) every process must call
    this; rank 0 gets the gathered results (samples sorted by doc_id, so they read as a
    one-process run's) and writes `output_dir`, the other ranks get None.

    `lm`: a ready `ReproLMM` built from the same `model_args` (reused across calls: the model is
    loaded once). `seed` sets lmms-eval's seeds (python `seed`, numpy/torch/fewshot `1234 + seed`).

    `output_dir` (optional) receives `results.json` (everything but the samples) and one
    `samples_<task>.jsonl` per task (each line one sample log, with the repro record under
    `token_counts[0]["repro"]`).
    """
    from lmms_eval import evaluator
    from lmms_eval.utils import handle_non_serializable

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    tm = task_manager if task_manager is not None else task_manager_for(data_dir, staged=staged,
                                                                         include_path=include_path)
    check_tasks(tm, tasks)
    from .lmms_model import check_model_args

    args = model_args_string(model_args)
    from lmms_eval.utils import simple_parse_args_string

    check_model_args(simple_parse_args_string(args))  # unknown keys fail before lmms-eval starts
    ensure_registered()
    t0 = time.perf_counter()
    results = evaluator.simple_evaluate(model=lm if lm is not None else "repro", model_args=args, tasks=tasks,
                                        task_manager=tm, limit=limit, batch_size=1, log_samples=log_samples,
                                        random_seed=seed, numpy_random_seed=1234 + seed,
                                        torch_random_seed=1234 + seed, fewshot_random_seed=1234 + seed)
    if results is None:
        from . import parallel

        if not parallel.is_main():
            return None  # lmms-eval gathered this rank's documents on rank 0
        raise ReproError("lmms-eval returned no results")
    for task, samples in (results.get("samples") or {}).items():  # gathered rank by rank: restore doc order
        results["samples"][task] = sorted(samples, key=lambda s: s.get("doc_id", 0))
    results["repro"] = {"model_args": args, "tasks": tasks, "limit": limit, "seconds": round(time.perf_counter() - t0, 2)}
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary = {k: v for k, v in results.items() if k != "samples"}
        (out / "results.json").write_text(json.dumps(summary, indent=2, default=handle_non_serializable) + "\n",
                                          encoding="utf-8")
        for task, samples in (results.get("samples") or {}).items():
            with open(out / f"samples_{task}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(s, default=handle_non_serializable, ensure_ascii=False) + "\n" for s in samples)
    return results


def main_metrics(results: dict[str, Any]) -> dict[str, float]:
    """task -> its headline metric value, for the tiny tasks (repro.tinyworld.TASKS main_metric)."""
    from repro.tinyworld.suite import TASKS, VAL_SUFFIX

    out = {}
    for name, metrics in results.get("results", {}).items():
        base = name.removesuffix(VAL_SUFFIX)
        spec = next((t for t in TASKS if t.name == base), None)
        if spec is None:
            continue
        key = f"{spec.main_metric},{'flexible-extract' if spec.key == 'ai2d' else 'none'}"
        if key in metrics:
            out[name] = float(metrics[key]) / spec.full_score
    return out
