"""Qwen2.5-VL adapter: dynamic resolution, 2×2 patch merger, 3-row M-RoPE positions.

Positions are computed by the model's own `get_rope_index` on the full, unreduced sequence; a
reduced sequence keeps its tokens' original 3-D positions and decoding continues from the largest
position + 1 (what the stock `rope_deltas` bookkeeping means), so pruning never shifts positions.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import Qwen2_5_VLProcessor
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from repro.errors import ReproError
from repro.models.adapter import PATCH, Adapter, Prepared, VisionSignals, VisualTokens


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """The stock processor without its video slot, which needs torchvision (ECOSYSTEM §3.4)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def qwen_image_processor(*, min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    """The PIL image processor with the given pixel bounds (the knob of resizing reducers)."""
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2,
                                    temporal_patch_size=2)


def pixel_bounds(image_processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2-VL image processor (stored as shortest/longest edge)."""
    return image_processor.size["shortest_edge"], image_processor.size["longest_edge"]


def qwen_visual_tokens(width: int, height: int, *, min_pixels: int, max_pixels: int, factor: int = 28) -> int:
    """LLM tokens of one image after the processor's smart resize (one per 28×28 px block)."""
    try:
        h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as err:
        raise ReproError(f"image {width}x{height} is outside Qwen2.5-VL's limits ({err}); crop or pad it to an "
                         "aspect ratio below 200 (any size is then resized into [min_pixels, max_pixels])") from None
    return (h // factor) * (w // factor)


class QwenSignals(VisionSignals):
    """Vision signals of Qwen2.5-VL's ViT, which has no [CLS] token and mostly window attention.

    Substitute for [CLS] attention: the attention each merged token *receives* in a
    full-attention block (mean over all queries of the image, summed over the 2×2 patches that
    the merger fuses into the token); the default block is the last full-attention one.
    Keys are the block's key projections averaged over the token's 4 patches (before RoPE), and
    pre-projector features are the merger's input (the 4 normed patches concatenated).
    """

    def __init__(self, meta: dict[str, Tensor], hf, grid_thw: Tensor, hidden_states: tuple[Tensor, ...]):
        super().__init__(meta)
        self._visual = hf.model.visual
        self._grid = grid_thw
        self._hidden = hidden_states  # [b]: input of block b, in the tower's window order
        merge = self._visual.spatial_merge_size
        self._window_index, _ = get_vision_window_index(grid_thw, merge, self._visual.window_size,
                                                        self._visual.patch_size)
        self._unit = merge * merge

    def default_layer(self) -> int:
        return max(self._visual.fullatt_block_indexes)

    def _to_tokens(self, per_token: Tensor) -> Tensor:
        return per_token  # computed per token already

    def _block_input(self, layer: int) -> Tensor:
        return self._hidden[layer]  # captured in window order, like every block input

    def _to_window_order(self, x: Tensor) -> Tensor:
        return self._visual.permute_input_for_window_attn(x, self._window_index, x.shape[0])

    def _per_token(self, x: Tensor) -> Tensor:
        """Window-ordered patch rows -> (n_tokens, unit, ...) in the model's token order."""
        grouped = x.reshape(x.shape[0] // self._unit, self._unit, *x.shape[1:])
        return grouped[torch.argsort(self._window_index)]

    def _qk(self, layer: int) -> tuple[Tensor, Tensor]:
        block = self._visual.blocks[layer]
        x = block.norm1(self._block_input(layer))
        n, heads = x.shape[0], block.attn.num_heads
        q, k, _ = block.attn.qkv(x).reshape(n, 3, heads, -1).unbind(1)
        positions = get_vision_position_ids(self._grid, self._visual.spatial_merge_size)
        cos, sin = (self._to_window_order(t) for t in self._visual.rotary_pos_emb(x, positions))
        return apply_rotary_pos_emb_vision(q, k, cos, sin)

    def crop_cls_attention(self, layer: int | None) -> Tensor:
        layer = self.default_layer() if layer is None else layer
        if layer not in self._visual.fullatt_block_indexes:
            raise ValueError(f"block {layer} uses window attention; choose one of the full-attention blocks "
                             f"{list(self._visual.fullatt_block_indexes)}")
        q, k = self._qk(layer)
        scale = self._visual.blocks[layer].attn.scaling
        bounds = torch.cat([torch.zeros(1, dtype=torch.long), (self._grid.prod(-1)).cumsum(0)]).tolist()
        received = []
        for start, end in zip(bounds[:-1], bounds[1:]):  # full attention within each image
            qi, ki = q[start:end].transpose(0, 1).float(), k[start:end].transpose(0, 1).float()
            total = torch.zeros(ki.shape[0], ki.shape[1])
            for chunk in torch.split(torch.arange(qi.shape[1]), 1024):  # O(heads × 1024 × n) memory
                total += ((qi[:, chunk] @ ki.transpose(1, 2)) * scale).softmax(-1).sum(1)
            received.append((total / qi.shape[1]).T)  # (n_patches, heads)
        return self._per_token(torch.cat(received)).sum(1)  # (n_tokens, heads)

    def crop_keys(self, layer: int | None) -> Tensor:
        layer = self.default_layer() if layer is None else layer
        block = self._visual.blocks[layer]
        x = block.norm1(self._block_input(layer))
        keys = block.attn.qkv(x).reshape(x.shape[0], 3, -1)[:, 1]
        return self._per_token(keys).mean(1)

    def crop_pre_projector(self) -> Tensor:
        merger = self._visual.merger
        return self._per_token(merger.ln_q(self._hidden[-1])).flatten(1)

    @torch.inference_mode()
    def project(self, pre: Tensor) -> Tensor:
        mlp = self._visual.merger.mlp
        return mlp(pre.to(next(mlp.parameters()).dtype))


class QwenAdapter(Adapter):
    family = "qwen2.5-vl"

    def prepare(self, images, question: str) -> Prepared:
        low, high = pixel_bounds(self.processor.image_processor)
        for image in images:  # a clear error instead of the processor's, naming the limits
            qwen_visual_tokens(*image.size, min_pixels=low, max_pixels=high)
        return super().prepare(images, question)

    def full_positions(self, prepared: Prepared) -> Tensor:
        inputs = prepared.inputs
        positions, _ = self.hf.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                    image_grid_thw=inputs.get("image_grid_thw"))
        return positions[:, 0]

    def assemble(self, prepared: Prepared, visual: VisualTokens, *, positions: str = "original"):
        if positions != "original":
            raise ValueError("Qwen2.5-VL keeps original M-RoPE positions; resize the image to change the grid")
        return super().assemble(prepared, visual, positions=positions)

    def encode(self, prepared: Prepared) -> VisualTokens:
        grid = prepared.inputs["image_grid_thw"]
        out = self.hf.model.get_image_features(pixel_values=prepared.inputs["pixel_values"], image_grid_thw=grid,
                                               output_hidden_states=True, return_dict=True)
        merge = self.hf.config.vision_config.spatial_merge_size
        parts = []
        for i, (t, h, w) in enumerate(grid.tolist()):
            n, cols = t * (h // merge) * (w // merge), w // merge
            j = torch.arange(n)
            parts.append(torch.stack([torch.full_like(j, i), j, (j // cols) % (h // merge), j % cols], -1))
        image, patch, row, col = torch.cat(parts).unbind(-1)
        meta = {"index": torch.arange(image.numel()), "image": image, "crop": image.clone(), "patch": patch,
                "row": row, "col": col, "kind": torch.full_like(image, PATCH)}
        meta = {k: v.to(self.device) for k, v in meta.items()}
        return VisualTokens(torch.cat(list(out.pooler_output)), meta, QwenSignals(meta, self.hf, grid, out.hidden_states))
