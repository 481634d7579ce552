"""Data parallelism inside one evaluation, as lmms-eval's own HF model classes do it.

Launch any entry point with accelerate, e.g. `accelerate launch --multi_gpu --num_processes N -m repro
sweep SPEC`, on GPUs and on CPU alike (where the `accelerate` CLI fails to import,
`python -m accelerate.commands.launch` is the same launcher). Without `--multi_gpu` accelerate's
simple launcher starts one process whatever `--num_processes` says; `single_process_launch`
detects that and refuses it. Every process builds an `Accelerator()`; with N > 1 processes the model lives on
`cuda:{local_process_index}` (on CPU every process uses `cpu`), lmms-eval shards the documents
by rank, gathers the results on rank 0, and `simple_evaluate` returns None on the other ranks.

`Accelerator(cpu=True)` when the configured device is `cpu`: accelerate then builds a gloo
process group (MULTI_CPU), so N CPU processes work (`--multi_gpu --num_processes N` launches them
through torchrun; accelerate's `--cpu` alone starts one process unless mpirun is used).
The launch state comes from `Accelerator()` and from torch.distributed's initialised process
group; the environment is read only to detect the silent single-process launch.
"""

from __future__ import annotations

import os
from typing import Any


def accelerator(device: str):
    """This process's `Accelerator` (its state is a process-wide singleton: the first call decides)."""
    from accelerate import Accelerator

    from repro.errors import ReproError

    if single_process_launch(os.environ):
        raise ReproError("accelerate launch started one process although --num_processes > 1 was asked (its simple "
                         "launcher ignores the count): add --multi_gpu, e.g. `accelerate launch --multi_gpu "
                         "--num_processes N -m repro sweep SPEC` (on CPU too, with `device: cpu`)")
    return Accelerator(cpu=str(device).startswith("cpu"))


def single_process_launch(env) -> bool:
    """True under `accelerate launch --num_processes N>1` without `--multi_gpu`: the simple launcher
    sets MASTER_ADDR for N > 1 and the mixed-precision variable, but no WORLD_SIZE (torchrun does)."""
    return "ACCELERATE_MIXED_PRECISION" in env and "MASTER_ADDR" in env and "WORLD_SIZE" not in env


def process_device(device: str) -> str:
    """The device this process runs `device` on: `cuda:{local rank}` for a CUDA device when
    launched with several processes (as lmms-eval's llava_hf), else `device` unchanged."""
    acc = accelerator(device)
    if acc.num_processes > 1 and str(device).startswith("cuda"):
        return f"cuda:{acc.local_process_index}"
    return str(device)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist else 1


def is_main() -> bool:
    """Rank 0, or not launched with several processes."""
    dist = _dist()
    return dist is None or dist.get_rank() == 0


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (unchanged without a process group)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
