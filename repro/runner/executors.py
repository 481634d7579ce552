"""Executors: evaluate a list of cells into a store.

`run_cells` is the worker: it loads each model once, builds one lmms-eval model instance per
(method, budget, seed) row, runs every task of the row through `repro.eval.evaluate`, and writes
one record per cell. It skips finished cells, recomputes corrupt ones, and takes a per-cell lock so
two workers on one store never compute the same cell at once (a locked cell is retried at the end,
after the other worker has written it). The executors hand it cells task by task (`task_major`:
every row of one task, then the next task), so the loaded model's caches (models/encodings.py)
process and encode each image once.

The local executor (`run_local`) runs `workers` such workers over the same cells, each starting at
another point of the list: the sweep's own process (its imports are paid already) and `workers - 1`
spawned processes, one thread each unless told otherwise, each loading its model once. The
per-cell locks share the work out, and results equal one worker's because each cell is computed by
exactly one process in the same way. On a CPU the default is one worker per available core
(`default_workers`). The SLURM executor submits `run_cells` through submitit, one
job per group of rows.

Under `accelerate launch --num_processes N -m repro sweep SPEC` (repro.eval.parallel) every rank
runs `run_cells` over the same cells and each cell's evaluation is sharded across the ranks. Rank 0
alone takes the cell locks, decides (skip / compute / recompute) and broadcasts its decision, and
alone writes records. A fit artifact (e.g. DOP's search) is fitted by whichever rank takes its store
lock first and read by the others, which wait on that lock (not on a collective, so a long search hits no
process-group timeout).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.errors import ReproError
from repro.runner.spec import UNPRUNED, Cell
from repro.runner.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSource:
    """Where the tasks' data live: the tiny world (`data_dir`, default cache) or staged paper data."""

    profile: str = "tiny"
    data_dir: str | None = None
    staged: str | None = None
    subset: tuple[int, int] | None = None  # paper profile: the reduced run's documents per task and seed
    tasks: tuple[str, ...] | None = None  # paper profile: the staged tasks the sweep needs (None: all thirteen)

    def build(self) -> None:
        """Make the data present (the tiny world is generated once, before workers start)."""
        if self.profile == "tiny":
            from repro import tinyworld

            tinyworld.build(Path(self.data_dir) if self.data_dir else tinyworld.default_data_dir())

    def task_manager(self):
        from repro.eval.run import task_manager_for

        if self.profile == "tiny":
            from repro import tinyworld

            data_dir = Path(self.data_dir) if self.data_dir else tinyworld.default_data_dir()
            tinyworld.build(data_dir)
            return task_manager_for(data_dir)
        if self.tasks is None:
            return task_manager_for(staged=self.staged, subset=self.subset)
        from repro.eval.tasks import paper_task, task_manager

        return task_manager(self.staged, names=sorted({paper_task(t).name for t in self.tasks}), subset=self.subset)

    def subset_rows(self, task: str) -> list[int] | None:
        """Row positions of the reduced run's subset of `task` in its staged split (None: all rows)."""
        if self.subset is None:
            return None
        from repro.eval.tasks import paper_task, subset_table

        return subset_table(Path(self.staged or "data/staged"), paper_task(task), *self.subset)[1]


@dataclass
class Outcome:
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)


def _json_default(o: Any):
    from PIL import Image

    if isinstance(o, Image.Image):
        return f"<image {o.size[0]}x{o.size[1]}>"
    from lmms_eval.utils import handle_non_serializable

    return handle_non_serializable(o)


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def budget_stats(samples: list[dict]) -> dict:
    """Realized TFLOPs and token statistics over a cell's sample logs."""
    import numpy as np

    from repro.runner.records import SampleRecord

    answered = [r for r in (SampleRecord.from_log(s).repro for s in samples) if r]
    recs = [r for r in answered if "infeasible" not in r]
    infeasible = len(answered) - len(recs)
    if not recs:
        return {"samples": 0, "infeasible": infeasible} if infeasible else {}
    paper = np.array([r["tflops"]["paper"] for r in recs])
    exact = np.array([r["tflops"]["exact"] for r in recs])
    stats = [r["stats"] for r in recs]
    per_layer = {k: np.mean([s[k] for s in stats], axis=0).tolist()
                 for k in ("visual_attention_tokens", "visual_mlp_tokens", "visual_kv_tokens") if k in stats[0]}
    return {"samples": len(recs), "infeasible": infeasible, "tflops_paper": {"mean": float(paper.mean()), "min": float(paper.min()),
                                                   "max": float(paper.max())},
            **per_sample_budget(recs, paper),
            "tflops_exact_mean": float(exact.mean()),
            "probe_tflops_mean": float(np.mean([s.get("probe_tflops", 0.0) for s in stats])),
            "n_tokens_mean": float(np.mean([s["n_tokens"] for s in stats])),
            "visual_tokens_mean": float(np.mean([s["visual_tokens"] for s in stats])),
            "visual_tokens_per_layer_mean": per_layer, "dead_ops": sorted({s.get("dead_ops", "") for s in stats})}


def per_sample_budget(recs: list[dict], paper) -> dict:
    """Per-sample realized prefill FLOPs against the unpruned model on the same input
    (`flops_ratio`) and, under a `ratio:R` / `tflops:X` budget, realized / allowed
    (`budget_use`: mean, max, and how many samples exceed the budget)."""
    import numpy as np

    from repro.budget import as_budget

    unpruned = [r["stats"].get("unpruned_tflops") for r in recs]
    if not all(unpruned):
        return {}
    ratio = paper / np.array(unpruned, dtype=float)
    out = {"flops_ratio": {"mean": float(ratio.mean()), "max": float(ratio.max())}}
    budget = as_budget(recs[0].get("budget")) if recs[0].get("budget") else None
    if budget is not None and budget.kind != "tokens":
        use = ratio / budget.value if budget.kind == "ratio" else paper / budget.value
        out["budget_use"] = {"budget": str(budget), "mean": float(use.mean()), "max": float(use.max()),
                             "samples_over": int((use > 1 + 1e-9).sum())}
    return out


class _Worker:
    """State of one `run_cells` call: loaded models, lmms-eval instances, the task manager."""

    def __init__(self, store: Store, source: DataSource, commit: str, budgets: dict[str, list[str]],
                 encode_cache_mb: int | None = None, batch_size: int = 1):
        self.store, self.source, self.commit, self.budgets = store, source, commit, budgets
        self.encode_cache_mb, self.batch_size = encode_cache_mb, batch_size
        self.models: dict[tuple, Any] = {}
        self.lms: dict[tuple, Any] = {}
        self.n_docs: dict[str, int] = {}
        self._tm = None

    @property
    def tm(self):
        if self._tm is None:
            self._tm = self.source.task_manager()
        return self._tm

    def model(self, cell: Cell):
        key = cell.loaded
        if key not in self.models:
            import repro

            self.models.clear(), self.lms.clear()  # one model in memory at a time
            from repro.eval.parallel import process_device

            model = repro.load(cell.model, dtype=cell.dtype, device=process_device(cell.device),
                               attn_implementation=cell.attn, revision=cell.revision, **cell.model_options)
            if self.encode_cache_mb is not None:
                model.cache(self.encode_cache_mb << 20)
            self.models[key] = model
        return self.models[key]

    def lm(self, cell: Cell):
        if cell.group not in self.lms:
            from repro.eval.lmms_model import ReproLMM
            from repro.runner.artifacts import runtime_options

            options, fit = runtime_options(cell, self.store, self.budgets.get(cell.model, []),
                                           lambda: self.model(cell), self.source)
            args = self.model_args(cell, options)
            if self.batch_size > 1:  # speed only (like threads): not part of the cell's key
                args["batch_size"] = self.batch_size
            self.lms[cell.group] = (ReproLMM(loaded_model=self.model(cell), **args), args, fit)
        return self.lms[cell.group]

    def limit(self, cell: Cell) -> int | None:
        """The cell's document limit, stopping before its held-out calibration documents (the task's last
        `holdout` ones), which no method of the sweep evaluates."""
        if not cell.holdout or cell.subset:  # a reduced run's subset never holds calibration documents
            return cell.limit
        from lmms_eval.tasks import get_task_dict

        if cell.task not in self.n_docs:
            self.n_docs[cell.task] = len(get_task_dict([cell.task], self.tm)[cell.task].test_docs())
        n_docs = self.n_docs[cell.task]
        if n_docs <= cell.holdout:
            raise ReproError(f"{cell.task} has {n_docs} documents, all of them held out for calibration; "
                             "calibrate on fewer samples or on another task or split")
        return min(cell.limit if cell.limit is not None else n_docs, n_docs - cell.holdout)

    @staticmethod
    def model_args(cell: Cell, options: dict) -> dict:
        args = {"model": cell.model, "dtype": cell.dtype, "attn": cell.attn, "device": cell.device,
                "revision": cell.revision}
        if cell.model_options:
            args["model_options"] = cell.model_options
        if cell.method != UNPRUNED:
            args.update(method=cell.method, options=options)
            if cell.budget:
                args["budget"] = cell.budget
        return args

    def compute(self, cell: Cell) -> dict | None:
        """The cell's record, written to the store; None on a non-zero rank (rank 0 writes)."""
        from repro.eval import parallel
        from repro.eval.run import evaluate
        from repro.runner import benchmarks
        from repro.runner.provenance import provenance

        lm, args, fit = self.lm(cell)
        limit = self.limit(cell)
        t0 = time.perf_counter()
        res = evaluate(args, [cell.task], task_manager=self.tm, limit=limit, lm=lm, seed=cell.seed)
        seconds = time.perf_counter() - t0
        if res is None:
            return None
        samples = _plain(res.get("samples", {}).get(cell.task, []))
        raw, score = benchmarks.score(cell.task, res)
        h = benchmarks.headline(cell.task)
        summary = _plain({k: v for k, v in res.items() if k != "samples"})
        record = {"config": cell.config(), "label": cell.label, "model_args": args,
                  "provenance": provenance(cell.device, cell.dtype, cell.attn, self.commit),
                  "metrics": {"benchmark": h.benchmark, "metric": h.metric, "raw": raw, "score": score},
                  "budget_stats": budget_stats(samples), "lmms_eval": summary, "seconds": round(seconds, 2),
                  "processes": parallel.world_size()}
        if cell.subset:
            record["subset"] = {**cell.subset, "rows": self.source.subset_rows(cell.task)}
        if cell.holdout:
            record["holdout"] = {"documents": cell.holdout, "limit": limit}  # calibration documents kept out
        if fit is not None:
            record["fit"] = fit  # the fitted artifact the cell ran with (name, sha256, calibration, excluded ids)
        self.store.write(cell.key, record, samples)
        return record


def run_cells(cells: list[Cell], store_root: str, source: DataSource, commit: str = "unknown",
              progress: bool = True, threads: int | None = None, encode_cache_mb: int | None = None,
              batch_size: int = 1) -> Outcome:
    """Evaluate every unfinished cell of `cells` into the store at `store_root` (see module doc).
    `encode_cache_mb`: the loaded models' caches of processor outputs and encodings (MiB each; 0: off;
    None: the default);
    `batch_size`: samples packed per pass (engine/packed.py; equal to 1 up to fp32 rounding)."""
    from tqdm import tqdm

    from repro.eval import parallel

    store = Store(store_root)
    if cells:
        parallel.accelerator(cells[0].device)  # starts the process group under `accelerate launch`
    main = parallel.is_main()
    budgets: dict[str, list[str]] = defaultdict(list)
    for c in cells:
        if c.search is not None and c.budget:
            budgets[c.model].append(c.budget)
    worker = _Worker(store, source, commit, dict(budgets), encode_cache_mb, batch_size)
    outcome = Outcome()
    bar = tqdm(total=len(cells), desc="cells", unit="cell", disable=not progress or not main)

    def attempt(cell: Cell, blocking: bool) -> bool:
        with store.lock(cell.key, blocking=blocking) if main else contextlib.nullcontext() as got:
            got, status = parallel.broadcast((got, store.status(cell.key) if got else None))  # rank 0 decides
            if not got:
                return False
            if status == "done":
                outcome.skipped.append(cell.key)
            elif status.startswith("unreadable"):  # another account's record, or a folder: never overwritten
                raise ReproError(f"cell {cell.describe()}: {status.removeprefix('unreadable: ')}")
            else:
                if status.startswith("corrupt"):
                    if main:
                        print(f"{cell.describe()}: {status}; recomputing", flush=True)
                        store.discard(cell.key)
                    outcome.recomputed.append(cell.key)
                try:
                    rec = worker.compute(cell)
                except ReproError as err:
                    raise ReproError(f"cell {cell.describe()}: {err}") from None
                outcome.computed.append(cell.key)
                if rec is None:  # a non-zero rank
                    return True
                stats = rec["budget_stats"]
                bar.write(f"done {cell.describe()}: {rec['metrics']['benchmark']} {rec['metrics']['score']:.2f}, "
                          f"{stats.get('tflops_paper', {}).get('mean', float('nan')):.4g} TFLOPs, "
                          f"{stats.get('samples', 0)} samples"
                          + (f" ({stats['infeasible']} infeasible)" if stats.get("infeasible") else "")
                          + f", {rec['seconds']:.1f} s [{cell.key}]")
            bar.update(1)
            return True

    with torch_threads(threads):
        deferred = [cell for cell in cells if not attempt(cell, blocking=False)]
        for cell in deferred:  # held by another sweep: wait for it, then it is usually done
            attempt(cell, blocking=True)
    bar.close()
    return outcome


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's CPU threads set to `threads` for the block (None: unchanged) and restored after: the
    caller's process (the sweep's own, a notebook) keeps its setting."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def task_major(cells: list[Cell]) -> list[Cell]:
    """Cells by model, then task (first-appearance order), rows in their order within a task: the
    documents of one task meet every method while their encodings are cached."""
    def first(values):
        return {v: i for i, v in reversed(list(enumerate(values)))}

    models = first([c.loaded for c in cells])
    tasks = first([c.task for c in cells])
    return sorted(cells, key=lambda c: (models[c.loaded], tasks[c.task]))  # stable: rows keep their order


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device: str, threads: int | None = None) -> int:
    """Local worker processes: on a CPU one per available core (cores // threads); on an
    accelerator one (several GPUs: `accelerate launch`, see repro.eval.parallel)."""
    if not str(device).startswith("cpu"):
        return 1
    return max(1, available_cores() // max(1, threads or 1))


def run_local(cells: list[Cell], store_root: str, source: DataSource, commit: str = "unknown",
              progress: bool = True, threads: int | None = None, workers: int = 1,
              encode_cache_mb: int | None = None, batch_size: int = 1) -> Outcome:
    """`run_cells` over `cells` by `workers` workers: this process (its imports are already paid)
    and `workers - 1` spawned processes, sharing the cells through the store's locks."""
    from repro.eval import parallel

    workers = min(workers, len(cells))
    if workers <= 1 or parallel.world_size() > 1:
        return run_cells(task_major(cells), store_root, source, commit, progress, threads, encode_cache_mb,
                         batch_size)
    import multiprocessing as mp

    source.build()  # once, here: workers must not generate the same files concurrently
    ordered = task_major(cells)
    slices = [ordered[i * len(ordered) // workers:] + ordered[:i * len(ordered) // workers] for i in range(workers)]
    ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited OpenMP, lock or file-lock state
    procs, pipes = [], []
    for i, mine in enumerate(slices[1:], start=1):  # each starts elsewhere in the list; locks share the rest
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_work, name=f"repro-worker-{i}",
                           args=(mine, store_root, source, commit, threads or 1, encode_cache_mb, batch_size, send,
                                 os.getpid()))
        proc.start()
        send.close()
        procs.append(proc)
        pipes.append(recv)
    print(f"{workers} workers (this process and {workers - 1} spawned), {threads or 1} thread(s) each, "
          f"{len(cells)} cells", flush=True)
    try:
        outcomes = [run_cells(slices[0], store_root, source, commit, False, threads or 1, encode_cache_mb, batch_size)]
        outcomes += _results(procs, pipes)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return _merge(outcomes)


def _results(procs: list, pipes: list) -> list[Outcome]:
    """The spawned workers' outcomes, as each finishes; an error or a worker's death is raised."""
    from multiprocessing.connection import wait

    results: dict[int, Outcome] = {}
    while len(results) < len(procs):
        waiting = [i for i in range(len(procs)) if i not in results]
        ready = wait([pipes[i] for i in waiting] + [procs[i].sentinel for i in waiting])
        for i in waiting:
            if pipes[i] not in ready and procs[i].sentinel not in ready:
                continue
            try:
                if pipes[i].poll():
                    status, payload = pipes[i].recv()
                    if status != "ok":
                        raise (ReproError(payload) if status == "repro" else RuntimeError(f"sweep worker failed:\n{payload}"))
                    results[i] = payload
                    continue
            except EOFError:  # closed without a result: the worker is gone
                procs[i].join()
            if not procs[i].is_alive():
                raise ReproError(f"sweep worker {i + 1} died (exit code {procs[i].exitcode}) before finishing; "
                                 "rerun the sweep: finished cells are kept")
    return list(results.values())


def _work(cells: list[Cell], store_root: str, source: DataSource, commit: str, threads: int,
          encode_cache_mb: int | None, batch_size: int, pipe, parent: int):
    """One spawned worker: `run_cells`, its outcome (or error) sent back through `pipe`."""
    _die_with_parent(parent)
    try:
        pipe.send(("ok", run_cells(cells, store_root, source, commit, False, threads, encode_cache_mb, batch_size)))
    except ReproError as err:
        pipe.send(("repro", str(err)))
    except BaseException:  # noqa: BLE001 - reported by the parent with the traceback
        import traceback

        pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its sweep (a killed sweep leaves no orphan writing records):
    Linux sends it SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def _merge(outcomes: list[Outcome]) -> Outcome:
    merged = Outcome()
    for out in outcomes:
        merged.computed += out.computed
        merged.recomputed += out.recomputed
    done = set(merged.computed)
    merged.skipped = list(dict.fromkeys(k for out in outcomes for k in out.skipped if k not in done))
    return merged


@dataclass(frozen=True)
class SlurmOptions:
    """submitit parameters. `cluster=None` lets submitit pick SLURM; tests use `cluster="local"`."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 64
    timeout_min: int = 24 * 60
    rows_per_job: int = 1
    cluster: str | None = None


def jobs_of(cells: list[Cell], rows_per_job: int) -> list[list[Cell]]:
    """Cells grouped into jobs: whole rows (one model + method + budget + seed, all tasks), so
    each job loads its model once and never splits a row's DOP search."""
    rows: dict[tuple, list[Cell]] = defaultdict(list)
    for c in cells:
        rows[c.group].append(c)
    row_list = list(rows.values())
    step = max(1, rows_per_job)
    return [[c for row in row_list[i:i + step] for c in row] for i in range(0, len(row_list), step)]


def run_slurm(cells: list[Cell], store_root: str, source: DataSource, commit: str, options: SlurmOptions,
              threads: int | None = None, encode_cache_mb: int | None = None, batch_size: int = 1) -> Outcome:
    """Submit `run_cells` jobs through submitit, wait for them, and merge their outcomes."""
    import submitit

    folder = Path(store_root) / "submitit" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    params: dict[str, Any] = {"timeout_min": options.timeout_min, "gpus_per_node": options.gpus_per_job,
                              "cpus_per_task": options.cpus_per_job, "name": "repro-sweep"}
    if options.cluster in (None, "slurm"):
        params["mem_gb"] = options.mem_gb
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(options, name):
                params[f"slurm_{name}"] = getattr(options, name)
    executor.update_parameters(**params)
    groups = jobs_of(cells, options.rows_per_job)
    with executor.batch():
        jobs = [executor.submit(run_cells, task_major(group), store_root, source, commit, False, threads,
                                encode_cache_mb, batch_size) for group in groups]
    print(f"submitted {len(jobs)} job(s) ({len(cells)} cells); logs under {folder.parent}", flush=True)
    return _collect(jobs, folder.parent)


def _error_line(err: Exception) -> str:
    """The job's own exception line (`RuntimeError: ...`) out of submitit's report, which wraps the
    remote traceback and the log paths."""
    import re

    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*", line)]
    return (raised or lines or [type(err).__name__])[-1]


def _collect(jobs: list, logs: Path) -> Outcome:
    """Wait for the jobs in the order they finish, print each as it ends, carry on past a failed
    one, and fail at the end with a summary of every failed job (its cells stay pending)."""
    from submitit.helpers import as_completed

    merged, failed = Outcome(), []
    for done, job in enumerate(as_completed(jobs), start=1):
        try:
            out = job.result()
        except Exception as err:  # noqa: BLE001 - a job's own failure, reported below with its log
            last = _error_line(err)
            failed.append(f"job {job.job_id}: {last[:300]} (log: {logs / str(job.job_id)})")
            print(f"[{done}/{len(jobs)}] job {job.job_id} FAILED: {last[:300]}", flush=True)
            continue
        merged.computed += out.computed
        merged.skipped += out.skipped
        merged.recomputed += out.recomputed
        print(f"[{done}/{len(jobs)}] job {job.job_id}: {len(out.computed)} computed, {len(out.skipped)} already done",
              flush=True)
    if failed:
        raise ReproError(f"{len(failed)} of {len(jobs)} job(s) failed; the others' cells are stored, and rerunning "
                         "the same command computes only what is missing:\n  " + "\n  ".join(failed))
    return merged
