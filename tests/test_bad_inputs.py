"""Every bad input gets one clear error: a table of bad inputs across sweep specs, the CLI, the
Python API, lmms-eval `model_args` and the store. For each: a non-zero exit or a ReproError, one
line naming the field or path, no traceback, and the store's files unchanged (checksums before
and after). CLI cases run `repro.cli.main` in this process; nothing here loads real weights."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

import repro
from repro.errors import ReproError
from repro.runner.spec import expand, load_spec
from repro.runner.store import Store

from conftest import make_image

GOOD = """\
profile: tiny
models: [tinyworld-llava]
tasks: [tinyworld_gqa, tinyworld_pope]
limit: 2
seeds: [0]
dtype: float32
attn: sdpa
device: cpu
budgets: [ratio:0.6]
methods:
  - name: none
  - name: fastv
    options: {k: 1}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A valid spec, a store with one finished cell and a folder where another record belongs,
    a file to put paths under, and a tiny model."""
    root = tmp_path_factory.mktemp("bad-inputs")
    spec = root / "good.yaml"
    spec.write_text(GOOD)
    store = Store(root / "store")
    cells = expand(load_spec(spec))
    store.write(cells[0].key, {"config": cells[0].config()}, [{"doc_id": 0}])
    store.record_path(cells[1].key).mkdir(parents=True)  # a folder where a record belongs
    a_file = root / "a-file"
    a_file.write_text("not a folder")
    image = root / "image.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(image)
    return {"root": root, "spec": spec, "store": store, "file": a_file, "image": image,
            "model": repro.load("tiny-llava-1.5")}


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def spec_case(old: str, new: str) -> Callable[[dict], tuple[int, str]]:
    """`python -m repro sweep SPEC --store STORE` with one edit of the good spec."""
    def run(w):
        path = w["root"] / f"bad-{hashlib.sha256((old + new).encode()).hexdigest()[:8]}.yaml"
        assert old in GOOD
        path.write_text(GOOD.replace(old, new))
        return cli(["sweep", str(path), "--store", str(w["store"].root)])(w)
    return run


def cli(argv: list[str]) -> Callable[[dict], tuple[int, str]]:
    def run(w):
        from repro.cli import main

        args = [a.format(**{k: str(v.root) if isinstance(v, Store) else str(v) for k, v in w.items()}) for a in argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
        return code, err.getvalue()
    return run


def api(call: Callable[[dict], object]) -> Callable[[dict], tuple[int, str]]:
    """A Python API call that must raise ReproError: (1, 'error: <message>')."""
    def run(w):
        with pytest.raises(ReproError) as err:
            call(w)
        return 1, f"error: {err.value}\n"
    return run


def model_args(args: str) -> Callable[[dict], tuple[int, str]]:
    def call(w):
        from repro.eval.lmms_model import ReproLMM

        ReproLMM.create_from_arg_string(args)
    return api(call)


def _garbage_sums(w):
    from repro.tinyworld.weights import verify_checksums

    folder = w["root"] / "ckpt"
    folder.mkdir(exist_ok=True)
    (folder / "SHA256SUMS").write_text("this is not a checksum list\n")
    verify_checksums(folder)


def _write(name: str, text: str) -> Callable[[dict], None]:
    def setup(w):
        (w["root"] / name).write_text(text)
    return setup


QUESTION = "What is in the image?"
CASES: list[tuple[str, Callable, str]] = [
    # ---- sweep specs: type, range, allowed values, unknown keys, per-model options
    ("spec limit ten", spec_case("limit: 2", "limit: ten"), "limit: 'ten'"),
    ("spec limit -5", spec_case("limit: 2", "limit: -5"), "limit: -5"),
    ("spec limit 0.02", spec_case("limit: 2", "limit: 0.02"), "limit: 0.02"),
    ("spec limit 4.5", spec_case("limit: 2", "limit: 4.5"), "limit: 4.5"),
    ("spec seeds [zero]", spec_case("seeds: [0]", "seeds: [zero]"), "seeds.0: 'zero'"),
    ("spec seeds 0.5", spec_case("seeds: [0]", "seeds: 0.5"), "seeds.0: 0.5"),
    ("spec seeds twice", spec_case("seeds: [0]", "seeds: [0, 0]"), "seeds: [0] listed twice"),
    ("spec threads -1", spec_case("device: cpu", "device: cpu\nthreads: -1"), "threads: -1"),
    ("spec threads 0", spec_case("device: cpu", "device: cpu\nthreads: 0"), "threads: 0"),
    ("spec dtype float8", spec_case("dtype: float32", "dtype: float8"), "dtype: 'float8'"),
    ("spec attn flashy", spec_case("attn: sdpa", "attn: flashy"), "attn: 'flashy'"),
    ("spec device gpu", spec_case("device: cpu", "device: gpu"), "device: 'gpu'"),
    ("spec device cuda:99", spec_case("device: cpu", "device: cuda:99"), "device cuda:99"),
    ("spec profile", spec_case("profile: tiny", "profile: huge"), "profile: 'huge'"),
    ("spec split", spec_case("seeds: [0]", "seeds: [0]\nsplit: train"), "split: 'train'"),
    ("spec unknown key", spec_case("limit: 2", "limit: 2\ncolour: red"), "colour: unknown key"),
    ("spec method unknown key", spec_case("options: {k: 1}", "options: {k: 1}\n    colour: red"),
     "methods.1.colour: unknown key"),
    ("spec method option type", spec_case("{k: 1}", "{k: two}"), "k='two'"),
    ("spec unknown method option", spec_case("{k: 1}", "{kk: 1}"), "unknown option 'kk'"),
    ("spec unknown method", spec_case("name: fastv", "name: fastvv"), "unknown method 'fastvv'"),
    ("spec unknown task", spec_case("tinyworld_pope]", "tinyworld_popee]"), "unknown task 'tinyworld_popee'"),
    ("spec unknown model", spec_case("[tinyworld-llava]", "[llava-7b]"), "unknown model 'llava-7b'"),
    ("spec bad budget", spec_case("[ratio:0.6]", "[ratio:2]"), "budgets.0"),
    ("spec budget of another model", spec_case("budgets: [ratio:0.6]", "budgets: {default: [ratio:0.6], other: [tokens:4]}"),
     "budgets.other: not a model of this spec"),
    ("spec none with options", spec_case("  - name: none", "  - name: none\n    options: {k: 1}"), "methods.0: `none`"),
    ("spec figures", spec_case("limit: 2", "limit: 2\nfigures: [pie]"), "figures.0: 'pie'"),
    ("spec dop search samples", spec_case("  - name: none", "  - name: none\n  - name: dop\n    search: {samples: 2.5}"),
     "search must be a whole number >= 1, got 2.5"),
    ("spec no methods", spec_case("methods:\n  - name: none\n  - name: fastv\n    options: {k: 1}\n", ""),
     "methods: missing"),
    ("spec not YAML", spec_case("limit: 2", "limit: [2"), "is not valid YAML"),
    ("spec a list", spec_case(GOOD, "- a\n- b\n"), "a sweep spec is a mapping"),
    ("spec path is a folder", cli(["sweep", "{root}", "--store", "{store}"]), "is a folder; give a sweep spec file"),
    ("spec path missing", cli(["sweep", "{root}/nope.yaml", "--store", "{store}"]), "no sweep spec at"),
    # ---- CLI options and paths
    ("sweep --threads 0", cli(["sweep", "{spec}", "--store", "{store}", "--threads", "0"]), "--threads"),
    ("sweep --limit 0", cli(["sweep", "{spec}", "--store", "{store}", "--limit", "0"]), "--limit"),
    ("sweep --limit x", cli(["sweep", "{spec}", "--store", "{store}", "--limit", "x"]), "--limit"),
    ("sweep --store a file", cli(["sweep", "{spec}", "--store", "{file}", "--tables", "{root}/t", "--figures",
                                  "{root}/f"]), "store {file} is a file"),
    ("sweep --store under a file", cli(["sweep", "{spec}", "--store", "{file}/store", "--tables", "{root}/t",
                                        "--figures", "{root}/f"]), "which is a file"),
    ("sweep record is a folder", cli(["sweep", "{spec}", "--store", "{store}", "--tables", "{root}/t", "--figures",
                                      "{root}/f"]), "is a folder, not a record"),
    ("sweep --data-dir a file", cli(["sweep", "{spec}", "--store", "{store}", "--data-dir", "{file}", "--tables",
                                     "{root}/t", "--figures", "{root}/f"]), "--data-dir {file}"),
    ("sweep --tables under a file", cli(["sweep", "{spec}", "--store", "{store}", "--tables", "{file}/t"]),
     "--tables {file}/t"),
    ("sweep --figures a file", cli(["sweep", "{spec}", "--store", "{store}", "--tables", "{root}/t", "--figures",
                                    "{file}"]), "--figures {file} is a file"),
    ("tables --store a file", cli(["tables", "{spec}", "--store", "{file}"]), "store {file} is a file"),
    ("search --out under a file", cli(["search", "dop", "--model", "tiny-llava-1.5", "--out", "{file}/a.json"]),
     "--out folder {file}"),
    ("search --samples 0", cli(["search", "dop", "--model", "tiny-llava-1.5", "--out", "{root}/a.json",
                                "--samples", "0"]), "--samples"),
    ("latency --threads 0", cli(["latency", "--model", "tiny-llava-1.5", "--threads", "0"]), "--threads"),
    ("latency --repeats 0", cli(["latency", "--model", "tiny-llava-1.5", "--repeats", "0"]), "--repeats"),
    ("latency spec repeats ten", cli(["latency", "--spec", "{root}/latency.yaml"]), "{root}/latency.yaml: repeats"),
    ("analyze --out a file", cli(["analyze", "dop-curves", "--artifact", "{file}", "--out", "{file}"]),
     "--out {file} is a file"),
    ("check malformed golden --reference", cli(["check", "--store", "{store}", "--reference", "{root}/golden.csv"]),
     "{root}/golden.csv is not a registry"),
    ("check malformed paper --reference", cli(["check", "--profile", "paper", "--store", "{store}", "--reference",
                                               "{root}/reported.csv"]), "{root}/reported.csv is not a registry"),
    ("check garbage --tolerances", cli(["check", "--store", "{store}", "--tolerances", "{root}/tol.yaml"]),
     "cannot read tolerances {root}/tol.yaml"),
    ("generate missing image", cli(["generate", "--model", "tiny-llava-1.5", "--image", "{root}/nope.png",
                                    "--question", "q"]), "cannot read image {root}/nope.png"),
    ("flops unknown model", cli(["flops", "--model", "llava-9b"]), "llava-9b"),
    ("unknown command", cli(["frobnicate"]), "frobnicate"),
    # ---- files the harness reads
    ("garbage SHA256SUMS", api(_garbage_sums), "SHA256SUMS line 1 is not"),
    # ---- Python API
    ("load(None)", api(lambda w: repro.load(None)), "model name or path"),
    ("load dtype", api(lambda w: repro.load("tiny-llava-1.5", dtype="float8")), "dtype 'float8'"),
    ("load attn", api(lambda w: repro.load("tiny-llava-1.5", attn_implementation="flashy")), "attn_implementation"),
    ("load device", api(lambda w: repro.load("tiny-llava-1.5", device="cuda:99")), "device cuda:99"),
    ("method k=two", api(lambda w: repro.method("fastv", k="two")), "k='two'"),
    ("method inverse=1", api(lambda w: repro.method("fastv", inverse=1)), "inverse=1"),
    ("method budget", api(lambda w: repro.method("fastv", "ratio:2")), "ratio:2"),
    ("generate missing path", api(lambda w: w["model"].generate(str(w["root"] / "nope.png"), QUESTION)), "nope.png"),
    ("generate a number", api(lambda w: w["model"].generate(123, QUESTION)), "images must be"),
    ("generate max_new_tokens=-1", api(lambda w: w["model"].generate(w["image"], QUESTION, max_new_tokens=-1)),
     "max_new_tokens"),
    ("generate question None", api(lambda w: w["model"].generate(w["image"], None)), "question must be text"),
    ("dop n_v too large", api(lambda w: w["model"].generate(
        w["image"], QUESTION, max_new_tokens=1, method=repro.method("dop", policy=(100000, 1, 1), reducer="uniform"))),
     "n_v=100000 exceeds"),
    # ---- lmms-eval model_args
    ("model_args options JSON", model_args("method=random,options=notjson"), "options"),
    ("model_args dtype", model_args("dtype=float8"), "dtype='float8'"),
    ("model_args attn", model_args("attn=flashy"), "attn='flashy'"),
    ("model_args device", model_args("device=cuda:99"), "device cuda:99"),
    ("model_args unknown key", model_args("colour=red"), "colour"),
    ("model_args budget", model_args("method=fastv,budget=ratio:x"), "budget"),
    ("model_args option type", model_args('method=fastv,options={"k":"two"}'), "k='two'"),
    ("model_args budget without method", model_args("budget=ratio:0.5"), "need a method"),
]
SETUP = {
    "check malformed golden --reference": _write("golden.csv", "model,value\nx,1\n"),
    "check malformed paper --reference": _write("reported.csv", "a;b;c\n1;2;3\n"),
    "check garbage --tolerances": _write("tol.yaml", "golden: [unclosed\n"),
    "latency spec repeats ten": _write("latency.yaml", "model: tiny-llava-1.5\nrepeats: ten\n"),
}


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, run, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(world, name, run, names):
    if name in SETUP:
        SETUP[name](world)
    before = _checksums(world["store"].root)
    code, stderr = run(world)
    assert code != 0, stderr
    assert stderr.startswith("error: ") and stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    expected = names.format(**{k: str(v.root) if isinstance(v, Store) else str(v) for k, v in world.items()})
    assert expected in stderr, stderr
    assert _checksums(world["store"].root) == before


def test_every_bad_field_is_reported_at_once(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD.replace("limit: 2", "limit: 0.02").replace("seeds: [0]", "seeds: [zero]")
                    .replace("dtype: float32", "dtype: float8").replace("attn: sdpa", "attn: flashy"))
    with pytest.raises(ReproError) as err:
        load_spec(path)
    message = str(err.value)
    assert "4 problem(s)" in message and "\n" not in message
    for field in ("limit: 0.02", "seeds.0: 'zero'", "dtype: 'float8'", "attn: 'flashy'"):
        assert field in message


def test_api_accepts_a_path_or_a_pil_image(world):
    model = world["model"]
    from_path = model.generate(str(world["image"]), QUESTION, max_new_tokens=2)
    from_pil = model.generate(Image.open(world["image"]), QUESTION, max_new_tokens=2)
    from_list = model.generate([world["image"]], QUESTION, max_new_tokens=2)
    assert from_path.tokens == from_pil.tokens == from_list.tokens
    assert json.dumps(from_path.stats.as_dict()) == json.dumps(from_pil.stats.as_dict())


def test_a_vision_signal_the_family_lacks_is_one_clear_error(tiny_models):
    """Qwen2.5-VL's tower has no CLIP post-layernorm and no [CLS] token: asking is a ReproError
    naming the gap, not a NotImplementedError traceback."""
    model = tiny_models["tiny-qwen2.5-vl"]["sdpa"]
    signals = model.encode(model.prepare([make_image(0)], "What?")).signals
    with pytest.raises(ReproError, match="QwenSignals has no CLIP post-layernorm; the method asking for it"):
        signals.post_norm(torch.zeros(2, 4))
    with pytest.raises(ReproError, match="has no \\[CLS\\] token fed to a projector"):
        signals.crop_cls_feature()
