"""The locked environment: which lock a result was computed under, and where the running
environment departs from it (README "Install notes"; tests/test_lock.py keeps both honest)."""

from __future__ import annotations

import functools
import hashlib
import re
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"  # beside the code in a checkout
PROJECT = "repro"


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> dict[str, str]:
    """name -> exact version of every `name==version` line (comments and `# via` notes skipped)."""
    pins = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def lock_sha256(path: Path = LOCK) -> str:
    """First 16 hex digits of the lock file's sha256, or "absent" outside a checkout."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "absent"


def installed() -> dict[str, str]:
    """name -> version of every distribution of the running environment, the project excluded."""
    found = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    found.pop(PROJECT, None)
    return found


def gpu_allowances() -> list[str]:
    """Requirements the GPU path adds beside the lock: the CUDA torch build's own pins (nvidia-*,
    triton) and the project's `gpu` extra (flash-attn)."""
    allowed = []
    for dist in ("torch", PROJECT):
        try:
            allowed += metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
    return [r for r in allowed if "extra ==" not in r or "extra == \"gpu\"" in r]


def departures(lock: dict[str, str], present: dict[str, str], allowances: list[str] = ()) -> list[str]:
    """One line for each installed distribution that the lock does not hold at that version. A
    build label counts as the version (2.13.0+cpu is 2.13.0); an allowance admits a distribution
    outside the lock when its version satisfies the allowance's specifier."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    allowed = {}
    for text in allowances:
        req = Requirement(text)
        allowed[canonical(req.name)] = req.specifier
    out = []
    for name, version in sorted(present.items()):
        if name in lock:
            if Version(version).public != Version(lock[name]).public:
                out.append(f"{name} {version} installed, {lock[name]} locked")
        elif name not in allowed or not allowed[name].contains(version, prereleases=True):
            out.append(f"{name} {version} installed, not in the lock")
    return out


@functools.cache  # a running process's environment does not change; reading it takes ~0.2 s
def environment_departures() -> list[str]:
    """departures() of the running environment from the checkout's lock ([] outside a checkout)."""
    try:
        lock = read_lock(LOCK.read_text(encoding="utf-8"))
    except OSError:
        return []
    return departures(lock, installed(), gpu_allowances())
