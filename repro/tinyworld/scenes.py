"""Drawing primitives of the tiny world: shapes on a 3x3 grid, text signs, bar charts, arrow diagrams.

The vocabulary is deliberately small (5 shapes, 6 saturated colours, 2 sizes, 9 cells) so a tiny
vision tower trained from scratch on CPU can learn it, while scenes hold several objects, small
details and distractors so that *which* visual tokens a pruning method keeps changes the answer.
Text uses PIL's built-in bitmap font scaled up with nearest-neighbour resampling: it needs no font
file, and its pixels do not depend on the FreeType version, which keeps images byte-identical.
All randomness comes from a `random.Random` passed in by the caller.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 168
"""Side of every generated image in pixels: 12 x 12 = 144 patches of `PATCH_SIZE`."""
PATCH_SIZE = 14
GRID = 3
CELL = IMAGE_SIZE // GRID  # 56 px = 4 x 4 patches

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (22, 150, 60),
    "blue": (37, 90, 235),
    "yellow": (230, 190, 10),
    "purple": (140, 50, 220),
    "orange": (245, 120, 20),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SIZES: dict[str, int] = {"small": 20, "large": 42}
"""Bounding-box side per size word; a small object covers about 2 x 2 patches."""
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((246, 246, 246), (238, 235, 224), (226, 233, 242))
ROW_NAMES: tuple[str, ...] = ("top", "middle", "bottom")
COL_NAMES: tuple[str, ...] = ("left", "center", "right")
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "map", "box", "cup", "hat", "key", "pen", "bus",
    "car", "egg", "fox", "ink", "jam", "owl", "zip", "van", "web", "yak",
    "stop", "open", "exit", "shop", "park", "fire", "milk", "book", "fish", "tree",
)  # fmt: skip
"""Words rendered on signs (upper case in the image, lower case as answers)."""
TEXT_SCALE = 2
"""Bitmap glyphs are 6 x 11 px; scaled x2 a 4-letter word is 48 x 22 px (legible at 168 px)."""
GLYPH_W, GLYPH_H = 6, 11


@dataclass(frozen=True)
class Obj:
    """One shape in a scene; `row`/`col` index the 3x3 grid, (cx, cy) its centre in pixels."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    cx: int
    cy: int

    @property
    def kind(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    @property
    def box(self) -> tuple[int, int, int, int]:
        h = SIZES[self.size] // 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def name(self, with_size: bool = False) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Sign:
    """A filled rectangle carrying a short upper-case text; the text is the thing to read."""

    text: str
    colour: str
    row: int
    col: int
    box: tuple[int, int, int, int]


def cell_box(row: int, col: int) -> tuple[int, int, int, int]:
    return (col * CELL, row * CELL, (col + 1) * CELL, (row + 1) * CELL)


def all_cells() -> list[tuple[int, int]]:
    return [(r, c) for r in range(GRID) for c in range(GRID)]


def place(rng: random.Random, shape: str, colour: str, size: str, row: int, col: int) -> Obj:
    """Place an object in a cell with a random jitter that keeps it inside the cell."""
    half = SIZES[size] // 2
    slack = CELL // 2 - half - 3
    cx = col * CELL + CELL // 2 + rng.randint(-slack, slack)
    cy = row * CELL + CELL // 2 + rng.randint(-slack, slack)
    return Obj(shape, colour, size, row, col, cx, cy)


def random_objects(
    rng: random.Random,
    n: int,
    *,
    cells: list[tuple[int, int]] | None = None,
    kinds: list[tuple[str, str]] | None = None,
    p_small: float = 0.4,
) -> list[Obj]:
    """`n` objects in distinct cells; `kinds` (colour, shape) are used first, the rest uniform."""
    free = cells if cells is not None else all_cells()
    chosen = rng.sample(free, n)
    objs = []
    for i, (r, c) in enumerate(chosen):
        if kinds is not None and i < len(kinds):
            colour, shape = kinds[i]
        else:
            colour, shape = rng.choice(COLOUR_NAMES), rng.choice(SHAPES)
        size = "small" if rng.random() < p_small else "large"
        objs.append(place(rng, shape, colour, size, r, c))
    return objs


def background(rng: random.Random) -> Image.Image:
    """A light background with faint speckles (texture the vision tower must learn to ignore)."""
    base = rng.choice(BACKGROUNDS)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), base)
    draw = ImageDraw.Draw(img)
    dark = tuple(max(0, v - 22) for v in base)
    for _ in range(rng.randint(20, 50)):
        x, y = rng.randrange(IMAGE_SIZE), rng.randrange(IMAGE_SIZE)
        s = rng.randint(0, 1)
        draw.rectangle((x, y, x + s, y + s), fill=dark)
    return img


def _star_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, obj: Obj) -> None:
    x0, y0, x1, y1 = obj.box
    fill = COLOURS[obj.colour]
    edge = tuple(v // 2 for v in fill)
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill, outline=edge)
    elif obj.shape == "square":
        inset = max(1, (x1 - x0) // 10)
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill, outline=edge)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=edge)
    elif obj.shape == "star":
        r = (x1 - x0) / 2
        draw.polygon(_star_points(obj.cx, obj.cy, r * 1.05), fill=fill, outline=edge)
    elif obj.shape == "cross":
        t = max(2, (x1 - x0) // 3)
        mx, my = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((mx - t // 2, y0, mx + t - t // 2, y1), fill=fill)
        draw.rectangle((x0, my - t // 2, x1, my + t - t // 2), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default_imagefont()


def text_size(text: str, scale: int = TEXT_SCALE) -> tuple[int, int]:
    return (GLYPH_W * len(text) * scale, GLYPH_H * scale)


def draw_text(img: Image.Image, text: str, xy: tuple[int, int], colour=(0, 0, 0), scale: int = TEXT_SCALE) -> None:
    """Paste bitmap-font text scaled by an integer factor (nearest neighbour: crisp, deterministic)."""
    w, h = GLYPH_W * len(text), GLYPH_H
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=_font(), fill=255)
    mask = mask.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    img.paste(Image.new("RGB", mask.size, colour), xy, mask)


def sign_in_cell(rng: random.Random, text: str, colour: str, row: int, col: int) -> Sign:
    """A sign just large enough for its text, jittered inside its cell."""
    tw, th = text_size(text)
    w, h = tw + 6, th + 4
    slack_x, slack_y = max(0, CELL - w - 2), max(0, CELL - h - 2)
    x0 = col * CELL + 1 + rng.randint(0, slack_x)
    y0 = row * CELL + 1 + rng.randint(0, slack_y)
    return Sign(text, colour, row, col, (x0, y0, x0 + w, y0 + h))


def draw_sign(img: Image.Image, sign: Sign) -> None:
    x0, y0, x1, y1 = sign.box
    fill = COLOURS[sign.colour]
    ImageDraw.Draw(img).rectangle(sign.box, fill=fill, outline=tuple(v // 2 for v in fill))
    ink = (0, 0, 0) if sign.colour in ("yellow", "orange", "green") else (255, 255, 255)
    tw, th = text_size(sign.text)
    draw_text(img, sign.text, (x0 + (x1 - x0 - tw) // 2, y0 + (y1 - y0 - th) // 2 + 1), ink)


def render(rng: random.Random, objs: list[Obj] = (), signs: list[Sign] = ()) -> Image.Image:
    img = background(rng)
    draw = ImageDraw.Draw(img)
    for obj in objs:
        draw_shape(draw, obj)
    for sign in signs:
        draw_sign(img, sign)
    return img


def png_bytes(img: Image.Image) -> bytes:
    """Lossless PNG; zlib output for the same pixels is the same, so parquet files hash equal."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# ---------------------------------------------------------------- bar charts (ChartQA-like)

BAR_LABELS = "ABCDEFGHJKLMNPRSTUVWXYZ"
CHART_MAX = 20


@dataclass(frozen=True)
class Bar:
    label: str
    colour: str
    value: int
    box: tuple[int, int, int, int]


def bar_chart(rng: random.Random, n_bars: int) -> tuple[Image.Image, list[Bar]]:
    """A bar chart: coloured bars with a value printed above each and a letter below each."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, base, top = 8, IMAGE_SIZE - 8, IMAGE_SIZE - 26, 26
    draw.line((left, base, right, base), fill=(0, 0, 0), width=1)
    for frac in (0.5, 1.0):  # faint gridlines
        y = base - round(frac * (base - top))
        draw.line((left, y, right, y), fill=(225, 225, 225), width=1)
    labels = rng.sample(BAR_LABELS, n_bars)
    colours = rng.sample(COLOUR_NAMES, n_bars)
    values = [rng.randint(1, CHART_MAX) for _ in range(n_bars)]
    slot = (right - left) // n_bars
    width = min(22, slot - 8)
    bars = []
    for i, (lab, col, val) in enumerate(zip(labels, colours, values)):
        cx = left + slot * i + slot // 2
        h = round(val / CHART_MAX * (base - top))
        box = (cx - width // 2, base - h, cx + width // 2, base)
        draw.rectangle(box, fill=COLOURS[col])
        txt = str(val)
        tw, th = text_size(txt)
        draw_text(img, txt, (cx - tw // 2, box[1] - th - 1))
        lw, _ = text_size(lab)
        draw_text(img, lab, (cx - lw // 2, base + 2))
        bars.append(Bar(lab, col, val, (box[0], box[1] - th - 1, box[2], IMAGE_SIZE - 2)))
    return img, bars


# ---------------------------------------------------------------- arrow diagrams (AI2D-like)


def draw_arrow(draw: ImageDraw.ImageDraw, src: Obj, dst: Obj) -> None:
    """A straight arrow from the rim of `src` to the rim of `dst` with a triangular head."""
    dx, dy = dst.cx - src.cx, dst.cy - src.cy
    dist = math.hypot(dx, dy) or 1.0
    ux, uy = dx / dist, dy / dist
    rs, rd = SIZES[src.size] / 2 + 2, SIZES[dst.size] / 2 + 3
    x0, y0 = src.cx + ux * rs, src.cy + uy * rs
    x1, y1 = dst.cx - ux * rd, dst.cy - uy * rd
    draw.line((x0, y0, x1, y1), fill=(40, 40, 40), width=2)
    hx, hy = -uy, ux
    head = [(x1, y1), (x1 - ux * 8 + hx * 4, y1 - uy * 8 + hy * 4), (x1 - ux * 8 - hx * 4, y1 - uy * 8 - hy * 4)]
    draw.polygon(head, fill=(40, 40, 40))


def diagram(rng: random.Random, objs: list[Obj], edges: list[tuple[int, int]]) -> Image.Image:
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for a, b in edges:
        draw_arrow(draw, objs[a], objs[b])
    for obj in objs:
        draw_shape(draw, obj)
    return img
