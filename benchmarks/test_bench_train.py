"""One tinyworld-llava training step (stages 2-3 shape: batch 64, 144 visual tokens and 46 text
tokens, frozen tower, bf16 autocast, AdamW), eager with SDPA against `--compile` (torch.compile,
eager text attention).

Run: .venv/bin/python -m pytest benchmarks/test_bench_train.py --benchmark-only
Target: the compiled step is at least 1.2x faster (measured 1.5x with 2 threads during training).
"""

from __future__ import annotations

import torch

from repro.models.shipped import SHIPPED
from repro.tinyworld.scenes import IMAGE_SIZE
from repro.tinyworld.train import N_VISUAL, TrainConfig, autocast, build_model

BATCH, TEXT = 64, 46


def _stepper(compiled: bool):
    """A step function on a fresh model of the shipped shape (random weights, seeded)."""
    from transformers import AutoTokenizer

    cfg = TrainConfig()
    model, _ = build_model(cfg, AutoTokenizer.from_pretrained(SHIPPED["tinyworld-llava"]))
    model.model.vision_tower.requires_grad_(False)
    if compiled:
        model.set_attn_implementation({"text_config": "eager"})
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (BATCH, 1 + N_VISUAL + TEXT), generator=gen)
    ids[:, 1:1 + N_VISUAL] = model.config.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "pixel_values": torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)}
    cpu = torch.device("cpu")

    def step():
        with autocast(cpu, cfg.precision):
            loss = forward(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def test_compiled_training_step_is_faster(interleaved):
    torch.set_num_threads(1)  # shared machines: one thread, ratios within one run (as the engine benchmarks)
    rows = interleaved("train-step", {"eager (SDPA)": (_stepper(False), {}),
                                      "compiled (eager attention)": (_stepper(True), {})}, rounds=8, warmup=2)
    if rows:
        assert rows["compiled (eager attention)"]["time_ratio"] <= 1 / 1.2, rows
