"""`python -m repro.tinyworld build [--data-dir D] [--seed S] [--train N --validation N --test N]`
and `python -m repro.tinyworld train --out DIR [--seed S] ...` (see train.py).

`build` builds (or re-checks) the suite and prints the rows per task and split; `train` trains
the `tinyworld-llava` checkpoint. `main(argv)` returns the
exit code so the project CLI can mount it as a subcommand.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads
# made training steps 3-6x slower (measured on 2 cores). Read when torch loads, so set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence

from ..errors import ReproError
from .build import SplitSizes, build, default_data_dir
from .suite import TASKS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repro.tinyworld", description="Tiny-world benchmark suite.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="generate the parquet files and lmms-eval task YAMLs (cached)")
    b.add_argument("--data-dir", default=None, help=f"output directory (default: {default_data_dir()})")
    b.add_argument("--seed", type=int, default=0)
    defaults = SplitSizes()
    for split in ("train", "validation", "test"):
        b.add_argument(
            f"--{split}", type=int, default=defaults.of(split), help=f"rows per task (default {defaults.of(split)})"
        )
    b.add_argument("--tasks", nargs="+", default=None, metavar="KEY", help="only these tasks, e.g. pope mme")
    from .train import add_arguments

    add_arguments(sub.add_parser("train", help="train the tinyworld-llava checkpoint on the train splits"))
    from .text_tower import add_arguments as text_tower_arguments

    text_tower_arguments(sub.add_parser("text-tower", help="train tinyworld-llava's CLIP-style text tower (CDPruner, TRIM)"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "text-tower":
        from .text_tower import run as run_text_tower

        return run_text_tower(args, argv[1:])
    if args.command == "train":
        from .train import run

        try:
            return run(args, argv[1:])
        except ReproError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_dir = args.data_dir or default_data_dir()
    try:
        manifest = build(
            data_dir, seed=args.seed, sizes=SplitSizes(args.train, args.validation, args.test), tasks=args.tasks
        )
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"tinyworld suite in {data_dir} (seed {manifest['seed']}, version {manifest['version']})")
    print(f"{'task':<24}{'mimics':<28}{'train':>7}{'val':>6}{'test':>6}")
    for spec in TASKS:
        entry = manifest["tasks"].get(spec.key)
        if entry:
            r = entry["rows"]
            print(f"{spec.name:<24}{spec.mimics:<28}{r['train']:>7}{r['validation']:>6}{r['test']:>6}")
    print(f"lmms-eval: TaskManager(include_path='{data_dir}/tasks', include_defaults=False); group 'tinyworld'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
