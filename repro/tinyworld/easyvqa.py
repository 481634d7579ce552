"""The third-party easy-vqa data set (PyPI `easy-vqa`, MIT; 64x64 shape images) as a task.

It is the one real data set in the tiny profile that none of us wrote. The package ships 4000
train and 1000 test images with questions; validation is carved out of the train images (10% of
them, chosen by a fixed seed) so that no validation image is seen in training. Images are stored
byte-for-byte as shipped.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from datasets import Features, Value

from ..errors import ReproError
from .tasks import COMMON, IMG, Generated, Row, S

HOLDOUT_FRACTION = 0.1


@lru_cache(maxsize=1)
def _package():
    try:
        import easy_vqa
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ReproError(
            "tinyworld_easyvqa needs the easy-vqa package: run `pip install easy-vqa`, "
            "or build without it (tasks=... / --tasks) "
        ) from exc
    return easy_vqa


def _pool(split: str) -> list[tuple[str, str, int, str]]:
    """(question, answer, image id, image path) for a split, image-disjoint across splits."""
    ev = _package()
    if split == "test":
        qs, ans, ids = ev.get_test_questions()
        paths = ev.get_test_image_paths()
        return [(q, a, i, paths[i]) for q, a, i in zip(qs, ans, ids)]
    qs, ans, ids = ev.get_train_questions()
    paths = ev.get_train_image_paths()
    image_ids = sorted(paths)
    random.Random("tinyworld-easyvqa-holdout").shuffle(image_ids)
    held = set(image_ids[: int(len(image_ids) * HOLDOUT_FRACTION)])
    keep = (lambda i: i in held) if split == "validation" else (lambda i: i not in held)
    return [(q, a, i, paths[i]) for q, a, i in zip(qs, ans, ids) if keep(i)]


def _answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in ("circle", "rectangle", "triangle") else "color"


def gen_easyvqa(rng: random.Random, n: int, split: str) -> list[Row]:
    pool = _pool(split)
    picked = rng.sample(range(len(pool)), min(n, len(pool)))
    rows = []
    for k, j in enumerate(picked):
        q, a, image_id, path = pool[j]
        rows.append(
            {
                "question_id": f"{split}-{k:06d}",
                "question": q,
                "answer": a,
                "answer_type": _answer_type(a),
                "image_id": int(image_id),
                "image": {"bytes": Path(path).read_bytes(), "path": None},
                "target_text": a,
                "evidence": [[0, 0, 64, 64]],
            }
        )
    return rows


EASYVQA = Generated(
    gen_easyvqa,
    Features(
        {
            "question_id": S,
            "question": S,
            "answer": S,
            "answer_type": S,
            "image_id": Value("int64"),
            "image": IMG,
            **COMMON,
        }
    ),
)
