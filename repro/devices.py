"""Which devices can run here: asking for a GPU that is not visible is one clear error before
anything loads (spec, `repro.load`, lmms-eval model_args), not a CUDA exception mid-run."""

from __future__ import annotations

import re

DEVICE_PATTERN = r"^(cpu|cuda(:\d+)?)$"
DEVICE_FIX = "cpu, cuda or cuda:N"


def device_problem(device: object) -> str | None:
    """Why `device` cannot run here (not a device name, no GPU, no GPU of that index), or None."""
    text = str(device)
    if not re.match(DEVICE_PATTERN, text):
        return f"device {text!r} is not valid; use {DEVICE_FIX}"
    if not text.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"device {text} asks for a GPU but none is visible; use device cpu, or run on a GPU machine"
    index, count = int(text.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        return f"device {text}: only {count} GPU(s) visible; use cuda:0 .. cuda:{count - 1}"
    return None
