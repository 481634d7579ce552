"""The latency protocol: each stage timed on its own, never inside accuracy runs.

Stages: image preprocessing (reported, not in totals), vision encoder + reduction, LLM prefill
(the paper's headline), per-token decode, and end-to-end for a fixed answer length. On CUDA,
device events around each stage with a synchronize before reading, plus peak memory; on CPU,
`perf_counter` (labelled CPU). Warm-up runs first, then `repeats` runs; medians and interquartile
ranges are reported. Every record carries the device, versions, dtype and attention backend.
"""

from __future__ import annotations

import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

from repro.errors import ReproError

STAGES = ("preprocess", "vision", "prefill", "decode_per_token", "end_to_end")


def check_device(device: str) -> torch.device:
    """The timing device; asking for CUDA without a GPU is a clear error."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ReproError("CUDA timing was asked for but no GPU is visible; use --device cpu (CPU timings are "
                         "labelled as such)")
    return torch.device(device)


class StageTimer:
    """Times a block in milliseconds: CUDA events (synchronized) on a GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    @contextmanager
    def time(self, into: list[float]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            into.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            yield
            into.append((time.perf_counter() - start) * 1e3)


def summary(values: list[float]) -> dict[str, float]:
    """Median and interquartile range of repeated timings (ms)."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median_ms": statistics.median(values), "iqr_ms": q[2] - q[0], "repeats": len(values)}


@dataclass
class LatencyRecord:
    model: str
    method: str
    budget: str
    device: str
    environment: dict
    tflops: float  # realized prefill TFLOPs, paper convention
    visual_tokens: int
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    kv_cache_bytes: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def environment(model, device: torch.device) -> dict:
    import transformers

    env = {"device_type": device.type, "torch": torch.__version__, "transformers": transformers.__version__,
           "dtype": str(model.adapter.dtype), "attention_backend": model.engine.backend,
           "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   driver=_driver_version())
    else:
        env["device_name"] = f"CPU ({env['processor']})"
    return env


def _driver_version() -> str:
    try:
        import subprocess

        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@torch.inference_mode()
def _run_once(model, images, question, method, timer: StageTimer, device: torch.device, answer_tokens: int):
    """One timed answer: stage times (ms), and the prefill's sequence, output and KV-cache bytes."""
    t: dict[str, list[float]] = {s: [] for s in STAGES}
    with timer.time(t["preprocess"]):
        prepared = model.prepare(images, question, cached=False)  # every repeat times the processor
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    decode: list[float] = []
    with timer.time(t["end_to_end"]):
        with timer.time(t["vision"]):
            visual = model.encode(prepared, cached=False)  # every repeat times the vision tower
            if method is not None:
                visual = method.reduce(model, prepared, visual)
        with timer.time(t["prefill"]):
            seq = model.assemble(prepared, visual, method.position_mode(model) if method else "original")
            out = model.engine.prefill(seq, method.planner(model, seq) if method else None)
        kv_bytes = sum(x.numel() * x.element_size() for x in (*out.cache.keys, *out.cache.values))
        with timer.time(decode):
            token = int(out.logits.argmax())
            for step in range(answer_tokens - 1):  # a fixed answer length: EOS does not stop it
                token = int(model.engine.decode_step(token, out.cache, step).argmax())
    times = {s: v[0] for s, v in t.items() if v}
    times["decode_per_token"] = decode[0] / max(answer_tokens - 1, 1)
    return times, seq, out, kv_bytes


def measure_cells(model, images: list[Image.Image], question: str, cells: list[tuple[str, object, str]], *,
                  device: str = "cpu", repeats: int = 20, warmup: int = 3, answer_tokens: int = 16) -> list[LatencyRecord]:
    """Time every (name, method, budget) cell, interleaved: each round runs every cell once, in
    rotating order, so slow drifts of a shared machine hit all cells alike (batch size 1)."""
    dev = check_device(device)
    if repeats < 1 or warmup < 0 or answer_tokens < 1:
        raise ReproError("need repeats >= 1, warmup >= 0 and answer_tokens >= 1")
    timer = StageTimer(dev)
    times = [{s: [] for s in STAGES} for _ in cells]
    records: list[LatencyRecord | None] = [None] * len(cells)
    for round_ in range(warmup + repeats):
        for i in [(round_ + j) % len(cells) for j in range(len(cells))]:
            name, method, budget = cells[i]
            stage_times, seq, out, kv_bytes = _run_once(model, images, question, method, timer, dev, answer_tokens)
            if round_ >= warmup:
                for stage, value in stage_times.items():
                    times[i][stage].append(value)
            if records[i] is None:
                stats = model.stats(seq, out)
                records[i] = LatencyRecord(model.name, name, budget, str(dev), environment(model, dev),
                                           stats.tflops["paper"], stats.visual_tokens, kv_cache_bytes=kv_bytes)
            if dev.type == "cuda":
                records[i].peak_memory_bytes = max(records[i].peak_memory_bytes or 0, torch.cuda.max_memory_allocated(dev))
    for record, t in zip(records, times):
        record.stages = {s: summary(v) for s, v in t.items()}
    return records


def measure(model, images: list[Image.Image], question: str, *, method=None, method_name: str = "unpruned",
            budget: str = "-", **kwargs) -> LatencyRecord:
    """Time one method and budget (see `measure_cells`)."""
    return measure_cells(model, images, question, [(method_name, method, budget)], **kwargs)[0]


def check_same_backend(records: list[LatencyRecord]) -> None:
    """Compared runs must share device, dtype and attention backend."""
    keys = {(r.device, r.environment["dtype"], r.environment["attention_backend"]) for r in records}
    if len(keys) > 1:
        raise ReproError(f"latency records were taken under different settings {sorted(keys)}; compare like with like")


def default_image_size(model) -> tuple[int, int]:
    """A synthetic input at the model's native protocol resolution (width, height)."""
    side = model.card.vision.image_size
    return {"llava-next": (2 * side, 2 * side), "internvl3": (4 * side, 3 * side)}.get(model.family, (side, side))


def synthetic_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Deterministic noise: speed does not depend on what the pixels show."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())
