"""Where a record came from: git commit, package versions and lock, device, dtype, backend, host,
and the CPU platform (kernel ISA, BLAS, threads)."""

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


def blas() -> str:
    """The BLAS torch was built with (`BLAS_INFO` of torch's build configuration)."""
    import re

    import torch

    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def platform_info() -> dict:
    """What decides CPU float kernels: torch's CPU capability (the ISA its kernels dispatch to,
    e.g. AVX2 vs AVX512: VisPruner's near-tie argsort can flip between them), the BLAS and the
    threads."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "blas": blas(),
            "threads": torch.get_num_threads(), "machine": platform.machine()}


def provenance(device: str, dtype: str, attn: str, commit: str) -> dict:
    from repro.environment import environment_departures, lock_sha256

    return {"git_commit": commit, "packages": packages(), "lock_sha256": lock_sha256(),
            "lock_departures": environment_departures(), "device": device, "device_name": device_name(device),
            "dtype": dtype, "attn": attn, "python": platform.python_version(), "host": platform.node(),
            "platform": platform_info()}
