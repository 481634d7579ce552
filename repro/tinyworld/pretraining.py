"""Generated pretraining scenes for `tinyworld-llava`: images with dense per-patch labels and a
caption, drawn with the same primitives as the tiny tasks (never the tasks' rows themselves).

Why: a vision tower trained from scratch through the answer loss alone (one or two answer tokens
per image) learns shapes and glyphs very slowly: measured on 2 CPU threads, shape words stay at
chance after 600 caption steps, while a linear head on per-patch shape labels reaches 89% patch
accuracy in 600 vision-only steps. So training runs in the LLaVA order: the tower first learns
what is in every patch (dense labels, cheap: no decoder), then, with the tower frozen, projector
and decoder learn to read it through captions (many supervised tokens per image), then the tasks.

Patch labels (12 x 12 patches, the patch centre decides): `shape` (0 none, 1..5 SHAPES),
`colour` (0 none, 1..6 COLOUR_NAMES; shapes, signs and bars), `char` (0 none, 1.. CHARS: the
glyph under the patch centre on signs and charts).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from . import questions as Q
from .scenes import (
    COL_NAMES,
    COLOUR_NAMES,
    GLYPH_H,
    GLYPH_W,
    IMAGE_SIZE,
    PATCH_SIZE,
    ROW_NAMES,
    SHAPES,
    TEXT_SCALE,
    WORDS,
    all_cells,
    bar_chart,
    random_objects,
    render,
    sign_in_cell,
    text_size,
)

SIDE = IMAGE_SIZE // PATCH_SIZE
CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
HEADS = {"shape": 1 + len(SHAPES), "colour": 1 + len(COLOUR_NAMES), "char": 1 + len(CHARS)}
CAPTION_PROMPT = "Describe the image."


@dataclass
class Scene:
    image: object  # PIL image
    labels: dict[str, torch.Tensor]  # head -> (SIDE * SIDE,) long
    caption: str
    turns: list[tuple[str, str]] = field(default_factory=list)  # follow-up (question, answer) turns
    evidence: list[list[tuple[int, int, int, int]]] = field(default_factory=list)  # per turn: boxes its answer reads


CENTRES = [(c * PATCH_SIZE + PATCH_SIZE // 2, r * PATCH_SIZE + PATCH_SIZE // 2) for r in range(SIDE) for c in range(SIDE)]
"""Pixel centre of each patch, row-major: a patch takes the label of what covers its centre."""


def evidence_patches(boxes, scale: float = 1.0) -> list[int]:
    """Patches (row-major) whose centre lies in one of the pixel `boxes` (`scale`: model pixels
    per image pixel), or [] when the boxes cover nothing or at least 90% of the image (no hint)."""
    hit = {i for b in boxes for i, (cx, cy) in enumerate(CENTRES)
           if b[0] * scale <= cx < b[2] * scale and b[1] * scale <= cy < b[3] * scale}
    return sorted(hit) if len(hit) < 0.9 * len(CENTRES) else []


def _mark(labels: torch.Tensor, box, value: int) -> None:
    x0, y0, x1, y1 = box
    for i, (cx, cy) in enumerate(CENTRES):
        if x0 <= cx < x1 and y0 <= cy < y1:
            labels[i] = value


def _mark_text(labels: torch.Tensor, text: str, xy) -> None:
    step, height = GLYPH_W * TEXT_SCALE, GLYPH_H * TEXT_SCALE
    for k, ch in enumerate(text):
        if ch in CHARS:
            x = xy[0] + k * step
            _mark(labels, (x, xy[1], x + step, xy[1] + height), 1 + CHARS.index(ch))


def _empty() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(SIDE * SIDE, dtype=torch.long) for k in HEADS}


def _sign_text(rng: random.Random) -> str:
    return rng.choice(WORDS).upper() if rng.random() < 0.6 else str(rng.randint(0, 9999))


def object_scene(rng: random.Random) -> Scene:
    """3-6 shapes and 0-2 signs in distinct cells; the caption lists them in reading order."""
    cells = rng.sample(all_cells(), rng.randint(3, 7))
    n_signs = min(len(cells) - 2, rng.choice((0, 0, 1, 2)))
    objs = random_objects(rng, len(cells) - n_signs, cells=cells[n_signs:])
    signs = [sign_in_cell(rng, _sign_text(rng), rng.choice(COLOUR_NAMES), r, c) for r, c in cells[:n_signs]]
    image = render(rng, objs, signs)
    labels = _empty()
    parts = []
    for o in objs:
        _mark(labels["shape"], o.box, 1 + SHAPES.index(o.shape))
        _mark(labels["colour"], o.box, 1 + COLOUR_NAMES.index(o.colour))
        parts.append((o.row, o.col, f"{o.size} {o.colour} {o.shape}"))
    for s in signs:
        _mark(labels["colour"], s.box, 1 + COLOUR_NAMES.index(s.colour))
        x0, y0, x1, y1 = s.box
        tw, th = text_size(s.text)
        _mark_text(labels["char"], s.text, (x0 + (x1 - x0 - tw) // 2, y0 + (y1 - y0 - th) // 2 + 1))
        parts.append((s.row, s.col, f"{s.colour} sign {s.text.lower()}"))
    caption = "; ".join(f"{ROW_NAMES[r]} {COL_NAMES[c]}: {what}" for r, c, what in sorted(parts))
    turns = [(qa.question, qa.answer, [tuple(b) for b in qa.evidence]) for qa in _object_questions(rng, objs)]
    turns += [(f"What word is on the {s.colour} sign?", s.text.lower(), [s.box]) for s in signs]
    rng.shuffle(turns)
    turns = turns[:TURNS]
    return Scene(image, labels, caption, [t[:2] for t in turns], [t[2] for t in turns])


def chart_scene(rng: random.Random) -> Scene:
    """A bar chart; the caption reads every bar left to right as `label value colour`."""
    image, bars = bar_chart(rng, rng.randint(3, 6))
    labels = _empty()
    base = IMAGE_SIZE - 26
    for b in bars:
        x0, top, x1, _ = b.box
        cx = (x0 + x1) // 2
        _mark(labels["colour"], (x0, top + GLYPH_H * TEXT_SCALE + 1, x1, base), 1 + COLOUR_NAMES.index(b.colour))
        value = str(b.value)
        _mark_text(labels["char"], value, (cx - text_size(value)[0] // 2, top))
        _mark_text(labels["char"], b.label, (cx - text_size(b.label)[0] // 2, base + 2))
    caption = "bars: " + ", ".join(f"{b.label.lower()} {b.value} {b.colour}" for b in bars)
    top = max(bars, key=lambda b: b.value)
    asked = rng.sample(bars, min(3, len(bars)))
    turns = [(f"What is the value of bar {b.label}?", str(b.value)) for b in asked]
    evidence = [[b.box] for b in asked]
    if sum(b.value == top.value for b in bars) == 1:
        turns.append(("Which bar has the highest value?", top.label))
        evidence.append([b.box for b in bars])
    return Scene(image, labels, caption, turns, evidence)


TURNS = 6
"""Follow-up questions per scene: each needs a content lookup ("the colour of the cross"), the
skill captions (read in reading order) do not teach, and one image forward serves them all."""


def _object_questions(rng: random.Random, objs: list) -> list:
    """The task generators' own question kinds (questions.py), asked of one scene."""
    asked = [Q.ask_colour(rng, objs), Q.ask_shape(rng, objs), Q.ask_count(rng, objs), Q.ask_size(rng, objs),
             Q.ask_side(rng, objs), Q.ask_exists(rng, objs, True), Q.ask_exists(rng, objs, False),
             Q.ask_relation(rng, objs)]
    return [qa for qa in asked if qa is not None]


def scenes(seed: int, n: int, chart_fraction: float = 0.2) -> list[Scene]:
    """`n` scenes from one seeded stream (deterministic)."""
    rng = random.Random(f"tinyworld-pretraining/{seed}")
    return [chart_scene(rng) if rng.random() < chart_fraction else object_scene(rng) for _ in range(n)]
