"""Checkpoints that ship inside the package: trained offline, loaded with `from_pretrained`.

`tinyworld-llava` is a LLaVA-1.5-shaped model trained from scratch on the tiny world's train
splits (`python -m repro.tinyworld train`, see repro/tinyworld/README.md). Its folder holds fp16
safetensors, the processor/tokenizer files, `SHA256SUMS` (checked before every load) and
`train_record.json` (command, time, validation accuracy).
"""

from __future__ import annotations

from pathlib import Path

import torch

SHIPPED: dict[str, Path] = {
    "tinyworld-llava": Path(__file__).resolve().parent.parent / "tinyworld" / "weights" / "tinyworld-llava",
}
RETRAIN: dict[str, str] = {
    "tinyworld-llava": "python -m repro.tinyworld train --out repro/tinyworld/weights/tinyworld-llava",
}


def shipped_path(name: str) -> Path:
    """The verified folder of a shipped checkpoint (ReproError naming the fix when damaged)."""
    from repro.tinyworld.weights import verify_checksums

    path = SHIPPED[name]
    verify_checksums(path, retrain=RETRAIN[name])
    return path


def load_shipped(name: str, dtype: torch.dtype | None, attn_implementation: str):
    """(hf model, processor) of a shipped checkpoint; weights are stored in fp16 and upcast to
    float32 unless `dtype` says otherwise."""
    from repro.models.loading import _from_pretrained

    return _from_pretrained(str(shipped_path(name)), dtype or torch.float32, attn_implementation)
