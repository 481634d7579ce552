"""Architecture cards: the numbers that FLOPs, budgets and reports need about a model.

A card is plain data (no torch), so the CLI and the FLOPs tables work without loading a model.
Cards for the six paper checkpoints live in `repro.models.registry`; `ArchCard.from_hf_config`
builds one from any supported transformers multimodal config (used for tiny test models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repro.errors import ReproError

#: Processor default of InternVL3 (HF `InternVLProcessor`, lmms-eval `internvl_hf`): at most 12
#: tiles, plus a thumbnail when there is more than one tile.
INTERNVL_MAX_TILES = 12

#: Reference resolution for Qwen2.5-VL, whose token count depends on the image: 1008x1008 px gives
#: the 1296 tokens of the CDPruner protocol (MODELS.md section 5).
QWEN_REFERENCE_IMAGE_SIZE = 1008


@dataclass(frozen=True)
class VisionCard:
    """The vision encoder of a multimodal model, as far as FLOPs are concerned.

    One *unit* is what the encoder sees in one pass: an image (LLaVA-1.5), a crop or base view
    (LLaVA-NeXT), a tile or thumbnail (InternVL3), or an image at the reference resolution
    `image_size` (Qwen2.5-VL, whose real resolution varies).
    """

    name: str
    layers: int
    hidden: int
    heads: int
    mlp: int
    image_size: int
    patch_size: int
    has_cls: bool
    tokens_rule: str
    gated_mlp: bool = False  # SwiGLU (three matrices) instead of fc1/fc2 (two matrices)
    in_channels: int = 3
    temporal_patch: int = 1  # Qwen2.5-VL repeats a still image to 2 frames per patch
    window: int = 0  # side of the attention window in patches; 0 = global attention everywhere
    full_attention_blocks: tuple[int, ...] = ()  # blocks that attend globally when window > 0
    merge: int = 1  # patches fused into one LLM token by the projector (2x2 -> 4)
    projector_hidden: int = 0  # width of the projector's middle layer; 0 = the LLM hidden size

    @property
    def patches(self) -> int:
        """Patches per unit."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def positions(self) -> int:
        """Sequence length inside the encoder for one unit (patches plus CLS if any)."""
        return self.patches + int(self.has_cls)

    @property
    def llm_tokens(self) -> int:
        """LLM tokens one unit becomes after the projector (CLS dropped, patches merged)."""
        return self.patches // self.merge


@dataclass(frozen=True)
class ArchCard:
    """The language decoder of a multimodal model plus its vision tower.

    `visual_tokens` is the per-image count that FLOPs tables use by default (the protocol the
    paper's baselines quote), not a property of every input.
    """

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int
    vision: VisionCard
    visual_tokens: int

    @property
    def d_q(self) -> int:
        """Width of the query (and attention output) projection."""
        return self.heads * self.head_dim

    @property
    def d_kv(self) -> int:
        """Width of each of the key and value projections (smaller than d_q under GQA)."""
        return self.kv_heads * self.head_dim

    @property
    def vision_units(self) -> int:
        """Encoder passes behind `visual_tokens` (e.g. 5 crops for LLaVA-NeXT's 2880)."""
        return max(1, -(-self.visual_tokens // self.vision.llm_tokens))

    @classmethod
    def from_hf_config(cls, config: Any) -> "ArchCard":
        """Build a card from a transformers multimodal config.

        Supports LlavaConfig, LlavaNextConfig, Qwen2_5_VLConfig and InternVLConfig (by
        `model_type`). Visual-token defaults follow the geometry of the vision tower (they do not
        trust `image_seq_length`, which a resized tiny config leaves at its default).
        """
        model_type = getattr(config, "model_type", None)
        builder = _BUILDERS.get(model_type)
        if builder is None:
            raise ReproError(
                f"no architecture card rule for model_type {model_type!r}; "
                f"supported: {', '.join(sorted(_BUILDERS))}"
            )
        text = getattr(config, "text_config", None)
        if text is None:  # older single-level configs keep the text fields at the top
            text = config
        vision, visual_tokens = builder(config, config.vision_config)
        return cls(
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            heads=text.num_attention_heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            mlp=text.intermediate_size,
            vocab=text.vocab_size,
            vision=vision,
            visual_tokens=visual_tokens,
        )


def _side(value: Any) -> int:
    """Image or patch size given as an int or an (h, w) pair (square assumed)."""
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)


def _clip_vision(vc: Any, tokens_rule: str, default_name: str = "clip_vision_model", **extra: Any) -> VisionCard:
    """A ViT with a CLS token, read from a transformers vision config."""
    return VisionCard(
        name=getattr(vc, "model_type", default_name),
        layers=vc.num_hidden_layers,
        hidden=vc.hidden_size,
        heads=vc.num_attention_heads,
        mlp=vc.intermediate_size,
        image_size=_side(vc.image_size),
        patch_size=_side(vc.patch_size),
        has_cls=True,
        tokens_rule=tokens_rule,
        in_channels=getattr(vc, "num_channels", 3),
        **extra,
    )


def _llava(config: Any, vc: Any) -> tuple[VisionCard, int]:
    vision = _clip_vision(vc, "fixed (image/patch)^2 per image, CLS dropped")
    keep_cls = getattr(config, "vision_feature_select_strategy", "default") == "full"
    return vision, vision.patches + int(keep_cls)


def _llava_next(config: Any, vc: Any) -> tuple[VisionCard, int]:
    vision = _clip_vision(vc, "anyres: base view + crops of the best grid pinpoint, unpad, newline per row")
    side = vision.image_size
    pinpoints = getattr(config, "image_grid_pinpoints", None) or [[side, side]]
    max_crops = max(-(-h // side) * -(-w // side) for h, w in pinpoints)
    return vision, (1 + max_crops) * vision.patches  # nominal count before unpad (2880 protocol)


def _qwen2_5_vl(config: Any, vc: Any) -> tuple[VisionCard, int]:
    patch = vc.patch_size
    merge_side = getattr(vc, "spatial_merge_size", 2)
    window_px = getattr(vc, "window_size", 0) or 0
    vision = VisionCard(
        name=getattr(vc, "model_type", "qwen2_5_vl_vision"),
        layers=vc.depth,
        hidden=vc.hidden_size,
        heads=vc.num_heads,
        mlp=vc.intermediate_size,
        image_size=QWEN_REFERENCE_IMAGE_SIZE,
        patch_size=patch,
        has_cls=False,
        tokens_rule="1 token per (patch*merge)^2 px after smart resize; image_size is a reference",
        gated_mlp=True,
        in_channels=getattr(vc, "in_channels", 3),
        temporal_patch=getattr(vc, "temporal_patch_size", 1),
        window=window_px // patch if window_px else 0,
        full_attention_blocks=tuple(getattr(vc, "fullatt_block_indexes", ()) or ()),
        merge=merge_side**2,
        projector_hidden=vc.hidden_size * merge_side**2,
    )
    return vision, vision.llm_tokens


def _internvl(config: Any, vc: Any) -> tuple[VisionCard, int]:
    ratio = getattr(config, "downsample_ratio", 0.5)
    vision = _clip_vision(
        vc, f"tiles (1-{INTERNVL_MAX_TILES}, + thumbnail if >1) x pixel-shuffled patches", "internvl_vision",
        merge=round(1 / ratio) ** 2,
    )
    return vision, (INTERNVL_MAX_TILES + 1) * vision.llm_tokens


_BUILDERS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_5_vl": _qwen2_5_vl,
    "internvl": _internvl,
}
