"""The tinyworld-llava training pipeline: generated pretraining scenes, the uint8 pixel cache, and
a few-step run of all three stages that writes a checkpoint loadable with from_pretrained."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from repro import tinyworld as tw
from repro.tinyworld import pretraining
from repro.tinyworld.scenes import COLOUR_NAMES, SHAPES
from repro.tinyworld.train import (
    Pixels,
    TrainConfig,
    build_model,
    build_tokenizer,
    load_trained,
    train,
)


def test_scenes_are_deterministic_and_labels_match_the_captions():
    a, b = pretraining.scenes(3, 12, chart_fraction=0.3), pretraining.scenes(3, 12, chart_fraction=0.3)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(torch.equal(x.labels[k], y.labels[k]) for x, y in zip(a, b) for k in pretraining.HEADS)
    assert [s.caption for s in pretraining.scenes(4, 12)] != [s.caption for s in a]
    charts = [s for s in a if s.caption.startswith("bars:")]
    objects = [s for s in a if not s.caption.startswith("bars:")]
    assert charts and objects
    for s in objects:
        named = {SHAPES.index(w) + 1 for w in s.caption.replace(";", " ").split() if w in SHAPES}
        assert set(s.labels["shape"].unique().tolist()) - {0} == named
        colours = {COLOUR_NAMES.index(w) + 1 for w in s.caption.replace(";", " ").split() if w in COLOUR_NAMES}
        assert set(s.labels["colour"].unique().tolist()) - {0} <= colours
    for s in charts:  # every bar's value and letter is under some patch
        assert int((s.labels["char"] > 0).sum()) >= 2 * (s.caption.count(",") + 1)
        assert int((s.labels["shape"] > 0).sum()) == 0


@pytest.fixture(scope="module")
def processor():
    tok = build_tokenizer(["USER: ASSISTANT: a red circle"], 300)
    return build_model(TrainConfig(vision_layers=1, text_layers=1), tok)[1]


def test_pixel_cache_equals_the_processor(processor):
    images = {("a", 0): [pretraining.scenes(0, 1)[0].image], ("b", 0): [Image.new("RGB", (64, 64), (20, 200, 90))]}
    pixels = Pixels(processor, lambda task, index: images[(task, index)])
    got = pixels([("a", 0), ("b", 0)])
    want = processor.image_processor(images=[images[("a", 0)][0], images[("b", 0)][0]], return_tensors="pt")["pixel_values"]
    assert got.shape == want.shape == (2, 3, tw.IMAGE_SIZE, tw.IMAGE_SIZE)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_three_stage_run_writes_a_loadable_checkpoint(tmp_path):
    data = tmp_path / "data"
    tw.build(data, seed=0, sizes=tw.SplitSizes(train=4, validation=2, test=2))
    cfg = TrainConfig(scenes=16, vision_steps=2, vision_batch=4, caption_steps=2, steps=3, batch_size=4,
                      vision_layers=1, text_layers=1, vocab_size=600)
    record = train(cfg, tmp_path / "ckpt", data_dir=data, threads=1, eval_every=2, eval_rows=1)
    assert [h["step"] for h in record["history"]["vision"]] == [2]
    assert [h["step"] for h in record["history"]["tasks"]] == [2, 3]
    assert set(record["validation_teacher_forced"]) == {t.key for t in tw.TASKS}
    stored = json.loads((tmp_path / "ckpt" / "train_record.json").read_text())
    assert stored["config"]["caption_steps"] == 2
    model, proc = load_trained(tmp_path / "ckpt")
    assert model.dtype == torch.float32 and proc.tokenizer.eos_token == "</s>"


def test_scene_questions_are_separate_rows_supervised_only_on_answers():
    from repro.tinyworld.train import (
        IGNORE,
        Batcher,
        caption_rows,
        encode_rows,
        tokenizer_corpus,
    )

    scenes = pretraining.scenes(1, 6, chart_fraction=0.3)
    rows = caption_rows(scenes)
    asked = [r for r in rows if r.turns]
    assert asked and all(s.caption not in r.prompt + "".join(q for q, _ in r.turns) for r, s in
                         zip(asked, [scenes[r.index] for r in asked]))
    tok = build_tokenizer(tokenizer_corpus(rows), 600)
    proc = build_model(TrainConfig(vision_layers=1, text_layers=1), tok)[1]
    row = asked[0]
    enc = encode_rows([row], proc)[0]
    labels = Batcher(proc, Pixels(proc, lambda t, i: [scenes[i].image]))([enc])["labels"][0]
    supervised = tok.decode([t for t, lab in zip(enc.ids, labels.tolist()) if lab != IGNORE])
    assert supervised == "</s>".join([row.answer] + [a for _, a in row.turns]) + "</s>"
