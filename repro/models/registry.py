"""The six checkpoints DOP evaluates, with their verified architecture numbers.

Numbers come from docs MODELS.md (sections 0-8). The registry is plain data: looking a model up
never imports torch and never touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError
from repro.models.cards import ArchCard, VisionCard

FAMILIES = ("llava-1.5", "llava-next", "qwen2.5-vl", "internvl3")


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint: a short name, its adapter family, its hub id and its card."""

    name: str
    family: str
    hf_id: str
    card: ArchCard
    notes: str = ""
    text_tower: str = ""  # hub id of the CLIP checkpoint whose text half CDPruner and TRIM use ("" = none)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {FAMILIES}")


CLIP_L_336_ID = "openai/clip-vit-large-patch14-336"  # LLaVA's vision tower; its text half serves CDPruner/TRIM

CLIP_L_336 = VisionCard(
    name="CLIP ViT-L/14-336",
    layers=24,
    hidden=1024,
    heads=16,
    mlp=4096,
    image_size=336,
    patch_size=14,
    has_cls=True,
    tokens_rule="24x24 patches per 336 px view, CLS dropped, features from layer -2",
)

QWEN2_5_VL_VIT = VisionCard(
    name="Qwen2.5-VL ViT",
    layers=32,
    hidden=1280,
    heads=16,
    mlp=3420,
    image_size=1008,  # reference resolution: 1008x1008 px -> 1296 tokens (CDPruner protocol)
    patch_size=14,
    has_cls=False,
    tokens_rule="1 token per 28x28 px after smart resize (2x2 merge of 14 px patches), +2 delimiters",
    gated_mlp=True,
    temporal_patch=2,
    window=8,  # 112 px windows
    full_attention_blocks=(7, 15, 23, 31),
    merge=4,
    projector_hidden=5120,
)

INTERNVIT_300M = VisionCard(
    name="InternViT-300M-448px-V2.5",
    layers=24,
    hidden=1024,
    heads=16,
    mlp=4096,
    image_size=448,
    patch_size=14,
    has_cls=True,
    tokens_rule="256 per 448 px tile (pixel shuffle 0.5), 1-12 tiles + thumbnail if >1, +2 delimiters",
    merge=4,
)

_VICUNA_7B = dict(layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, mlp=11008, vocab=32064)
_VICUNA_13B = dict(layers=40, hidden=5120, heads=40, kv_heads=40, head_dim=128, mlp=13824, vocab=32064)
_QWEN2_5_7B = dict(layers=28, hidden=3584, heads=28, kv_heads=4, head_dim=128, mlp=18944)

_ENTRIES = (
    ModelEntry(
        name="llava-1.5-7b",
        family="llava-1.5",
        hf_id="llava-hf/llava-1.5-7b-hf",
        card=ArchCard(**_VICUNA_7B, vision=CLIP_L_336, visual_tokens=576),
        notes="Vicuna-7B v1.5; 576 visual tokens per image",
        text_tower=CLIP_L_336_ID,
    ),
    ModelEntry(
        name="llava-1.5-13b",
        family="llava-1.5",
        hf_id="llava-hf/llava-1.5-13b-hf",
        card=ArchCard(**_VICUNA_13B, vision=CLIP_L_336, visual_tokens=576),
        notes="Vicuna-13B v1.5; 576 visual tokens per image",
        text_tower=CLIP_L_336_ID,
    ),
    ModelEntry(
        name="llava-next-7b",
        family="llava-next",
        hf_id="llava-hf/llava-v1.6-vicuna-7b-hf",
        card=ArchCard(**_VICUNA_7B, vision=CLIP_L_336, visual_tokens=2880),
        notes="anyres; 2880 = 5 x 576 nominal tokens of the VisPruner/CDPruner 672x672 protocol",
        text_tower=CLIP_L_336_ID,
    ),
    ModelEntry(
        name="llava-next-13b",
        family="llava-next",
        hf_id="llava-hf/llava-v1.6-vicuna-13b-hf",
        card=ArchCard(**_VICUNA_13B, vision=CLIP_L_336, visual_tokens=2880),
        notes="anyres; 2880 = 5 x 576 nominal tokens of the VisPruner/CDPruner 672x672 protocol",
        text_tower=CLIP_L_336_ID,
    ),
    ModelEntry(
        name="qwen2.5-vl-7b",
        family="qwen2.5-vl",
        hf_id="Qwen/Qwen2.5-VL-7B-Instruct",
        card=ArchCard(**_QWEN2_5_7B, vocab=152064, vision=QWEN2_5_VL_VIT, visual_tokens=1296),
        notes="GQA 28/4, M-RoPE; 1296 tokens = 1008x1008 px (CDPruner protocol)",
    ),
    ModelEntry(
        name="internvl3-8b",
        family="internvl3",
        hf_id="OpenGVLab/InternVL3-8B-hf",
        card=ArchCard(**_QWEN2_5_7B, vocab=151674, vision=INTERNVIT_300M, visual_tokens=3328),
        notes="GQA 28/4; 3328 tokens = 12 tiles + thumbnail (a 4:3 image)",
    ),
)


def entries() -> list[ModelEntry]:
    """All registered checkpoints, in the paper's order."""
    return list(_ENTRIES)


def get_entry(name: str) -> ModelEntry:
    """The entry called `name`; a ReproError listing the known names otherwise."""
    for entry in _ENTRIES:
        if entry.name == name:
            return entry
    known = ", ".join(sorted(e.name for e in _ENTRIES))
    raise ReproError(f"unknown model {name!r}; known models: {known}")


def local_weights(entry: ModelEntry, cache_dir: str | Path | None = None) -> str | None:
    """Path of a cached snapshot of `entry` that holds weights, or None."""
    return local_snapshot(entry.hf_id, cache_dir)


def local_snapshot(hf_id: str, cache_dir: str | Path | None = None) -> str | None:
    """Path of a cached snapshot of `hf_id` that holds weights, or None.

    Looks only at the local Hugging Face cache (`local_files_only=True`): it never touches the
    network. A snapshot counts when it has at least one `*.safetensors` or `*.bin` file whose
    blob is present (a dangling symlink from an interrupted download does not count).
    """
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(hf_id, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached, broken cache, or hub library missing: no local weights
        return None
    root = Path(path)
    for pattern in ("*.safetensors", "*.bin"):
        if any(p.is_file() for p in root.glob(pattern)):
            return str(root)
    return None
