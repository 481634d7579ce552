"""Tiny world on disk: determinism, caching, corruption detection, task YAMLs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from repro import tinyworld as tw
from repro.errors import ReproError
from repro.tinyworld.__main__ import main
from repro.tinyworld.build import MANIFEST, sha256_file
from repro.tinyworld.yamls import lmms_eval_tasks_dir

SMALL = tw.SplitSizes(train=6, validation=4, test=8)


class _Loader(yaml.SafeLoader):
    """Reads lmms-eval's `!function mod.fn` tags as plain strings."""


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
SOME = ["pope", "mme", "textvqa", "mmbench"]


def hashes(manifest: dict) -> dict[str, str]:
    return {f["path"]: f["sha256"] for e in manifest["tasks"].values() for f in e["files"].values()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("tw")
    return d, tw.build(d, seed=0, sizes=SMALL)


def test_same_seed_gives_byte_identical_files(built, tmp_path):
    d, manifest = built
    again = tw.build(tmp_path / "again", seed=0, sizes=SMALL, tasks=SOME)
    ref = {k: v for k, v in hashes(manifest).items() if k.split("/")[1] in SOME}
    assert hashes(again) == ref
    for rel, digest in hashes(manifest).items():
        assert sha256_file(d / rel) == digest
    other = tw.build(tmp_path / "other", seed=1, sizes=SMALL, tasks=SOME)
    assert set(hashes(other).values()).isdisjoint(ref.values())


def test_manifest_records_version_seed_sizes(built):
    d, manifest = built
    on_disk = json.loads((d / MANIFEST).read_text())
    assert on_disk == manifest
    assert manifest["version"] == tw.GENERATOR_VERSION and manifest["seed"] == 0
    assert manifest["image_size"] == tw.IMAGE_SIZE
    assert set(manifest["tasks"]) == {t.key for t in tw.TASKS}
    assert manifest["tasks"]["pope"]["sizes"] == {"train": 6, "validation": 4, "test": 8}
    assert manifest["tasks"]["pope"]["rows"] == {"train": 6, "validation": 4, "test": 8}


def test_rebuild_is_a_no_op(built):
    d, manifest = built
    stamps = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}
    assert tw.build(d, seed=0, sizes=SMALL) == manifest
    assert {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} == stamps


def test_corrupt_and_missing_files_are_reported_then_regenerated(tmp_path):
    d = tmp_path / "tw"
    manifest = tw.build(d, seed=0, sizes=SMALL, tasks=["pope", "chartqa"])
    victim, gone = d / "data/pope/test.parquet", d / "data/chartqa/train.parquet"
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")
    gone.unlink()
    with pytest.raises(ReproError) as err:
        tw.verify(d)
    msg = str(err.value)
    assert str(victim) in msg and "checksum" in msg and str(gone) in msg and "missing" in msg
    assert f"python -m repro.tinyworld build --data-dir {d} --seed 0 --train 6 --validation 4 --test 8" in msg
    with pytest.raises(ReproError, match="checksum"):
        tw.task_manager(d)
    assert tw.build(d, seed=0, sizes=SMALL, tasks=["pope", "chartqa"]) == manifest
    tw.verify(d)


def test_not_built_and_unknown_task_errors(tmp_path):
    with pytest.raises(ReproError, match="no tinyworld suite.*python -m repro.tinyworld build"):
        tw.verify(tmp_path)
    with pytest.raises(ReproError, match="unknown tinyworld task 'nope'"):
        tw.build(tmp_path, tasks=["nope"])
    with pytest.raises(ReproError, match=">= 1"):
        tw.SplitSizes(train=0)


def test_task_yamls_reuse_installed_lmms_eval_tasks(built):
    d, _ = built
    folder = d / "tasks"
    group = yaml.safe_load((folder / "_tinyworld.yaml").read_text())
    assert group == {"group": "tinyworld", "task": tw.task_names(group_only=True)}
    assert len(group["task"]) == 13
    val = yaml.safe_load((folder / "_tinyworld_val.yaml").read_text())
    assert val["task"] == tw.task_names(split="validation", group_only=True)
    for spec in tw.TASKS:
        text = (folder / f"{spec.name}.yaml").read_text()
        if spec.include:
            cfg = yaml.load(text, Loader=_Loader)
            assert cfg["include"] == str(lmms_eval_tasks_dir() / spec.include)
            assert Path(cfg["include"]).is_file()
            assert cfg["dataset_kwargs"] == {
                "data_files": {"test": str((d / f"data/{spec.key}/test.parquet").resolve())}
            }
        else:
            cfg = yaml.load(text, Loader=_Loader)
            assert cfg["process_results"].startswith("!function tinyworld_utils.")
    assert (folder / "tinyworld_utils.py").is_file()


def test_task_manager_indexes_every_task(built):
    d, _ = built
    tm = tw.task_manager(d)
    assert set(tw.task_names()) | set(tw.task_names(split="validation")) <= set(tm.all_tasks)
    assert {"tinyworld", "tinyworld_val"} <= set(tm.all_groups)


def test_load_split_decodes_images(built):
    d, _ = built
    ds = tw.load_split(d, "tinyworld_chartqa", "train")
    assert len(ds) == 6
    assert isinstance(ds[0]["image"], Image.Image) and ds[0]["image"].size == (tw.IMAGE_SIZE,) * 2
    seed = tw.load_split(d, "seed", "test")
    assert isinstance(seed[0]["image"][0], Image.Image)


def test_default_data_dir_is_versioned_under_home():
    d = tw.default_data_dir()
    assert d.is_absolute() and d.name == f"v{tw.GENERATOR_VERSION}" and Path.home() in d.parents


def test_cli_builds_and_prints_sizes(tmp_path, capsys):
    rc = main(["build", "--data-dir", str(tmp_path), "--seed", "2", "--train", "3", "--validation", "2",
               "--test", "4", "--tasks", "pope", "ocrbench"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "tinyworld_pope" in out and "tinyworld_ocrbench" in out and "tinyworld_mme" not in out
    assert json.loads((tmp_path / MANIFEST).read_text())["seed"] == 2
    assert main(["build", "--data-dir", str(tmp_path), "--tasks", "nope"]) == 2
    assert "unknown tinyworld task" in capsys.readouterr().err
