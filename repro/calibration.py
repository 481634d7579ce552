"""Calibration samples for searches: (id, images, question) drawn from a named source.

Sources: `tinyworld` (every task's validation split) or `tinyworld:KEY,KEY` (those tasks), from
the embedded benchmark suite; questions are rendered by the lmms-eval task's own `doc_to_text`,
so a search sees the prompts an evaluation sends. Samples are taken round-robin over tasks, in
split order, so the same source and count always give the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from repro.errors import ReproError


@dataclass(frozen=True)
class Sample:
    id: str
    images: list[Image.Image]
    question: str


def calibration_samples(source: str, n: int, *, data_dir: Path | str | None = None) -> list[Sample]:
    kind, _, selection = source.partition(":")
    if kind != "tinyworld":
        raise ReproError(f"unknown calibration source {source!r}; use 'tinyworld' or 'tinyworld:KEY,KEY' "
                         "(task keys as in `python -m repro.tinyworld build`)")
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
                task, doc = tasks[names[key]], docs[key][row]
                images = [im.convert("RGB") for im in task.doc_to_visual(doc)]
                samples.append(Sample(f"{key}/{row}", images, task.doc_to_text(doc)))
                took = True
        if not took:
            raise ReproError(f"calibration source {source!r} has only {len(samples)} samples, {n} asked")
        row += 1
    return samples
