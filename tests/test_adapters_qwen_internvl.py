"""Qwen2.5-VL and InternVL3 adapters: prompts, positions, metadata, signals and image limits."""

from __future__ import annotations

import pytest
import torch
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

import repro
from repro.errors import ReproError
from repro.models.qwen import pixel_bounds, qwen_visual_tokens

from conftest import make_image


def test_prompts_follow_each_familys_chat_format(tiny_models):
    qwen = tiny_models["tiny-qwen2.5-vl"]["sdpa"].generate(make_image(0), "What?", max_new_tokens=1).prompt
    assert qwen == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n<|im_start|>assistant\n")
    internvl = tiny_models["tiny-internvl3"]["sdpa"].generate(make_image(0), "What?", max_new_tokens=1).prompt
    assert internvl == "<|im_start|>user\n<IMG_CONTEXT>\nWhat?<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------- Qwen2.5-VL

def test_qwen_positions_are_the_models_own_3d_positions(tiny_models):
    model = tiny_models["tiny-qwen2.5-vl"]["sdpa"]
    prepared = model.prepare(make_image(1, (150, 90)), "Where?")
    visual = model.encode(prepared)
    seq = model.assemble(prepared, visual)
    assert seq.positions.shape == (3, seq.n_tokens)
    rows, cols = visual.meta["row"], visual.meta["col"]
    t, h, w = seq.positions[:, seq.visual]
    assert torch.equal(h - h.min(), rows) and torch.equal(w - w.min(), cols) and (t == t[0]).all()
    part = model.assemble(prepared, visual.select(torch.tensor([0, 7, 14])))
    assert torch.equal(part.positions[:, part.visual], seq.positions[:, seq.visual[[0, 7, 14]]])
    assert torch.equal(part.positions[:, -1], seq.positions[:, -1])  # text keeps its 3-D position
    with pytest.raises(ValueError, match="original M-RoPE"):
        model.assemble(prepared, visual, positions="contiguous")


@pytest.mark.parametrize("size", [(150, 90), (60, 200), (300, 300)])
def test_qwen_token_count_follows_the_processor_bounds(size):
    model = repro.load("tiny-qwen2.5-vl", min_pixels=8 * 28 * 28, max_pixels=20 * 28 * 28)
    assert pixel_bounds(model.processor.image_processor) == (8 * 28 * 28, 20 * 28 * 28)
    prepared = model.prepare(make_image(0, size), "?")
    n = int((prepared.input_ids == model.adapter.image_token_id).sum())
    assert n == qwen_visual_tokens(*size, min_pixels=8 * 28 * 28, max_pixels=20 * 28 * 28)
    assert 8 <= n <= 20


def test_qwen_image_outside_the_limits_is_a_clear_error(tiny_models):
    model = tiny_models["tiny-qwen2.5-vl"]["sdpa"]
    with pytest.raises(ReproError, match="outside Qwen2.5-VL's limits"):
        model.generate(make_image(0, (250, 1)), "?")  # aspect ratio 250 > the processor's 200
    with pytest.raises(ReproError, match="min_pixels <= max_pixels"):
        repro.load("tiny-qwen2.5-vl", min_pixels=5000, max_pixels=1000)


def test_qwen_signals_are_computed_on_the_blocks_real_inputs(tiny_models):
    """Rebuilding block b from the signal's inputs reproduces the tower's next hidden state, so the
    window order, RoPE and block inputs the signal uses are the model's own."""
    model = tiny_models["tiny-qwen2.5-vl"]["sdpa"]
    prepared = model.prepare([make_image(2, (150, 90)), make_image(3, (90, 120))], "?")
    visual = model.encode(prepared)
    signals, tower = visual.signals, model.hf.model.visual
    grid = prepared.inputs["image_grid_thw"]
    for block in range(len(tower.blocks)):
        x = signals._block_input(block)
        positions = get_vision_position_ids(grid, 2)
        rope = tuple(signals._to_window_order(t) for t in tower.rotary_pos_emb(x, positions))
        if block in tower.fullatt_block_indexes:
            cu, _ = get_vision_attention_seqlens(grid, tower.config)
        else:
            _, cu = get_vision_window_index(grid, 2, tower.window_size, tower.patch_size)
        with torch.inference_mode():
            out = tower.blocks[block](x, cu_seqlens=cu, position_embeddings=rope)
        assert (out - signals._hidden[block + 1]).abs().max() < 1e-5
    received = signals.cls_attention()
    for image in range(2):  # each query row sums to 1, so the mean received mass sums to 1 per image
        assert abs(float(received[visual.meta["image"] == image].sum()) - 1) < 1e-4
    with torch.inference_mode():
        assert (tower.merger.mlp(signals.pre_projector()) - visual.features).abs().max() < 1e-5
    assert signals.keys().shape == (len(visual), tower.config.hidden_size)
    with pytest.raises(ValueError, match="window attention"):
        signals.cls_attention(layer=0)


# ------------------------------------------------------------------------------------ InternVL3

@pytest.mark.parametrize("size, tiles", [((56, 56), 1), ((150, 90), 7), ((60, 130), 3)])
def test_internvl_tiles_and_metadata(tiny_models, size, tiles):
    model = tiny_models["tiny-internvl3"]["sdpa"]
    prepared = model.prepare(make_image(0, size), "?")
    visual = model.encode(prepared)
    assert prepared.inputs["pixel_values"].shape[0] == tiles
    per_tile = model.hf.config.image_seq_length
    assert len(visual) == tiles * per_tile and int(visual.meta["crop"].max()) == tiles - 1
    side = int(per_tile ** 0.5)
    assert torch.equal(visual.meta["row"] * side + visual.meta["col"], visual.meta["patch"])


def test_internvl_cls_attention_equals_the_towers_weights(tiny_models):
    model = tiny_models["tiny-internvl3"]["eager"]
    prepared = model.prepare(make_image(4, (150, 90)), "?")
    visual = model.encode(prepared)
    with torch.inference_mode():
        out = model.hf.model.vision_tower(pixel_values=prepared.inputs["pixel_values"], output_attentions=True)
        projected = model.hf.model.multi_modal_projector(visual.signals.pre_projector())
    cls_row = out.attentions[-1][:, :, 0, 1:]  # (tiles, heads, patches), last layer = the one read
    side = int(cls_row.shape[-1] ** 0.5)
    grid = cls_row.reshape(*cls_row.shape[:2], side, side)
    # the 2x2 neighbourhood of patches behind each token, summed, in token order
    pooled = grid.reshape(*grid.shape[:2], side // 2, 2, side // 2, 2).sum((3, 5)).flatten(2).mean(1)
    assert (visual.signals.cls_attention() - pooled.flatten()).abs().max() < 1e-5
    assert (projected - visual.features).abs().max() < 1e-5


def test_internvl_tile_bounds_are_options_and_checked():
    model = repro.load("tiny-internvl3", max_tiles=2)
    assert model.prepare(make_image(0, (150, 90)), "?").inputs["pixel_values"].shape[0] == 3  # 2 tiles + thumbnail
    with pytest.raises(ReproError, match="1 <= min_tiles <= max_tiles"):
        repro.load("tiny-internvl3", max_tiles=0)
    with pytest.raises(ReproError, match="unknown option"):
        repro.load("tiny-internvl3", max_pixels=100)
