"""The latency protocol on CPU: stages, statistics, records, the table, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import repro
from repro.errors import ReproError
from repro.latency import (
    STAGES,
    LatencyRecord,
    check_device,
    check_same_backend,
    measure,
    measure_cells,
    summary,
)
from repro.models.tiny import tiny_llava15
from repro.report.latency_table import table_rows


@pytest.fixture(scope="module")
def medium():
    """Big enough that compute, not Python, sets the prefill time (256 visual tokens)."""
    from repro.models.cards import ArchCard
    from repro.models.loading import ADAPTERS
    from repro.models.model import Model

    hf, processor = tiny_llava15(image_size=224, text=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                                           num_attention_heads=4, num_key_value_heads=4))
    return Model("medium-llava", hf, processor, ADAPTERS["llava"](hf, processor), ArchCard.from_hf_config(hf.config))


def test_summary_is_median_and_iqr():
    s = summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_ms"] == 3.0 and s["repeats"] == 5 and s["iqr_ms"] > 0


def test_cuda_without_a_gpu_names_the_cpu_fix():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the error cannot happen")
    with pytest.raises(ReproError, match="--device cpu"):
        check_device("cuda")
    out = subprocess.run([sys.executable, "-m", "repro", "latency", "--model", "tiny-llava-1.5", "--device", "cuda"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--device cpu" in out.stderr and "Traceback" not in out.stderr


def test_prefill_latency_falls_with_the_budget(medium):
    torch.set_num_threads(1)
    from conftest import make_image

    image = make_image(0, (224, 224))
    cells = [("unpruned", None, "-")] + [("vispruner", repro.method("vispruner", f"ratio:{r}"), f"ratio:{r}")
                                         for r in (0.5, 0.25)]
    records = measure_cells(medium, [image], "What?", cells, repeats=7, warmup=2, answer_tokens=2)
    assert len(medium.preparations) == len(medium.encodings) == 0  # every repeat ran the processor and tower
    assert measure(medium, [image], "What?", repeats=1, warmup=0, answer_tokens=1).method == "unpruned"
    prefill = [r.stages["prefill"]["median_ms"] for r in records]
    assert prefill[1] < 0.8 * prefill[0] and prefill[2] < 0.8 * prefill[1]  # FLOPs ratios 0.5 and 0.5
    for r in records:
        assert set(r.stages) == set(STAGES) and all(s["repeats"] == 7 for s in r.stages.values())
        assert r.environment["device_type"] == "cpu" and r.environment["attention_backend"] == "sdpa"
        assert r.kv_cache_bytes > 0 and r.peak_memory_bytes is None
    rows = table_rows(records)
    assert rows[0]["tflops_reduction_pct"] == 0 and 40 < rows[1]["tflops_reduction_pct"] < 60
    assert rows[2]["latency_reduction_pct"] > rows[1]["latency_reduction_pct"] > 0


def test_records_under_different_backends_are_not_compared():
    base = dict(model="m", method="unpruned", budget="-", device="cpu", tflops=1.0, visual_tokens=1,
                stages={s: {"median_ms": 1.0, "iqr_ms": 0.0, "repeats": 1} for s in STAGES})
    a = LatencyRecord(environment={"dtype": "torch.float32", "attention_backend": "sdpa", "device_name": "x"}, **base)
    b = LatencyRecord(environment={"dtype": "torch.float32", "attention_backend": "eager", "device_name": "x"}, **base)
    with pytest.raises(ReproError, match="different settings"):
        check_same_backend([a, b])


def test_latency_table_from_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "repro", "latency", "--model", "tiny-llava-1.5", "--methods", "vispruner",
                          "--budgets", "tokens:16", "--repeats", "3", "--warmup", "1", "--answer-tokens", "2",
                          "--threads", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for suffix in ("md", "tex", "csv"):
        assert (tmp_path / f"latency.{suffix}").stat().st_size > 0
    records = json.loads((tmp_path / "latency_records.json").read_text())
    assert [r["method"] for r in records] == ["unpruned", "vispruner"] and records[1]["visual_tokens"] == 16
    assert "prefill_ms" in (tmp_path / "latency.md").read_text()
