"""Measured throughput (repro/throughput.py): batch size 1 and packed passes timed apart, the
packed answers compared with batch size 1's, the record written and read back, and the paper
plan's GPU hours priced with a model's record when there is one."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import repro
from repro.errors import ReproError
from repro.runner.plan import SECONDS_PER_SAMPLE, TASK_SIZES, make_plan
from repro.runner.spec import expand, load_spec
from repro.throughput import ThroughputRecord, measure, measured

ROOT = Path(__file__).resolve().parent.parent


def test_packed_and_batch_1_are_timed_apart_and_give_the_same_answers(tmp_path):
    torch.set_num_threads(1)
    record = measure(repro.load("tiny-llava-1.5"), [3, 1], samples=5, answer_tokens=3)
    assert sorted(record.batches) == [1, 3] and record.random_weights and record.samples == 5
    for stats in record.batches.values():
        assert stats["same_answers_as_smallest_batch"]  # fp32: packed answers equal batch size 1's
        assert stats["samples_per_s"] > 0 and min(stats["prefill_s"], stats["decode_s"], stats["prepare_encode_s"]) > 0
        total = stats["prefill_s"] + stats["decode_s"] + stats["prepare_encode_s"]
        assert stats["samples_per_s"] == pytest.approx(5 / total)
    assert record.seconds_per_sample == pytest.approx(1 / max(s["samples_per_s"] for s in record.batches.values()))
    assert measured(tmp_path) == {}
    record.write(tmp_path)
    assert measured(tmp_path) == {"tiny-llava-1.5": record}


def test_bad_throughput_input_is_one_clear_error(tmp_path):
    with pytest.raises(ReproError, match="batch sizes >= 1"):
        measure(repro.load("tiny-llava-1.5"), [0])
    (tmp_path / "throughput-x.json").write_text("{not json")
    with pytest.raises(ReproError, match=r"not a throughput record .*rerun `python -m repro throughput`"):
        measured(tmp_path)
    out = subprocess.run([sys.executable, "-m", "repro", "throughput", "--model", "tiny-llava-1.5", "--batch-sizes",
                          "1,two", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "--batch-sizes takes whole numbers" in out.stderr and "Traceback" not in out.stderr


def test_the_command_writes_the_record_the_plan_reads(tmp_path):
    out = subprocess.run([sys.executable, "-m", "repro", "throughput", "--model", "tiny-llava-1.5", "--batch-sizes",
                          "1,2", "--samples", "2", "--answer-tokens", "2", "--threads", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"wrote {tmp_path / 'throughput-tiny-llava-1.5.json'}" in out.stdout
    assert set(measured(tmp_path)["tiny-llava-1.5"].batches) == {1, 2}


def test_the_paper_plan_prices_a_measured_model_with_its_record(tmp_path):
    spec = load_spec(ROOT / "sweeps" / "paper" / "main.yaml")
    assumed = make_plan(spec, tmp_path / "nothing", throughput_dir=tmp_path)
    assert "not measured here" in "\n".join(assumed.lines())
    record = ThroughputRecord("llava-1.5-7b", {"device_name": "NVIDIA H200", "dtype": "torch.bfloat16"}, True,
                              (336, 336), 32, 8, {1: {"samples_per_s": 10.0}, 16: {"samples_per_s": 40.0}})
    record.write(tmp_path)
    plan = make_plan(spec, tmp_path / "nothing", throughput_dir=tmp_path)
    cells = [c for c in expand(spec) if c.model == "llava-1.5-7b"]
    saved = sum(TASK_SIZES[c.task] for c in cells) * (SECONDS_PER_SAMPLE["llava-1.5-7b"] - 1 / 40) / 3600
    assert plan.gpu_hours == pytest.approx(assumed.gpu_hours - saved)
    text = "\n".join(plan.lines())
    assert "llava-1.5-7b 0.025 s a sample (batch 16, NVIDIA H200, torch.bfloat16, 8 answer tokens, random weights)" in text
    assert "the other models: assumed throughput" in text
    other = dataclasses.replace(record, model="not-in-the-spec")
    other.write(tmp_path)
    assert make_plan(spec, tmp_path / "nothing", throughput_dir=tmp_path).gpu_hours == pytest.approx(plan.gpu_hours)
