"""Output paths checked before any work: a table folder that is a file, or a read-only one, is a
one-line error when the command starts, not a traceback after hours of compute.

Writability is tried (a probe file), not guessed from mode bits: root, ACLs and read-only mounts
all answer correctly that way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from repro.errors import ReproError


def nearest_existing(path: Path) -> Path:
    """`path` itself or its closest existing ancestor."""
    return next((p for p in (path, *path.parents) if p.exists()), Path("."))


def writable(folder: Path) -> bool:
    """Whether this process can create a file in the existing folder `folder`."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".repro-probe.", suffix=".tmp")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_output_dir(path: Path | str, what: str) -> Path:
    """ReproError naming `what` (e.g. `--tables`) when `path` cannot become a folder we write into."""
    path = Path(path)
    existing = nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise ReproError(f"{what} {path} {where}; pass a folder path")
    if not writable(existing):
        raise ReproError(f"{what} {path}: {existing} is not writable by this account; "
                         "give write permission or pass another folder")
    return path


def check_output_file(path: Path | str, what: str) -> Path:
    """ReproError naming `what` (e.g. `--out`) when the file `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ReproError(f"{what} {path} is a folder; pass a file path, e.g. {path / 'artifact.json'}")
    check_output_dir(path.parent, what + " folder")
    return path
