"""The results store: one record per cell, content-addressed by the cell's key.

Layout under the store root:

    cells/<key[:2]>/<key>.json            record: config, provenance, budget statistics, metrics,
                                          lmms-eval's results (without samples), samples sha256
    cells/<key[:2]>/<key>.samples.jsonl   lmms-eval's sample logs (one JSON line per sample)
    artifacts/<name>.json                 search artifacts (DOP), same atomic writes
    locks/<key>.lock                      flock held while a process computes that cell

Writes are atomic (temporary file in the same folder, fsync, rename), samples first and the record
last, and the record carries its own checksum and the samples' checksum: a record that does not
parse, is truncated, or disagrees with its checksums is corrupt and the cell is recomputed.
Per-cell locks let two sweeps on one store share the work without writing the same cell twice;
the OS releases a killed process's locks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from repro.runner.records import CELL_SCHEMA, CellRecord, SampleRecord
from repro.runner.spec import canonical_json

log = logging.getLogger(__name__)
RECORD_FORMAT = CELL_SCHEMA


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ----------------------------------------------------------------- paths

    def record_path(self, key: str) -> Path:
        return self.root / "cells" / key[:2] / f"{key}.json"

    def samples_path(self, key: str) -> Path:
        return self.root / "cells" / key[:2] / f"{key}.samples.jsonl"

    def artifact_path(self, name: str) -> Path:
        return self.root / "artifacts" / f"{name}.json"

    # ----------------------------------------------------------------- records

    def write(self, key: str, record: dict[str, Any], samples: list[dict[str, Any]]) -> Path:
        """Samples, then the record (which names the samples' checksum): atomic, in that order."""
        lines = "".join(json.dumps(s, sort_keys=True, ensure_ascii=False, default=str) + "\n" for s in samples)
        data = lines.encode("utf-8")
        atomic_write(self.samples_path(key), data)
        record = json.loads(json.dumps(record, default=str))  # plain JSON types, so the checksum survives a reread
        body = {**record, "format": RECORD_FORMAT, "key": key, "samples_sha256": sha256_bytes(data),
                "samples_count": len(samples)}
        body["record_sha256"] = sha256_bytes(canonical_json(body).encode())
        atomic_write(self.record_path(key), (json.dumps(body, indent=1, sort_keys=True, default=str) + "\n").encode())
        return self.record_path(key)

    def status(self, key: str) -> str:
        """'done', 'missing' or 'corrupt: <why>'."""
        path = self.record_path(key)
        if not path.exists():
            return "missing"
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"corrupt: record does not parse ({type(err).__name__})"
        if not isinstance(body, dict) or body.get("format") != RECORD_FORMAT or body.get("key") != key:
            return "corrupt: wrong format or key"
        claimed = body.pop("record_sha256", None)
        if claimed != sha256_bytes(canonical_json(body).encode()):
            return "corrupt: record checksum mismatch"
        try:
            samples = self.samples_path(key).read_bytes()
        except OSError:
            return "corrupt: samples file missing"
        if sha256_bytes(samples) != body.get("samples_sha256"):
            return "corrupt: samples checksum mismatch"
        return "done"

    def read(self, key: str) -> dict[str, Any] | None:
        """The record if it is complete and intact, else None."""
        if self.status(key) != "done":
            return None
        return json.loads(self.record_path(key).read_text(encoding="utf-8"))

    def read_samples(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.samples_path(key).read_text(encoding="utf-8").splitlines() if line]

    def read_cell(self, key: str) -> CellRecord | None:
        """The typed record if it is complete and intact, else None."""
        body = self.read(key)
        return None if body is None else CellRecord.from_dict(body)

    def read_sample_records(self, key: str) -> list[SampleRecord]:
        return [SampleRecord.from_log(s) for s in self.read_samples(key)]

    def has_records(self) -> bool:
        """Whether any cell record exists (a store path that holds none is a wrong --store)."""
        return any((self.root / "cells").glob("*/*.json"))

    def discard(self, key: str) -> None:
        """Remove a corrupt record (and its samples) before recomputing the cell."""
        self.record_path(key).unlink(missing_ok=True)
        self.samples_path(key).unlink(missing_ok=True)

    # ----------------------------------------------------------------- artifacts

    def write_artifact(self, name: str, artifact: dict[str, Any]) -> Path:
        artifact = json.loads(json.dumps(artifact, default=str))
        body = {**artifact, "store_sha256": sha256_bytes(canonical_json(artifact).encode())}
        atomic_write(self.artifact_path(name), (json.dumps(body, indent=1, default=str) + "\n").encode())
        return self.artifact_path(name)

    def read_artifact(self, name: str) -> dict[str, Any] | None:
        """An intact artifact or None (missing or corrupt: the caller recomputes it)."""
        try:
            body = json.loads(self.artifact_path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        claimed = body.pop("store_sha256", None) if isinstance(body, dict) else None
        if claimed is None or claimed != sha256_bytes(canonical_json(body).encode()):
            return None
        return body

    # ----------------------------------------------------------------- locks

    @contextmanager
    def lock(self, name: str, *, blocking: bool) -> Iterator[bool]:
        """An exclusive flock on locks/<name>.lock; yields whether it was acquired."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
