"""Resize: fewer visual tokens from a coarser image grid.

Card: docs/methods/resize.md (METHODS.md §2.12). No reference code; a harness baseline. On LLaVA
the vision features of each crop's patch grid are average-pooled to s×s before the projector
(the card's default for LLaVA-1.5; on LLaVA-NeXT every crop, padding included, no newline tokens,
base crop first and then the tiles in raster order of the stitched pooled grid). On Qwen2.5-VL and
InternVL3 resizing is the processor's own knob (a pixel budget, a tile count), set when loading
the model, so the method refuses them with that instruction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from repro.budget import Budget
from repro.errors import ReproError
from repro.methods.base import Method, per_image_budgets
from repro.methods.registry import register
from repro.models.adapter import PatchPool

LOAD_OPTION = {"qwen2.5-vl": "max_pixels=T*28*28 (tokens = pixels / 28², the smart resize of the processor)",
               "internvl3": "max_tiles=n (256 tokens per tile, plus a thumbnail when n > 1)"}


def pool_grid(features: Tensor, side: int) -> Tensor:
    """(side², d) average pool of a square (n, d) patch grid in row-major order (adaptive windows
    when side does not divide the grid; exact k×k means when it does)."""
    n, d = features.shape
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"pooling needs a square patch grid, got {n} patches")
    x = features.float().T.reshape(1, d, grid, grid)
    return F.adaptive_avg_pool2d(x, side).reshape(d, side * side).T.to(features.dtype)


@register("resize", stage="pre-llm",
          knob="visual tokens per image: each crop's grid pooled to the largest s×s that fits (realized ≤ N)",
          reference="harness baseline (no method repository); METHODS.md §2.12")
class Resize(Method):
    positions = "contiguous"

    def __init__(self, budget: Budget | None = None):
        super().__init__(budget)
        if budget is None:
            raise ValueError("resize needs a budget (tokens:N per image, ratio:R or tflops:X)")

    def reduce(self, model, prepared, visual):
        if model.family in LOAD_OPTION:
            raise ReproError(f"resize on {model.family} is the processor's own resolution knob: load the model with "
                             f"{LOAD_OPTION[model.family]} and run it unpruned (method none)")
        pool = PatchPool(visual, full_crops=True)
        meta = pool.tokens.meta
        crops = pool.crops()
        images = pool.images()
        n_crops = [len(torch.unique(meta["crop"][i])) for i in images]
        budgets = per_image_budgets(model, prepared, [i.numel() for i in images], self.budget,
                                    n_other=prepared.input_ids.numel() - len(visual))
        side = {int(meta["image"][i[0]]): math.isqrt(t // c) for i, t, c in zip(images, budgets, n_crops)}
        pre = pool.pre_projector()
        rows, anchors, keys = [], [], []
        for crop in crops:
            img = int(meta["image"][crop[0]])
            s = side[img]
            if s == 0:
                continue
            pooled = pool_grid(pre[crop], s)
            base = int(meta["crop"][meta["image"] == img].min()) == int(meta["crop"][crop[0]])
            tile_row, tile_col = (int(meta[k][crop[0]]) // math.isqrt(crop.numel()) for k in ("row", "col"))
            for cell in range(s * s):  # the base crop, then the tiles' pooled grids stitched, raster order
                r, c = divmod(cell, s)
                keys.append((img, 0, cell, 0) if base else (img, 1, tile_row * s + r, tile_col * s + c))
            rows.append(pooled)
            anchors += [int(crop[0])] * (s * s)
        order = sorted(range(len(keys)), key=lambda i: keys[i])
        device = meta["index"].device
        idx = torch.tensor([anchors[i] for i in order], dtype=torch.long, device=device)
        pre_out = torch.cat(rows)[torch.tensor(order, dtype=torch.long)] if rows else pre[:0]
        return pool.tokens.merge(idx, visual.signals.project(pre_out))
