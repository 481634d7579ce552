"""Checksums of a shipped checkpoint: `SHA256SUMS` lists every file `from_pretrained` reads.

The file uses the `sha256sum` format (`<hex>  <name>`), so `sha256sum -c SHA256SUMS` checks a
checkpoint folder from the shell too.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ReproError
from .build import sha256_file

CHECKSUMS = "SHA256SUMS"
RETRAIN = "python -m repro.tinyworld train --out {out}"


def checksummed_files(folder: Path) -> list[Path]:
    """Every file of the checkpoint except the checksum list itself and the training record."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name not in (CHECKSUMS, "train_record.json"))


def write_checksums(folder: Path) -> Path:
    folder = Path(folder)
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in checksummed_files(folder)]
    (folder / CHECKSUMS).write_text("".join(lines), encoding="utf-8")
    return folder / CHECKSUMS


def read_checksums(folder: Path) -> dict[str, str]:
    path = Path(folder) / CHECKSUMS
    if not path.is_file():
        raise ReproError(f"{path} is missing: the checkpoint in {folder} cannot be verified. "
                         f"Restore it from git (`git checkout -- {folder}`) or retrain with `{RETRAIN.format(out=folder)}`")
    fix = f"restore it from git (`git checkout -- {folder}`) or retrain with `{RETRAIN.format(out=folder)}`"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ReproError(f"cannot read {path} ({type(err).__name__}); {fix}") from None
    sums = {}
    for number, line in enumerate(lines, start=1):
        if line.strip():
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
                raise ReproError(f"{path} line {number} is not `<sha256>  <file>` (sha256sum format); {fix}")
            sums[parts[1].strip().lstrip("*")] = parts[0]
    return sums


def verify_checksums(folder: Path, *, retrain: str | None = None) -> None:
    """Raise ReproError naming every missing or altered file and the commands that fix them."""
    folder = Path(folder)
    fix = (f"Restore the shipped files (`git checkout -- {folder}`) or retrain with "
           f"`{retrain or RETRAIN.format(out=folder)}`")
    if not folder.is_dir():
        raise ReproError(f"checkpoint folder {folder} does not exist. {fix}")
    sums = read_checksums(folder)
    bad = []
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif sha256_file(path) != digest:
            bad.append(f"{name} (checksum mismatch)")
    if bad:
        raise ReproError(f"checkpoint {folder} is damaged: {'; '.join(bad)}. {fix}")
