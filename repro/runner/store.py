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

Shared stores (several accounts on a cluster): files get the mode the umask gives (0644 under
umask 0022), like any other file the user writes; a record this account cannot read is
"unreadable", never "corrupt", and is never deleted; temporary files that an interrupted write
left behind are removed once they are older than any live write; records never hold the store's
own absolute location (paths inside the store are written relative to it), so a store can be
moved or mounted elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from repro.errors import ReproError
from repro.paths import nearest_existing, writable
from repro.runner.records import CELL_SCHEMA, CellRecord, SampleRecord
from repro.runner.spec import canonical_json

log = logging.getLogger(__name__)
RECORD_FORMAT = CELL_SCHEMA
TEMP_MAX_AGE_S = 6 * 3600  # an older temporary file belongs to no live write (writes take seconds)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.
    The file gets the mode a plain `open(path, "w")` would give (0666 less the umask), not
    mkstemp's private 0600, so other accounts sharing the store can read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
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

    # ----------------------------------------------------------------- the folder

    def check_usable(self, *, writing: bool) -> None:
        """ReproError naming the fix when the root is not a folder this process can use."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise ReproError(f"store {root} is a file, not a folder; pass --store a folder (new or existing)")
        existing = nearest_existing(root)
        if not existing.is_dir():
            raise ReproError(f"store {root} is under {existing}, which is a file; pass --store a folder path")
        if writing and not writable(existing):
            raise ReproError(f"store {root} is not writable by this account ({existing} is read-only) and cells "
                             "are still to compute; give write permission, or pass --store a writable folder")

    def clean_temporaries(self, max_age_s: float = TEMP_MAX_AGE_S) -> list[Path]:
        """Remove `.*.tmp` files that interrupted writes left in cells/ and artifacts/. Only files
        older than `max_age_s` go: a concurrent writer's live temporary file is seconds old."""
        removed = []
        now = time.time()
        for folder in ("cells", "artifacts"):
            for tmp in (self.root / folder).glob("**/.*.tmp"):
                try:
                    if now - tmp.lstat().st_mtime > max_age_s:
                        tmp.unlink()
                        removed.append(tmp)
                except OSError:  # gone meanwhile, or another account's file: leave it
                    continue
        return removed

    def portable(self, obj: Any) -> Any:
        """`obj` with every path inside the store written relative to it (no absolute location)."""
        forms = {self.root.resolve(), self.root.absolute()} | ({self.root} if self.root.parts else set())
        prefixes = sorted((str(p) + os.sep for p in forms), key=len, reverse=True)
        # a prefix counts only where a path starts (not inside a longer path such as other/<root>/...)
        pattern = re.compile(r"(?<![\w./~-])(?:" + "|".join(re.escape(p) for p in prefixes) + ")")
        return _relative(obj, pattern)

    def resolve(self, relative: str | Path) -> Path:
        """A path a record holds (relative to the store) as a path this process can open."""
        return self.root / relative

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
        samples = self.portable(json.loads(json.dumps(samples, default=str)))
        lines = "".join(json.dumps(s, sort_keys=True, ensure_ascii=False, default=str) + "\n" for s in samples)
        data = lines.encode("utf-8")
        atomic_write(self.samples_path(key), data)
        record = self.portable(json.loads(json.dumps(record, default=str)))  # plain JSON: checksums survive a reread
        body = {**record, "format": RECORD_FORMAT, "key": key, "samples_sha256": sha256_bytes(data),
                "samples_count": len(samples)}
        body["record_sha256"] = sha256_bytes(canonical_json(body).encode())
        atomic_write(self.record_path(key), (json.dumps(body, indent=1, sort_keys=True, default=str) + "\n").encode())
        return self.record_path(key)

    def status(self, key: str) -> str:
        """'done', 'missing', 'corrupt: <why>' (recompute it) or 'unreadable: <why>' (this account
        cannot read it, or a folder stands in its place: never delete it, report it)."""
        path = self.record_path(key)
        if not path.exists():
            return "missing"
        if path.is_dir():
            return f"unreadable: {path} is a folder, not a record; remove it"
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except PermissionError:
            return f"unreadable: {path}: permission denied; ask its owner for read access (chmod a+r)"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"corrupt: record does not parse ({type(err).__name__})"
        if not isinstance(body, dict) or body.get("format") != RECORD_FORMAT or body.get("key") != key:
            return "corrupt: wrong format or key"
        claimed = body.pop("record_sha256", None)
        if claimed != sha256_bytes(canonical_json(body).encode()):
            return "corrupt: record checksum mismatch"
        try:
            samples = self.samples_path(key).read_bytes()
        except PermissionError:
            return f"unreadable: {self.samples_path(key)}: permission denied; ask its owner for read access (chmod a+r)"
        except IsADirectoryError:
            return f"unreadable: {self.samples_path(key)} is a folder, not a samples file; remove it"
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
        """Remove a corrupt record (and its samples) before recomputing the cell; never one this
        account cannot read (ReproError)."""
        status = self.status(key)
        if status.startswith("unreadable"):
            raise ReproError(f"record {key} is {status}")
        self.record_path(key).unlink(missing_ok=True)
        self.samples_path(key).unlink(missing_ok=True)

    # ----------------------------------------------------------------- artifacts

    def write_artifact(self, name: str, artifact: dict[str, Any]) -> Path:
        artifact = json.loads(json.dumps(artifact, default=str))
        body = {**artifact, "store_sha256": sha256_bytes(canonical_json(artifact).encode())}
        atomic_write(self.artifact_path(name), (json.dumps(body, indent=1, default=str) + "\n").encode())
        return self.artifact_path(name)

    def read_artifact(self, name: str) -> dict[str, Any] | None:
        """An intact artifact or None (missing or corrupt: the caller recomputes it); ReproError
        when this account cannot read it (never recomputed over another account's file)."""
        path = self.artifact_path(name)
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except PermissionError:
            raise ReproError(f"{path}: permission denied; ask its owner for read access (chmod a+r)") from None
        except IsADirectoryError:
            raise ReproError(f"{path} is a folder, not a search artifact; remove it") from None
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
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another account's lock file (0644): flock needs only a read handle
            fd = os.open(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _relative(obj: Any, pattern: re.Pattern) -> Any:
    if isinstance(obj, dict):
        return {k: _relative(v, pattern) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, pattern) for v in obj]
    return pattern.sub("", obj) if isinstance(obj, str) else obj
