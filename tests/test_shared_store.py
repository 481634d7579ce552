"""A store shared by several accounts (a cluster): files honour the umask and are readable by
another account; what this account cannot read is reported, never deleted; temporaries of
interrupted writes are cleaned (old ones only); records hold no absolute store location.

The other account is real: a subprocess drops root to uid/gid 65534 (nobody) with os.setuid.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from repro.errors import ReproError
from repro.runner.spec import expand, load_spec
from repro.runner.store import Store

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534
SPEC = textwrap.dedent("""\
    profile: tiny
    models: [tinyworld-llava]
    tasks: [tinyworld_gqa, tinyworld_pope]
    limit: 2
    methods:
      - name: none
""")

needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                reason="dropping to another uid needs root (run as root in CI containers)")


@pytest.fixture(scope="module", autouse=True)
def checkout_reachable_by_another_account():
    """The other account runs this checkout's code and reads its shipped weights, so it must be
    able to traverse the folders above it. A private clone folder (`mktemp -d` makes 0700) gets
    o+x for this module's duration and its mode back afterwards."""
    changed = []
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        for folder in [ROOT, *ROOT.parents]:
            mode = folder.stat().st_mode & 0o7777
            if not mode & 0o001:
                folder.chmod(mode | 0o001)
                changed.append((folder, mode))
    yield
    for folder, mode in changed:
        folder.chmod(mode)


@pytest.fixture
def shared_dir():
    """A folder every account can traverse (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="repro-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(task) -> dict:
    """`task()` run as uid/gid 65534 in a forked child (the interpreter may live under /root,
    which nobody cannot exec); returns the JSON-able dict it returns."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            signal.alarm(120)  # a stuck child dies instead of hanging the test run
            os.setgid(NOBODY)
            os.setgroups([])
            os.setuid(NOBODY)
            result = task()
            os.write(write, json.dumps(result).encode())
            code = 0
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            os.write(write, json.dumps({"child_error": repr(err)}).encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data or b"{}")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, result
    return result


def _cli(argv: list[str]) -> tuple[int, str]:
    from repro.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode) for p in sorted(root.rglob("*"))
            if p.is_file()}


@needs_root
def test_store_written_under_umask_0022_is_read_by_another_account(shared_dir):
    old = os.umask(0o022)
    try:
        store = Store(shared_dir / "store")
        store.write("abcdef", {"metrics": {"score": 1.0}}, [{"doc_id": 0}])
        store.write_artifact("dop-x", {"format": "f"})
    finally:
        os.umask(old)
    for path in (store.record_path("abcdef"), store.samples_path("abcdef"), store.artifact_path("dop-x")):
        assert path.stat().st_mode & 0o777 == 0o644, path  # not mkstemp's 0600
    def read_as_nobody():
        s = Store(shared_dir / "store")
        return {"status": s.status("abcdef"), "score": s.read("abcdef")["metrics"]["score"],
                "artifact": s.read_artifact("dop-x")}

    seen = _as_nobody(read_as_nobody)
    assert seen == {"status": "done", "score": 1.0, "artifact": {"format": "f"}}


@needs_root
def test_an_unreadable_record_is_reported_and_never_deleted(shared_dir):
    spec_path = shared_dir / "spec.yaml"
    spec_path.write_text(SPEC)
    spec_path.chmod(0o644)
    cells = expand(load_spec(spec_path))
    store = Store(shared_dir / "store")
    for cell in cells:
        store.write(cell.key, {"config": cell.config()}, [])
    victim = store.record_path(cells[0].key)
    victim.chmod(0o600)  # written by another account with a private umask
    (shared_dir / "tables").mkdir(mode=0o777)
    (shared_dir / "tables").chmod(0o777)
    before = _files(store.root)
    def sweep_as_nobody():
        code, err = _cli(["sweep", str(spec_path), "--store", str(store.root), "--tables", str(shared_dir / "tables"),
                          "--figures", str(shared_dir / "tables")])
        try:
            store.discard(cells[0].key)
            discarded = "deleted"
        except ReproError:
            discarded = "ReproError"
        return {"status": store.status(cells[0].key), "code": code, "stderr": err, "discard": discarded}

    seen = _as_nobody(sweep_as_nobody)
    assert seen["status"].startswith("unreadable: ") and "permission denied" in seen["status"]
    assert seen["code"] == 2 and seen["discard"] == "ReproError"
    assert seen["stderr"].startswith("error: ") and seen["stderr"].count("\n") == 1
    assert str(victim) in seen["stderr"] and "Traceback" not in seen["stderr"]
    assert _files(store.root) == before  # nothing deleted, nothing rewritten


@needs_root
def test_read_only_store_with_pending_cells_and_read_only_tables_fail_before_work(shared_dir):
    spec_path = shared_dir / "spec.yaml"
    spec_path.write_text(SPEC)
    spec_path.chmod(0o644)
    store = Store(shared_dir / "store")
    store.write(expand(load_spec(spec_path))[0].key, {}, [])  # one of two cells done: one pending
    (shared_dir / "tables").mkdir()  # root's 0755: read-only for nobody
    (shared_dir / "open").mkdir()
    (shared_dir / "open").chmod(0o777)
    before = _files(store.root)
    def sweeps_as_nobody():
        return {name: _cli(["sweep", str(spec_path), "--store", str(store.root), "--tables", str(tables),
                            "--figures", str(shared_dir / "open")])
                for name, tables in (("store", shared_dir / "open"), ("tables", shared_dir / "tables"))}

    seen = _as_nobody(sweeps_as_nobody)
    code, err = seen["store"]
    assert code == 2 and err.count("\n") == 1 and "not writable by this account" in err and str(store.root) in err
    code, err = seen["tables"]
    assert code == 2 and err.count("\n") == 1 and "--tables" in err and "not writable" in err
    assert _files(store.root) == before


def test_a_folder_in_place_of_a_record_is_a_clear_error(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC)
    spec = load_spec(spec_path)
    store = Store(tmp_path / "store")
    key = expand(spec)[0].key
    store.record_path(key).mkdir(parents=True)
    assert store.status(key).startswith("unreadable: ") and "is a folder" in store.status(key)
    with pytest.raises(ReproError, match="is a folder, not a record"):
        store.discard(key)
    from repro.runner.sweep import run_sweep

    with pytest.raises(ReproError, match=r"1 record\(s\) of store .* cannot be used"):
        run_sweep(spec, store.root, progress=False)
    assert store.record_path(key).is_dir()


def test_old_temporaries_are_removed_and_live_ones_kept(tmp_path):
    store = Store(tmp_path)
    store.write("abcd", {"x": 1}, [])
    folder = store.record_path("abcd").parent
    old, live = folder / ".abcd.json.k3j2.tmp", folder / ".abcd.json.z9x8.tmp"
    old.write_text("partial")
    live.write_text("being written")
    hours_ago = time.time() - 7 * 3600
    os.utime(old, (hours_ago, hours_ago))
    assert store.clean_temporaries() == [old]
    assert not old.exists() and live.exists() and store.status("abcd") == "done"


def test_records_hold_paths_relative_to_the_store(tmp_path):
    store = Store(tmp_path / "store")
    artifact = store.write_artifact("dop-m-1", {"format": "f"})
    store.write("abcd", {"model_args": {"options": {"artifact": str(artifact.resolve())}},
                         "relative": str(artifact)}, [{"options": {"artifact": str(artifact.resolve())}}])
    text = store.record_path("abcd").read_text() + store.samples_path("abcd").read_text()
    assert str(tmp_path) not in text
    record = store.read("abcd")
    assert record["model_args"]["options"]["artifact"] == "artifacts/dop-m-1.json" == record["relative"]
    assert store.resolve(record["relative"]) == artifact
    moved = tmp_path / "moved"
    shutil.move(store.root, moved)
    assert Store(moved).status("abcd") == "done"  # a moved store keeps its records
