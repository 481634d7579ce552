"""Generation throughput at batch size 1 and in packed batches, for the paper plan's GPU hours.

`python -m repro throughput --model llava-1.5-7b --random-weights --device cuda --dtype bfloat16`
answers `samples` synthetic requests (noise images at the model's protocol size, questions of
several lengths, a fixed answer length: EOS never ends a sample) at each batch size, and times
the processor with the vision tower, the prefill and the decode apart. Batch size 1 runs the
engine as the latency protocol does; larger ones run engine/packed.py. The caches are bypassed
(every request is new in a real run). The unpruned model is timed: pruned cells run faster, so a
plan priced with it stays an upper bound.

The record, `throughput-<model>.json`, names the device, dtype, answer length and batch sizes,
and whether the packed answers equal batch size 1's. The paper plan (runner/plan.py) reads the
records in results/benchmarks/: a model with one is priced at its measured seconds per sample at
its fastest batch size, and the plan says so; the others keep the stated assumption.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from repro.errors import ReproError
from repro.latency import (
    StageTimer,
    check_device,
    default_image_size,
    environment,
    synthetic_image,
)

QUESTIONS = ("What is in the image?",
             "Answer with a single word: which colour covers most of the picture?",
             "Look at every part of the image and describe the objects you see, their colours and where they are.")
RECORD_PREFIX = "throughput-"


@dataclass
class ThroughputRecord:
    model: str
    environment: dict
    random_weights: bool
    image_size: tuple[int, int]
    samples: int
    answer_tokens: int
    batches: dict[int, dict]  # batch size -> samples_per_s, seconds per stage, same answers as batch size 1

    @property
    def best_batch(self) -> int:
        return max(self.batches, key=lambda b: self.batches[b]["samples_per_s"])

    @property
    def seconds_per_sample(self) -> float:
        return 1 / self.batches[self.best_batch]["samples_per_s"]

    def describe(self) -> str:
        env = self.environment
        return (f"{self.model} {self.seconds_per_sample:.3g} s a sample (batch {self.best_batch}, "
                f"{env.get('device_name', env.get('device_type'))}, {env.get('dtype')}, {self.answer_tokens} answer "
                f"tokens{', random weights' if self.random_weights else ''})")

    def write(self, folder: Path | str) -> Path:
        path = Path(folder) / f"{RECORD_PREFIX}{self.model}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> ThroughputRecord:
        try:
            raw = json.loads(path.read_text())
            raw["batches"] = {int(b): v for b, v in raw["batches"].items()}
            raw["image_size"] = tuple(raw["image_size"])
            return cls(**raw)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ReproError(f"{path}: not a throughput record ({type(err).__name__}: {err}); rerun "
                             "`python -m repro throughput` or remove it") from None


def measured(folder: Path | str) -> dict[str, ThroughputRecord]:
    """model -> its throughput record, for every record in `folder` (none: an empty mapping)."""
    return {r.model: r for r in map(ThroughputRecord.read, sorted(Path(folder).glob(f"{RECORD_PREFIX}*.json")))}


@torch.inference_mode()
def measure(model, batch_sizes: list[int], *, samples: int = 32, answer_tokens: int = 8, device: str = "cpu",
            image_size: tuple[int, int] | None = None) -> ThroughputRecord:
    """Time `samples` requests at each batch size (one warm-up batch first)."""
    from repro.engine.packed import PackedEngine

    if not batch_sizes or min(batch_sizes) < 1 or samples < 1 or answer_tokens < 1:
        raise ReproError("throughput needs batch sizes >= 1, samples >= 1 and answer tokens >= 1")
    dev = check_device(device)
    timer, packed = StageTimer(dev), PackedEngine(model.engine)
    size = image_size or default_image_size(model)
    requests = [(synthetic_image(*size, seed=i), QUESTIONS[i % len(QUESTIONS)]) for i in range(samples)]

    def answer(chunk, times) -> list[list[int]]:
        with timer.time(times["prepare_encode"]):
            seqs = []
            for image, question in chunk:
                prepared = model.prepare(image, question, cached=False)
                seqs.append(model.assemble(prepared, model.encode(prepared, cached=False)))
        if len(seqs) == 1:
            with timer.time(times["prefill"]):
                out = model.engine.prefill(seqs[0])
            with timer.time(times["decode"]):
                return [list(model.engine.greedy(out, answer_tokens, set()))]
        with timer.time(times["prefill"]):
            outs = packed.prefill(seqs, [None] * len(seqs))
        with timer.time(times["decode"]):
            return packed.greedy(outs, answer_tokens, set())

    batches, reference = {}, None
    for bs in sorted(set(batch_sizes)):
        chunks = [requests[i:i + bs] for i in range(0, samples, bs)]
        answer(chunks[0], {k: [] for k in ("prepare_encode", "prefill", "decode")})  # warm-up
        times: dict[str, list[float]] = {k: [] for k in ("prepare_encode", "prefill", "decode")}
        answers = [a for chunk in chunks for a in answer(chunk, times)]
        reference = reference or answers
        seconds = {k: sum(v) / 1e3 for k, v in times.items()}
        batches[bs] = {"samples_per_s": samples / sum(seconds.values()), **{f"{k}_s": v for k, v in seconds.items()},
                       "prefill_samples_per_s": samples / seconds["prefill"],
                       "decode_tokens_per_s": samples * (answer_tokens - 1) / seconds["decode"]
                       if seconds["decode"] else None,
                       "same_answers_as_smallest_batch": answers == reference}
    return ThroughputRecord(model.name, environment(model, dev), model.random_weights, tuple(size), samples,
                            answer_tokens, batches)
