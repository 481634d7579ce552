"""repro.load: registry names, local directories, random weights, and the errors a user can cause."""

from __future__ import annotations

import pytest
import torch

import repro
from repro.errors import ReproError
from repro.models.cards import ArchCard
from repro.models.registry import get_entry

from conftest import make_image


def test_tiny_models_are_deterministic():
    a, b = repro.load("tiny-llava-1.5"), repro.load("tiny-llava-1.5")
    for (name, pa), (_, pb) in zip(a.hf.named_parameters(), b.hf.named_parameters()):
        assert torch.equal(pa, pb), name
    assert a.tokenizer("USER: <image>\nWhat?")["input_ids"] == b.tokenizer("USER: <image>\nWhat?")["input_ids"]


def test_save_pretrained_round_trip_through_from_pretrained(tmp_path, tiny_models):
    model = tiny_models["tiny-llava-next"]["sdpa"]
    model.hf.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    loaded = repro.load(str(tmp_path))
    image = make_image(0)
    a = model.generate(image, "What is it?", max_new_tokens=4)
    b = loaded.generate(image, "What is it?", max_new_tokens=4)
    assert loaded.family == "llava-next" and a.prompt == b.prompt
    assert (a.first_token_logprobs - b.first_token_logprobs).abs().max() < 1e-6 and a.tokens == b.tokens


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ReproError) as err:
        repro.load("llava-2-7b")
    for name in ("llava-1.5-7b", "llava-next-13b", "qwen2.5-vl-7b", "internvl3-8b", "tiny-llava-1.5"):
        assert name in str(err.value)


def test_directory_without_weights_names_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ReproError, match=r"weights \(\*\.safetensors.*hf download"):
        repro.load(str(tmp_path))


def test_hub_id_that_is_not_cached_fails_clearly_offline():
    # conftest sets HF_HUB_OFFLINE=1 before any hub library is imported
    with pytest.raises(ReproError, match="hf download llava-hf/llava-1.5-7b-hf"):
        repro.load("llava-1.5-7b")


@pytest.mark.parametrize("name, params", [("llava-1.5-7b", 7.06e9), ("llava-1.5-13b", 13.35e9),
                                          ("llava-next-7b", 7.06e9), ("llava-next-13b", 13.35e9),
                                          ("qwen2.5-vl-7b", 8.29e9), ("internvl3-8b", 7.94e9)])
def test_random_weights_build_the_real_architecture(name, params):
    model = repro.load(name, random_weights=True, device="meta")
    n = sum(p.numel() for p in model.hf.parameters())
    assert abs(n - params) / params < 0.01
    card, entry = ArchCard.from_hf_config(model.hf.config), get_entry(name).card
    for field in ("layers", "hidden", "heads", "kv_heads", "head_dim", "mlp", "vocab"):
        assert getattr(card, field) == getattr(entry, field), field
    assert card.vision.layers == entry.vision.layers and card.vision.image_size == entry.vision.image_size


def test_bad_protocol_is_a_clear_error():
    with pytest.raises(ReproError, match="protocol"):
        repro.load("tiny-llava-1.5", protocol="fixed")
