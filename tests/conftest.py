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
