"""Lettered multiple-choice tasks: ScienceQA-IMG, AI2D, SEED-Bench and MMBench (EN and CN) shapes.

Options are shuffled so every letter is the right one about equally often (a constant "A" model
scores chance), and distractors are preferably things present in the same picture, so an answer
cannot be guessed from the options alone.
"""

from __future__ import annotations

import math
import random

from datasets import Features, List

from . import questions as Q
from .scenes import (
    COL_NAMES,
    ROW_NAMES,
    SIZES,
    WORDS,
    Obj,
    diagram,
    random_objects,
    render,
)
from .tasks import (
    COMMON,
    I64,
    IMG,
    Generated,
    Row,
    S,
    _img,
    _qid,
    _retry,
    _scene,
    _sign_scene,
)

LETTERS = "ABCDE"


def _cell_name(row: int, col: int) -> str:
    if (row, col) == (1, 1):
        return "center"
    if row == 1:
        return COL_NAMES[col]
    if col == 1:
        return ROW_NAMES[row]
    return f"{ROW_NAMES[row]} {COL_NAMES[col]}"


CELL_NAMES = tuple(_cell_name(r, c) for r in range(3) for c in range(3))


# ------------------------------------------------------------------ ScienceQA-IMG-like


def _sqa_item(rng: random.Random):
    """(image, hint, question, options, answer index, evidence): a context rule applied to the picture."""
    objs = _scene(rng, 3, 6)
    r = rng.random()
    if r < 0.4:
        cands = [o for o in Q.unique(objs, lambda o: o.colour) if sum(p.shape == o.shape for p in objs) == 1]
        others = list(dict.fromkeys(o.shape for o in objs))
        if not cands or len(others) < 2:
            return None
        t = rng.choice(cands)
        others.remove(t.shape)
        opts = [t.shape, *rng.sample(others, min(len(others), rng.randint(1, 3)))]
        rng.shuffle(opts)
        hint = f"In this experiment, every {t.colour} object is a magnet."
        return objs, hint, "Which shape in the picture is a magnet?", opts, opts.index(t.shape), Q.boxes(t)
    if r < 0.7:
        cols = list(dict.fromkeys(o.colour for o in objs))
        if len(cols) < 2:
            return None
        a, b = rng.sample(cols, 2)
        na, nb = sum(o.colour == a for o in objs), sum(o.colour == b for o in objs)
        if na == nb:
            return None
        ev = Q.boxes(*[o for o in objs if o.colour in (a, b)])
        return (
            objs,
            "Count the objects of each color.",
            "Which color is used by more objects?",
            [a, b],
            int(nb > na),
            ev,
        )
    cands = Q.unique(objs, lambda o: o.kind)
    pairs = [(x, y) for x in cands for y in cands if x.size == "large" and y.size == "small"]
    if not pairs:
        return None
    x, y = rng.choice(pairs)
    opts = [f"the {Q.name(x)}", f"the {Q.name(y)}"]
    rng.shuffle(opts)
    return objs, "", "Which object is larger?", opts, opts.index(f"the {Q.name(x)}"), Q.boxes(x, y)


def gen_scienceqa(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        objs, hint, q, opts, ans, ev = _retry(lambda: _sqa_item(rng))
        rows.append(
            {
                "question_id": _qid(split, i),
                "hint": hint,
                "question": q,
                "choices": opts,
                "answer": ans,
                "subject": "natural science",
                "image": _img(render(rng, objs)),
                "target_text": LETTERS[ans],
                "evidence": ev,
            }
        )
    return rows


SCIENCEQA = Generated(
    gen_scienceqa,
    Features(
        {
            "question_id": S,
            "hint": S,
            "question": S,
            "choices": List(S),
            "answer": I64,
            "subject": S,
            "image": IMG,
            **COMMON,
        }
    ),
)


# ------------------------------------------------------------------ AI2D-like (arrow diagrams)


def _blocked(objs: list[Obj], a: int, b: int) -> bool:
    """Would the arrow a->b pass over a third object (making the diagram ambiguous)?"""
    ax, ay, bx, by = objs[a].cx, objs[a].cy, objs[b].cx, objs[b].cy
    length = math.hypot(bx - ax, by - ay)
    for k, o in enumerate(objs):
        if k in (a, b):
            continue
        t = max(0.0, min(1.0, ((o.cx - ax) * (bx - ax) + (o.cy - ay) * (by - ay)) / (length * length)))
        px, py = ax + t * (bx - ax), ay + t * (by - ay)
        if math.hypot(o.cx - px, o.cy - py) < SIZES[o.size] / 2 + 6:
            return True
    return False


def _ai2d_item(rng: random.Random):
    kinds = rng.sample([(c, s) for c in Q.COLOUR_NAMES for s in Q.SHAPES], 8)
    objs = random_objects(rng, rng.randint(4, 5), kinds=kinds, p_small=0.25)
    pairs = [(a, b) for a in range(len(objs)) for b in range(len(objs)) if a != b and not _blocked(objs, a, b)]
    rng.shuffle(pairs)
    edges: list[tuple[int, int]] = []
    for a, b in pairs:
        if (b, a) not in edges and len(edges) < rng.randint(3, 4):
            edges.append((a, b))
    if len(edges) < 3:
        return None
    out_deg = [sum(e[0] == i for e in edges) for i in range(len(objs))]
    in_deg = [sum(e[1] == i for e in edges) for i in range(len(objs))]
    names = [Q.name(o) for o in objs]
    r = rng.random()
    if r < 0.3:
        srcs = [i for i in range(len(objs)) if out_deg[i] == 1]
        if not srcs:
            return None
        s = rng.choice(srcs)
        d = next(e[1] for e in edges if e[0] == s)
        q, ans, ev = f"In the diagram, what does the {names[s]} point to?", names[d], [s, d]
        pool = [x for i, x in enumerate(names) if i != s]
    elif r < 0.6:
        dsts = [i for i in range(len(objs)) if in_deg[i] == 1]
        if not dsts:
            return None
        d = rng.choice(dsts)
        s = next(e[0] for e in edges if e[1] == d)
        q, ans, ev = f"In the diagram, which object points to the {names[d]}?", names[s], [s, d]
        pool = [x for i, x in enumerate(names) if i != d]
    elif r < 0.8:
        t = rng.randrange(len(objs))
        q, ans = f"How many arrows point to the {names[t]}?", str(in_deg[t])
        ev = [t] + [e[0] for e in edges if e[1] == t]
        pool = ["0", "1", "2", "3"]
    else:
        roots = [i for i in range(len(objs)) if in_deg[i] == 0]
        if len(roots) != 1:
            return None
        q, ans, ev, pool = "Which object has no arrows pointing to it?", names[roots[0]], list(range(len(objs))), names
    others = [p for p in pool if p != ans]
    if len(others) < 3:  # top up with kinds absent from the diagram, so there are always 4 options
        absent = [f"{c} {s}" for c, s in kinds if f"{c} {s}" not in names]
        others += rng.sample(absent, 3 - len(others))
    opts = [ans, *rng.sample(others, 3)]
    rng.shuffle(opts)
    return diagram(rng, objs, edges), q, opts, opts.index(ans), Q.boxes(*[objs[i] for i in ev])


def gen_ai2d(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        img, q, opts, ans, ev = _retry(lambda: _ai2d_item(rng))
        rows.append(
            {
                "question_id": _qid(split, i),
                "question": q,
                "options": opts,
                "answer": str(ans),
                "image": _img(img),
                "target_text": LETTERS[ans],
                "evidence": ev,
            }
        )
    return rows


AI2D = Generated(
    gen_ai2d,
    Features({"question_id": S, "question": S, "options": List(S), "answer": S, "image": IMG, **COMMON}),
)


# ------------------------------------------------------------------ SEED-Bench-like (4 options, image list)

SEED_DIMENSIONS = {2: "Instance Identity", 3: "Instance Attributes", 4: "Instance Location", 5: "Instances Counting", 6: "Spatial Relation", 9: "Text Understanding"}  # fmt: skip


def _location_qa(rng: random.Random, objs: list[Obj]) -> Q.QA | None:
    cands = Q.unique(objs, lambda o: o.kind)
    if not cands:
        return None
    t = rng.choice(cands)
    others = tuple(_cell_name(o.row, o.col) for o in objs if o is not t)
    return Q.QA(
        f"Where is the {Q.name(t)} in the image?", _cell_name(t.row, t.col), "location", Q.boxes(t), CELL_NAMES, others
    )


def _spatial_qa(rng: random.Random, objs: list[Obj]) -> Q.QA | None:
    refs = Q.unique(objs, lambda o: o.kind)
    pairs = [(a, b) for a in refs for b in refs if a is not b and (a.row == b.row) != (a.col == b.col)]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    rel = ("left of" if a.col < b.col else "right of") if a.row == b.row else ("above" if a.row < b.row else "below")
    q = f"Where is the {Q.name(a)} relative to the {Q.name(b)}?"
    return Q.QA(q, rel, "spatial", Q.boxes(a, b), ("left of", "right of", "above", "below"))


def _seed_item(rng: random.Random):
    dim = rng.choice(list(SEED_DIMENSIONS))
    if dim == 9:
        img, signs, _ = _sign_scene(rng, 3, rng.randint(1, 3))
        t = rng.choice(signs)
        qa = Q.QA(
            f"What is written on the {t.colour} sign?",
            t.text.lower(),
            "text",
            [list(t.box)],
            tuple(WORDS),
            tuple(s.text.lower() for s in signs),
        )
    else:
        asker = {2: Q.ask_shape, 3: Q.ask_colour, 4: _location_qa, 5: Q.ask_count, 6: _spatial_qa}[dim]
        objs = _scene(rng, 3, 6)
        qa = asker(rng, objs)
        if qa is None:
            return None
        img = render(rng, objs)
    opts, ans = Q.choices_for(rng, qa, 4)
    return dim, img, qa, opts, ans


def gen_seed(rng: random.Random, n: int, split: str) -> list[Row]:
    rows = []
    for i in range(n):
        dim, img, qa, opts, ans = _retry(lambda: _seed_item(rng))
        rows.append(
            {
                "question_id": _qid(split, i),
                "question": qa.question,
                "choice_a": opts[0],
                "choice_b": opts[1],
                "choice_c": opts[2],
                "choice_d": opts[3],
                "answer": LETTERS[ans],
                "data_type": "image",
                "question_type_id": dim,
                "image": [_img(img)],
                "target_text": LETTERS[ans],
                "evidence": qa.evidence,
            }
        )
    return rows


SEED = Generated(
    gen_seed,
    Features(
        {
            "question_id": S,
            "question": S,
            "choice_a": S,
            "choice_b": S,
            "choice_c": S,
            "choice_d": S,
            "answer": S,
            "data_type": S,
            "question_type_id": I64,
            "image": List(IMG),
            **COMMON,
        }
    ),
)


# ------------------------------------------------------------------ MMBench-like (circular evaluation)

MMBENCH_KINDS = {
    "colour": ("attribute_recognition", "finegrained_perception (instance-level)", 4),
    "shape": ("attribute_recognition", "finegrained_perception (instance-level)", 4),
    "size": ("attribute_recognition", "finegrained_perception (instance-level)", 2),
    "position": ("object_localization", "finegrained_perception (instance-level)", 2),
    "count": ("object_counting", "finegrained_perception (cross-instance)", 4),
}
CIRCULAR_STRIDE = 1_000_000
"""Same convention as MMBench: rotation r of question i has index i + r * 1e6."""


def _mmbench_rows(rng: random.Random, n: int, split: str, lang: str) -> list[Row]:
    """Base questions, each asked once per rotation of its options (circular evaluation)."""
    rows: list[Row] = []
    base = 0
    while len(rows) < n:
        kind = rng.choice(list(MMBENCH_KINDS))
        category, l2, n_opts = MMBENCH_KINDS[kind]

        def make(kind: str = kind):
            objs = _scene(rng)
            qa = Q.SHORT_ANSWER_ASKERS[kind](rng, objs, lang)
            return None if qa is None else (objs, qa)

        objs, qa = _retry(make)
        img = _img(render(rng, objs))
        opts, ans = Q.choices_for(rng, qa, n_opts)
        for r in range(len(opts)):
            rot = opts[r:] + opts[:r]
            letter = LETTERS[(ans - r) % len(opts)]
            rows.append(
                {
                    "index": base + r * CIRCULAR_STRIDE,
                    "circular_id": base,
                    "question": qa.question,
                    "hint": "",
                    **{LETTERS[k]: (rot[k] if k < len(rot) else None) for k in range(4)},
                    "answer": letter,
                    "category": category,
                    "L2-category": l2,
                    "source": "tinyworld",
                    "split": "dev",
                    "image": img,
                    "target_text": letter,
                    "evidence": qa.evidence,
                }
            )
        base += 1
    return rows


def gen_mmbench_en(rng: random.Random, n: int, split: str) -> list[Row]:
    return _mmbench_rows(rng, n, split, "en")


def gen_mmbench_cn(rng: random.Random, n: int, split: str) -> list[Row]:
    return _mmbench_rows(rng, n, split, "zh")


_MMBENCH_FEATURES = Features(
    {
        "index": I64,
        "circular_id": I64,
        "question": S,
        "hint": S,
        "A": S,
        "B": S,
        "C": S,
        "D": S,
        "answer": S,
        "category": S,
        "L2-category": S,
        "source": S,
        "split": S,
        "image": IMG,
        **COMMON,
    }
)
MMBENCH_EN = Generated(gen_mmbench_en, _MMBENCH_FEATURES)
MMBENCH_CN = Generated(gen_mmbench_cn, _MMBENCH_FEATURES)
