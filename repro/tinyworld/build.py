"""Building the suite on disk: parquet files per task and split, a manifest with checksums, and the
lmms-eval task folder. Building is cached: a second `build` with the same seed and sizes only
re-hashes the files; a missing or corrupt file (checksum mismatch) is regenerated, and readers
(`verify`, `task_manager`) report it with the command that fixes it.

Layout of a data directory:
    manifest.json                      version, seed, sizes, per-file sha256
    data/<key>/<split>.parquet         one file per task and split (HF `Image()` column `image`)
    tasks/*.yaml, tasks/tinyworld_utils.py   lmms-eval task folder (include_path)
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Dataset

from ..errors import ReproError
from .scenes import IMAGE_SIZE
from .suite import TASKS, TaskSpec, spec
from .yamls import write_task_folder

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump whenever generated content changes: old data directories are then rebuilt, not reused."""
SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
PARQUET_ROW_GROUP = 100
"""Rows per parquet row group (the size `datasets` itself uses for image columns)."""


@dataclass(frozen=True)
class SplitSizes:
    """Rows per split (paired/grouped tasks round up to whole pairs or groups)."""

    train: int = 2000
    validation: int = 200
    test: int = 300

    def __post_init__(self) -> None:
        if min(self.train, self.validation, self.test) < 1:
            raise ReproError(f"tinyworld split sizes must be >= 1, got {self}")

    def of(self, split: str) -> int:
        return getattr(self, split)


Sizes = SplitSizes | Mapping[str, SplitSizes]


def default_data_dir() -> Path:
    """Where the suite lives unless a directory is passed explicitly: a per-user cache, versioned."""
    return Path.home() / ".cache" / "repro" / "tinyworld" / f"v{GENERATOR_VERSION}"


def sizes_for(sizes: Sizes, key: str) -> SplitSizes:
    if isinstance(sizes, SplitSizes):
        return sizes
    return sizes.get(key, SplitSizes())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_rng(seed: int, spec_: TaskSpec, split: str) -> random.Random:
    """Independent, reproducible stream per (seed, task, split); str seeds hash with SHA-512."""
    return random.Random(f"tinyworld/v{GENERATOR_VERSION}/{seed}/{spec_.stream}/{split}")


def rel_path(key: str, split: str) -> str:
    return f"data/{key}/{split}.parquet"


def write_split(spec_: TaskSpec, split: str, n: int, seed: int, path: Path) -> int:
    """Generate one split and write it atomically; returns the row count."""
    rows = spec_.generated.gen(split_rng(seed, spec_, split), n, split)
    table = Dataset.from_list(rows, features=spec_.generated.features).data.table  # schema carries HF features
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, row_group_size=PARQUET_ROW_GROUP)
    tmp.replace(path)
    return len(rows)


def read_manifest(data_dir: Path) -> dict | None:
    try:
        return json.loads((Path(data_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _entry_ok(entry: dict | None, data_dir: Path, sizes: SplitSizes) -> str | None:
    """None when a task's files match its manifest entry, else the reason to regenerate."""
    if entry is None:
        return "not built yet"
    if entry.get("sizes") != asdict(sizes):
        return f"sizes changed ({entry.get('sizes')} -> {asdict(sizes)})"
    for split in SPLITS:
        f = entry["files"].get(split)
        path = data_dir / f["path"] if f else None
        if path is None or not path.is_file():
            return f"{split} file missing"
        if sha256_file(path) != f["sha256"]:
            return f"{path} is corrupt (checksum mismatch)"
    return None


def build(
    data_dir: Path | str,
    *,
    seed: int = 0,
    sizes: Sizes = SplitSizes(),
    tasks: Iterable[str] | None = None,
) -> dict:
    """Generate (or reuse) the suite in `data_dir`; returns the manifest.

    A no-op apart from hashing when the manifest already matches `seed` and `sizes` and every file
    checks out; files that are missing or corrupt are regenerated (deterministically, so they come
    back byte-identical). `tasks` limits the build to some task keys (default: all).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    selected = [spec(t) for t in tasks] if tasks is not None else list(TASKS)
    old = read_manifest(data_dir)
    reusable = old is not None and old.get("version") == GENERATOR_VERSION and old.get("seed") == seed
    entries: dict[str, dict] = dict(old["tasks"]) if reusable else {}
    for s in selected:
        want = sizes_for(sizes, s.key)
        reason = _entry_ok(entries.get(s.key), data_dir, want)
        if reason is None:
            continue
        if s.key in entries:
            log.warning("tinyworld: regenerating %s: %s", s.name, reason)
        t0 = time.perf_counter()
        files, rows = {}, {}
        for split in SPLITS:
            rel = rel_path(s.key, split)
            rows[split] = write_split(s, split, want.of(split), seed, data_dir / rel)
            files[split] = {"path": rel, "sha256": sha256_file(data_dir / rel)}
        entries[s.key] = {"name": s.name, "sizes": asdict(want), "rows": rows, "files": files}
        log.info("tinyworld: built %s %s in %.1fs", s.name, rows, time.perf_counter() - t0)
    manifest = {
        "format": "repro-tinyworld",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "tasks": {t.key: entries[t.key] for t in TASKS if t.key in entries},
    }
    write_task_folder(data_dir / "tasks", _parquet_of(data_dir, manifest))
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if (data_dir / MANIFEST).is_file() and (data_dir / MANIFEST).read_text(encoding="utf-8") == text:
        return manifest
    tmp = data_dir / (MANIFEST + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(data_dir / MANIFEST)
    return manifest


def _parquet_of(data_dir: Path, manifest: dict) -> dict[tuple[str, str], Path]:
    return {
        (key, split): (data_dir / entry["files"][split]["path"]).resolve()
        for key, entry in manifest["tasks"].items()
        for split in ("validation", "test")
    }


def _fix(data_dir: Path, seed: int | str, manifest: dict | None = None) -> str:
    """The command that rebuilds `data_dir` as it was (same seed, and same sizes when uniform)."""
    cmd = f"python -m repro.tinyworld build --data-dir {data_dir} --seed {seed}"
    sizes = {json.dumps(e["sizes"], sort_keys=True) for e in (manifest or {}).get("tasks", {}).values()}
    if len(sizes) == 1:
        s = json.loads(sizes.pop())
        cmd += f" --train {s['train']} --validation {s['validation']} --test {s['test']}"
    return f"run `{cmd}`"


def verify(data_dir: Path | str, *, check_hashes: bool = True) -> dict:
    """The manifest of a built suite; raises ReproError naming the fix when files are missing or corrupt."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if manifest is None or manifest.get("format") != "repro-tinyworld":
        raise ReproError(f"no tinyworld suite in {data_dir}: {_fix(data_dir, 0)}")
    seed = manifest.get("seed", 0)
    if manifest.get("version") != GENERATOR_VERSION:
        raise ReproError(
            f"tinyworld suite in {data_dir} is version {manifest.get('version')}, this code writes "
            f"version {GENERATOR_VERSION}: {_fix(data_dir, seed)}"
        )
    bad = []
    for entry in manifest["tasks"].values():
        for f in entry["files"].values():
            path = data_dir / f["path"]
            if not path.is_file():
                bad.append(f"{path} (missing)")
            elif check_hashes and sha256_file(path) != f["sha256"]:
                bad.append(f"{path} (checksum mismatch)")
    if bad:
        raise ReproError(
            f"tinyworld data in {data_dir} is damaged: {'; '.join(bad)}. To regenerate, {_fix(data_dir, seed, manifest)}"
        )
    return manifest


def refresh_task_folder(data_dir: Path | str, manifest: dict) -> Path:
    """Rewrite the YAMLs for the current lmms-eval install (no-op when unchanged); returns the folder."""
    data_dir = Path(data_dir)
    write_task_folder(data_dir / "tasks", _parquet_of(data_dir, manifest))
    return data_dir / "tasks"
