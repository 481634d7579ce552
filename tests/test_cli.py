"""`python -m repro` end to end in subprocesses (fast commands only, no network)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from repro.budget import Budget
from repro.errors import ReproError

NAMES = ["llava-1.5-7b", "llava-1.5-13b", "llava-next-7b", "llava-next-13b", "qwen2.5-vl-7b", "internvl3-8b"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """An empty Hugging Face cache, offline, so the weight column is deterministic."""
    hf_home = tmp_path_factory.mktemp("hf_home")
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


def repro(env, *args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "repro", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_help(env):
    out = repro(env, "--help")
    assert out.returncode == 0
    assert "models" in out.stdout and "flops" in out.stdout
    sub = repro(env, "flops", "--help")
    assert sub.returncode == 0 and "--convention" in sub.stdout and "99" in sub.stdout


def test_models_table(env):
    out = repro(env, "models")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "name" in lines[0] and "local weights" in lines[0]
    body, shipped = lines[2:-1], lines[-1]
    assert [line.split()[0] for line in body] == NAMES
    assert all(line.split()[-1] == "no" for line in body)
    assert shipped.split()[:3] == ["tinyworld-llava", "llava-1.5", "(in"]  # trained here, in the package
    assert "28/3584/28/4" in out.stdout and "Qwen/Qwen2.5-VL-7B-Instruct" in out.stdout


def test_flops_json_one_model(env):
    out = repro(env, "flops", "--model", "qwen2.5-vl-7b", "--convention", "exact", "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert set(record) == {"model", "convention", "visual_tokens", "text_tokens", "tflops"}
    assert (record["model"], record["convention"], record["visual_tokens"], record["text_tokens"]) == (
        "qwen2.5-vl-7b", "exact", 1296, 99,
    )
    assert record["tflops"] == pytest.approx(18.99, abs=0.01)


def test_flops_json_all_models(env):
    out = repro(env, "flops", "--json")
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    assert [r["model"] for r in records] == NAMES
    assert all(r["convention"] == "paper" and r["text_tokens"] == 99 for r in records)
    by_name = {r["model"]: r["tflops"] for r in records}
    assert by_name["llava-1.5-7b"] == pytest.approx(8.98, abs=0.01)
    assert by_name["internvl3-8b"] == pytest.approx(53.66, abs=0.01)


def test_flops_overrides_and_budget(env):
    out = repro(
        env, "flops", "--model", "llava-next-7b", "--visual-tokens", "2880", "--text-tokens", "0",
        "--budget", "tokens:320", "--json",
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["tflops"] == pytest.approx(41.65, abs=0.01)  # CDPruner anchor
    assert record["budget"] == "tokens:320" and record["budget_tflops"] == pytest.approx(4.20, abs=0.01)


def test_flops_text_output(env):
    out = repro(env, "flops", "--model", "llava-1.5-7b")
    assert out.returncode == 0
    assert "8.98" in out.stdout


def test_unknown_model_is_a_clean_error(env):
    out = repro(env, "flops", "--model", "gpt-5")
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown model 'gpt-5'")
    assert ", ".join(sorted(NAMES)) in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_budget_is_a_clean_error(env):
    with pytest.raises(ReproError):
        Budget.parse("half")
    out = repro(env, "flops", "--budget", "half")
    assert out.returncode == 2
    assert out.stderr.startswith("error: cannot parse budget 'half'")
    assert "ratio:0.14" in out.stderr and "Traceback" not in out.stderr


def test_flops_table(env, tmp_path):
    out = repro(env, "flops", "--table", "--out", str(tmp_path / "tables"))
    assert out.returncode == 0, out.stderr
    md = re.sub(r" +\|", " |", re.sub(r"\| +", "| ", (tmp_path / "tables" / "flops.md").read_text()))  # tabulate pads
    csv = (tmp_path / "tables" / "flops.csv").read_text().splitlines()
    for name in NAMES:
        assert f"| {name} | unpruned | paper |" in md
    assert "| llava-next-7b | tokens:320 | paper | 320 | 99 |" in md
    assert "| qwen2.5-vl-7b | ratio:0.14 | paper |" in md
    assert csv[0] == "model,budget,convention,visual_tokens,text_tokens,tflops,percent_of_unpruned"
    assert "internvl3-8b,unpruned,exact,3328,99,49.4" in "\n".join(csv)


def test_cli_does_not_import_torch(env):
    code = (
        "import sys, contextlib, io\n"
        "from repro.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['flops']); main(['models'])\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from conftest import make_image

    path = tmp_path_factory.mktemp("img") / "scene.png"
    make_image(0).save(path)
    return str(path)


def test_methods_table(env):
    out = repro(env, "methods")
    assert out.returncode == 0 and "random" in out.stdout and "pre-llm" in out.stdout


def test_generate_with_a_method_reports_realized_stats(env, image_file):
    out = repro(env, "generate", "--model", "tiny-llava-next", "--image", image_file, "--question", "What?",
                "--method", "random", "--budget", "tokens:20", "--max-new-tokens", "3", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["prompt"] == "USER: <image>\nWhat? ASSISTANT:"
    assert result["stats"]["visual_tokens"] == 20 and result["stats"]["tflops"]["paper"] > 0


@pytest.mark.parametrize("args, message", [
    (["--model", "llava-9b"], "known names"),
    (["--model", "EMPTY_DIR"], "missing config.json"),
    (["--model", "tiny-llava-1.5", "--method", "fastvv"], "unknown method"),
    (["--model", "tiny-llava-1.5", "--method", "random", "--budget", "ratio:2"], "ratio"),
])
def test_generate_bad_input_is_one_clear_line(env, image_file, tmp_path, args, message):
    args = [str(tmp_path) if a == "EMPTY_DIR" else a for a in args]
    out = repro(env, "generate", "--image", image_file, "--question", "What?", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("model, size, tokens", [
    ("qwen2.5-vl-7b", "640x480", 391), ("qwen2.5-vl-7b", "1000x1000", 1296),
    ("internvl3-8b", "640x480", 3328), ("internvl3-8b", "1000x1000", 2560), ("internvl3-8b", "1024x512", 768),
    ("internvl3-8b", "336x336", 256), ("llava-1.5-7b", "640x480", 576),
])
def test_flops_visual_tokens_from_image_size(env, model, size, tokens):
    """Token counts of MODELS.md §5-§7 from the processors' own resize and tiling rules."""
    out = repro(env, "flops", "--model", model, "--image-size", size, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["visual_tokens"] == tokens


@pytest.mark.parametrize("args, message", [
    (["--model", "qwen2.5-vl-7b", "--image-size", "10x3000"], "aspect ratio"),
    (["--model", "internvl3-8b", "--image-size", "640x480", "--max-tiles", "0"], "max_tiles"),
    (["--model", "internvl3-8b", "--image-size", "640by480"], "WIDTHxHEIGHT"),
    (["--model", "qwen2.5-vl-7b", "--image-size", "640x480", "--visual-tokens", "9"], "not both"),
])
def test_flops_image_size_bad_input(env, args, message):
    out = repro(env, "flops", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
