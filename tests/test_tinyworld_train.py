"""The tinyworld-llava training pipeline: generated pretraining scenes, the uint8 pixel cache, and
a few-step run of all three stages that writes a checkpoint loadable with from_pretrained."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from repro import tinyworld as tw
from repro.errors import ReproError
from repro.tinyworld import pretraining
from repro.tinyworld.scenes import COLOUR_NAMES, SHAPES
from repro.tinyworld.train import (
    N_VISUAL,
    Batcher,
    Encoded,
    PatchHeads,
    Pixels,
    TrainConfig,
    build_model,
    build_tokenizer,
    config_from_args,
    hint_loss,
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
                      vision_layers=1, text_layers=1, vocab_size=600, compile=True, letter_steps=2, letter_mix=2)
    record = train(cfg, tmp_path / "ckpt", data_dir=data, threads=1, eval_every=2, eval_rows=1)
    assert [h["step"] for h in record["history"]["vision"]] == [2]
    assert [h["step"] for h in record["history"]["letters"]] == [2]
    assert [h["step"] for h in record["history"]["tasks"]] == [2, 3]
    assert set(record["validation_teacher_forced"]) == {t.key for t in tw.TASKS} | {"letters"}
    stored = json.loads((tmp_path / "ckpt" / "train_record.json").read_text())
    assert stored["config"]["caption_steps"] == 2
    assert stored["config"]["compile"]
    model, proc = load_trained(tmp_path / "ckpt")
    assert model.dtype == torch.float32 and proc.tokenizer.eos_token == "</s>"
    assert model.config.text_config._attn_implementation != "eager"  # a training choice, not saved


def test_compiled_step_computes_the_eager_models_loss(processor):
    """What `compile` trains is the model users load: same loss, eager attention under
    torch.compile against the default attention without it."""
    tok = processor.tokenizer
    model, _ = build_model(TrainConfig(vision_layers=1, text_layers=2), tok)
    image = tok.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[tok.bos_token_id] + [image] * N_VISUAL + tok("USER: a red circle ASSISTANT: a")["input_ids"][1:]] * 2)
    labels = ids.clone()
    labels[:, :N_VISUAL + 2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "pixel_values": torch.randn(2, 3, tw.IMAGE_SIZE, tw.IMAGE_SIZE, generator=torch.Generator().manual_seed(0))}
    want = model(**batch).loss
    model.set_attn_implementation({"text_config": "eager"})
    got = torch.compile(model)(**batch).loss
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_compile_without_a_cxx_compiler_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("repro.tinyworld.train.shutil.which", lambda name: None)
    with pytest.raises(ReproError, match="C\\+\\+ compiler.*without --compile"):
        train(TrainConfig(compile=True), tmp_path / "ckpt", data_dir=tmp_path / "no-data")
    assert not (tmp_path / "ckpt").exists()


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


def test_letter_rows_state_the_answer_and_reshuffle_the_options():
    import random

    from repro.tinyworld.train import OPTION_LINE, Row, chat_prompt, letter_rows

    question = "Which colour?\nA. red\nB. blue\nC. green\nAnswer with the option's letter."
    rows = [Row("mc", 0, 1, chat_prompt(1, question), "C"), Row("vqa", 0, 1, chat_prompt(1, "Which colour?"), "red"),
            Row("two", 0, 2, chat_prompt(2, question), "A")]
    got = letter_rows(rows, 40, random.Random(0))
    assert len(got) == 40 and {r.n_images for r in got} == {0} and len({r.index for r in got}) == 40
    for r in got:
        assert r.prompt.startswith("USER: The answer is green.\nWhich colour?\nA. ") and "<image>" not in r.prompt
        options = dict(OPTION_LINE.findall(r.prompt))
        assert list(options) == ["A", "B", "C"] and sorted(options.values()) == ["blue", "green", "red"]
        assert options[r.answer] == "green"
    assert {r.answer for r in got} == {"A", "B", "C"}


def test_text_only_rows_batch_without_pixels(processor):
    from repro.tinyworld.train import Row, chat_prompt, encode_rows

    rows = [Row("letters", 0, 0, "USER: The answer is red. ASSISTANT:", "A"), Row("t", 0, 1, chat_prompt(1, "a"), "b")]
    text, image = encode_rows(rows, processor)
    batcher = Batcher(processor, Pixels(processor, lambda task, index: [Image.new("RGB", (64, 64))]))
    assert "pixel_values" not in batcher([text])
    assert batcher([text, image, text])["pixel_values"].shape[0] == 1


def test_batches_from_an_empty_pool_are_a_clear_error_not_an_endless_loop():
    import random

    from repro.tinyworld.train import _batches

    with pytest.raises(ReproError, match="cannot draw batches of 4 from 0"):
        _batches([], 4, random.Random(0))
    with pytest.raises(ReproError, match="--caption-mix"):
        _batches([Encoded("t", 0, 1, [1], 1)], 0, random.Random(0))
    pool = [Encoded("t", i, 0, [1], 1) for i in range(3)]
    got = _batches(pool, 2, random.Random(0))
    drawn = [e.index for _ in range(3) for e in next(got)]
    assert sorted(drawn) == [0, 0, 1, 1, 2, 2]  # two whole passes


def test_hint_loss_is_the_evidence_share_of_visual_attention():
    image = 7
    items = [Encoded("t", 0, 1, [1, 2] + [image] * 144 + [3, 4, 5], 149, hints=[(148, [0, 1, 2, 3])])]
    rows, pos, keys, mask = hints = Batcher.hints(items, image)
    assert rows.tolist() == [0] and pos.tolist() == [148] and keys[0, 0] == 2 and int(mask.sum()) == 4
    att = torch.zeros(1, 2, 149, 149)
    att[0, :, 148, 2:146] = 0.5 / 144  # half on text, the visual half uniform
    att[0, :, 148, 146:] = 0.5 / 3
    layers = (torch.zeros_like(att), att, att)  # the first layer is not hinted
    assert float(hint_loss(layers, hints)) == pytest.approx(-math.log(4 / 144), rel=1e-5)
    att[0, 0, 148, 2:146] = 0
    att[0, 0, 148, 2:6] = 0.125  # head 0 all on the evidence: head mean share (0.5 + 4/144 * 0.5) / 1
    assert float(hint_loss(layers, hints)) == pytest.approx(-math.log((0.5 + 0.5 * 4 / 144) / 1.0), rel=1e-5)
    assert Batcher.hints([Encoded("t", 0, 1, [1, image], 2)], image) is None


def test_cls_presence_trains_cls_on_which_classes_the_scene_holds():
    """Off, [CLS] gets no gradient from stage 1 (the patch heads read the patches); on, its
    heads' targets are the classes present, background excluded."""
    torch.manual_seed(0)
    labels = {"shape": torch.tensor([[0, 2, 2, 0]]), "colour": torch.tensor([[0, 1, 3, 0]]),
              "char": torch.zeros(1, 4, dtype=torch.long)}
    for weight in (0.0, 1.0):
        features = torch.randn(1, 5, 8, requires_grad=True)
        heads = PatchHeads(8, cls_weight=weight)
        heads.loss(features, labels).backward()
        assert (features.grad[:, 0].abs().sum() > 0) == bool(weight)
    with torch.no_grad():  # a confident, correct [CLS] head: no scene loss left beyond the patch terms
        for key, head in heads.scene_heads.items():
            head.weight.zero_()
            target = torch.nn.functional.one_hot(labels[key], head.out_features + 1).amax(1)[0, 1:]
            head.bias.copy_(torch.where(target.bool(), 50.0, -50.0))
    patch_only = PatchHeads(8)
    patch_only.heads.load_state_dict(heads.heads.state_dict())
    torch.testing.assert_close(heads.loss(features, labels), patch_only.loss(features, labels))


def _flags(*argv: str):
    import argparse

    from repro.tinyworld.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--out", "x", *argv])


def test_task_weights_flag_defaults_to_the_recipe_and_rejects_bad_json_or_unknown_tasks():
    assert config_from_args(_flags()).task_weights == TrainConfig().task_weights != {}
    assert config_from_args(_flags("--task-weights", "{}")).task_weights == {}
    assert config_from_args(_flags("--task-weights", '{"vqav2": 0.5}')).task_weights == {"vqav2": 0.5}
    with pytest.raises(ReproError, match="not JSON"):
        config_from_args(_flags("--task-weights", "pope=3"))
    for bad in ('{"pope": -1}', '{"pope": true}', "[3]"):
        with pytest.raises(ReproError, match="non-negative numbers"):
            config_from_args(_flags("--task-weights", bad))
    with pytest.raises(ReproError, match=r"unknown tasks \['popee'\].*pope"):
        config_from_args(_flags("--task-weights", '{"popee": 3}'))


def test_frozen_tower_is_saved_as_initialised_when_it_has_no_stage_1(tmp_path):
    data = tmp_path / "data"
    tw.build(data, seed=0, sizes=tw.SplitSizes(train=4, validation=2, test=2))
    cfg = TrainConfig(scenes=16, vision_steps=0, caption_steps=2, steps=2, batch_size=4, vision_layers=1,
                      text_layers=2, vocab_size=600, freeze_vision=True, attention_hint=1.0, compile=False)
    train(cfg, tmp_path / "ckpt", data_dir=data, threads=1, eval_every=0, eval_rows=1)
    saved, proc = load_trained(tmp_path / "ckpt")
    fresh, _ = build_model(cfg, proc.tokenizer)
    for (name, a), b in zip(saved.model.vision_tower.state_dict().items(), fresh.model.vision_tower.state_dict().values()):
        torch.testing.assert_close(a, b.half().float(), msg=name)
    assert not torch.equal(saved.model.multi_modal_projector.linear_1.weight,
                           fresh.model.multi_modal_projector.linear_1.weight.half().float())
