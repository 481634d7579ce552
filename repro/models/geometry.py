"""How many visual tokens an image of a given size becomes, per family, without loading a model.

Used by `python -m repro flops --image-size WxH`. The rules are the processors' own (Qwen2.5-VL's
smart resize, InternVL's dynamic tiling), called on sizes only.
"""

from __future__ import annotations

from repro.errors import ReproError
from repro.models.registry import ModelEntry

# lmms-eval's qwen2_5_vl defaults (MODELS.md §5): at least 256 and at most 2048 tokens per image.
QWEN_LMMS_EVAL_PIXELS = (256 * 28 * 28, 2048 * 28 * 28)


def parse_image_size(text: str) -> tuple[int, int]:
    """'1344x1008' -> (1344, 1008): width, height in pixels."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ReproError(f"image size must look like WIDTHxHEIGHT, e.g. 1344x1008; got {text!r}") from None
    if width <= 0 or height <= 0:
        raise ReproError(f"image size must be positive, got {text!r}")
    return width, height


def visual_tokens_for_image(entry: ModelEntry, width: int, height: int, *, min_pixels: int | None = None,
                            max_pixels: int | None = None, max_tiles: int = 12) -> int:
    """Visual tokens (delimiters excluded) of one `width`×`height` image for a registry model."""
    if entry.family == "llava-1.5":
        return entry.card.vision.patches  # every image is resized to one fixed grid
    if entry.family == "qwen2.5-vl":
        from repro.models.qwen import qwen_visual_tokens

        low, high = QWEN_LMMS_EVAL_PIXELS
        return qwen_visual_tokens(width, height, min_pixels=min_pixels or low, max_pixels=max_pixels or high)
    if entry.family == "internvl3":
        from repro.models.internvl import internvl_image_processor

        tiles = internvl_image_processor(entry.card.vision.image_size, max_tiles=max_tiles)
        return tiles.get_number_of_image_patches(height, width) * entry.card.vision.llm_tokens
    raise ReproError(f"--image-size is not defined for {entry.family} yet; give --visual-tokens instead")
