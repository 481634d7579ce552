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
from repro.errors import ReproError

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
    question: str = ""  # the user's text as given (text-conditioned reducers score against it)
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

    def merge(self, anchors: Tensor, features: Tensor) -> "VisualTokens":
        """Tokens whose features a merging reducer computed: row i has the features `features[i]`
        and the metadata of token `anchors[i]` of this set (which image span it joins, and where).

        An anchor may repeat (an extra token such as TRIM's mean token or VisionZip's [CLS] rides
        on a kept token's slot); such outputs need contiguous positions, where the sequence
        follows the order of the rows (see `Adapter.assemble`).
        """
        if features.shape[0] != anchors.numel() or features.shape[1:] != self.features.shape[1:]:
            raise ValueError(f"merged features {tuple(features.shape)} do not match {anchors.numel()} anchors of "
                             f"width {self.features.shape[1]}")
        out = self.select(anchors)
        return replace(out, features=features.to(device=out.features.device, dtype=out.features.dtype))

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
        return self._to_tokens(self.per_crop_pre_projector())

    # Per-crop views (n_crops, n_patches, ...) of the same signals: every patch the tower encoded,
    # LLaVA-NeXT's padding patches included (the official VisPruner/CDPruner code selects among them).
    def per_crop_cls_attention(self, layer: int | None = None) -> Tensor:
        return self._cached(("cls", layer), lambda: self.crop_cls_attention(layer))

    def per_crop_keys(self, layer: int | None = None) -> Tensor:
        return self._cached(("keys", layer), lambda: self.crop_keys(layer))

    def per_crop_pre_projector(self) -> Tensor:
        return self._cached(("pre",), self.crop_pre_projector)

    def per_crop_cls_attention_one_head(self, layer: int | None = None) -> Tensor:
        """(n_crops, n_patches): [CLS] attention as one head over the full width (PruMerge+)."""
        return self._cached(("cls1", layer), lambda: self.crop_cls_attention_one_head(layer))

    def cls_attention_one_head(self, layer: int | None = None) -> Tensor:
        return self._to_tokens(self.per_crop_cls_attention_one_head(layer))

    def cls_feature(self) -> Tensor:
        """(n_crops, d_vision): each crop's [CLS] output at the feature layer (pre-projector)."""
        return self._cached(("clsfeat",), self.crop_cls_feature)

    def grid_meta(self) -> dict[str, Tensor]:
        """Metadata of every patch of every crop, flattened crop-major (the per-crop views' order):
        `crop`, `patch`, `row`, `col`, `image`. Default: each crop's own grid."""
        return self.crop_grid_meta()

    def _missing(self, what: str) -> ReproError:
        """A method asked for a vision signal this family's tower does not have: one clear error."""
        return ReproError(f"{type(self).__name__} has no {what}; the method asking for it is not defined on this "
                          "model family (its card in docs/methods/ lists the families it runs on)")

    def project(self, pre: Tensor) -> Tensor:
        """Pre-projector vision features -> LLM space, with the model's own projector."""
        raise self._missing("projector for merged features")

    def post_norm(self, pre: Tensor) -> Tensor:
        """The tower's final norm (CLIP `post_layernorm`), the input of CLIP's visual projection."""
        raise self._missing("CLIP post-layernorm")

    # Per-crop computations, (n_crops, n_patches[, ...]); implemented per family.
    def crop_cls_attention(self, layer: int | None) -> Tensor:
        """(n_crops, n_patches, heads)."""
        raise self._missing("[CLS] attention signal")

    def crop_keys(self, layer: int | None) -> Tensor:
        raise NotImplementedError

    def crop_pre_projector(self) -> Tensor:
        raise NotImplementedError

    def crop_cls_attention_one_head(self, layer: int | None) -> Tensor:
        raise self._missing("single-head [CLS] attention signal")

    def crop_cls_feature(self) -> Tensor:
        raise self._missing("[CLS] token fed to a projector")

    def crop_grid_meta(self) -> dict[str, Tensor]:
        n_crops, n_patches = self.per_crop_pre_projector().shape[:2]
        side = max(1, int(round(n_patches ** 0.5)))
        crop = torch.arange(n_crops).repeat_interleave(n_patches)
        patch = torch.arange(n_patches).repeat(n_crops)
        is_patch = self._meta["crop"] >= 0
        image_of_crop = torch.zeros(n_crops, dtype=torch.long)
        image_of_crop[self._meta["crop"][is_patch].cpu()] = self._meta["image"][is_patch].cpu()
        meta = {"crop": crop, "patch": patch, "row": patch // side, "col": patch % side, "image": image_of_crop[crop]}
        return {k: v.to(self._meta["crop"].device) for k, v in meta.items()}


def crop_grid_tokens(visual: VisualTokens) -> VisualTokens:
    """Every patch of every crop the tower encoded, projected, in crop order, layout tokens excluded.

    On LLaVA-NeXT this includes the patches unpadding removes: the pool the official VisPruner and
    CDPruner code select from. Each token is anchored to its image's first placeholder, so these
    tokens need contiguous positions (their sequence order is their row order).
    """
    signals = visual.signals
    grid = signals.grid_meta()
    features = signals.project(signals.per_crop_pre_projector().flatten(0, 1))
    first = {int(i): int(visual.meta["index"][visual.meta["image"] == i].min()) for i in torch.unique(visual.meta["image"])}
    index = torch.tensor([first[int(i)] for i in grid["image"]], dtype=torch.long, device=grid["image"].device)
    meta = {**grid, "index": index, "kind": torch.full_like(index, PATCH)}
    return VisualTokens(features, {k: meta[k] for k in META_FIELDS}, signals)


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
        return Prepared(prompt, inputs, list(images), question, key_source)

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
        """Replace the image placeholders by `visual` (any subset, any order).

        `positions="original"` keeps every token's position in the unreduced sequence and places
        the tokens in the order of their `index`; `"contiguous"` renumbers 0..n-1 as if the reduced
        sequence had been the input, and places each image span's tokens in the order of `visual`
        (a merging reducer's output order, as the reference code concatenates it; for a subset in
        index order both placements agree).
        """
        if positions not in ("original", "contiguous"):
            raise ValueError(f"positions must be 'original' or 'contiguous', not {positions!r}")
        ids = prepared.input_ids
        placeholder = (ids == self.image_token_id).nonzero().flatten()
        if visual.meta["index"].numel() and int(visual.meta["index"].max()) >= placeholder.numel():
            raise ValueError("visual token index beyond the prompt's image placeholders")
        text_pos = (ids != self.image_token_id).nonzero().flatten()
        vis_pos = placeholder[visual.meta["index"].to(ids.device)]
        key = vis_pos if positions == "original" else _span_start(placeholder)[visual.meta["index"].to(ids.device)]
        order = torch.argsort(torch.cat([text_pos, key]), stable=True)
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


def _span_start(placeholder: Tensor) -> Tensor:
    """For each placeholder position, the first position of its contiguous run."""
    new_run = torch.ones_like(placeholder, dtype=torch.bool)
    new_run[1:] = placeholder[1:] != placeholder[:-1] + 1
    return placeholder[new_run][torch.cumsum(new_run.long(), 0) - 1]


class PatchPool:
    """The candidates a pre-LLM reducer chooses from, with vision signals aligned row by row.

    `full_crops=True`: every patch of every crop (LLaVA-NeXT padding included, no layout tokens),
    as the official LLaVA-NeXT code of VisPruner, CDPruner and VisionZip sees them. Otherwise the
    model's own image-patch tokens (layout tokens set apart in `layout`).
    """

    def __init__(self, visual: VisualTokens, *, full_crops: bool):
        self.full_crops = full_crops
        self.signals = visual.signals
        if full_crops:
            self.tokens = crop_grid_tokens(visual)
            self.layout = visual.select(visual.patches[:0])
        else:
            self._patches = visual.patches
            self.tokens = visual.select(self._patches)
            self.layout = visual.select((visual.meta["kind"] == LAYOUT).nonzero().flatten())

    def _rows(self, per_crop: Callable[[], Tensor], per_token: Callable[[], Tensor]) -> Tensor:
        return per_crop().flatten(0, 1) if self.full_crops else per_token()[self._patches]

    def cls_attention(self, layer: int | None = None) -> Tensor:
        """(n, heads)."""
        s = self.signals
        return self._rows(lambda: s.per_crop_cls_attention(layer), lambda: s.cls_attention(layer, reduce="none"))

    def cls_attention_one_head(self, layer: int | None = None) -> Tensor:
        s = self.signals
        return self._rows(lambda: s.per_crop_cls_attention_one_head(layer), lambda: s.cls_attention_one_head(layer))

    def keys(self, layer: int | None = None) -> Tensor:
        s = self.signals
        return self._rows(lambda: s.per_crop_keys(layer), lambda: s.keys(layer))

    def pre_projector(self) -> Tensor:
        s = self.signals
        return self._rows(lambda: s.per_crop_pre_projector(), lambda: s.pre_projector())

    def crops(self) -> list[Tensor]:
        """Positions (in `tokens`) of each crop's patches, crops in encoding order."""
        crop = self.tokens.meta["crop"]
        return [(crop == c).nonzero().flatten() for c in torch.unique(crop)]

    def with_layout(self, out: VisualTokens) -> VisualTokens:
        """`out` (drawn from this pool) joined by the pool's layout tokens, in index order (group 0)."""
        layout = self.layout
        if "group" in out.meta:
            layout = replace(layout, meta={**layout.meta, "group": torch.zeros(len(layout), dtype=torch.long,
                                                                                 device=layout.features.device)})
        order = torch.argsort(torch.cat([out.meta["index"], layout.meta["index"]]), stable=True)
        return replace(out, features=torch.cat([out.features, layout.features])[order],
                       meta={k: torch.cat([out.meta[k], layout.meta[k]])[order] for k in out.meta})

    def images(self) -> list[Tensor]:
        image = self.tokens.meta["image"]
        return [(image == i).nonzero().flatten() for i in torch.unique(image)]
