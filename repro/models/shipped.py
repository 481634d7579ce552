"""Checkpoints that ship inside the package: trained offline, loaded with `from_pretrained`.

`tinyworld-llava` is a LLaVA-1.5-shaped model trained from scratch on the tiny world's train
splits (`python -m repro.tinyworld train`, see repro/tinyworld/README.md). Its folder holds fp16
safetensors, the processor/tokenizer files, `SHA256SUMS` (checked before every load) and
`train_record.json` (command, time, validation accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def load_shipped(name: str, dtype: Any, attn_implementation: str):
    """(hf model, processor) of a shipped checkpoint; weights are stored in fp16 and upcast to
    float32 unless `dtype` (a torch dtype) says otherwise."""
    import torch

    from repro.models.loading import _from_pretrained

    return _from_pretrained(str(shipped_path(name)), dtype or torch.float32, attn_implementation)


def listing_rows() -> list[list[str]]:
    """Rows for `python -m repro models`: name, family, source, layers/hidden/heads/kv, visual tokens, weights."""
    import json

    rows = []
    for name, path in SHIPPED.items():
        try:
            cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
            t, v = cfg["text_config"], cfg["vision_config"]
            arch = f"{t['num_hidden_layers']}/{t['hidden_size']}/{t['num_attention_heads']}/{t['num_key_value_heads']}"
            tokens = str((v["image_size"] // v["patch_size"]) ** 2)
        except (OSError, KeyError, ValueError):
            arch, tokens = "?", "?"
        rows.append([name, "llava-1.5", "(in package)", arch, tokens, str(path) if (path / "SHA256SUMS").is_file() else "no"])
    return rows
