"""Calibration samples for fits (DOP's search, …): (id, images, question) drawn from a named source.

Sources:

* `tinyworld` / `tinyworld:KEY,KEY`: the embedded benchmark suite's validation splits (all tasks,
  or those), round-robin over tasks in split order. Disjoint from the test splits a tiny sweep
  evaluates.
* `lmms:TASK` / `lmms:TASK:SPLIT`: any lmms-eval task the sweep can load, tiny (`tinyworld_gqa`,
  `tinyworld_gqa_val`, …) or, with staged paper data, a paper task (`gqa`, `textvqa_val`, …). The
  split defaults to the one the task evaluates. Drawn from the evaluated split, the samples are
  the split's *last* N documents and are recorded as `excluded` (`TASK/doc_id`): a sweep with such
  a fit keeps the last N documents of that task out of every method's cells (`Cell.holdout`), so
  all methods are scored on the same documents and none on the calibration ones. Drawn from
  another split, they are its first N documents and nothing is excluded.

Questions are rendered by the task's own `doc_to_text` and images by its `doc_to_visual`, so a fit
sees the prompts an evaluation sends. The same source and count always give the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from repro.errors import ReproError

FORMS = "'tinyworld', 'tinyworld:KEY,KEY', 'lmms:TASK' or 'lmms:TASK:SPLIT'"


@dataclass(frozen=True)
class Sample:
    id: str
    images: list[Image.Image]
    question: str


@dataclass(frozen=True)
class CalibrationSet:
    """Samples and the evaluation documents they are (`TASK/doc_id`), which evaluation must skip."""

    samples: list[Sample]
    excluded: tuple[str, ...] = ()


def check_source(source: str) -> None:
    """The source's form (no data is read); ReproError naming the forms otherwise."""
    kind, _, rest = str(source).partition(":")
    if kind == "tinyworld" or (kind == "lmms" and rest and rest.count(":") <= 1 and all(rest.split(":"))):
        return
    raise ReproError(f"unknown calibration source {source!r}; use {FORMS}")


def held_out_task(source: str, profile: str) -> str | None:
    """The task (as sweeps name it) whose evaluated split `source` draws its samples from, if any:
    a sweep keeps the last documents of that task out of every method's evaluation."""
    check_source(source)
    kind, _, selection = source.partition(":")
    if kind != "lmms":
        return None
    name, _, split = selection.partition(":")
    if profile == "paper":
        from repro.eval.tasks import paper_task

        t = paper_task(name)
        return t.task if split in ("", t.split) else None
    from repro.tinyworld.suite import VAL_SUFFIX

    return name if split in ("", "validation" if name.endswith(VAL_SUFFIX) else "test") else None


def calibration_set(source: str, n: int, *, data_dir: Path | str | None = None,
                    staged: Path | str | None = None, avoid: tuple[int, ...] = ()) -> CalibrationSet:
    """`n` samples of `source`; tiny tasks come from `data_dir` (default cache), paper tasks need `staged`.
    `avoid`: document positions of the evaluated split an lmms source must not take (the paper
    reduced run's subset, which is evaluated whole)."""
    check_source(source)
    kind, _, selection = source.partition(":")
    if kind == "tinyworld":
        return CalibrationSet(_tinyworld(source, selection, n, data_dir))
    return _lmms(source, selection, n, data_dir, staged, set(avoid))


def calibration_samples(source: str, n: int, *, data_dir: Path | str | None = None,
                        staged: Path | str | None = None) -> list[Sample]:
    return calibration_set(source, n, data_dir=data_dir, staged=staged).samples


def _sample(task, doc, sample_id: str) -> Sample:
    return Sample(sample_id, [im.convert("RGB") for im in task.doc_to_visual(doc)], task.doc_to_text(doc))


def _tinyworld(source: str, selection: str, n: int, data_dir) -> list[Sample]:
    from lmms_eval.tasks import get_task_dict

    from repro import tinyworld
    from repro.tinyworld.suite import VAL_SUFFIX

    data_dir = Path(data_dir) if data_dir is not None else tinyworld.default_data_dir()
    tinyworld.build(data_dir)
    keys = [k for k in selection.split(",") if k] or [t.key for t in tinyworld.TASKS]
    known = {t.key: t for t in tinyworld.TASKS}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ReproError(f"unknown tiny-world task(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    names = {k: known[k].name + VAL_SUFFIX for k in keys}
    tasks = get_task_dict(list(names.values()), tinyworld.task_manager(data_dir))
    docs = {k: tasks[names[k]].dataset[tasks[names[k]].config.test_split] for k in keys}  # the validation split
    samples: list[Sample] = []
    row = 0
    while len(samples) < n:
        took = False
        for key in keys:
            if row < len(docs[key]) and len(samples) < n:
                samples.append(_sample(tasks[names[key]], docs[key][row], f"{key}/{row}"))
                took = True
        if not took:
            raise ReproError(f"calibration source {source!r} has only {len(samples)} samples, {n} asked")
        row += 1
    return samples


def _lmms(source: str, selection: str, n: int, data_dir, staged, avoid: set[int]) -> CalibrationSet:
    import difflib

    from lmms_eval.tasks import get_task_dict

    name, _, split = selection.partition(":")
    if staged is not None:
        from repro.eval.tasks import PAPER_TASKS, paper_task, task_manager

        known = [t.name for t in PAPER_TASKS] + [t.task for t in PAPER_TASKS if t.run_name]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise ReproError(f"calibration source {source!r}: unknown paper task {name!r}"
                             + (f" (did you mean {', '.join(close)}?)" if close else "") + f"; known: {', '.join(known)}")
        t = paper_task(name)
        name, manager = t.task, task_manager(staged, Path(staged) / "_lmms_calibration", names=[t.name])
    else:
        from repro import tinyworld

        data_dir = Path(data_dir) if data_dir is not None else tinyworld.default_data_dir()
        tinyworld.build(data_dir)
        manager = tinyworld.task_manager(data_dir)
        known = sorted(manager.all_tasks)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise ReproError(f"calibration source {source!r}: unknown task {name!r}"
                             + (f" (did you mean {', '.join(close)}?)" if close else "")
                             + " (paper tasks need staged data: the sweep's `staged`)")
    task = get_task_dict([name], manager)[name]
    evaluated = task.config.test_split
    split = split or evaluated
    if split == evaluated:
        docs = task.test_docs()
    elif task.dataset is not None and split in task.dataset:
        docs = task.dataset[split]
    else:
        have = sorted(task.dataset) if task.dataset is not None else []
        raise ReproError(f"calibration source {source!r}: task {name} has no split {split!r} (loaded: "
                         f"{', '.join(have)})")
    if n > len(docs):
        raise ReproError(f"calibration source {source!r} has only {len(docs)} documents in split {split!r}, "
                         f"{n} asked; ask for fewer samples or use a larger split")
    if split == evaluated:  # the split's last documents (outside `avoid`), excluded from evaluation
        ids = [i for i in range(len(docs) - 1, -1, -1) if i not in avoid][:n][::-1]
        if len(ids) < n:
            raise ReproError(f"calibration source {source!r}: only {len(ids)} documents of {name} lie outside the "
                             f"evaluated subset, {n} asked")
        samples = [_sample(task, docs[i], f"{name}/{i}") for i in ids]
        return CalibrationSet(samples, tuple(s.id for s in samples))
    return CalibrationSet([_sample(task, docs[i], f"{name}:{split}/{i}") for i in range(n)])
