"""Shared fixtures: tiny random models of each family (built offline) and deterministic images."""

from __future__ import annotations

import os

# Tests never touch the network: hub libraries read these once, at import, so set them first.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import repro  # noqa: E402

TINY = ["tiny-llava-1.5", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-internvl3"]
MROPE = {"tiny-qwen2.5-vl"}


def make_image(seed: int = 0, size: tuple[int, int] = (120, 90)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def tiny_models():
    """name -> {backend -> Model}; one build per family and backend for the whole run."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return {name: {b: repro.load(name, attn_implementation=b) for b in ("sdpa", "eager")} for name in TINY}


@pytest.fixture(params=TINY)
def tiny(request, tiny_models):
    return tiny_models[request.param]["sdpa"]


@pytest.fixture
def image():
    return make_image()


# Fake staged paper data: paper task -> (tiny-world key, path under STAGED/<task>/ as the hub lays
# it out); tiny-world rows carry the official columns. GQA is staged apart (questions, images).
PAPER_STAGE = {
    "vqav2_val": ("vqav2", "data/validation-00000-of-00001.parquet"),
    "vizwiz_vqa_val": ("vizwiz", "data/val-00000-of-00001.parquet"),
    "scienceqa_img": ("scienceqa", "ScienceQA-IMG/test-00000-of-00001.parquet"),
    "seedbench": ("seed", "data/test-00000-of-00001.parquet"),
    "mme": ("mme", "data/test-00000-of-00001.parquet"),
    "ai2d": ("ai2d", "data/test-00000-of-00001.parquet"),
    "chartqa": ("chartqa", "data/test-00000-of-00001.parquet"),
    "pope": ("pope", "data/test-00000-of-00001.parquet"),
    "textvqa_val": ("textvqa", "data/validation-00000-of-00001.parquet"),
    "ocrbench": ("ocrbench", "data/test-00000-of-00001.parquet"),
    "mmbench_en_dev": ("mmbench", "en/dev-00000-of-00001.parquet"),
    "mmbench_cn_dev": ("mmbench_cn", "cn/dev-00000-of-00001.parquet"),
}


def stage_paper_tasks(root, tasks, test_rows: int):
    """Stage fake data for the paper `tasks` (names of PAPER_STAGE, or "gqa") under root/staged."""
    import shutil

    import pyarrow.parquet as pq

    from repro import tinyworld as tw

    keys = sorted({PAPER_STAGE[t][0] if t != "gqa" else "gqa" for t in tasks})
    tw.build(root / "tiny", seed=0, sizes=tw.SplitSizes(train=1, validation=1, test=test_rows), tasks=keys)
    out = root / "staged"
    for task in tasks:
        if task == "gqa":
            table = pq.read_table(tw.split_path(root / "tiny", "gqa", "test"))
            (out / "gqa" / "testdev_balanced_instructions").mkdir(parents=True)
            pq.write_table(table.drop_columns(["image"]),
                           out / "gqa" / "testdev_balanced_instructions" / "testdev-0.parquet")
            (out / "gqa_images").mkdir()
            pq.write_table(table.select(["imageId", "image"]).rename_columns(["id", "image"]),
                           out / "gqa_images" / "testdev-0.parquet")
            continue
        key, rel = PAPER_STAGE[task]
        (out / task / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tw.split_path(root / "tiny", key, "test"), out / task / rel)
    return out
