"""DOP search speed: prefix caching on vs off, timed interleaved in one run (same results)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from repro.calibration import Sample
from repro.methods.dop import SearchOptions, search
from repro.models.cards import ArchCard
from repro.models.loading import ADAPTERS
from repro.models.model import Model
from repro.models.tiny import bench_llava15


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    hf, processor = bench_llava15()
    model = Model("bench-llava-1.5", hf, processor, ADAPTERS["llava"](hf, processor), ArchCard.from_hf_config(hf.config))
    rng = np.random.RandomState(0)
    samples = [Sample(f"s{i}", [Image.fromarray((rng.rand(336, 336, 3) * 255).astype("uint8"))],
                      "What colour is the small square?") for i in range(2)]
    return model, samples


def test_search_prefix_cache_speedup(interleaved, setup):
    model, samples = setup
    results = {}

    def run(cache: bool):
        options = SearchOptions(reducer="uniform", depth_step=2, visual_points=4, prefix_cache=cache)
        results[cache] = search(model, samples, ["ratio:0.5"], options, progress=False)

    rows = interleaved("dop-search", {"no prefix cache": (lambda: run(False), {}),
                                      "prefix cache": (lambda: run(True), {})}, rounds=3, warmup=0)
    for key, curve in results[True]["curves"].items():  # caching changes the speed, not the result
        assert np.allclose(curve["values"], results[False]["curves"][key]["values"], atol=1e-6)
    if rows:
        layers = {k: v["layer_passes"] for k, v in results.items()}
        assert layers[True] < layers[False]
        assert rows["prefix cache"]["time_ratio"] < 1.0


@pytest.fixture(scope="module")
def tinyworld_calibration():
    import repro
    from repro.calibration import calibration_samples

    torch.set_num_threads(1)
    return repro.load("tinyworld-llava"), calibration_samples("tinyworld", 100)


def test_search_time_25_vs_100_samples(interleaved, tinyworld_calibration):
    """The paper's search-time claim (about 2 min with 25 samples, 5-18 min with 100 on an A100),
    on tinyworld-llava: the same search on the first 25 and on all 100 calibration samples."""
    model, samples = tinyworld_calibration
    results = {}

    def run(n: int):
        options = SearchOptions(reducer="vispruner", depth_step=1, visual_points=8)
        results[n] = search(model, samples[:n], ["ratio:0.5"], options, progress=False)

    rows = interleaved("dop-search-samples", {"25 samples": (lambda: run(25), {"samples": 25}),
                                              "100 samples": (lambda: run(100), {"samples": 100})}, rounds=3, warmup=0)
    assert results[100]["forward_passes"] == 4 * results[25]["forward_passes"]  # passes grow linearly with samples
    if rows:
        assert rows["100 samples"]["time_ratio"] > 1.0
