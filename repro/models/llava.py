"""LLaVA-1.5 and LLaVA-NeXT adapters (CLIP vision tower, Llama/Vicuna decoder)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

from repro.models.adapter import LAYOUT, PATCH, Adapter, Prepared, VisionSignals, VisualTokens


class ClipSignals(VisionSignals):
    """[CLS] attention, keys and pre-projector features from the CLIP tower's hidden states.

    `hidden_states[j]` is the input of vision layer j; the default layer is the one whose output
    LLaVA reads (`vision_feature_layer`, -2 for the released checkpoints).
    """

    def __init__(self, meta: dict[str, Tensor], hf, hidden_states: tuple[Tensor, ...],
                 grid: dict[str, Tensor] | None = None):
        super().__init__(meta)
        self._projector = hf.model.multi_modal_projector
        self._grid = grid  # LLaVA-NeXT: every crop patch's coordinates on the stitched grid
        tower = hf.model.vision_tower.vision_model if hasattr(hf.model.vision_tower, "vision_model") else hf.model.vision_tower
        self._encoder, self._post_layernorm = tower.encoder, tower.post_layernorm
        self._hidden = hidden_states
        self._feature_layer = hf.config.vision_feature_layer

    def default_layer(self) -> int:
        f = self._feature_layer
        return len(self._encoder.layers) + f if f < 0 else f - 1

    def _normed(self, layer: int | None) -> tuple[Tensor, torch.nn.Module]:
        layer = self.default_layer() if layer is None else layer
        block = self._encoder.layers[layer]
        return block.layer_norm1(self._hidden[layer]), block.self_attn

    def crop_cls_attention(self, layer: int | None) -> Tensor:
        x, attn = self._normed(layer)
        n, length, _ = x.shape
        q = attn.q_proj(x[:, :1]).view(n, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(n, length, attn.num_heads, attn.head_dim).transpose(1, 2)
        probs = ((q.float() @ k.float().transpose(-1, -2)) * attn.scale).softmax(-1)[:, :, 0, 1:]
        return probs.transpose(1, 2)

    def crop_keys(self, layer: int | None) -> Tensor:
        x, attn = self._normed(layer)
        return attn.k_proj(x)[:, 1:]

    def crop_pre_projector(self) -> Tensor:
        return self._hidden[self._feature_layer][:, 1:]

    def crop_cls_feature(self) -> Tensor:
        return self._hidden[self._feature_layer][:, 0]

    def crop_cls_attention_one_head(self, layer: int | None) -> Tensor:
        """PruMerge+'s score: one softmax of q_[CLS]·k / sqrt(width) over the full width of the
        layer's query/key projections (not the model's heads), [CLS] column dropped."""
        x, attn = self._normed(layer)
        q, k = attn.q_proj(x[:, :1]).float(), attn.k_proj(x).float()
        return ((q @ k.transpose(-1, -2)) / k.shape[-1] ** 0.5).softmax(-1)[:, 0, 1:]

    def crop_grid_meta(self) -> dict[str, Tensor]:
        return self._grid if self._grid is not None else super().crop_grid_meta()

    @torch.inference_mode()
    def post_norm(self, pre: Tensor) -> Tensor:
        """In fp32 whatever the tower's dtype: TRIM's and CDPruner's references cast the features
        to fp32 for this step, and their CLIP towers run in fp32."""
        norm = self._post_layernorm
        return torch.nn.functional.layer_norm(pre.float(), norm.normalized_shape, norm.weight.float(),
                                              norm.bias.float(), norm.eps)

    @torch.inference_mode()
    def project(self, pre: Tensor) -> Tensor:
        return self._projector(pre.to(next(self._projector.parameters()).dtype))


def _check_strategy(hf) -> None:
    if hf.config.vision_feature_select_strategy != "default":
        raise ValueError("only vision_feature_select_strategy='default' (CLS dropped) is supported")


class Llava15Adapter(Adapter):
    """LLaVA-1.5: a fixed grid of (image_size/patch)² tokens per image."""

    family = "llava-1.5"

    def encode(self, prepared: Prepared) -> VisualTokens:
        _check_strategy(self.hf)
        out = self.hf.model.get_image_features(
            pixel_values=prepared.inputs["pixel_values"], output_hidden_states=True, return_dict=True)
        per_image = list(out.pooler_output)
        n_images, n_patches = len(per_image), per_image[0].shape[0]
        side = math.isqrt(n_patches)
        patch = torch.arange(n_patches).repeat(n_images)
        image = torch.arange(n_images).repeat_interleave(n_patches)
        meta = {
            "index": torch.arange(n_images * n_patches), "image": image, "crop": image.clone(),
            "patch": patch, "row": patch // side, "col": patch % side,
            "kind": torch.full((n_images * n_patches,), PATCH),
        }
        meta = {k: v.to(self.device) for k, v in meta.items()}
        return VisualTokens(torch.cat(per_image), meta, ClipSignals(meta, self.hf, out.hidden_states))


class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT: base view + anyres tiles, unpadded, with a newline token after every row.

    Metadata is obtained by running the model's own `pack_image_features` on a tensor of
    coordinates instead of features, so it follows exactly the packing the model applies.
    """

    family = "llava-next"

    def encode(self, prepared: Prepared) -> VisualTokens:
        _check_strategy(self.hf)
        sizes = prepared.inputs["image_sizes"]
        out = self.hf.model.get_image_features(
            pixel_values=prepared.inputs["pixel_values"], image_sizes=sizes, output_hidden_states=True, return_dict=True)
        per_image = list(out.pooler_output)
        meta, grid = self._metadata(sizes, [p.shape[0] for p in per_image])
        return VisualTokens(torch.cat(per_image), meta, ClipSignals(meta, self.hf, out.hidden_states, grid))

    def _metadata(self, sizes: Tensor, lengths: list[int]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-token metadata of the packed sequence, and of every crop patch before unpadding."""
        cfg = self.hf.config
        tile = cfg.vision_config.image_size
        side = tile // cfg.vision_config.patch_size
        patch = torch.arange(side * side)
        coords, first_crop = [], 0
        for size in sizes:
            grid_h, grid_w = get_anyres_image_grid_shape(size.tolist(), cfg.image_grid_pinpoints, tile)
            n_crops = 1 + grid_h * grid_w
            crops = []
            for c in range(n_crops):
                ti, tj = divmod(c - 1, grid_w) if c else (0, 0)
                row = patch // side + ti * side
                col = patch % side + tj * side
                crops.append(torch.stack([torch.full_like(patch, first_crop + c), patch, row, col], -1))
            coords.append(torch.stack(crops).float())
            first_crop += n_crops
        newline = torch.full((4,), -1.0)
        packed, _ = self.hf.model.pack_image_features(coords, sizes.cpu(), "default", image_newline=newline)
        flat = torch.cat(packed).long()
        if flat.shape[0] != sum(lengths):
            raise AssertionError("metadata packing disagrees with the model's feature packing")
        crop, patch_idx, row, col = flat.unbind(-1)
        kind = torch.where(crop < 0, LAYOUT, PATCH)
        # A newline ends a row: give it that row's index.
        row = row.clone()
        for i in (kind == LAYOUT).nonzero().flatten().tolist():
            row[i] = row[i - 1] if i else 0
        image = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
        meta = {"index": torch.arange(flat.shape[0]), "image": image, "crop": crop, "patch": patch_idx,
                "row": row, "col": col, "kind": kind}
        every = torch.cat([c.flatten(0, 1) for c in coords]).long()
        grid = dict(zip(("crop", "patch", "row", "col"), every.unbind(-1)))
        grid["image"] = torch.cat([torch.full((c.shape[0] * c.shape[1],), i) for i, c in enumerate(coords)])
        return ({k: v.to(self.device) for k, v in meta.items()}, {k: v.to(self.device) for k, v in grid.items()})


def fixed_grid_pinpoints(hf) -> list[list[int]]:
    """The VisPruner/CDPruner protocol: one 2×2 tile grid (672×672 for the real models), 5 views."""
    tile = hf.config.vision_config.image_size
    return [[2 * tile, 2 * tile]]
