"""`repro.load`: a registry name, HF id, local directory or tiny name -> a ready Model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from repro.errors import ReproError
from repro.models.adapter import Adapter
from repro.models.cards import ArchCard
from repro.models.internvl import InternVLAdapter, internvl_image_processor
from repro.models.llava import Llava15Adapter, LlavaNextAdapter, fixed_grid_pinpoints
from repro.models.model import Model
from repro.models.qwen import QwenAdapter, pixel_bounds, qwen_image_processor
from repro.models.registry import ModelEntry, entries, get_entry
from repro.models.shipped import SHIPPED, load_shipped
from repro.models.geometry import QWEN_LMMS_EVAL_PIXELS
from repro.models.tiny import TINY_BUILDERS, tiny_internvl3, tiny_llava15, tiny_llava_next, tiny_qwen25vl

# model_type of the HF config -> adapter class
ADAPTERS: dict[str, type[Adapter]] = {
    "llava": Llava15Adapter,
    "llava_next": LlavaNextAdapter,
    "qwen2_5_vl": QwenAdapter,
    "internvl": InternVLAdapter,
}
# Per family: the image-side options `load` accepts (see `_apply_options`).
OPTIONS = {
    "llava": (),
    "llava_next": ("protocol",),
    "qwen2_5_vl": ("min_pixels", "max_pixels"),
    "internvl": ("min_tiles", "max_tiles"),
}
_LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def load(name_or_path: str, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
         attn_implementation: str = "sdpa", random_weights: bool = False, revision: str | None = None,
         **options: Any) -> Model:
    """Load a model for the engine.

    - a tiny name (`tiny-llava-1.5`, `tiny-llava-next`) builds a tiny random model offline;
    - a registry name (`python -m repro models`) resolves to its HF id;
    - an HF id or a local directory loads through `from_pretrained` (respects HF_HUB_OFFLINE);
    - `random_weights=True` builds a registry model's real architecture with random weights
      (FLOPs and latency only; `device="meta"` builds it without allocating memory);
    - `revision` (a hub branch, tag or commit) pins the weights of a hub load; tiny, shipped and
      local models have no revision.

    Image-side `options`, per family: LLaVA-NeXT `protocol="fixed"` (one 2×2 grid: the 672×672,
    2880-token protocol of VisPruner and CDPruner; default "native" anyres); Qwen2.5-VL
    `min_pixels`/`max_pixels` (the processor's resize bounds, which set the token count);
    InternVL3 `min_tiles`/`max_tiles` (dynamic tiling bounds, default 1 and 12).
    """
    name_or_path, dtype = _checked(name_or_path, dtype, device, attn_implementation)
    if name_or_path in TINY_BUILDERS:
        hf, processor = TINY_BUILDERS[name_or_path]()
        name = name_or_path
    elif name_or_path in SHIPPED and not random_weights:  # trained checkpoints in the package
        hf, processor = load_shipped(name_or_path, dtype, attn_implementation)
        name = name_or_path
    elif random_weights:
        entry = _entry_or_error(name_or_path)
        hf, processor = _random_weights(entry, dtype, device)
        name = entry.name
    else:
        name, source = _resolve(name_or_path)
        hf, processor = _from_pretrained(source, dtype, attn_implementation,
                                         None if Path(source).exists() else revision)
    adapter_cls = ADAPTERS.get(hf.config.model_type)
    if adapter_cls is None:
        raise ReproError(f"{name}: model_type {hf.config.model_type!r} has no adapter yet "
                         f"(supported: {', '.join(sorted(ADAPTERS))})")
    _apply_options(hf, processor, options)
    if str(device) != "meta":
        hf.set_attn_implementation(attn_implementation)
        hf.to(device=device, dtype=dtype) if (device or dtype) else None
    hf.eval()
    return Model(name, hf, processor, adapter_cls(hf, processor), ArchCard.from_hf_config(hf.config),
                 attn_implementation=attn_implementation,
                 random_weights=random_weights or name_or_path in TINY_BUILDERS)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def _checked(name_or_path: Any, dtype: Any, device: Any, attn_implementation: Any) -> tuple[str, torch.dtype | None]:
    """`load`'s arguments checked before anything is built: ReproError naming the fix."""
    import os

    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ReproError(f"repro.load needs a model name or path (a non-empty string), got {name_or_path!r}; "
                         "see `python -m repro models`")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ReproError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    elif dtype is not None and not isinstance(dtype, torch.dtype):
        raise ReproError(f"dtype must be a string ({', '.join(DTYPES)}) or a torch.dtype, got {dtype!r}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ReproError(f"attn_implementation {attn_implementation!r} is not supported; "
                         f"use one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if device is not None and str(device) != "meta":
        from repro.devices import device_problem

        problem = device_problem(device)
        if problem:
            raise ReproError(problem)
    return name_or_path, dtype


def _entry_or_error(name: str) -> ModelEntry:
    if name in TINY_BUILDERS:
        raise ReproError(f"{name} is already random; drop random_weights=True")
    return get_entry(name)


def _resolve(name_or_path: str) -> tuple[str, str]:
    """(display name, from_pretrained source) for a registry name, a local directory or an HF id."""
    known = {e.name: e for e in entries()}
    if name_or_path in known:
        return name_or_path, known[name_or_path].hf_id
    path = Path(name_or_path)
    if path.exists():
        _check_local_dir(path)
        return path.name, str(path)
    if "/" not in name_or_path:
        raise ReproError(f"unknown model {name_or_path!r}; known names: "
                         f"{', '.join(sorted([*known, *TINY_BUILDERS, *SHIPPED]))}, or an HF id / local directory")
    return name_or_path, name_or_path


def _check_local_dir(path: Path) -> None:
    missing = [f for f in ("config.json",) if not (path / f).exists()]
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if missing or not has_weights:
        what = ", ".join(missing + ([] if has_weights else ["weights (*.safetensors or *.bin)"]))
        raise ReproError(f"{path} is missing {what}; fetch the checkpoint with "
                         f"`hf download <hf-id> --local-dir {path}` (see `python -m repro models` for ids)")


def _from_pretrained(source: str, dtype: torch.dtype | None, attn_implementation: str,
                     revision: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        hf = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype or "auto", revision=revision,
                                                         attn_implementation=attn_implementation)
        processor = AutoProcessor.from_pretrained(source, revision=revision)
    except OSError as err:
        raise ReproError(f"cannot load {source!r} ({err.__class__.__name__}: {str(err).splitlines()[0]}); "
                         f"download it first with `hf download {source}` on a machine with network access, "
                         f"or pass a local directory") from None
    return hf, processor


def _random_weights(entry: ModelEntry, dtype: torch.dtype | None, device: str | torch.device | None) -> tuple[Any, Any]:
    """The real architecture of a registry model with random weights, and a stand-in processor.

    Built by the family's tiny builder at the card's dimensions. The processor has the real image
    geometry but the tiny offline tokenizer (the real vocabulary cannot be downloaded here), so
    prompts are a few tokens shorter than the real ones; the embedding table has the real size.
    """
    card, v = entry.card, entry.card.vision
    text = dict(vocab_size=card.vocab, hidden_size=card.hidden, intermediate_size=card.mlp,
                num_hidden_layers=card.layers, num_attention_heads=card.heads, num_key_value_heads=card.kv_heads)
    common = dict(device=device, dtype=dtype)
    if entry.family in ("llava-1.5", "llava-next"):
        text.update(head_dim=card.head_dim, rms_norm_eps=1e-5, max_position_embeddings=4096)
        vision = dict(hidden_size=v.hidden, intermediate_size=v.mlp, num_hidden_layers=v.layers,
                      num_attention_heads=v.heads, hidden_act="quick_gelu")
        if entry.family == "llava-1.5":
            return tiny_llava15(image_size=v.image_size, text=text, vision=vision, **common)
        return tiny_llava_next(image_size=v.image_size, pinpoints=_LLAVA_NEXT_PINPOINTS, text=text, vision=vision,
                               **common)
    text.update(rms_norm_eps=1e-6, max_position_embeddings=32768)
    if entry.family == "qwen2.5-vl":
        low, high = QWEN_LMMS_EVAL_PIXELS
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
        vision = dict(depth=v.layers, hidden_size=v.hidden, intermediate_size=v.mlp, num_heads=v.heads,
                      out_hidden_size=card.hidden, window_size=v.window * v.patch_size,
                      fullatt_block_indexes=list(v.full_attention_blocks))
        return tiny_qwen25vl(min_pixels=low, max_pixels=high, text=text, vision=vision, **common)
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False)
    vision = dict(hidden_size=v.hidden, intermediate_size=v.mlp, num_hidden_layers=v.layers,
                  num_attention_heads=v.heads, attention_bias=True)
    return tiny_internvl3(tile=v.image_size, patch=v.patch_size, max_tiles=12, text=text, vision=vision, **common)


# family of the registry -> model_type, for checking options before anything loads
_FAMILY_TYPES = {"llava-1.5": "llava", "llava-next": "llava_next", "qwen2.5-vl": "qwen2_5_vl", "internvl3": "internvl"}
_TINY_TYPES = {"bench-llava-1.5": "llava", "tiny-llava-1.5": "llava", "tiny-llava-1.5-deep": "llava",
               "tiny-llava-next": "llava_next", "tiny-qwen2.5-vl": "qwen2_5_vl", "tiny-internvl3": "internvl",
               "tinyworld-llava": "llava"}


def option_names(name: str) -> tuple[str, ...] | None:
    """The image-side options `load(name, ...)` accepts, known without loading anything (None for an
    HF id or a directory, whose family shows only once its config is read)."""
    if name in _TINY_TYPES:
        return OPTIONS[_TINY_TYPES[name]]
    for e in entries():
        if e.name == name and e.family in _FAMILY_TYPES:
            return OPTIONS[_FAMILY_TYPES[e.family]]
    return None


def _apply_options(hf: Any, processor: Any, options: dict[str, Any]) -> None:
    model_type = hf.config.model_type
    unknown = sorted(set(options) - set(OPTIONS[model_type]))
    if unknown:
        raise ReproError(f"unknown option(s) {', '.join(unknown)} for {model_type}; "
                         f"accepted: {', '.join(OPTIONS[model_type]) or 'none'}")
    if "protocol" in options:
        if options["protocol"] not in ("native", "fixed"):
            raise ReproError(f"protocol must be 'native' or 'fixed', not {options['protocol']!r}")
        if options["protocol"] == "fixed":
            pinpoints = fixed_grid_pinpoints(hf)
            hf.config.image_grid_pinpoints = pinpoints
            processor.image_processor.image_grid_pinpoints = pinpoints
    if model_type == "qwen2_5_vl" and options:
        low, high = pixel_bounds(processor.image_processor)
        low, high = options.get("min_pixels", low), options.get("max_pixels", high)
        if not 0 < low <= high:
            raise ReproError(f"need 0 < min_pixels <= max_pixels, got {low} and {high}")
        processor.image_processor = qwen_image_processor(min_pixels=low, max_pixels=high)
    if model_type == "internvl" and options:
        ip = processor.image_processor
        processor.image_processor = internvl_image_processor(
            ip.size["height"], min_tiles=options.get("min_tiles", ip.min_patches),
            max_tiles=options.get("max_tiles", ip.max_patches))
