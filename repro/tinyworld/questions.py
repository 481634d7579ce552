"""Template questions about a scene of shapes, shared by the benchmark-shaped tasks.

Each asker takes a scene and returns a `QA` (question, answer, the boxes the answer depends on,
the vocabulary of plausible answers for multiple-choice distractors) or None when the scene does
not support that question; callers then draw a new scene. Referring expressions are always
unambiguous in the scene ("the red star" names exactly one object), and answers come from a small
closed vocabulary so short-answer accuracy is learnable. English and Chinese wording share the
same logic (the Chinese one serves the MMBench-CN-shaped task).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .scenes import COL_NAMES, COLOUR_NAMES, ROW_NAMES, SHAPES, Obj

PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
ZH = {
    "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
    "circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "cross": "十字形",
    "left": "左侧", "right": "右侧", "top": "上方", "bottom": "下方", "small": "小", "large": "大",
    "yes": "是", "no": "否",
}  # fmt: skip
COUNT_WORDS = tuple(str(i) for i in range(6))


@dataclass(frozen=True)
class QA:
    """A question with its answer; `pool` lists same-type answers usable as MC distractors."""

    question: str
    answer: str
    kind: str
    evidence: list[list[int]]
    pool: tuple[str, ...] = ()
    preferred: tuple[str, ...] = field(default=())
    """Distractors to prefer (answers that are *plausible in this scene*, e.g. other colours present)."""


def with_article(word: str) -> str:
    """'a' or 'an' before an English word ("an orange star")."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def how_many(k: int, shape: str) -> str:
    """'Is there 1 star' / 'Are there 3 stars' (count questions of the MME kind)."""
    return f"Is there 1 {shape}" if k == 1 else f"Are there {k} {PLURAL[shape]}"


def boxes(*objs: Obj) -> list[list[int]]:
    return [list(o.box) for o in objs]


def unique(objs: list[Obj], key: Callable[[Obj], object]) -> list[Obj]:
    """Objects whose `key` value occurs once in the scene (so it can name them unambiguously)."""
    counts = Counter(key(o) for o in objs)
    return [o for o in objs if counts[key(o)] == 1]


def tr(word: str, lang: str) -> str:
    return ZH.get(word, word) if lang == "zh" else word


def name(o: Obj, lang: str = "en") -> str:
    return f"{tr(o.colour, lang)}{tr(o.shape, lang)}" if lang == "zh" else f"{o.colour} {o.shape}"


def ask_colour(rng: random.Random, objs: list[Obj], lang: str = "en") -> QA | None:
    """Colour of the only object of some shape; other colours in the scene are the distractors."""
    cands = unique(objs, lambda o: o.shape)
    if not cands:
        return None
    t = rng.choice(cands)
    q = f"图中的{tr(t.shape, lang)}是什么颜色？" if lang == "zh" else f"What color is the {t.shape}?"
    others = tuple(tr(o.colour, lang) for o in objs if o.colour != t.colour)
    return QA(q, tr(t.colour, lang), "colour", boxes(t), tuple(tr(c, lang) for c in COLOUR_NAMES), others)


def ask_shape(rng: random.Random, objs: list[Obj], lang: str = "en") -> QA | None:
    cands = unique(objs, lambda o: o.colour)
    if not cands:
        return None
    t = rng.choice(cands)
    q = f"图中{tr(t.colour, lang)}的物体是什么形状？" if lang == "zh" else f"What shape is the {t.colour} object?"
    others = tuple(tr(o.shape, lang) for o in objs if o.shape != t.shape)
    return QA(q, tr(t.shape, lang), "shape", boxes(t), tuple(tr(s, lang) for s in SHAPES), others)


def ask_count(rng: random.Random, objs: list[Obj], lang: str = "en") -> QA | None:
    """How many objects share a colour or a shape (evidence: all of them; answer may be 0)."""
    if rng.random() < 0.5:
        c = rng.choice([o.colour for o in objs] + [rng.choice(COLOUR_NAMES)])
        hits = [o for o in objs if o.colour == c]
        q = f"图中有几个{tr(c, lang)}的物体？" if lang == "zh" else f"How many {c} objects are there?"
    else:
        s = rng.choice([o.shape for o in objs] + [rng.choice(SHAPES)])
        hits = [o for o in objs if o.shape == s]
        q = f"图中有几个{tr(s, lang)}？" if lang == "zh" else f"How many {PLURAL[s]} are there?"
    return QA(q, str(len(hits)), "count", boxes(*hits), COUNT_WORDS)


def ask_size(rng: random.Random, objs: list[Obj], lang: str = "en") -> QA | None:
    cands = unique(objs, lambda o: o.kind)
    if not cands:
        return None
    t = rng.choice(cands)
    q = f"图中的{name(t, lang)}是大还是小？" if lang == "zh" else f"Is the {name(t)} small or large?"
    return QA(q, tr(t.size, lang), "size", boxes(t), (tr("small", lang), tr("large", lang)))


def ask_side(rng: random.Random, objs: list[Obj], lang: str = "en") -> QA | None:
    """Which side (left/right) or part (top/bottom) of the image an object is in."""
    cands = [o for o in unique(objs, lambda o: o.kind) if o.col != 1 or o.row != 1]
    if not cands:
        return None
    t = rng.choice(cands)
    if t.col != 1 and (t.row == 1 or rng.random() < 0.5):
        ans = COL_NAMES[t.col]
        q = (
            f"{name(t, lang)}在图像的左侧还是右侧？"
            if lang == "zh"
            else f"Is the {name(t)} on the left or the right side of the image?"
        )
        pool = ("left", "right")
    else:
        ans = ROW_NAMES[t.row]
        q = (
            f"{name(t, lang)}在图像的上方还是下方？"
            if lang == "zh"
            else f"Is the {name(t)} in the top or the bottom part of the image?"
        )
        pool = ("top", "bottom")
    return QA(q, tr(ans, lang), "position", boxes(t), tuple(tr(p, lang) for p in pool))


def ask_exists(rng: random.Random, objs: list[Obj], want: bool, lang: str = "en") -> QA:
    """Is there a <colour> <shape>? Negatives share an attribute with an object present (hard)."""
    present = {o.kind for o in objs}
    if want:
        t = rng.choice(objs)
        kind, ev = t.kind, boxes(t)
    else:
        ref = rng.choice(objs)
        near = [(c, ref.shape) for c in COLOUR_NAMES] + [(ref.colour, s) for s in SHAPES]
        near = [k for k in near if k not in present]
        kind, ev = rng.choice(near), []
    c, s = kind
    q = f"图中有{tr(c, lang)}{tr(s, lang)}吗？" if lang == "zh" else f"Is there {with_article(c)} {s} in the image?"
    return QA(q, tr("yes" if want else "no", lang), "existence", ev, (tr("yes", lang), tr("no", lang)))


def _neighbours(objs: list[Obj], ref: Obj, direction: str) -> list[Obj]:
    """Objects anywhere left of / right of / above / below `ref` (by grid column or row), so that
    "the shape to the left of X" is only asked when exactly one object qualifies."""
    if direction == "left":
        return [o for o in objs if o.col < ref.col]
    if direction == "right":
        return [o for o in objs if o.col > ref.col]
    if direction == "above":
        return [o for o in objs if o.row < ref.row]
    return [o for o in objs if o.row > ref.row]


def ask_relation(rng: random.Random, objs: list[Obj], lang: str = "en") -> QA | None:
    """GQA-style two-hop question: an attribute of the only object left of/above/... a reference."""
    refs = unique(objs, lambda o: o.kind)
    rng.shuffle(refs)
    for ref in refs:
        for direction in rng.sample(["left", "right", "above", "below"], 4):
            hit = _neighbours(objs, ref, direction)
            if len(hit) != 1:
                continue
            t = hit[0]
            where = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}[
                direction
            ]
            if rng.random() < 0.5:
                q, ans, pool = f"What color is the shape {where} the {name(ref)}?", t.colour, COLOUR_NAMES
            else:
                q, ans, pool = f"What shape is {where} the {name(ref)}?", t.shape, SHAPES
            return QA(q, ans, "relation", boxes(ref, t), pool)
    return None


def ask_relation_yn(rng: random.Random, objs: list[Obj], want: bool) -> QA | None:
    """Is A to the left of / above B? (needs both objects; 50/50 by `want`)."""
    refs = unique(objs, lambda o: o.kind)
    pairs = [(a, b) for a in refs for b in refs if a is not b and (a.col != b.col or a.row != b.row)]
    rng.shuffle(pairs)
    for a, b in pairs:
        options = []
        if a.col != b.col:
            options.append(("to the left of", a.col < b.col))
            options.append(("to the right of", a.col > b.col))
        if a.row != b.row:
            options.append(("above", a.row < b.row))
            options.append(("below", a.row > b.row))
        options = [o for o in options if o[1] == want]
        if options:
            where, _ = rng.choice(options)
            q = f"Is the {name(a)} {where} the {name(b)}?"
            return QA(q, "yes" if want else "no", "relation", boxes(a, b), ("yes", "no"))
    return None


def ask_same_colour(rng: random.Random, objs: list[Obj], want: bool) -> QA | None:
    """Do the <shape1> and the <shape2> have the same color? (compares two regions)."""
    cands = unique(objs, lambda o: o.shape)
    pairs = [(a, b) for a in cands for b in cands if a.shape < b.shape and (a.colour == b.colour) == want]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    q = f"Do the {a.shape} and the {b.shape} have the same color?"
    return QA(q, "yes" if want else "no", "compare", boxes(a, b), ("yes", "no"))


SHORT_ANSWER_ASKERS: dict[str, Callable[..., QA | None]] = {
    "colour": ask_colour,
    "shape": ask_shape,
    "count": ask_count,
    "size": ask_size,
    "position": ask_side,
}
"""Askers with no yes/no target, usable in any language."""


def choices_for(rng: random.Random, qa: QA, n: int) -> tuple[list[str], int]:
    """`n` shuffled options containing the answer, in-scene distractors first; returns (options, index)."""
    pref = [p for p in dict.fromkeys(qa.preferred) if p != qa.answer]
    rest = [p for p in qa.pool if p != qa.answer and p not in pref]
    rng.shuffle(pref)
    rng.shuffle(rest)
    opts = [qa.answer, *(pref + rest)[: n - 1]]
    rng.shuffle(opts)
    return opts, opts.index(qa.answer)
