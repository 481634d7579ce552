"""The loaded model users talk to: `Model.generate(images, question, method=...) -> Result`."""

from __future__ import annotations

import os
from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence as Seq, Union

import torch
from PIL import Image
from torch import Tensor

from repro import flops
from repro.engine import Engine, LayerRecord, PrefillOutput, Schedule, Sequence
from repro.models.adapter import Adapter, Prepared, VisualTokens
from repro.errors import ReproError
from repro.models.cards import ArchCard
from repro.models.encodings import EncodingCache, digest_images

if TYPE_CHECKING:
    from repro.methods.base import Method

ImagesLike = Union[Image.Image, str, os.PathLike, Seq[Union[Image.Image, str, os.PathLike]]]


def as_images(images: ImagesLike) -> list[Image.Image]:
    """A list of PIL images from an image, an image file path, or a sequence of either."""
    if isinstance(images, (Image.Image, str, os.PathLike)):
        images = [images]
    elif not isinstance(images, AbcSequence):
        raise ReproError(f"images must be a PIL image, an image file path, or a list of them; got {type(images).__name__}")
    out = []
    for item in images:
        if isinstance(item, Image.Image):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            out.append(read_image(item))
        else:
            raise ReproError(f"images must be PIL images or image file paths; got {type(item).__name__}")
    if not out:
        raise ReproError("give at least one image")
    return out


def read_image(path: str | os.PathLike) -> Image.Image:
    """An image file as RGB; ReproError naming the file when it cannot be read."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ReproError(f"cannot read image {os.fspath(path)}: {err.strerror or err}; give a PNG or JPEG file") from None


@dataclass(frozen=True)
class Stats:
    """What one prefill really computed."""

    n_tokens: int  # prefill sequence length
    visual_tokens: int  # visual tokens entering the LLM (after any pre-LLM reduction)
    layers: tuple[LayerRecord, ...]  # tokens per operation, per layer
    tflops: dict[str, float]  # realized prefill TFLOPs per convention ("paper", "exact")
    dead_ops: str  # "kept" or "skipped": whether provably dead operations ran
    probe_tflops: float = 0.0  # scoring overhead of in-LLM methods, reported apart from the budget
    unpruned_tflops: float | None = None  # prefill TFLOPs (paper convention) of the unpruned model on this input

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_tokens": self.n_tokens,
            "visual_tokens": self.visual_tokens,
            "attention_tokens": [r.queries for r in self.layers],
            "kv_tokens": [r.keys for r in self.layers],
            "mlp_tokens": [r.mlp for r in self.layers],
            "visual_attention_tokens": [r.visual_queries for r in self.layers],
            "visual_kv_tokens": [r.visual_keys for r in self.layers],
            "visual_mlp_tokens": [r.visual_mlp for r in self.layers],
            "tflops": dict(self.tflops),
            "dead_ops": self.dead_ops,
            "probe_tflops": self.probe_tflops,
            "unpruned_tflops": self.unpruned_tflops,
        }


@dataclass
class Result:
    text: str
    prompt: str  # the exact string sent through the processor
    first_token_logprobs: Tensor  # (vocab,) log-softmax at the end of prefill, float32
    tokens: list[int] = field(default_factory=list)  # generated ids (EOS excluded)
    stats: Stats | None = None


class Model:
    """An HF multimodal model, its processor, its family adapter and its architecture card."""

    def __init__(self, name: str, hf: Any, processor: Any, adapter: Adapter, card: ArchCard,
                 attn_implementation: str = "sdpa", random_weights: bool = False):
        self.name = name
        self.hf = hf
        self.processor = processor
        self.adapter = adapter
        self.card = card
        self.random_weights = random_weights  # built offline with random weights (tiny/bench models, timing runs)
        self.engine = Engine(adapter.decoder, backend=attn_implementation)
        self._text_towers: dict[str | None, Any] = {}
        # Processor outputs and encodings of images seen before, shared by every method and cell
        # run on this model (bit-identical to computing them again; models/encodings.py).
        self.preparations = EncodingCache()
        self.encodings = EncodingCache()

    def text_tower(self, source: str | None = None):
        """The CLIP text tower of this model (CDPruner, TRIM), loaded once per instance;
        `source` overrides the default (a hub id, a folder, or "random")."""
        if source not in self._text_towers:
            from repro.models.text_tower import text_tower_for

            self._text_towers[source] = text_tower_for(self, source)
        return self._text_towers[source]

    def __repr__(self) -> str:
        return f"Model({self.name!r}, family={self.adapter.family!r}, backend={self.engine.backend!r})"

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def cache(self, capacity_bytes: int) -> None:
        """Fresh caches of processor outputs and encodings, `capacity_bytes` each (0: no caching)."""
        self.preparations = EncodingCache(capacity_bytes)
        self.encodings = EncodingCache(capacity_bytes)

    # The data path, step by step (methods and analyses call these directly).
    def prepare(self, images: ImagesLike, question: str, *, cached: bool = True) -> Prepared:
        """The processor's output for `images` and `question`; `cached=False` runs the processor
        even for an (images, question) pair seen before."""
        if not isinstance(question, str):
            raise ReproError(f"question must be text, got {type(question).__name__}")
        images = as_images(images)
        if not cached or not self.preparations.enabled:
            return self.adapter.prepare(images, question)
        key = digest_images(images, question)  # the model (processor, chat template) owns the cache
        return self.preparations.get(key, lambda: self._prepare_keyed(images, question))

    def _prepare_keyed(self, images: list[Image.Image], question: str) -> Prepared:
        """A processor output to cache: its encoding key hashed once here and carried by every
        copy, without the hashing closure (which holds the processor's CPU tensors)."""
        prepared = self.adapter.prepare(images, question)
        key = prepared.encoding_key if self.encodings.enabled else None
        return replace(prepared, key_source=None, _key=key)

    @torch.inference_mode()
    def encode(self, prepared: Prepared, *, cached: bool = True) -> VisualTokens:
        """Visual tokens of `prepared`; `cached=False` runs the tower even for an image seen before."""
        if not cached:
            return self.adapter.encode(prepared)
        return self.encodings.get(prepared.encoding_key, lambda: self.adapter.encode(prepared))

    @torch.inference_mode()
    def assemble(self, prepared: Prepared, visual: VisualTokens, positions: str = "original") -> Sequence:
        return self.adapter.assemble(prepared, visual, positions=positions)

    def stats(self, seq: Sequence, out: PrefillOutput, dead_ops: str = "kept") -> Stats:
        layers = [flops.LayerTokens(r.queries, r.keys, r.mlp) for r in out.records]
        tflops = {c: flops.prefill_flops(self.card, layers, c) / 1e12 for c in flops.CONVENTIONS}
        return Stats(seq.n_tokens, int(seq.visual.numel()), tuple(out.records), tflops, dead_ops,
                     out.probe_flops / 1e12)

    @torch.inference_mode()
    def generate(self, images: ImagesLike, question: str, *, method: "Method | None" = None,
                 max_new_tokens: int = 16, stop: Seq[str] = ()) -> Result:
        """Answer `question` about `images` (PIL images or image files) greedily, with `method`
        deciding what is computed."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ReproError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
        if method is not None and not (hasattr(method, "reduce") and hasattr(method, "planner")):
            raise ReproError(f"method must be built with repro.method(name, budget, ...), got {method!r}")
        if isinstance(stop, str):
            stop = (stop,)
        prepared, seq, planner, dead_ops = self._plan(images, question, method)
        out = self.engine.prefill(seq, planner)
        tokens = list(self.engine.greedy(out, max_new_tokens, self.eos_ids(), self._stopper(stop)))
        return self._result(prepared, seq, out, tokens, dead_ops, stop)

    @torch.inference_mode()
    def generate_batch(self, requests: Seq[tuple[Image.Image | Seq[Image.Image], str]], *,
                       method: "Method | None" = None, max_new_tokens: int = 16, stop: Seq[str] = ()) -> list[Result]:
        """`generate` for several (images, question) requests as one packed batch (engine/packed.py):
        each sample keeps its own method decisions; equal to `generate` one at a time up to fp32
        rounding (logits within 1e-5). For throughput on accelerators; latency stays batch size 1."""
        from repro.engine.packed import PackedEngine

        plans = [self._plan(images, question, method) for images, question in requests]
        if not plans:
            return []
        if any(getattr(p[2], "merge_after", None) is not None for p in plans):
            # the packed engine has no merge step (engine/core.py inserts merged tokens between
            # layers): methods that merge inside the LLM (SparseVLM) answer one sample at a time
            return [self.generate(images, question, method=method, max_new_tokens=max_new_tokens, stop=stop)
                    for images, question in requests]
        packed = PackedEngine(self.engine)
        outs = packed.prefill([p[1] for p in plans], [p[2] for p in plans])
        tokens = packed.greedy(outs, max_new_tokens, self.eos_ids(), [self._stopper(stop)] * len(plans))
        return [self._result(p[0], p[1], out, t, p[3], stop) for p, out, t in zip(plans, outs, tokens)]

    def _plan(self, images, question: str, method: "Method | None"):
        """Everything before the prefill: prepared inputs, the (reduced) sequence, its planner."""
        prepared = self.prepare(images, question)
        visual = self.encode(prepared)
        if method is not None:
            visual = method.reduce(self, prepared, visual)
        seq = self.assemble(prepared, visual, positions=method.position_mode(self) if method else "original")
        planner = method.planner(self, seq) if method is not None else Schedule.full(self.card.layers)
        dead_ops = "kept"
        if method is not None and method.skip_dead_ops:
            if not isinstance(planner, Schedule):
                raise ValueError("dead-operation skipping needs a static Schedule")
            planner, dead_ops = planner.without_dead_ops(seq.n_tokens), "skipped"
        return prepared, seq, planner, dead_ops

    def _result(self, prepared: Prepared, seq: Sequence, out: PrefillOutput, tokens: list[int], dead_ops: str,
                stop: Seq[str]) -> Result:
        text = self._trim(self.tokenizer.decode(tokens, skip_special_tokens=True), stop)
        unpruned = flops.unpruned_prefill_flops(self.card, prepared.input_ids.numel(), "paper") / 1e12
        return Result(text=text, prompt=prepared.prompt, first_token_logprobs=out.logits.log_softmax(-1),
                      tokens=tokens, stats=replace(self.stats(seq, out, dead_ops), unpruned_tflops=unpruned))

    def eos_ids(self) -> set[int]:
        eos = self.hf.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}

    def _stopper(self, stop: Seq[str]):
        if not stop:
            return None
        return lambda tokens: any(s in self.tokenizer.decode(tokens, skip_special_tokens=True) for s in stop)

    @staticmethod
    def _trim(text: str, stop: Seq[str]) -> str:
        for s in stop:
            if s and s in text:
                text = text[: text.index(s)]
        return text
