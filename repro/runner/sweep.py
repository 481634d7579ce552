"""A sweep: expand a spec, stop early on missing inputs, evaluate the unfinished cells with the
chosen executor, and report what was computed and what was reused.

Multi-GPU inside a cell: `accelerate launch --num_processes N -m repro sweep SPEC` runs N ranks that
shard every cell's documents (see repro.eval.parallel and repro.runner.executors); rank 0 writes
the records and reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError
from repro.runner.executors import (
    DataSource,
    Outcome,
    SlurmOptions,
    default_workers,
    run_local,
    run_slurm,
)
from repro.runner.plan import require_inputs
from repro.runner.spec import Cell, Spec, expand
from repro.runner.store import Store


@dataclass
class SweepResult:
    cells: list[Cell]
    outcome: Outcome
    seconds: float


def default_store(profile: str) -> Path:
    return Path("results") / profile / "store"


def check_data_dir(data_dir: Path | str | None) -> None:
    """A --data-dir that cannot hold the tiny world is an error before any compute."""
    if data_dir is None:
        return
    from repro.paths import nearest_existing

    path = Path(data_dir)
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise ReproError(f"--data-dir {path}: {existing} is a file; pass a folder (the tiny world is built there)")


def run_sweep(spec: Spec, store_root: Path | str, *, executor: str = "local", slurm: SlurmOptions | None = None,
              data_dir: Path | str | None = None, staged: Path | str | None = None,
              progress: bool = True, threads: int | None = None, workers: int | None = None,
              encode_cache_mb: int | None = None, batch_size: int = 1) -> SweepResult:
    """Evaluate the spec's unfinished cells. `workers`: local worker processes (default: the spec's,
    else one per available core on a CPU, one on an accelerator); several run one thread each.
    `encode_cache_mb`: each worker's caches of processor outputs and encodings (models/encodings.py; 0: off);
    `batch_size`: samples packed per pass (engine/packed.py), speed only like `threads`."""
    from repro.eval import parallel
    from repro.runner.provenance import git_commit

    t0 = time.perf_counter()
    threads = threads or spec.threads
    workers = workers or spec.workers or default_workers(spec.device, threads)
    if executor == "local" and workers > 1:
        threads = threads or 1  # one thread per worker process
    staged = staged or spec.staged
    from repro.devices import device_problem

    require_inputs(spec, Path(staged) if staged else None)  # the staging list first: it is the longer fix
    problem = device_problem(spec.device)
    if problem:
        raise ReproError(f"{spec.path}: {problem}")
    check_data_dir(data_dir)
    cells = expand(spec)
    store = Store(store_root)
    store.check_usable(writing=False)
    # Under `accelerate launch --num_processes N` (repro.eval.parallel) all ranks evaluate the same
    # cells together: start the process group now and take rank 0's view of the store.
    parallel.accelerator(spec.device)
    main = parallel.is_main()
    if parallel.world_size() > 1 and executor == "slurm":
        raise ReproError("the slurm executor submits jobs from one process; run it without `accelerate launch`")
    statuses = parallel.broadcast({c.key: store.status(c.key) for c in cells})
    unreadable = [(c, statuses[c.key]) for c in cells if statuses[c.key].startswith("unreadable")]
    if unreadable:
        cell, why = unreadable[0]
        raise ReproError(f"{len(unreadable)} record(s) of store {store.root} cannot be used (left as they are), "
                         f"e.g. {cell.describe()}: {why.removeprefix('unreadable: ')}")
    pending = [c for c in cells if statuses[c.key] != "done"]
    if pending:
        store.check_usable(writing=True)
    for tmp in store.clean_temporaries() if pending and main else []:
        print(f"removed {tmp}, left by an interrupted write", flush=True)
    say = print if main else (lambda *a, **k: None)  # rank 0 reports
    say(f"sweep {spec.path}: {len(cells)} cells, {len(cells) - len(pending)} finished, {len(pending)} to compute "
          f"(store {store.root})", flush=True)
    source = DataSource(spec.profile, str(data_dir) if data_dir else None, str(staged) if staged else None,
                        (spec.subset["docs"], spec.subset["seed"]) if spec.subset else None, tuple(spec.tasks))
    if not pending:
        outcome = Outcome(skipped=[c.key for c in cells])
    elif executor == "slurm":
        outcome = run_slurm(pending, str(store.root), source, git_commit(), slurm or SlurmOptions(), threads,
                            encode_cache_mb, batch_size)
    else:
        outcome = run_local(pending, str(store.root), source, git_commit(), progress, threads, workers,
                            encode_cache_mb, batch_size)
    seconds = time.perf_counter() - t0
    say(f"sweep done in {seconds:.0f} s: {len(outcome.computed)} computed ({len(outcome.recomputed)} of them "
          f"replaced corrupt records), {len(cells) - len(outcome.computed)} reused", flush=True)
    return SweepResult(cells, outcome, seconds)
