"""`python -m repro.eval tiny [--model M] [--keep 1,0.5,0.25,0.1] [--split test] [--limit N] [--out DIR]`

Evaluates a model on every tiny-world task through lmms-eval (`simple_evaluate` with `--model
repro`), once unpruned and once per fraction of visual tokens kept at random (`method=random`,
`options={"keep": K, "seed": 0}`), and writes `DIR/report.json` and `DIR/report.md`: the main
metric of each task (as a fraction of its full score), the mean, and the seconds each pass took.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see repro/tinyworld/__main__.py


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repro.eval", description="lmms-eval runs of the repro plugin.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tiny", help="every tiny-world task, unpruned and with random visual-token dropping")
    t.add_argument("--model", default="tinyworld-llava")
    t.add_argument("--keep", default="1,0.5,0.25,0.1", help="fractions of visual tokens kept (1 = unpruned)")
    t.add_argument("--split", choices=("test", "validation"), default="test")
    t.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    t.add_argument("--data-dir", default=None, help="tiny-world data (default: the per-user cache; built if absent)")
    t.add_argument("--out", default="results/tinyworld-llava", help="output directory")
    t.add_argument("--threads", type=int, default=None)
    return p


def tiny_report(model: str, keeps: list[float], *, split: str, limit: int | None, data_dir: Path,
                out: Path) -> dict:
    from repro import tinyworld as tw

    from .run import evaluate, main_metrics

    tw.build(data_dir, seed=0) if not (data_dir / "manifest.json").is_file() else None
    tasks = [t.name + ("_val" if split == "validation" else "") for t in tw.TASKS]
    report = {"model": model, "split": split, "limit": limit, "data_dir": str(data_dir), "passes": []}
    for keep in keeps:
        args = {"model": model} if keep >= 1 else {"model": model, "method": "random",
                                                   "options": {"keep": keep, "seed": 0}}
        t0 = time.perf_counter()
        res = evaluate(args, tasks, data_dir=data_dir, limit=limit, output_dir=out / f"keep_{keep:g}")
        seconds = time.perf_counter() - t0
        if res is None:  # a non-zero rank under `accelerate launch`: rank 0 reports
            continue
        metrics = main_metrics(res)
        n = sum(res["n-samples"][t]["effective"] for t in tasks)
        report["passes"].append({"keep": keep, "model_args": res["repro"]["model_args"], "seconds": round(seconds, 1),
                                 "samples": n, "metrics": {k: round(v, 4) for k, v in metrics.items()},
                                 "mean": round(sum(metrics.values()) / len(metrics), 4)})
        print(f"keep {keep:g}: mean {report['passes'][-1]['mean']:.3f} over {len(metrics)} tasks, {n} samples, "
              f"{seconds:.0f}s", flush=True)
    if not report["passes"]:
        return report
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return report


def markdown(report: dict) -> str:
    from repro import tinyworld as tw

    passes = report["passes"]
    head = "| task | metric | " + " | ".join(f"keep {p['keep']:g}" for p in passes) + " |"
    lines = [f"Model `{report['model']}`, tiny-world {report['split']} split"
             + (f", limit {report['limit']}" if report["limit"] else "") + "; lmms-eval main metric / full score.",
             "", head, "|" + "---|" * (len(passes) + 2)]
    suffix = "_val" if report["split"] == "validation" else ""
    for t in tw.TASKS:
        cells = [f"{p['metrics'].get(t.name + suffix, float('nan')):.3f}" for p in passes]
        lines.append(f"| {t.name} | {t.main_metric} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | | " + " | ".join(f"**{p['mean']:.3f}**" for p in passes) + " |")
    lines.append("| seconds | | " + " | ".join(f"{p['seconds']:.0f}" for p in passes) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from repro.errors import ReproError

    args = _parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from repro import tinyworld as tw

    try:
        keeps = [float(k) for k in args.keep.split(",")]
        tiny_report(args.model, keeps, split=args.split, limit=args.limit,
                    data_dir=Path(args.data_dir) if args.data_dir else tw.default_data_dir(), out=Path(args.out))
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
