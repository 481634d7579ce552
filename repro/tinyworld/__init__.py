"""Tiny world: an offline, deterministic benchmark suite shaped like the DOP paper's thirteen
benchmarks, served as lmms-eval tasks (see README.md in this folder).

    from repro import tinyworld
    d = tinyworld.default_data_dir()
    tinyworld.build(d, seed=0)                       # cached; seconds the first time
    tm = tinyworld.task_manager(d)                   # lmms_eval TaskManager over d/tasks
    simple_evaluate(model=..., tasks=["tinyworld"], task_manager=tm)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ReproError
from .build import (
    GENERATOR_VERSION,
    SPLITS,
    SplitSizes,
    build,
    default_data_dir,
    verify,
)
from .build import refresh_task_folder as _refresh
from .scenes import IMAGE_SIZE, PATCH_SIZE
from .suite import GROUP, TASKS, TaskSpec, spec, task_names

__all__ = [
    "GENERATOR_VERSION",
    "GROUP",
    "IMAGE_SIZE",
    "PATCH_SIZE",
    "SPLITS",
    "TASKS",
    "SplitSizes",
    "TaskSpec",
    "build",
    "default_data_dir",
    "load_split",
    "spec",
    "split_path",
    "task_manager",
    "task_names",
    "verify",
]


def task_manager(data_dir: Path | str, *, check_hashes: bool = True):
    """`lmms_eval.tasks.TaskManager` over the suite's task folder, after checking the data.

    Checking first matters: lmms-eval retries a failing dataset load for up to a minute and then
    raises an unrelated-looking error, while a corrupt file here names the rebuild command.
    """
    from lmms_eval.tasks import TaskManager

    manifest = verify(data_dir, check_hashes=check_hashes)
    folder = _refresh(data_dir, manifest)
    return TaskManager(include_path=str(folder), include_defaults=False)


def split_path(data_dir: Path | str, task: str, split: str) -> Path:
    """The parquet file of one task split (task by key or lmms-eval name)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return Path(data_dir) / "data" / spec(task).key / f"{split}.parquet"


def load_split(data_dir: Path | str, task: str, split: str):
    """One split as an in-memory `datasets.Dataset` (images decode to PIL), e.g. for training.

    Reads the parquet directly, so nothing is written to the HF datasets cache.
    """
    import pyarrow.parquet as pq
    from datasets import Dataset

    path = split_path(data_dir, task, split)
    if not path.is_file():
        raise ReproError(f"{path} does not exist: run `python -m repro.tinyworld build --data-dir {data_dir}`")
    return Dataset(pq.read_table(path))
