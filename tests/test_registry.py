"""The model registry, architecture cards and the offline weight lookup."""

from __future__ import annotations

import pytest

from repro.errors import ReproError
from repro.models.cards import ArchCard
from repro.models.registry import FAMILIES, entries, get_entry, local_weights

NAMES = ["llava-1.5-7b", "llava-1.5-13b", "llava-next-7b", "llava-next-13b", "qwen2.5-vl-7b", "internvl3-8b"]

# MODELS.md section 0: layers, hidden, heads, kv heads, head dim, d_ff, vocab, d_q, d_kv, visual tokens
DECODERS = {
    "llava-1.5-7b": (32, 4096, 32, 32, 128, 11008, 32064, 4096, 4096, 576),
    "llava-1.5-13b": (40, 5120, 40, 40, 128, 13824, 32064, 5120, 5120, 576),
    "llava-next-7b": (32, 4096, 32, 32, 128, 11008, 32064, 4096, 4096, 2880),
    "llava-next-13b": (40, 5120, 40, 40, 128, 13824, 32064, 5120, 5120, 2880),
    "qwen2.5-vl-7b": (28, 3584, 28, 4, 128, 18944, 152064, 3584, 512, 1296),
    "internvl3-8b": (28, 3584, 28, 4, 128, 18944, 151674, 3584, 512, 3328),
}

# layers, hidden, heads, mlp, image size, patch, CLS, gated MLP, merge
VISION = {
    "llava-1.5-7b": (24, 1024, 16, 4096, 336, 14, True, False, 1),
    "llava-next-13b": (24, 1024, 16, 4096, 336, 14, True, False, 1),
    "qwen2.5-vl-7b": (32, 1280, 16, 3420, 1008, 14, False, True, 4),
    "internvl3-8b": (24, 1024, 16, 4096, 448, 14, True, False, 4),
}

HF_IDS = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "llava-next-7b": "llava-hf/llava-v1.6-vicuna-7b-hf",
    "llava-next-13b": "llava-hf/llava-v1.6-vicuna-13b-hf",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "internvl3-8b": "OpenGVLab/InternVL3-8B-hf",
}


def test_exactly_six_entries():
    assert [e.name for e in entries()] == NAMES
    assert {e.family for e in entries()} == set(FAMILIES)
    assert {e.name: e.hf_id for e in entries()} == HF_IDS


@pytest.mark.parametrize("name", NAMES)
def test_decoder_numbers(name):
    c = get_entry(name).card
    got = (c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim, c.mlp, c.vocab, c.d_q, c.d_kv, c.visual_tokens)
    assert got == DECODERS[name]


@pytest.mark.parametrize("name", sorted(VISION))
def test_vision_numbers(name):
    v = get_entry(name).card.vision
    got = (v.layers, v.hidden, v.heads, v.mlp, v.image_size, v.patch_size, v.has_cls, v.gated_mlp, v.merge)
    assert got == VISION[name]


def test_visual_token_geometry():
    assert get_entry("llava-1.5-7b").card.vision.llm_tokens == 576
    assert get_entry("llava-next-7b").card.visual_tokens == 5 * 576
    assert get_entry("qwen2.5-vl-7b").card.vision.llm_tokens == 1296
    assert get_entry("internvl3-8b").card.vision.llm_tokens == 256
    assert get_entry("internvl3-8b").card.vision.positions == 1025


def test_unknown_name_lists_known_names_sorted():
    with pytest.raises(ReproError) as err:
        get_entry("llava-2")
    message = str(err.value)
    assert "llava-2" in message
    assert ", ".join(sorted(NAMES)) in message


def test_entries_is_a_copy():
    first = entries()
    first.clear()
    assert len(entries()) == 6


# --- offline weight lookup -----------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_snapshot(cache, hf_id, files):
    repo = cache / ("models--" + hf_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name in files:
        (snap / name).write_text("x")
    return snap


def test_local_weights_absent(tmp_path):
    assert local_weights(get_entry("llava-1.5-7b"), cache_dir=tmp_path) is None


def test_local_weights_found(tmp_path):
    entry = get_entry("llava-1.5-7b")
    snap = _fake_snapshot(tmp_path, entry.hf_id, ["config.json", "model-00001-of-00003.safetensors"])
    assert local_weights(entry, cache_dir=tmp_path) == str(snap)
    assert local_weights(get_entry("llava-1.5-13b"), cache_dir=tmp_path) is None


def test_local_weights_needs_weight_files(tmp_path):
    entry = get_entry("qwen2.5-vl-7b")
    _fake_snapshot(tmp_path, entry.hf_id, ["config.json", "tokenizer.json"])
    assert local_weights(entry, cache_dir=tmp_path) is None


def test_local_weights_ignores_dangling_links(tmp_path):
    entry = get_entry("internvl3-8b")
    snap = _fake_snapshot(tmp_path, entry.hf_id, ["config.json"])
    (snap / "model.safetensors").symlink_to(tmp_path / "missing-blob")
    assert local_weights(entry, cache_dir=tmp_path) is None
    (snap / "pytorch_model.bin").write_text("x")
    assert local_weights(entry, cache_dir=tmp_path) == str(snap)


# --- cards from transformers configs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hf():
    import transformers

    return transformers


def _clip(hf):
    return hf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14
    )


def _llama(hf):
    return hf.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2,
    )


def _check_text(card, layers=4, kv_heads=2, head_dim=16):
    assert (card.layers, card.hidden, card.heads, card.kv_heads, card.head_dim, card.mlp, card.vocab) == (
        layers, 64, 4, kv_heads, head_dim, 128, 300,
    )


def test_card_from_tiny_llava(hf):
    card = ArchCard.from_hf_config(hf.LlavaConfig(vision_config=_clip(hf), text_config=_llama(hf)))
    _check_text(card)
    assert (card.d_q, card.d_kv) == (64, 32)
    v = card.vision
    assert (v.layers, v.hidden, v.heads, v.mlp, v.image_size, v.patch_size, v.has_cls) == (2, 32, 4, 64, 56, 14, True)
    assert card.visual_tokens == 16  # (56 / 14)^2, CLS dropped


def test_card_from_tiny_llava_next(hf):
    config = hf.LlavaNextConfig(
        vision_config=_clip(hf), text_config=_llama(hf), image_grid_pinpoints=[[56, 112], [112, 56], [112, 112]]
    )
    card = ArchCard.from_hf_config(config)
    _check_text(card)
    assert card.visual_tokens == (1 + 4) * 16  # base view + 2x2 crops, before unpad
    assert card.vision_units == 5


def test_card_from_tiny_qwen2_5_vl(hf):
    config = hf.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, window_size=56,
            fullatt_block_indexes=[1],
        ),
    )
    card = ArchCard.from_hf_config(config)
    _check_text(card, layers=3)
    v = card.vision
    assert (v.layers, v.hidden, v.heads, v.mlp, v.has_cls, v.gated_mlp) == (2, 32, 4, 48, False, True)
    assert (v.window, v.full_attention_blocks, v.merge, v.temporal_patch, v.projector_hidden) == (4, (1,), 4, 2, 128)
    assert card.visual_tokens == 1296  # reference resolution 1008 px


def test_card_from_tiny_internvl(hf):
    config = hf.InternVLConfig(
        vision_config=hf.InternVLVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=[56, 56],
            patch_size=[14, 14],
        ),
        text_config=hf.Qwen2Config(
            vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1,
        ),
    )
    card = ArchCard.from_hf_config(config)
    _check_text(card, layers=2, kv_heads=1)
    assert (card.vision.image_size, card.vision.patch_size, card.vision.merge) == (56, 14, 4)
    assert card.visual_tokens == 13 * 4  # 16 patches -> 4 tokens per tile, 12 tiles + thumbnail


def test_card_from_default_configs_matches_registry(hf):
    """Default LlavaConfig is LLaVA-1.5-7B up to the vocab; InternVL's vision default is InternViT-300M."""
    reg = get_entry("llava-1.5-7b").card
    card = ArchCard.from_hf_config(hf.LlavaConfig())
    assert (card.layers, card.hidden, card.heads, card.kv_heads, card.head_dim, card.mlp) == (
        reg.layers, reg.hidden, reg.heads, reg.kv_heads, reg.head_dim, reg.mlp,
    )
    assert card.visual_tokens == reg.visual_tokens
    numeric = ("layers", "hidden", "heads", "mlp", "image_size", "patch_size", "has_cls", "merge")
    assert [getattr(card.vision, f) for f in numeric] == [getattr(reg.vision, f) for f in numeric]
    ivl = ArchCard.from_hf_config(hf.InternVLConfig())
    reg_ivl = get_entry("internvl3-8b").card
    assert [getattr(ivl.vision, f) for f in numeric] == [getattr(reg_ivl.vision, f) for f in numeric]
    assert ivl.visual_tokens == reg_ivl.visual_tokens


def test_unsupported_config_is_user_error():
    class Fake:
        model_type = "blip-2"

    with pytest.raises(ReproError, match="internvl, llava, llava_next, qwen2_5_vl"):
        ArchCard.from_hf_config(Fake())
