"""The lmms-eval plugin `repro`: entry point, end-to-end evaluation of tinyworld-llava over every
tiny task through `simple_evaluate`, per-sample records, and clear errors on bad input."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest

from repro import tinyworld as tw
from repro.errors import ReproError
from repro.eval import evaluate
from repro.eval.run import main_metrics

LIMIT = 8
ALL_TINY = [tw.GROUP, "tinyworld_easyvqa"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A small suite, offline, HF datasets cache in tmp; nothing may be written to the working directory."""
    root = tmp_path_factory.mktemp("tw_plugin")
    with pytest.MonkeyPatch.context() as mp:
        import datasets
        import huggingface_hub

        mp.setenv("HF_DATASETS_CACHE", str(root / "hf_datasets"))
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.chdir(root)
        data = root / "data"
        tw.build(data, seed=0, sizes=tw.SplitSizes(train=2, validation=2, test=LIMIT))
        yield data
        # nothing else in the working directory (hf_datasets appears only if `datasets` was first
        # imported after the env var was set, which depends on test order)
        assert {p.name for p in root.iterdir()} <= {"data", "hf_datasets", "out", "out2"}


def test_entry_point_resolves_to_the_plugin():
    from lmms_eval.models import get_model

    from repro.eval.lmms_model import ReproLMM

    assert get_model("repro") is ReproLMM


def test_every_tiny_task_end_to_end(suite):
    out = suite.parent / "out"
    res = evaluate("model=tinyworld-llava", ALL_TINY, data_dir=suite, limit=LIMIT, output_dir=out)
    metrics = main_metrics(res)
    assert sorted(metrics) == sorted(t.name for t in tw.TASKS)
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in metrics.values())
    # Per-sample records: prompt hash, visual tokens per layer, realized TFLOPs.
    sample = res["samples"]["tinyworld_pope"][0]
    record = sample["token_counts"][0]["repro"]
    assert record["visual_tokens_per_layer"] == [144] * len(record["stats"]["attention_tokens"])
    assert record["tflops"]["paper"] > 0 and record["method"] == "none"
    prompt = "USER: <image>\n" + sample["arguments"][0] + " ASSISTANT:"
    assert record["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    summary = json.loads((out / "results.json").read_text())
    assert summary["repro"]["model_args"] == "model=tinyworld-llava"
    assert (out / "samples_tinyworld_pope.jsonl").is_file()


def test_method_and_options_reach_the_engine(suite):
    res = evaluate({"model": "tinyworld-llava", "method": "random", "options": {"keep": 0.25, "seed": 1}},
                   ["tinyworld_pope"], data_dir=suite, limit=2)
    record = res["samples"]["tinyworld_pope"][0]["token_counts"][0]["repro"]
    assert record["visual_tokens"] == 36 and record["options"] == {"keep": 0.25, "seed": 1}
    assert record["visual_tokens_per_layer"] == [36] * len(record["stats"]["attention_tokens"])


def test_packed_batches_answer_as_batch_size_one(suite):
    """`batch_size` packs consecutive requests (engine/packed.py): the same answers and records."""
    args = {"model": "tinyworld-llava", "method": "vispruner", "budget": "ratio:0.6"}
    tasks = ["tinyworld_gqa"]
    one = evaluate(args, tasks, data_dir=suite, limit=5)
    packed = evaluate({**args, "batch_size": 3}, tasks, data_dir=suite, limit=5)  # a pack of 3, then of 2
    for task in tasks:
        a, b = one["samples"][task], packed["samples"][task]
        assert [s["resps"] for s in a] == [s["resps"] for s in b]
        assert [s["token_counts"][0]["repro"]["stats"] for s in a] == [s["token_counts"][0]["repro"]["stats"] for s in b]


def test_unknown_model_args_key_is_a_clear_error(suite):
    with pytest.raises(ReproError, match=r"unknown model_args key\(s\) for --model repro: modle; accepted: model, method"):
        evaluate("modle=tinyworld-llava", ["tinyworld_pope"], data_dir=suite, limit=1)
    from lmms_eval import evaluator

    # The same through lmms-eval itself (the constructor raises).
    with pytest.raises(ReproError, match="accepted"):
        evaluator.simple_evaluate(model="repro", model_args="model=tinyworld-llava,budjet=tokens:8",
                                  tasks=["tinyworld_pope"], task_manager=tw.task_manager(suite), limit=1)


@pytest.mark.parametrize("args, match", [
    ("method=nope", "unknown method 'nope'"),
    ("method=random,options={keep:0.5}", "not valid JSON"),
    ("budget=tokens:8", "need a method"),
    ("dtype=float64", "dtype"),
    ("batch_size=0", "positive integer"),
    ("batch_size=auto", "positive integer"),
])
def test_bad_model_args_values(suite, args, match):
    from repro.eval.lmms_model import ReproLMM

    with pytest.raises(ReproError, match=match):
        ReproLMM.create_from_arg_string(args)


def test_unknown_task_names_close_matches(suite):
    with pytest.raises(ReproError, match=r"'tinyworld_popee' \(did you mean tinyworld_pope"):
        evaluate("model=tinyworld-llava", ["tinyworld_popee"], data_dir=suite, limit=1)


def test_corrupt_or_missing_data_file(tmp_path):
    data = tmp_path / "data"
    tw.build(data, seed=0, sizes=tw.SplitSizes(train=1, validation=2, test=2), tasks=["pope"])
    path = tw.split_path(data, "pope", "test")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ReproError, match=r"pope/test.parquet \(checksum mismatch\).*python -m repro.tinyworld build"):
        evaluate("model=tinyworld-llava", ["tinyworld_pope"], data_dir=data, limit=1)
    path.unlink()
    with pytest.raises(ReproError, match=r"pope/test.parquet \(missing\)"):
        evaluate("model=tinyworld-llava", ["tinyworld_pope"], data_dir=data, limit=1)


def test_lmms_eval_cli(suite, tmp_path):
    """`lmms-eval --model repro ...` from the command line writes real metrics."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "repro", "--model_args", "model=tinyworld-llava",
           "--tasks", "tinyworld_pope", "--include_path", str(suite / "tasks"), "--limit", "4",
           "--output_path", str(out), "--log_samples"]
    env = {**__import__("os").environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    found = list(out.rglob("*_results.json"))
    assert found, proc.stderr[-3000:]
    results = json.loads(found[0].read_text())["results"]["tinyworld_pope"]
    assert 0 <= results["pope_accuracy,none"] <= 1
    samples = list(out.rglob("*_samples_tinyworld_pope.jsonl"))
    line = json.loads(samples[0].read_text().splitlines()[0])
    assert "prompt_sha256" in line["token_counts"][0]["repro"]


def test_trained_model_is_above_chance_on_the_suite(suite):
    res = evaluate("model=tinyworld-llava", ALL_TINY, data_dir=suite, limit=LIMIT, output_dir=suite.parent / "out2")
    metrics = main_metrics(res)
    assert sum(metrics.values()) / len(metrics) > 0.3, metrics
