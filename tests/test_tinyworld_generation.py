"""Tiny world: scenes and per-task generators (no files, no lmms-eval)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from repro import tinyworld as tw
from repro.tinyworld import questions as Q
from repro.tinyworld import scenes
from repro.tinyworld.build import split_rng

N = 60


def rows_of(key: str, n: int = N, split: str = "test", seed: int = 0) -> list[dict]:
    spec = tw.spec(key)
    return spec.generated.gen(split_rng(seed, spec, split), n, split)


def test_image_geometry():
    assert tw.IMAGE_SIZE == 168 and tw.PATCH_SIZE == 14
    assert (tw.IMAGE_SIZE // tw.PATCH_SIZE) ** 2 == 144
    img = scenes.render(random.Random(0), scenes.random_objects(random.Random(0), 5))
    assert img.size == (tw.IMAGE_SIZE, tw.IMAGE_SIZE) and img.mode == "RGB"


def test_bitmap_text_is_drawn_where_measured():
    img = Image.new("RGB", (80, 40), (255, 255, 255))
    scenes.draw_text(img, "AB", (4, 4))
    w, h = scenes.text_size("AB")
    assert (w, h) == (24, 22)
    bbox = Image.eval(img.convert("L"), lambda v: 255 - v).getbbox()
    assert bbox is not None and 4 <= bbox[0] and bbox[2] <= 4 + w and bbox[3] <= 4 + h


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 9))
def test_objects_fill_distinct_cells_inside_the_image(seed, n):
    objs = scenes.random_objects(random.Random(seed), n)
    assert len({(o.row, o.col) for o in objs}) == n
    for o in objs:
        x0, y0, x1, y1 = o.box
        cx0, cy0, cx1, cy1 = scenes.cell_box(o.row, o.col)
        assert cx0 <= x0 and cy0 <= y0 and x1 <= cx1 and y1 <= cy1


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_questions_agree_with_the_scene(seed):
    """Referring expressions are unambiguous and answers are read off the scene objects."""
    rng = random.Random(seed)
    objs = scenes.random_objects(rng, rng.randint(3, 6))
    qa = Q.ask_colour(rng, objs)
    if qa is not None:
        shape = qa.question.removeprefix("What color is the ").removesuffix("?")
        (hit,) = [o for o in objs if o.shape == shape]
        assert qa.answer == hit.colour and qa.evidence == [list(hit.box)]
    qa = Q.ask_count(rng, objs)
    assert qa.answer == str(len(qa.evidence))
    want = rng.random() < 0.5
    qa = Q.ask_exists(rng, objs, want)
    colour, shape = qa.question.removeprefix("Is there ").split(" ", 1)[1].removesuffix(" in the image?").split()
    assert ((colour, shape) in {o.kind for o in objs}) == want
    qa = Q.ask_relation(rng, objs)
    if qa is not None:  # exactly one object lies in the asked direction, and the answer describes it
        by_box = {tuple(o.box): o for o in objs}
        ref, hit = (by_box[tuple(b)] for b in qa.evidence)
        test = {
            "to the left of": lambda o: o.col < ref.col,
            "to the right of": lambda o: o.col > ref.col,
            "above": lambda o: o.row < ref.row,
            "below": lambda o: o.row > ref.row,
        }
        (where,) = [w for w in test if f" {w} the {ref.colour} {ref.shape}?" in qa.question]
        assert [o for o in objs if test[where](o)] == [hit]
        assert qa.answer in (hit.colour, hit.shape)


@pytest.mark.parametrize("spec", tw.TASKS, ids=lambda s: s.key)
def test_rows_match_the_schema_and_carry_targets(spec):
    rows = rows_of(spec.key)
    assert N <= len(rows) <= N + 3
    ds = Dataset.from_list(rows, features=spec.generated.features)
    first = ds[0]
    image = first["image"][0] if isinstance(first["image"], list) else first["image"]
    assert isinstance(image, Image.Image)
    limit = 64 if spec.key == "easyvqa" else tw.IMAGE_SIZE
    for r in rows:
        assert r["target_text"] != ""
        for x0, y0, x1, y1 in r["evidence"]:
            assert 0 <= x0 < x1 <= limit and 0 <= y0 < y1 <= limit


@pytest.mark.parametrize("key", ["vqav2", "gqa", "vizwiz", "textvqa", "chartqa", "ocrbench"])
def test_short_answers_are_not_guessable_from_priors(key):
    counts = Counter(r["target_text"] for r in rows_of(key, 300))
    assert counts.most_common(1)[0][1] / 300 < 0.4


def test_pope_is_balanced_per_image_and_category():
    rows = rows_of("pope", 120)
    assert Counter(r["answer"] for r in rows) == {"yes": 60, "no": 60}
    assert Counter(r["category"] for r in rows) == {"random": 40, "popular": 40, "adversarial": 40}
    by_image: dict[str, list[str]] = {}
    for r in rows:
        by_image.setdefault(r["image_source"], []).append(r["answer"])
    assert all(sorted(v) == ["no", "yes"] for v in by_image.values())


def test_mme_pairs_one_yes_one_no_per_image():
    rows = rows_of("mme", 120)
    pairs: dict[str, list[str]] = {}
    for r in rows:
        pairs.setdefault(r["question_id"], []).append(r["answer"])
        assert r["question"].endswith(" Please answer yes or no.")
    assert all(sorted(v) == ["No", "Yes"] for v in pairs.values())
    assert {r["category"] for r in rows} == set(tw.tasks.MME_CATEGORIES)


@pytest.mark.parametrize("key", ["seed", "ai2d", "mmbench", "scienceqa"])
def test_option_letters_are_balanced(key):
    rows = rows_of(key, 400)
    counts = Counter(r["target_text"] for r in rows)
    assert counts.most_common(1)[0][1] / len(rows) < (0.56 if key == "scienceqa" else 0.35)


def test_mmbench_circular_rotations_and_chinese_translation():
    en, cn = rows_of("mmbench", 80), rows_of("mmbench_cn", 80)
    groups: dict[int, list[dict]] = {}
    for r in en:
        groups.setdefault(r["circular_id"], []).append(r)
    for rs in groups.values():
        letters = [r["answer"] for r in rs]
        assert len(set(letters)) == len(rs)  # the right option visits a different letter each time
        assert {r[r["answer"]] for r in rs} == {rs[0][rs[0]["answer"]]}  # ... and is the same text
    assert [r["answer"] for r in en] == [r["answer"] for r in cn]
    assert [r["image"]["bytes"] for r in en] == [r["image"]["bytes"] for r in cn]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r["question"]) for r in cn)


def test_easyvqa_splits_do_not_share_images():
    ids = {s: {r["image_id"] for r in rows_of("easyvqa", 3000, s)} for s in ("train", "validation")}
    assert ids["train"] and ids["validation"] and not ids["train"] & ids["validation"]


def test_generation_is_deterministic_and_seed_dependent():
    a, b = rows_of("gqa", 20, seed=3), rows_of("gqa", 20, seed=3)
    assert a == b
    assert rows_of("gqa", 20, seed=4) != a
    assert rows_of("gqa", 20, split="train", seed=3) != a
