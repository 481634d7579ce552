"""Search artifacts a cell needs before it can run (DOP's policy search), kept in the store.

A DOP entry with `search:` in a sweep spec names how its artifact is made: the calibration source
(the tiny world's validation splits), the number of samples and the search options. The artifact
is searched once per model and search config, under a store lock (concurrent sweeps and SLURM jobs
wait for the first one), and stored as `artifacts/dop-<model>-<hash>.json`; later runs reuse it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from repro.errors import ReproError
from repro.runner.spec import Cell, MethodEntry, canonical_json

log = logging.getLogger(__name__)
SEARCH_KEYS = {"calibration", "samples", "reducer_options", "mha_semantics", "kl_direction", "kl_tokens",
               "interpolation", "groups", "depth_step", "visual_points"}


def search_options(entry: MethodEntry | Cell, where: str = "sweep spec"):
    """(SearchOptions, calibration source, samples) of a DOP entry; ReproError on bad keys."""
    from repro.methods.dop.search import SearchOptions

    name = entry.name if isinstance(entry, MethodEntry) else entry.method
    search = dict(entry.search or {})
    if name != "dop":
        raise ReproError(f"{where}: `search:` is only for method dop, not {name!r}")
    unknown = sorted(set(search) - SEARCH_KEYS)
    if unknown:
        raise ReproError(f"{where}: unknown dop search key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(SEARCH_KEYS))}")
    source, samples = str(search.pop("calibration", "tinyworld")), int(search.pop("samples", 25))
    reducer = entry.options.get("reducer", "vispruner")
    try:
        options = SearchOptions(reducer=reducer, **search)
    except TypeError as err:
        raise ReproError(f"{where}: bad dop search options: {err}") from None
    options.check()
    return options, source, samples


def artifact_name(cell: Cell) -> str:
    ident = {"model": cell.model, "revision": cell.model_revision, "dtype": cell.dtype, "attn": cell.attn,
             "reducer": cell.options.get("reducer", "vispruner"), "search": cell.search, "harness": cell.harness}
    if cell.model_options:
        ident["model_options"] = cell.model_options
    digest = hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:16]
    return f"dop-{cell.model}-{digest}"


def ensure_artifact(store, cell: Cell, budgets: list[str], load_model) -> Path:
    """The stored artifact of `cell`'s search, searched now (once, under a lock) when absent."""
    name = artifact_name(cell)
    if store.read_artifact(name) is not None:
        return store.artifact_path(name)
    with store.lock(f"artifact-{name}", blocking=True):
        if store.read_artifact(name) is not None:  # another sweep searched it while we waited
            return store.artifact_path(name)
        from repro.calibration import calibration_samples
        from repro.methods.dop.search import search

        options, source, n = search_options(cell)
        log.info("searching the DOP policy for %s (%s, %d %s validation samples)", cell.model, options.reducer,
                 n, source)
        artifact = search(load_model(), calibration_samples(source, n), sorted(set(budgets)), options, source=source)
        artifact["seconds"] = round(artifact["seconds"], 1)
        print(f"dop search for {cell.model}: {artifact['forward_passes']} forward passes in "
              f"{artifact['seconds']:.1f} s -> {name}", flush=True)
        return store.write_artifact(name, artifact)


def runtime_options(cell: Cell, store, budgets: list[str], load_model) -> dict:
    """The method options a cell runs with: a DOP search entry gets the stored artifact's path."""
    if cell.search is None:
        return dict(cell.options)
    path = ensure_artifact(store, cell, budgets, load_model)
    options = {k: v for k, v in cell.options.items() if k not in ("reducer", "reducer_options", "mha_semantics")}
    return {**options, "artifact": str(path)}
