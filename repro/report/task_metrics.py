"""Each task's headline metric as lmms-eval defines it (aggregation, per-sample function), read
from the task's own YAML through lmms-eval's TaskManager: no model, no dataset load."""

from __future__ import annotations

from pathlib import Path

from repro.errors import ReproError
from repro.report.uncertainty import TaskMetric
from repro.runner import benchmarks
from repro.runner.spec import Spec

_METRIC_KEYS = {"metric", "aggregation", "higher_is_better"}


def task_manager(spec: Spec, data_dir: Path | str | None = None, staged: Path | str | None = None):
    from repro.eval.run import task_manager_for

    if spec.profile == "tiny":
        from repro import tinyworld

        return task_manager_for(Path(data_dir) if data_dir else tinyworld.default_data_dir())
    staged = staged or spec.staged or "data/staged"
    return task_manager_for(staged=staged)


def task_metric(tm, task: str) -> TaskMetric:
    import lmms_eval.api.metrics  # noqa: F401 - registers lmms-eval's metrics and aggregations
    from lmms_eval.api.registry import get_aggregation, get_metric

    config = tm._get_config(task)  # lmms-eval's resolved YAML: !function entries are the callables
    head = benchmarks.headline(task)
    name = head.metric.split(",")[0]
    entry = next((m for m in config.get("metric_list", []) if m.get("metric") == name), None)
    if entry is None:
        raise ReproError(f"task {task}: its YAML declares no metric {name} (repro/runner/benchmarks.py)")
    agg = entry.get("aggregation", "mean")
    aggregate = get_aggregation(agg) if isinstance(agg, str) else agg
    process = config.get("process_results")
    if callable(process):
        def per_sample(doc, target, answer, _p=process, _n=name):
            return _p(doc, [answer])[_n]
    else:  # lmms-eval's generic path: the registered metric against the target
        fn, kwargs = get_metric(name), {k: v for k, v in entry.items() if k not in _METRIC_KEYS}

        def per_sample(doc, target, answer, _f=fn, _k=kwargs, _n=name):
            out = _f(references=[target], predictions=[answer], **_k)
            return out[_n] if isinstance(out, dict) else out
    return TaskMetric(task, name, aggregate, per_sample, head.scale)


def task_metrics(spec: Spec, data_dir: Path | str | None = None, staged: Path | str | None = None
                 ) -> dict[str, TaskMetric]:
    tm = task_manager(spec, data_dir, staged)
    return {t: task_metric(tm, t) for t in spec.tasks}
