"""The results store: cell keys, atomic checksummed records, corrupt-record detection, locks."""

from __future__ import annotations

import json
import multiprocessing
import textwrap

import pytest

from repro.errors import ReproError
from repro.runner.spec import expand, load_spec
from repro.runner.store import Store

SPEC = textwrap.dedent("""\
    profile: tiny
    models: [tinyworld-llava]
    tasks: [tinyworld_gqa, tinyworld_mme]
    limit: 2
    budgets: [ratio:0.6]
    methods:
      - name: none
      - name: fastv
        options: {k: 1}
""")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return load_spec(path)


def test_keys_follow_the_canonical_config(spec, tmp_path):
    cells = expand(spec)
    assert len(cells) == 4 and len({c.key for c in cells}) == 4
    assert [c.key for c in expand(spec)] == [c.key for c in cells]  # same config, same key
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("{k: 1}", "{k: 1, keep_ratio: 0.5}").replace("device", "x"))
    changed = {c.key for c in expand(load_spec(other))}
    assert changed & {c.key for c in cells} == {c.key for c in cells if c.method == "none"}
    assert cells[0].with_device("cuda").key == cells[0].key  # the device is provenance, not identity


def test_record_roundtrip_and_corruption(tmp_path):
    store = Store(tmp_path)
    record = {"config": {"a": 1}, "metrics": {"score": 0.5}}
    store.write("abcd", record, [{"doc_id": 0, "resps": [["x"]]}])
    assert store.status("abcd") == "done"
    assert store.read("abcd")["metrics"] == {"score": 0.5}
    assert store.read_samples("abcd") == [{"doc_id": 0, "resps": [["x"]]}]
    path = store.record_path("abcd")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # truncated
    assert store.status("abcd").startswith("corrupt") and store.read("abcd") is None
    path.write_text(text.replace("0.5", "0.6"))  # edited by hand: checksum mismatch
    assert store.status("abcd") == "corrupt: record checksum mismatch"
    path.write_text(text)
    store.samples_path("abcd").write_text('{"doc_id": 1}\n')
    assert store.status("abcd") == "corrupt: samples checksum mismatch"
    store.discard("abcd")
    assert store.status("abcd") == "missing"


def test_writes_leave_no_temporary_files(tmp_path):
    store = Store(tmp_path)
    for i in range(3):
        store.write(f"k{i}xx", {"i": i}, [])
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert json.loads(store.record_path("k1xx").read_text())["i"] == 1


def _hold_lock(root, ready, release):
    with Store(root).lock("cell", blocking=True):
        ready.set()
        release.wait(10)


def test_cell_lock_excludes_another_process(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with Store(tmp_path).lock("cell", blocking=False) as got:
            assert not got
    finally:
        release.set()
        proc.join(30)
    with Store(tmp_path).lock("cell", blocking=False) as got:
        assert got


def test_artifacts_detect_corruption(tmp_path):
    store = Store(tmp_path)
    store.write_artifact("dop-x", {"format": "f", "value": 1})
    assert store.read_artifact("dop-x") == {"format": "f", "value": 1}
    store.artifact_path("dop-x").write_text("{\"format\": \"f\"")
    assert store.read_artifact("dop-x") is None


@pytest.mark.parametrize("old, new, message", [
    ("name: fastv", "name: fastvv", "unknown method 'fastvv'; registered:"),
    ("[tinyworld_gqa,", "[tinyworld_gqaa,", "unknown task 'tinyworld_gqaa' for profile tiny (did you mean tinyworld_gqa"),
    ("[tinyworld-llava]", "[llava-7b]", "unknown model 'llava-7b'; use a name from `python -m repro models`"),
    ("{k: 1}", "{kk: 1}", "bad options for method 'fastv'"),
    ("limit: 2", "colour: red", "colour: unknown key; allowed:"),
])
def test_bad_specs_fail_with_one_clear_error(tmp_path, old, new, message):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace(old, new))
    with pytest.raises(ReproError) as err:
        load_spec(path)
    assert message in str(err.value)


def test_budgets_may_differ_per_model(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("models: [tinyworld-llava]", "models: [tinyworld-llava, tiny-llava-1.5]")
                    .replace("budgets: [ratio:0.6]", "budgets: {default: [ratio:0.6], tiny-llava-1.5: [tokens:4, tokens:2]}"))
    cells = expand(load_spec(path))
    fastv = {(c.model, c.budget) for c in cells if c.method == "fastv"}
    assert fastv == {("tinyworld-llava", "ratio:0.6"), ("tiny-llava-1.5", "tokens:4"), ("tiny-llava-1.5", "tokens:2")}
    assert {c.budget for c in cells if c.method == "none"} == {None}


def test_odd_limits_are_refused_for_mme(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("limit: 2", "limit: 3"))
    with pytest.raises(ReproError, match="MME scores question pairs"):
        load_spec(path)
