"""InternVL3 adapter (transformers-native `-hf` checkpoints): 448-px tiles + thumbnail, InternViT,
pixel shuffle 0.5 (2×2 patches -> one LLM token, 256 tokens per tile), Qwen2 decoder."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import GotOcr2ImageProcessorPil, InternVLProcessor

from repro.errors import ReproError
from repro.models.adapter import PATCH, Adapter, Prepared, VisionSignals, VisualTokens

MAX_TILES_LIMIT = 40  # far beyond the 12 the released model was trained with


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """The stock processor without its video slot, which needs torchvision (ECOSYSTEM §3.4)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def internvl_image_processor(tile: int, *, min_tiles: int = 1, max_tiles: int = 12) -> GotOcr2ImageProcessorPil:
    """Dynamic tiling as InternVL3 does it: the tile grid closest to the image's aspect ratio with
    min_tiles ≤ tiles ≤ max_tiles, plus a thumbnail when there is more than one tile."""
    if not 1 <= min_tiles <= max_tiles <= MAX_TILES_LIMIT:
        raise ReproError(f"tile counts must satisfy 1 <= min_tiles <= max_tiles <= {MAX_TILES_LIMIT}; "
                         f"got min_tiles={min_tiles}, max_tiles={max_tiles} (InternVL3 uses 1 and 12)")
    return GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                    min_patches=min_tiles, max_patches=max_tiles,
                                    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def _shuffle_groups(model, side: int) -> Tensor:
    """(tokens_per_tile, 4): the patch indices the model's own pixel shuffle fuses into each token."""
    coords = torch.arange(side * side, dtype=torch.float32).view(1, side, side, 1)
    shuffled = model.pixel_shuffle(coords, scale_factor=model.config.downsample_ratio)
    return shuffled.reshape(-1, shuffled.shape[-1]).long()


class InternViTSignals(VisionSignals):
    """[CLS] attention, keys and pre-projector features of InternViT, per LLM token.

    The [CLS] attention of a token is the attention the [CLS] query pays to the 4 patches the
    pixel shuffle fuses into that token (summed); keys are averaged over those 4 patches. The
    default layer is the one whose output the model reads (`vision_feature_layer`, the last).
    """

    def __init__(self, meta: dict[str, Tensor], hf, hidden_states: tuple[Tensor, ...], features: Tensor):
        super().__init__(meta)
        self._model = hf.model
        self._projector = hf.model.multi_modal_projector
        self._hidden = hidden_states  # [j]: input of vision layer j
        self._features = features  # the vision features the model reads (CLS included)
        self._feature_layer = hf.config.vision_feature_layer
        side = int((hidden_states[0].shape[1] - 1) ** 0.5)
        self._groups = _shuffle_groups(hf.model, side).to(hidden_states[0].device)

    def default_layer(self) -> int:
        n = len(self._model.vision_tower.encoder.layer)
        return n + self._feature_layer if self._feature_layer < 0 else self._feature_layer - 1

    def _qk(self, layer: int | None) -> tuple[Tensor, Tensor, int]:
        layer = self.default_layer() if layer is None else layer
        block = self._model.vision_tower.encoder.layer[layer]
        attn = block.attention
        x = block.layernorm_before(self._hidden[layer])
        q, k = attn.q_norm(attn.q_proj(x[:, :1])), attn.k_norm(attn.k_proj(x))
        return q, k, attn.num_heads

    def crop_cls_attention(self, layer: int | None) -> Tensor:
        q, k, heads = self._qk(layer)
        n, length, dim = k.shape
        q = q.view(n, 1, heads, -1).transpose(1, 2).float()
        k = k.view(n, length, heads, -1).transpose(1, 2).float()
        probs = ((q @ k.transpose(-1, -2)) * (dim // heads) ** -0.5).softmax(-1)[:, :, 0, 1:]  # (n, heads, P)
        return probs[:, :, self._groups].sum(-1).transpose(1, 2)  # (n, tokens, heads)

    def crop_keys(self, layer: int | None) -> Tensor:
        _, k, _ = self._qk(layer)
        return k[:, 1:][:, self._groups].mean(2)

    def crop_pre_projector(self) -> Tensor:
        x = self._features[:, 1:]
        side = int(x.shape[1] ** 0.5)
        shuffled = self._model.pixel_shuffle(x.reshape(x.shape[0], side, side, -1),
                                             scale_factor=self._model.config.downsample_ratio)
        return shuffled.reshape(x.shape[0], -1, shuffled.shape[-1])

    @torch.inference_mode()
    def project(self, pre: Tensor) -> Tensor:
        return self._projector(pre.to(next(self._projector.parameters()).dtype))


class InternVLAdapter(Adapter):
    family = "internvl3"

    def encode(self, prepared: Prepared) -> VisualTokens:
        cfg = self.hf.config
        if cfg.vision_feature_select_strategy != "default":
            raise ValueError("only vision_feature_select_strategy='default' (CLS dropped) is supported")
        out = self.hf.model.get_image_features(
            pixel_values=prepared.inputs["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, output_hidden_states=True,
            return_dict=True)
        features = out.pooler_output  # (tiles, tokens per tile, d)
        n_tiles, per_tile = features.shape[:2]
        side = int(per_tile ** 0.5)
        tiles = self._tiles_per_image(prepared, per_tile)
        if sum(tiles) != n_tiles:
            raise AssertionError("tile count disagrees with the prompt's image placeholders")
        crop = torch.arange(n_tiles).repeat_interleave(per_tile)
        patch = torch.arange(per_tile).repeat(n_tiles)
        meta = {"index": torch.arange(n_tiles * per_tile),
                "image": torch.arange(len(tiles)).repeat_interleave(torch.tensor(tiles) * per_tile),
                "crop": crop, "patch": patch, "row": patch // side, "col": patch % side,
                "kind": torch.full_like(crop, PATCH)}
        selected = out.last_hidden_state if cfg.vision_feature_layer == -1 else out.hidden_states[cfg.vision_feature_layer]
        meta = {k: v.to(self.device) for k, v in meta.items()}
        signals = InternViTSignals(meta, self.hf, out.hidden_states, selected)
        return VisualTokens(features.flatten(0, 1), meta, signals)

    def encoding_extras(self, inputs: dict[str, Tensor]) -> tuple:
        return tuple(self._placeholders_per_image(inputs["input_ids"][0]))

    def _placeholders_per_image(self, ids: Tensor) -> list[int]:
        starts = (ids == self.processor.start_image_token_id).nonzero().flatten()
        ends = (ids == self.processor.end_image_token_id).nonzero().flatten()
        return [int((ids[s:e] == self.image_token_id).sum()) for s, e in zip(starts, ends)]

    def _tiles_per_image(self, prepared: Prepared, per_tile: int) -> list[int]:
        return [n // per_tile for n in self._placeholders_per_image(prepared.input_ids)]
