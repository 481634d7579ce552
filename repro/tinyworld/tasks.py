"""Per-task row generators: one function per benchmark shape, producing the columns that the
matching lmms-eval task's utils read (see the installed `lmms_eval/tasks/<name>/utils.py`).

Every row also carries `target_text` (the exact answer string an oracle should produce; the
uniform handle for training and tests) and `evidence` (pixel boxes [x0, y0, x1, y1] of the
regions the answer depends on; empty when the answer is about absence), so later analyses can ask
whether a pruning method kept the tokens that matter.

A generator is `gen(rng, n, split) -> list[dict]` with exactly `n` rows, except tasks whose rows
come in groups (MME and POPE pairs, MMBench circular rotations), which round up to whole groups.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Features, Image, List, Value
from PIL import ImageDraw, ImageFilter

from . import questions as Q
from .scenes import (
    CELL,
    COL_NAMES,
    COLOUR_NAMES,
    ROW_NAMES,
    SHAPES,
    WORDS,
    Obj,
    all_cells,
    bar_chart,
    draw_sign,
    draw_text,
    png_bytes,
    random_objects,
    render,
    sign_in_cell,
    text_size,
)

S, I64, IMG = Value("string"), Value("int64"), Image()
BOXES = List(List(Value("int32")))
COMMON = {"target_text": S, "evidence": BOXES}

Row = dict
Generator = Callable[[random.Random, int, str], list[Row]]


@dataclass(frozen=True)
class Generated:
    """What a task generator module exposes: the row function and the parquet schema."""

    gen: Generator
    features: Features


def _img(image) -> dict:
    return {"bytes": png_bytes(image), "path": None}


def _scene(rng: random.Random, lo: int = 3, hi: int = 6, **kw) -> list[Obj]:
    return random_objects(rng, rng.randint(lo, hi), **kw)


def _retry(make: Callable[[], object | None], tries: int = 200):
    """Draw scenes until one supports the question; the world is rich enough that this is quick."""
    for _ in range(tries):
        out = make()
        if out is not None:
            return out
    raise RuntimeError("tinyworld: no scene supported the question template (generator bug)")


def _qid(split: str, i: int) -> str:
    return f"{split}-{i:06d}"


# ------------------------------------------------------------------ VQAv2-like (VQA accuracy)


def _pair(rng: random.Random, asker: Callable[[random.Random, list[Obj]], Q.QA | None], **scene_kw):
    """A scene and a question about it (None when the scene does not support the asker)."""
    objs = _scene(rng, **scene_kw)
    qa = asker(rng, objs)
    return None if qa is None else (objs, qa)


def _vqa_qa(rng: random.Random, objs: list[Obj]) -> Q.QA | None:
    r = rng.random()
    if r < 0.3:
        return Q.ask_exists(rng, objs, want=rng.random() < 0.5)
    kind = rng.choices(list(Q.SHORT_ANSWER_ASKERS), weights=[3, 2, 3, 1, 1])[0]
    return Q.SHORT_ANSWER_ASKERS[kind](rng, objs)


def _answer_type(ans: str) -> str:
    return "yes/no" if ans in ("yes", "no") else "number" if ans.isdigit() else "other"


def gen_vqav2(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        objs, qa = _retry(lambda: _pair(rng, _vqa_qa))
        rows.append(
            {
                "question_id": i,
                "question": qa.question,
                "answer": qa.answer,
                "answers": [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                "question_type": qa.kind,
                "answer_type": _answer_type(qa.answer),
                "image": _img(render(rng, objs)),
                "target_text": qa.answer,
                "evidence": qa.evidence,
            }
        )
    return rows


VQAV2 = Generated(
    gen_vqav2,
    Features(
        {
            "question_id": I64,
            "question": S,
            "answer": S,
            "answers": List({"answer": S, "answer_confidence": S, "answer_id": I64}),
            "question_type": S,
            "answer_type": S,
            "image": IMG,
            **COMMON,
        }
    ),
)


# ------------------------------------------------------------------ GQA-like (exact match)


def _gqa_qa(rng: random.Random, objs: list[Obj]) -> Q.QA | None:
    r = rng.random()
    if r < 0.4:
        return Q.ask_relation(rng, objs)
    if r < 0.65:
        return Q.ask_relation_yn(rng, objs, want=rng.random() < 0.5)
    if r < 0.85:
        return Q.ask_same_colour(rng, objs, want=rng.random() < 0.5)
    return Q.ask_side(rng, objs)


def gen_gqa(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        objs, qa = _retry(lambda: _pair(rng, _gqa_qa, lo=4, hi=7))
        rows.append(
            {
                "id": _qid(split, i),
                "imageId": f"{split}-img-{i:06d}",
                "question": qa.question,
                "answer": qa.answer,
                "fullAnswer": qa.answer,
                "question_type": qa.kind,
                "image": _img(render(rng, objs)),
                "target_text": qa.answer,
                "evidence": qa.evidence,
            }
        )
    return rows


GQA = Generated(
    gen_gqa,
    Features(
        {
            "id": S,
            "imageId": S,
            "question": S,
            "answer": S,
            "fullAnswer": S,
            "question_type": S,
            "image": IMG,
            **COMMON,
        }
    ),
)


# ------------------------------------------------------------------ VizWiz-like (incl. unanswerable)

UNANSWERABLE = "unanswerable"


def _signs(rng: random.Random, k: int, cells: list[tuple[int, int]], texts: list[str] | None = None):
    colours = rng.sample(COLOUR_NAMES, k)
    texts = texts if texts is not None else rng.sample(WORDS, k)
    return [sign_in_cell(rng, t.upper(), c, r, col) for t, c, (r, col) in zip(texts, colours, cells)]


def _vizwiz_item(rng: random.Random):
    """(image, question, answer, evidence, category); about 30% unanswerable."""
    r = rng.random()
    if r < 0.15:  # the referenced object is not in the picture
        objs = _scene(rng)
        missing = [s for s in SHAPES if s not in {o.shape for o in objs}]
        if not missing:
            return None
        s = rng.choice(missing)
        return render(rng, objs), f"What color is the {s}?", UNANSWERABLE, [], "unanswerable"
    if r < 0.45:  # read a sign; 50% of them are blurred beyond reading (like a shaky photo)
        cells = rng.sample(all_cells(), rng.randint(3, 5))
        signs = _signs(rng, 2, cells[:2])
        objs = random_objects(rng, len(cells) - 2, cells=cells[2:])
        img = render(rng, objs)
        for sg in signs:
            draw_sign(img, sg)
        t = signs[0]
        q = f"What is written on the {t.colour} sign?"
        if r < 0.3:
            region = img.crop(t.box).filter(ImageFilter.GaussianBlur(4))
            img.paste(region, t.box[:2])
            return img, q, UNANSWERABLE, [list(t.box)], "unanswerable"
        return img, q, t.text.lower(), [list(t.box)], "answerable"
    got = _pair(rng, lambda g, o: Q.SHORT_ANSWER_ASKERS[g.choice(["colour", "shape", "count"])](g, o))
    if got is None:
        return None
    objs, qa = got
    return render(rng, objs), qa.question, qa.answer, qa.evidence, "answerable"


def gen_vizwiz(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        img, q, ans, ev, cat = _retry(lambda: _vizwiz_item(rng))
        rows.append(
            {
                "question_id": _qid(split, i),
                "question": q,
                "answers": [ans] * 10,
                "answer": ans,
                "category": cat,
                "image": _img(img),
                "target_text": ans,
                "evidence": ev,
            }
        )
    return rows


VIZWIZ = Generated(
    gen_vizwiz,
    Features({"question_id": S, "question": S, "answers": List(S), "answer": S, "category": S, "image": IMG, **COMMON}),
)


# ------------------------------------------------------------------ TextVQA-like (reading signs)


def _sign_texts(rng: random.Random, k: int) -> list[str]:
    """Mostly words, some 2-digit numbers; all distinct."""
    out: list[str] = []
    while len(out) < k:
        t = str(rng.randint(10, 99)) if rng.random() < 0.3 else rng.choice(WORDS)
        if t not in out:
            out.append(t)
    return out


def _sign_scene(rng: random.Random, k_signs: int, k_objs: int):
    cells = rng.sample(all_cells(), k_signs + k_objs)
    signs = _signs(rng, k_signs, cells[:k_signs], _sign_texts(rng, k_signs))
    objs = random_objects(rng, k_objs, cells=cells[k_signs:])
    return render(rng, objs, signs), signs, objs


def _where(row: int, col: int) -> str:
    if row == 1 and col == 1:
        return "in the center"
    if row == 1:
        return f"on the {COL_NAMES[col]}"
    if col == 1:
        return f"at the {ROW_NAMES[row]}"
    return f"in the {ROW_NAMES[row]} {COL_NAMES[col]}"


def gen_textvqa(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        img, signs, _ = _sign_scene(rng, rng.randint(2, 3), rng.randint(1, 3))
        t = rng.choice(signs)
        kind = "number" if t.text.isdigit() else "word"
        if rng.random() < 0.5:
            q = f"what {kind} is written on the {t.colour} sign?"
        else:
            q = f"what {kind} is on the sign {_where(t.row, t.col)}?"
        ans = t.text.lower()
        rows.append(
            {
                "question_id": _qid(split, i),
                "image_id": f"{split}-img-{i:06d}",
                "question": q,
                "answers": [ans] * 10,
                "answer": ans,
                "ocr_tokens": [s.text.lower() for s in signs],
                "image": _img(img),
                "target_text": ans,
                "evidence": [list(t.box)],
            }
        )
    return rows


TEXTVQA = Generated(
    gen_textvqa,
    Features(
        {
            "question_id": S,
            "image_id": S,
            "question": S,
            "answers": List(S),
            "answer": S,
            "ocr_tokens": List(S),
            "image": IMG,
            **COMMON,
        }
    ),
)


# ------------------------------------------------------------------ OCRBench-like

OCR_FIELDS = ("NAME", "CODE", "ROOM", "AGE", "DAY")


def _ocr_item(rng: random.Random):
    r = rng.random()
    if r < 0.25:
        img, signs, _ = _sign_scene(rng, 1, rng.randint(2, 4))
        t = signs[0]
        return img, "what is written in the image?", t.text.lower(), [t.box], "Regular Text Recognition"
    if r < 0.5:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 5)))
        cells = rng.sample(all_cells(), rng.randint(2, 4))
        img = render(rng, random_objects(rng, len(cells), cells=cells))
        w, h = text_size(digits)
        x, y = rng.randint(2, 166 - w), rng.randint(2, 166 - h)
        draw_text(img, digits, (x, y))
        return img, "what is the number in the image?", digits, [(x, y, x + w, y + h)], "Digit String Recognition"
    if r < 0.75:
        img, signs, _ = _sign_scene(rng, 3, rng.randint(1, 3))
        t = rng.choice(signs)
        return img, f"what is written on the {t.colour} sign?", t.text.lower(), [t.box], "Scene Text-centric VQA"
    # Key information extraction: a small form with three "KEY:VALUE" lines.
    keys = rng.sample(OCR_FIELDS, 3)
    vals = [rng.choice(WORDS).upper() if k in ("NAME", "DAY") else str(rng.randint(1, 99)) for k in keys]
    img = render(rng, random_objects(rng, 2, cells=rng.sample([(2, 0), (2, 1), (2, 2)], 2)))
    ImageDraw.Draw(img).rectangle((4, 4, 163, 4 + 3 * 26 + 6), fill=(255, 255, 255), outline=(60, 60, 60))
    line_boxes = []
    for j, (k, v) in enumerate(zip(keys, vals)):
        text = f"{k}:{v}"
        draw_text(img, text, (10, 9 + 26 * j))
        w, h = text_size(text)
        line_boxes.append((10, 9 + 26 * j, 10 + w, 9 + 26 * j + h))
    j = rng.randrange(3)
    return (
        img,
        f"what is the {keys[j].lower()} in the form?",
        vals[j].lower(),
        [line_boxes[j]],
        "Key Information Extraction",
    )


def gen_ocrbench(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        img, q, ans, ev, qtype = _ocr_item(rng)
        rows.append(
            {
                "question_id": _qid(split, i),
                "dataset": "tinyworld",
                "question": q,
                "question_type": qtype,
                "answer": [ans],
                "image": _img(img),
                "target_text": ans,
                "evidence": [list(b) for b in ev],
            }
        )
    return rows


OCRBENCH = Generated(
    gen_ocrbench,
    Features(
        {"question_id": S, "dataset": S, "question": S, "question_type": S, "answer": List(S), "image": IMG, **COMMON}
    ),
)


# ------------------------------------------------------------------ ChartQA-like (relaxed accuracy)


def _chart_item(rng: random.Random):
    img, bars = bar_chart(rng, rng.randint(3, 5))
    human = rng.random() < 0.5
    if not human:
        b = rng.choice(bars)
        if rng.random() < 0.5:
            return img, f"What is the value of bar {b.label}?", str(b.value), [b.box], "augmented_test"
        return img, f"What is the value of the {b.colour} bar?", str(b.value), [b.box], "augmented_test"
    r = rng.random()
    vals = [b.value for b in bars]
    if r < 0.3:
        top = max(vals)
        if vals.count(top) > 1:
            return None
        b = bars[vals.index(top)]
        return img, "Which bar has the highest value?", b.label, [x.box for x in bars], "human_test"
    a, b = rng.sample(bars, 2)
    if r < 0.65:
        return (
            img,
            f"What is the sum of bars {a.label} and {b.label}?",
            str(a.value + b.value),
            [a.box, b.box],
            "human_test",
        )
    if a.value == b.value:
        return None
    return (
        img,
        f"What is the difference between bars {a.label} and {b.label}?",
        str(abs(a.value - b.value)),
        [a.box, b.box],
        "human_test",
    )


def gen_chartqa(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        img, q, ans, ev, typ = _retry(lambda: _chart_item(rng))
        rows.append(
            {
                "question_id": _qid(split, i),
                "type": typ,
                "question": q,
                "answer": ans,
                "image": _img(img),
                "target_text": ans,
                "evidence": [list(b) for b in ev],
            }
        )
    return rows


CHARTQA = Generated(
    gen_chartqa, Features({"question_id": S, "type": S, "question": S, "answer": S, "image": IMG, **COMMON})
)


# ------------------------------------------------------------------ POPE-like (object presence)

POPE_CATEGORIES = ("random", "popular", "adversarial")


def _kind_weights(rng: random.Random) -> dict[tuple[str, str], float]:
    """A Zipf-like prior over the 30 object kinds, so that 'popular' negatives mean something."""
    kinds = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    rng.shuffle(kinds)
    return {k: 1.0 / (rank + 1) ** 0.8 for rank, k in enumerate(kinds)}


def _pope_negative(rng: random.Random, objs: list[Obj], category: str, prior: dict) -> tuple[str, str]:
    present = {o.kind for o in objs}
    absent = [k for k in prior if k not in present]
    if category == "random":
        return rng.choice(absent)
    if category == "popular":
        return rng.choice(sorted(absent, key=lambda k: -prior[k])[:3])
    # adversarial: shares both attributes' vocabulary with objects in the scene (one flip away)
    scored = sorted(absent, key=lambda k: -sum((k[0] == o.colour) + (k[1] == o.shape) for o in objs))
    return rng.choice(scored[:3])


def gen_pope(rng: random.Random, n: int, split: str) -> list[Row]:
    prior = _kind_weights(random.Random("tinyworld-pope-prior"))  # shared by all splits and seeds
    kinds, weights = list(prior), list(prior.values())
    rows: list[Row] = []
    i = 0
    while len(rows) < n:
        category = POPE_CATEGORIES[i % 3]
        objs = random_objects(rng, rng.randint(3, 6), kinds=rng.choices(kinds, weights, k=6))
        img = _img(render(rng, objs))
        pos = rng.choice(objs)
        neg = _pope_negative(rng, objs, category, prior)
        pair = [(pos.kind, "yes", [list(pos.box)]), (neg, "no", [])]
        rng.shuffle(pair)
        for (c, s), ans, ev in pair:
            rows.append(
                {
                    "question_id": _qid(split, len(rows)),
                    "question": f"Is there {Q.with_article(c)} {s} in the image?",
                    "answer": ans,
                    "image_source": f"{split}-img-{i:06d}",
                    "category": category,
                    "image": img,
                    "target_text": ans,
                    "evidence": ev,
                }
            )
        i += 1
    return rows


POPE = Generated(
    gen_pope,
    Features({"question_id": S, "question": S, "answer": S, "image_source": S, "category": S, "image": IMG, **COMMON}),
)


# ------------------------------------------------------------------ MME-like (paired yes/no)

MME_CATEGORIES = ("existence", "count", "position", "color", "OCR", "numerical_calculation")
MME_SUFFIX = " Please answer yes or no."


def _mme_pair(rng: random.Random, category: str):
    """(image, [(question, answer, evidence)] x2) with one Yes and one No question."""
    if category == "existence":
        objs = _scene(rng)
        y, n = Q.ask_exists(rng, objs, True), Q.ask_exists(rng, objs, False)
        return render(rng, objs), [(y.question, "Yes", y.evidence), (n.question, "No", n.evidence)]
    if category == "count":
        objs = _scene(rng, 4, 7)
        s = rng.choice([o.shape for o in objs])
        hits = [o for o in objs if o.shape == s]
        k = len(hits)
        wrong = rng.choice([x for x in (k - 1, k + 1) if x >= 1])
        ev = Q.boxes(*hits)
        qs = [
            (f"{Q.how_many(k, s)} in the image?", "Yes"),
            (f"{Q.how_many(wrong, s)} in the image?", "No"),
        ]
        return render(rng, objs), [(q, a, ev) for q, a in qs]
    if category == "position":
        objs = _scene(rng)
        qy, qn = Q.ask_relation_yn(rng, objs, True), Q.ask_relation_yn(rng, objs, False)
        if qy is None or qn is None:
            return None
        return render(rng, objs), [(qy.question, "Yes", qy.evidence), (qn.question, "No", qn.evidence)]
    if category == "color":
        objs = _scene(rng)
        cands = Q.unique(objs, lambda o: o.shape)
        if not cands:
            return None
        t = rng.choice(cands)
        others = [o.colour for o in objs if o.colour != t.colour] or [c for c in COLOUR_NAMES if c != t.colour]
        ev = Q.boxes(t)
        qs = [(f"Is the {t.shape} {t.colour}?", "Yes"), (f"Is the {t.shape} {rng.choice(others)}?", "No")]
        return render(rng, objs), [(q, a, ev) for q, a in qs]
    if category == "OCR":
        img, signs, _ = _sign_scene(rng, 1, rng.randint(2, 4))
        t = signs[0]
        wrong = rng.choice([w for w in WORDS if w != t.text.lower()]) if not t.text.isdigit() else str(int(t.text) + 1)
        ev = [list(t.box)]
        qs = [(f'Is the word on the sign "{t.text}"?', "Yes"), (f'Is the word on the sign "{wrong.upper()}"?', "No")]
        return img, [(q, a, ev) for q, a in qs]
    # numerical_calculation (the one MME cognition category we mimic): "a+b=" drawn in the image
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op = rng.choice("+-") if a >= b else "+"
    val = a + b if op == "+" else a - b
    cells = rng.sample([c for c in all_cells() if c[0] != 1], rng.randint(2, 3))
    img = render(rng, random_objects(rng, len(cells), cells=cells))
    text = f"{a}{op}{b}=?"
    w, h = text_size(text, 3)
    x, y = (168 - w) // 2 + rng.randint(-10, 10), CELL + (CELL - h) // 2 + rng.randint(-4, 4)
    draw_text(img, text, (x, y), scale=3)
    ev = [[x, y, x + w, y + h]]
    wrong = val + rng.choice([-2, -1, 1, 2])
    qs = [
        (f"Is the answer to the arithmetic question in the image {val}?", "Yes"),
        (f"Is the answer to the arithmetic question in the image {wrong}?", "No"),
    ]
    return img, [(q, a_, ev) for q, a_ in qs]


def gen_mme(rng: random.Random, n: int, split: str) -> list[Row]:
    rows: list[Row] = []
    i = 0
    while len(rows) < n:
        category = MME_CATEGORIES[i % len(MME_CATEGORIES)]
        img, qs = _retry(lambda category=category: _mme_pair(rng, category))
        img = _img(img)
        rng.shuffle(qs)
        for q, a, ev in qs:
            rows.append(
                {
                    "question_id": f"{split}/{category}/{i:06d}.png",
                    "question": q + MME_SUFFIX,
                    "answer": a,
                    "category": category,
                    "image": img,
                    "target_text": a,
                    "evidence": ev,
                }
            )
        i += 1
    return rows


MME = Generated(
    gen_mme, Features({"question_id": S, "question": S, "answer": S, "category": S, "image": IMG, **COMMON})
)
