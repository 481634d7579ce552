"""Fit artifacts a cell needs before it runs (a method's fit on calibration data), kept in the store.

A method entry with `search:` in a sweep spec asks for its method's fit hook (methods/fitting.py):
`calibration` (a source of repro.calibration; default `tinyworld` on the tiny profile, `lmms:gqa`
on the paper profile), `samples` (default 25) and the method's own fit keys, which the method's
`fit_config` validates. The artifact is fitted once per (model, weights, dtype, backend, method,
fit config, calibration source, count, harness) under a store lock (concurrent sweeps and SLURM
jobs wait for the first one) and stored as `artifacts/<method>-<model>-<hash>.json`; every cell of
the entry gets `artifact=PATH`, and its record names the artifact (name, sha256, calibration
source, count, excluded evaluation documents). A stored artifact of another schema version is
refitted. Nothing here knows a method by name.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from repro.errors import ReproError
from repro.runner.spec import Cell, MethodEntry, canonical_json

log = logging.getLogger(__name__)
CALIBRATION_KEYS = ("calibration", "samples")
DEFAULT_SAMPLES = 25
DEFAULT_CALIBRATION = {"tiny": "tinyworld", "paper": "lmms:gqa"}


@dataclass(frozen=True)
class FitRequest:
    """What a fit is: the method's class, its validated config, the calibration source and count."""

    method: str
    cls: type
    config: Any
    source: str
    samples: int

    def identity(self) -> dict:
        from repro.methods.fitting import config_dict

        return {"method": self.method, "config": config_dict(self.config), "calibration": self.source,
                "samples": self.samples}


def fit_request(entry: MethodEntry | Cell, profile: str = "tiny", where: str = "sweep spec") -> FitRequest:
    """The fit an entry's `search:` asks for; ReproError on a method without a fit step or bad keys."""
    import repro  # noqa: F401 - registers every method
    from repro.methods.registry import specs

    name = entry.name if isinstance(entry, MethodEntry) else entry.method
    spec = next((s for s in specs() if s.name == name), None)
    fitting = [s.name for s in specs() if s.cls.fits()]
    if spec is None or not spec.cls.fits():
        raise ReproError(f"{where}: `search:` is a fit on calibration data, which method {name!r} does not have "
                         f"(methods with one: {', '.join(fitting)})")
    fit = dict(entry.search or {})
    source = str(fit.pop("calibration", DEFAULT_CALIBRATION.get(profile, "tinyworld")))
    samples = fit.pop("samples", DEFAULT_SAMPLES)
    if not isinstance(samples, int) or isinstance(samples, bool):  # 2.5 is not 2
        raise ReproError(f"{where}: `samples` of method {name!r}'s search must be a whole number >= 1, "
                         f"got {samples!r}")
    if samples < 1:
        raise ReproError(f"{where}: method {name!r}'s search needs samples >= 1, got {samples}")
    from repro.calibration import check_source

    try:
        check_source(source)
        config = spec.cls.fit_config(dict(entry.options), fit)
    except ReproError as err:
        raise ReproError(f"{where}: method {name!r}: {err}") from None
    return FitRequest(name, spec.cls, config, source, samples)


def artifact_name(cell: Cell, profile: str = "tiny") -> str:
    request = fit_request(cell, profile)
    ident = {"model": cell.model, "revision": cell.model_revision, "dtype": cell.dtype, "attn": cell.attn,
             **request.identity(), "harness": cell.harness}
    if cell.model_options:
        ident["model_options"] = cell.model_options
    if cell.subset:  # calibration documents are drawn outside the reduced run's subset
        ident["subset"] = cell.subset
    digest = hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:16]
    return f"{cell.method}-{cell.model}-{digest}"


def ensure_artifact(store, cell: Cell, budgets: list[str], load_model, data) -> tuple[Path, Any]:
    """The stored artifact of `cell`'s fit (path, typed artifact), fitted now (once, under a lock)
    when absent or of another schema version. `data` is the sweep's DataSource."""
    request = fit_request(cell, data.profile)
    name = artifact_name(cell, data.profile)

    def stored():
        body = store.read_artifact(name)
        if body is None:
            return None
        try:
            return request.cls.artifact_type.from_dict(body, str(store.artifact_path(name)))
        except ReproError as err:
            log.warning("%s; fitting again", err)
            return None

    if (found := stored()) is not None:
        return store.artifact_path(name), found
    with store.lock(f"artifact-{name}", blocking=True):
        if (found := stored()) is not None:  # another sweep fitted it while we waited
            return store.artifact_path(name), found
        from repro.calibration import calibration_set

        from repro.calibration import held_out_task

        task = held_out_task(request.source, data.profile)
        avoid = tuple(data.subset_rows(task) or ()) if task is not None and data.subset else ()
        cal = calibration_set(request.source, request.samples, data_dir=data.data_dir, staged=data.staged,
                              avoid=avoid)
        log.info("fitting %s for %s on %d samples of %s", request.method, cell.model, request.samples, request.source)
        artifact = request.cls.fit(load_model(), cal.samples, request.config, source=request.source,
                                   excluded=cal.excluded, budgets=tuple(sorted(set(budgets))))
        if hasattr(artifact, "seconds"):
            artifact = replace(artifact, seconds=round(artifact.seconds, 1))
        print(f"{request.method} fit for {cell.model}: {request.samples} samples of {request.source}"
              + (f" in {artifact.seconds:.1f} s" if hasattr(artifact, "seconds") else "") + f" -> {name}", flush=True)
        return store.write_artifact(name, artifact.to_dict()), artifact


def runtime_options(cell: Cell, store, budgets: list[str], load_model, data) -> tuple[dict, dict | None]:
    """The method options a cell runs with (a fitted method gets `artifact=PATH`), and what its
    record says about the fit (None without one)."""
    if cell.search is None:
        return dict(cell.options), None
    path, artifact = ensure_artifact(store, cell, budgets, load_model, data)
    cal = artifact.calibration
    check_disjoint(cell, cal.excluded)
    fit = {"artifact": path.stem, "sha256": artifact.sha256, "schema": f"{artifact.schema}/{artifact.version}",
           "calibration": cal.source, "samples": len(cal.samples), "excluded": list(cal.excluded)}
    return {**cell.options, "artifact": str(path)}, fit


def calibration_holdout(spec) -> dict[str, int]:
    """task -> how many of its last documents every cell of the sweep leaves out, because a fit of
    the sweep calibrates on them (a source drawing from a task's evaluated split)."""
    from repro.calibration import held_out_task

    holdout: dict[str, int] = {}
    for entry in spec.methods:
        if entry.search is None:
            continue
        request = fit_request(entry, spec.profile, spec.path)
        task = held_out_task(request.source, spec.profile)
        if task is not None:
            holdout[task] = max(holdout.get(task, 0), request.samples)
    return holdout


def check_disjoint(cell: Cell, excluded: tuple[str, ...]) -> None:
    """A cell must not evaluate the documents its fit calibrated on (`TASK/doc_id`, the last ones of
    the evaluated split): its holdout covers them, or its `limit` stops before the first of them."""
    from repro.eval.tasks import PAPER_TASKS

    aliases = {t.name: t.task for t in PAPER_TASKS}
    mine = [int(doc) for task, _, doc in (e.rpartition("/") for e in excluded) if aliases.get(task, task) == cell.task]
    first = min(mine, default=None)
    if first is not None and cell.holdout < len(mine) and (cell.limit is None or cell.limit > first):
        raise ReproError(f"cell {cell.describe()} would evaluate documents {first} and later of {cell.task}, which "
                         f"its fit calibrated on; set the sweep's limit to at most {first}, or calibrate on another "
                         f"split or task (`calibration: lmms:TASK:SPLIT`)")
