"""Where a record came from: git commit, package versions and lock, device, dtype, backend, host."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("repro", "lmms-eval", "transformers", "torch", "accelerate", "datasets", "numpy")


def git_commit(root: Path | None = None) -> str:
    root = root or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False, cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def packages() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def provenance(device: str, dtype: str, attn: str, commit: str) -> dict:
    from repro.environment import environment_departures, lock_sha256

    return {"git_commit": commit, "packages": packages(), "lock_sha256": lock_sha256(),
            "lock_departures": environment_departures(), "device": device, "device_name": device_name(device),
            "dtype": dtype, "attn": attn, "python": platform.python_version(), "host": platform.node()}
