"""LLaVA-1.5 / LLaVA-NeXT adapters: prompts, visual-token metadata and vision-side signals."""

from __future__ import annotations

import pytest
import torch

import repro
from repro.models.adapter import LAYOUT, PATCH

from conftest import make_image

LLAVA = ["tiny-llava-1.5", "tiny-llava-next"]


@pytest.mark.parametrize("name", LLAVA)
def test_prompt_is_the_llava_hf_chat_format(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    result = model.generate(make_image(0), "What is shown?", max_new_tokens=1)
    assert result.prompt == "USER: <image>\nWhat is shown? ASSISTANT:"


@pytest.mark.parametrize("name", LLAVA)
def test_projector_of_pre_projector_features_gives_the_tokens(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    prepared = model.prepare(make_image(1, (130, 60)), "Where?")
    visual = model.encode(prepared)
    patches = visual.patches
    with torch.inference_mode():
        projected = model.hf.model.multi_modal_projector(visual.signals.pre_projector()[patches])
    assert (projected - visual.features[patches]).abs().max() < 1e-5
    assert torch.equal(visual.meta["index"], torch.arange(len(visual)))
    assert len(visual) == int((prepared.input_ids == model.hf.config.image_token_id).sum())


@pytest.mark.parametrize("name", LLAVA)
def test_cls_attention_equals_the_vision_towers_own_weights(tiny_models, name):
    model = tiny_models[name]["eager"]
    prepared = model.prepare(make_image(2, (70, 140)), "Where?")
    visual = model.encode(prepared)
    pixels = prepared.inputs["pixel_values"]
    pixels = pixels.flatten(0, 1) if pixels.dim() == 5 else pixels
    with torch.inference_mode():
        out = model.hf.model.vision_tower(pixels, output_attentions=True)
    layer = visual.signals.default_layer()
    assert layer == len(out.attentions) - 2  # the layer whose output LLaVA reads (feature layer -2)
    per_crop = out.attentions[layer][:, :, 0, 1:]  # (crops, heads, patches)
    crop, patch = visual.meta["crop"], visual.meta["patch"]
    is_patch = visual.meta["kind"] == PATCH
    expected = per_crop.mean(1)[crop[is_patch], patch[is_patch]]
    got = visual.signals.cls_attention()
    assert (got[is_patch] - expected).abs().max() < 1e-5
    assert (got[~is_patch] == 0).all()
    assert (visual.signals.cls_attention(reduce="max")[is_patch] - per_crop.amax(1)[crop[is_patch], patch[is_patch]]).abs().max() < 1e-5
    assert visual.signals.cls_attention(reduce="none").shape == (len(visual), per_crop.shape[1])
    assert visual.signals.keys().shape == (len(visual), model.hf.config.vision_config.hidden_size)


def test_llava15_metadata_is_a_row_major_grid(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    meta = model.encode(model.prepare(make_image(0), "?")).meta
    side = 8  # 112 px / 14
    assert torch.equal(meta["row"] * side + meta["col"], meta["patch"])
    assert (meta["kind"] == PATCH).all() and (meta["crop"] == 0).all()


@pytest.mark.parametrize("size", [(120, 90), (60, 130), (64, 64), (200, 40)])
def test_llava_next_metadata_follows_the_models_packing(tiny_models, size):
    model = tiny_models["tiny-llava-next"]["sdpa"]
    visual = model.encode(model.prepare(make_image(3, size), "?"))
    meta, side = visual.meta, 4  # 56 px / 14
    base = meta["crop"] == 0
    assert base[: side * side].all() and base.sum() == side * side  # the base view comes first
    tiles = (meta["crop"] > 0)
    grid_w = int(meta["col"][tiles].max()) // side + 1
    expected_crop = 1 + (meta["row"] // side) * grid_w + meta["col"] // side
    assert torch.equal(meta["crop"][tiles], expected_crop[tiles])
    assert torch.equal(meta["patch"][tiles], ((meta["row"] % side) * side + meta["col"] % side)[tiles])
    newline = meta["kind"] == LAYOUT
    assert (visual.features[newline] == model.hf.model.image_newline.to(visual.features)).all()
    # one newline closes every row of the stitched (unpadded) tile grid, right after it
    rows = meta["row"][tiles].unique()
    assert int(newline.sum()) == rows.numel()
    after = torch.nonzero(newline).flatten() - 1
    assert (meta["row"][after] == meta["row"][newline]).all()


def test_llava_next_fixed_protocol_uses_five_views():
    model = repro.load("tiny-llava-next", protocol="fixed")
    for size in [(120, 90), (60, 130), (64, 64)]:
        prepared = model.prepare(make_image(0, size), "?")
        assert prepared.inputs["pixel_values"].shape[1] == 5
        visual = model.encode(prepared)
        assert int(visual.meta["crop"].max()) == 4
        result = model.generate(make_image(0, size), "?", max_new_tokens=2)
        with torch.inference_mode():
            ref = model.hf(**prepared.inputs).logits[0, -1].float().log_softmax(-1)
        assert (result.first_token_logprobs - ref).abs().max() < 1e-5


def test_assemble_keeps_original_positions_of_a_subset(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    prepared = model.prepare(make_image(0), "Is it red?")
    visual = model.encode(prepared)
    full = model.assemble(prepared, visual)
    keep = torch.tensor([3, 10, 40, 63])
    part = model.assemble(prepared, visual.select(keep))
    assert part.n_tokens == full.n_tokens - len(visual) + 4
    assert torch.equal(part.positions[part.visual], full.positions[full.visual][keep])
    assert torch.equal(part.embeds[part.visual], full.embeds[full.visual][keep])
    assert torch.equal(part.positions[-1], full.positions[-1])  # text keeps its original position
    contiguous = model.assemble(prepared, visual.select(keep), positions="contiguous")
    assert torch.equal(contiguous.positions, torch.arange(part.n_tokens))
