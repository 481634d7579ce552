"""What every model family provides to the engine: prepare, encode, assemble.

    sample -> Adapter.prepare   prompt via the model's own chat template, processor inputs
           -> Adapter.encode    VisualTokens: LLM-space features, per-token metadata, vision signals
           -> (Method.reduce)   select / merge visual tokens
           -> Adapter.assemble  the prefill Sequence with original positions

Families differ only in prepare/encode and in how positions are numbered; assembling replaces
the processor's run of image placeholder tokens by the (possibly reduced) visual features.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from PIL import Image
from torch import Tensor

from repro.engine import Decoder, Sequence

# Per-visual-token metadata fields (int64 tensors, one entry per visual token):
#   index  position in the model's full visual-token sequence (before any reduction)
#   image  which input image the token comes from
#   crop   global row of the vision-tower batch the token was encoded in (-1: no crop, e.g. newline)
#   patch  patch index inside that crop (-1: not a patch)
#   row, col  grid coordinates (the crop's grid, or the stitched anyres grid for LLaVA-NeXT tiles)
#   kind   0 = image patch, 1 = layout token (LLaVA-NeXT newline)
# Optional, set by reducers that define token groups (`Method.token_groups`):
#   group  the token's group (e.g. VisPruner 0 = important, 1 = diverse; layout tokens 0)
TEXT_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")  # not read by encode
META_FIELDS = ("index", "image", "crop", "patch", "row", "col", "kind")
PATCH, LAYOUT = 0, 1


@dataclass
class Prepared:
    """One sample after the processor: the exact prompt string and the tensors it produced."""

    prompt: str
    inputs: dict[str, Tensor]
    images: list[Image.Image]
    key_source: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    _key: str | None = field(default=None, repr=False, compare=False)

    @property
    def encoding_key(self) -> str | None:
        """Digest of what the vision tower reads (models/encodings.py), computed on first use, so
        a timed path that never caches (the latency protocol) never hashes; None: never cached."""
        if self._key is None and self.key_source is not None:
            self._key = self.key_source()
        return self._key

    @property
    def input_ids(self) -> Tensor:
        return self.inputs["input_ids"][0]


@dataclass
class VisualTokens:
    """Visual tokens in LLM space, with metadata and lazily computed vision-side signals."""

    features: Tensor  # (n, d_llm)
    meta: dict[str, Tensor]
    signals: "VisionSignals | None" = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.features.shape[0]

    def select(self, idx: Tensor) -> "VisualTokens":
        """Keep the tokens at positions `idx` of this set (in the given order)."""
        idx = idx.to(self.features.device)
        return replace(self, features=self.features[idx], meta={k: v[idx] for k, v in self.meta.items()})

    @property
    def patches(self) -> Tensor:
        """Positions (in this set) of the image-patch tokens, layout tokens excluded."""
        return (self.meta["kind"] == PATCH).nonzero().flatten()


class VisionSignals:
    """Vision-side signals, computed on demand once per sample and aligned with the visual tokens.

    Subclasses implement the per-crop computations; this class maps them onto tokens through the
    `crop`/`patch` metadata (layout tokens get 0).
    """

    def __init__(self, meta: dict[str, Tensor]):
        self._meta = meta
        self._cache: dict[tuple, Tensor] = {}

    def _cached(self, key: tuple, compute: Callable[[], Tensor]) -> Tensor:
        if key not in self._cache:
            with torch.inference_mode():
                self._cache[key] = compute()
        return self._cache[key]

    def _to_tokens(self, per_crop: Tensor) -> Tensor:
        """(n_crops, n_patches, ...) -> (n_tokens, ...), zeros for layout tokens."""
        crop, patch = self._meta["crop"], self._meta["patch"]
        out = per_crop.new_zeros((crop.numel(), *per_crop.shape[2:]))
        is_patch = crop >= 0
        out[is_patch] = per_crop[crop[is_patch], patch[is_patch]]
        return out

    def cls_attention(self, layer: int | None = None, reduce: str = "mean") -> Tensor:
        """Attention the [CLS] query pays each visual token at a vision layer: (n,), or (n, heads) for "none"."""
        if reduce not in ("mean", "max", "none"):
            raise ValueError(f"reduce must be 'mean', 'max' or 'none', not {reduce!r}")
        per_head = self._to_tokens(self._cached(("cls", layer), lambda: self.crop_cls_attention(layer)))
        if reduce == "none":
            return per_head
        return per_head.mean(-1) if reduce == "mean" else per_head.amax(-1)

    def keys(self, layer: int | None = None) -> Tensor:
        """Vision keys of each visual token at a vision layer, (n, d_vision)."""
        return self._to_tokens(self._cached(("keys", layer), lambda: self.crop_keys(layer)))

    def pre_projector(self) -> Tensor:
        """Vision features fed to the projector, (n, d_vision)."""
        return self._to_tokens(self._cached(("pre",), self.crop_pre_projector))

    # Per-crop computations, (n_crops, n_patches[, ...]); implemented per family.
    def crop_cls_attention(self, layer: int | None) -> Tensor:
        """(n_crops, n_patches, heads)."""
        raise NotImplementedError(f"{type(self).__name__} has no [CLS] attention signal")

    def crop_keys(self, layer: int | None) -> Tensor:
        raise NotImplementedError

    def crop_pre_projector(self) -> Tensor:
        raise NotImplementedError


class Adapter:
    """Family-specific glue between an HF model/processor and the engine."""

    family: str = ""

    def __init__(self, hf: Any, processor: Any):
        self.hf = hf
        self.processor = processor
        self.decoder = Decoder.from_hf(hf)

    @property
    def image_token_id(self) -> int:
        return self.hf.config.image_token_id

    @property
    def device(self) -> torch.device:
        return self.hf.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_input_embeddings().weight.dtype

    def messages(self, n_images: int, question: str) -> list[dict]:
        """A user turn as lmms-eval's chat model classes build it: the images, then the text."""
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        return [{"role": "user", "content": content}]

    def prepare(self, images: list[Image.Image], question: str) -> Prepared:
        prompt = self.processor.apply_chat_template(self.messages(len(images), question),
                                                    tokenize=False, add_generation_prompt=True)
        cpu = dict(self.processor(images=images or None, text=prompt, return_tensors="pt"))
        inputs = {k: v.to(self.device) for k, v in cpu.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        key_source = (lambda: self.encoding_key(cpu)) if images else None  # hashes the CPU tensors
        return Prepared(prompt, inputs, list(images), key_source)

    def encoding_key(self, inputs: dict[str, Tensor]) -> str:
        """Content address of an encoding (models/encodings.py): the processor's image-side
        tensors, which carry the image content and the processor options, and the model's dtype."""
        from repro.models.encodings import digest_tensors

        image_side = sorted((k, v) for k, v in inputs.items() if k not in TEXT_INPUTS and isinstance(v, Tensor))
        return digest_tensors(image_side, self.family, str(self.dtype), str(self.device),
                              *self.encoding_extras(inputs))

    def encoding_extras(self, inputs: dict[str, Tensor]) -> tuple:
        """What else `encode` reads from the prompt (InternVL: the tiles of each image)."""
        return ()

    def encode(self, prepared: Prepared) -> VisualTokens:
        raise NotImplementedError

    def full_positions(self, prepared: Prepared) -> Tensor:
        """Positions of the unreduced sequence: 0..N-1 (M-RoPE families override)."""
        return torch.arange(prepared.input_ids.numel(), device=self.device)

    def assemble(self, prepared: Prepared, visual: VisualTokens, *, positions: str = "original") -> Sequence:
        """Replace the image placeholders by `visual` (any subset, any order) in sequence order.

        `positions="original"` keeps every token's position in the unreduced sequence;
        `"contiguous"` renumbers 0..n-1 as if the reduced sequence had been the input.
        """
        if positions not in ("original", "contiguous"):
            raise ValueError(f"positions must be 'original' or 'contiguous', not {positions!r}")
        ids = prepared.input_ids
        placeholder = (ids == self.image_token_id).nonzero().flatten()
        if visual.meta["index"].numel() and int(visual.meta["index"].max()) >= placeholder.numel():
            raise ValueError("visual token index beyond the prompt's image placeholders")
        text_pos = (ids != self.image_token_id).nonzero().flatten()
        vis_pos = placeholder[visual.meta["index"].to(ids.device)]
        order = torch.argsort(torch.cat([text_pos, vis_pos]), stable=True)
        n_text = text_pos.numel()
        embeds = torch.cat([self.decoder.embed_tokens(ids[text_pos]), visual.features.to(self.dtype)])[order]
        original = torch.cat([text_pos, vis_pos])[order]
        full = self.full_positions(prepared)
        pos = full[..., original] if positions == "original" else torch.arange(order.numel(), device=ids.device)
        where = torch.empty_like(order)
        where[order] = torch.arange(order.numel(), device=ids.device)
        visual_idx, order_in_seq = torch.sort(where[n_text:])
        groups = visual.meta.get("group")  # a reducer's token groups (e.g. VisPruner important/diverse)
        return Sequence(embeds=embeds, positions=pos, visual=visual_idx, input_ids=ids[original],
                        visual_groups=None if groups is None else groups.to(ids.device)[order_in_seq])
