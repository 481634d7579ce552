"""The shipped `tinyworld-llava` checkpoint: checksums at load, from_pretrained round trip, shape
of the model the methods see, and accuracy falling as random visual tokens are removed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import repro
from repro import tinyworld as tw
from repro.errors import ReproError
from repro.models import shipped
from repro.tinyworld.weights import verify_checksums

WEIGHTS = shipped.SHIPPED["tinyworld-llava"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return repro.load("tinyworld-llava")


def test_shipped_files_are_small_and_checksummed():
    files = {p.name: p.stat().st_size for p in WEIGHTS.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "SHA256SUMS", "train_record.json"} <= set(files)
    assert sum(files.values()) <= 20 * 2**20
    verify_checksums(WEIGHTS)


def test_training_defaults_are_the_shipped_recipe():
    """`python -m repro.tinyworld train --out DIR` with no options retrains what ships; options
    added since (absent from the record) default to off."""
    from dataclasses import asdict

    from repro.tinyworld.train import TrainConfig

    shipped_cfg = json.loads((WEIGHTS / "train_record.json").read_text())["config"]
    defaults = asdict(TrainConfig())
    assert {k: defaults[k] for k in shipped_cfg} == shipped_cfg
    assert not any(defaults[k] for k in defaults.keys() - shipped_cfg.keys())


def test_looks_like_llava_15(model):
    cfg = model.hf.config
    assert type(model.hf).__name__ == "LlavaForConditionalGeneration"
    assert cfg.vision_config.model_type == "clip_vision_model" and cfg.text_config.model_type == "llama"
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 == 144 == cfg.image_seq_length
    assert model.hf.dtype == torch.float32  # fp16 on disk, upcast at load
    prepared = model.prepare(_blank(), "Is there a red circle in the image?")
    assert prepared.prompt.startswith("USER: <image>\nIs there") and prepared.prompt.endswith(" ASSISTANT:")
    assert int((prepared.input_ids == cfg.image_token_id).sum()) == 144


def _blank():
    from PIL import Image

    return Image.new("RGB", (tw.IMAGE_SIZE, tw.IMAGE_SIZE), (240, 240, 240))


def test_from_pretrained_round_trip(model, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model.hf.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    inputs = processor(images=[_blank()], text=model.prepare(_blank(), "What color is the star?").prompt,
                       return_tensors="pt")
    with torch.no_grad():
        a, b = model.hf(**inputs).logits, again(**inputs).logits
    assert torch.equal(a, b)
    assert processor.tokenizer.chat_template == model.processor.tokenizer.chat_template


@pytest.mark.parametrize("damage", ["corrupt", "missing", "no_sums"])
def test_damaged_checkpoint_is_refused_with_the_fix(tmp_path, monkeypatch, damage):
    copy = tmp_path / "tinyworld-llava"
    shutil.copytree(WEIGHTS, copy)
    if damage == "corrupt":
        with open(copy / "model.safetensors", "r+b") as f:
            f.seek(-100, 2)
            byte = f.read(1)
            f.seek(-100, 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "missing":
        (copy / "tokenizer.json").unlink()
    else:
        (copy / "SHA256SUMS").unlink()
    monkeypatch.setitem(shipped.SHIPPED, "tinyworld-llava", copy)
    with pytest.raises(ReproError) as err:
        repro.load("tinyworld-llava")
    msg = str(err.value)
    assert "python -m repro.tinyworld train --out" in msg
    if damage != "no_sums":
        assert ("model.safetensors (checksum mismatch)" if damage == "corrupt" else "tokenizer.json (missing)") in msg


def test_unknown_name_lists_tinyworld_llava():
    with pytest.raises(ReproError, match="tinyworld-llava"):
        repro.load("tinyworld-lava")


@pytest.fixture(scope="module")
def val_rows(tmp_path_factory):
    """Validation rows of yes/no and short-answer tasks, with their lmms-eval prompts: 48 a task, so
    192 (at 24 a task the greedy accuracy's sampling error, about 0.05, was as large as the effects
    asked for)."""
    from repro.tinyworld.train import task_objects

    data = tmp_path_factory.mktemp("tw_val")
    keys = ["pope", "vqav2", "gqa", "easyvqa"]
    tw.build(data, seed=0, sizes=tw.SplitSizes(train=2, validation=48, test=2), tasks=keys)
    tasks = task_objects(data, keys)
    rows = []
    for key in keys:
        for doc in tw.load_split(data, key, "validation"):
            rows.append((tasks[key].doc_to_visual(doc), tasks[key].doc_to_text(doc), doc["target_text"]))
    return rows


@pytest.fixture(scope="module")
def greedy_accuracy(model, val_rows):
    """Exact-match accuracy of greedy answers with all visual tokens and with a random tenth."""
    def accuracy(keep: float) -> float:
        method = repro.method("random", keep=keep, seed=0) if keep < 1 else None
        hits = [model.generate(images, text, method=method, max_new_tokens=4).text.strip().lower() == answer.lower()
                for images, text, answer in val_rows]
        return sum(hits) / len(hits)

    return {"full": accuracy(1.0), "tenth": accuracy(0.1)}


def test_accuracy_falls_when_random_visual_tokens_are_dropped(greedy_accuracy):
    assert greedy_accuracy["tenth"] <= greedy_accuracy["full"] - 0.1, greedy_accuracy


def test_greedy_accuracy_meets_the_target(greedy_accuracy):
    """Issue 4's short-answer / yes-no target (the shipped checkpoint: 0.72)."""
    assert greedy_accuracy["full"] >= 0.7, greedy_accuracy


CLS_UNTRAINED = ("measured on the shipped tinyworld-llava: VisPruner's [CLS] attention does not rank the visual "
                 "tokens better than its inverse (mean KL 0.195 vs 0.199, one-sided Wilcoxon p = 0.996 over 192 "
                 "samples): no loss trains [CLS] to summarise the image here (stage 1 scores patch tokens, LLaVA "
                 "drops [CLS]; repro/tinyworld/README.md); strict, so a checkpoint where it does turns this into a "
                 "failure to remove")


@pytest.mark.parametrize("name", ["fastv", pytest.param("vispruner",
                                                        marks=pytest.mark.xfail(strict=True, reason=CLS_UNTRAINED))])
def test_inverse_check_on_the_trained_model(model, val_rows, name):
    """Keeping a method's lowest-scored quarter of the visual tokens hurts more than keeping its
    best quarter, significantly over the samples (catches inverted sorts; needs a model whose
    answers depend on the image)."""
    from repro.methods.sanity import inverse_check

    samples = [(images, text) for images, text, _ in val_rows]
    check = inverse_check(model, name, "tokens:36", samples)
    assert check.passed, check
    assert check.p_value < 0.01, check
