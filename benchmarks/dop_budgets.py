"""Per-sample realized FLOPs / budget of DOP on held-out samples, per budget mode (issue 22).

    python benchmarks/dop_budgets.py --model tinyworld-llava --calibration 25 --heldout 25

Searches on the first `--calibration` tiny-world validation samples (round-robin over tasks),
then runs every held-out sample (the next `--heldout`) under each budget with
`budget_mode=per_sample` (default) and `fixed` (the paper's fixed policy), and prints the mean and
the maximum of realized / R and how many samples exceed R.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import repro
from repro.calibration import calibration_samples
from repro.errors import ReproError
from repro.methods.dop import SearchOptions, search


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", type=int, default=25)
    parser.add_argument("--heldout", type=int, default=25)
    parser.add_argument("--budgets", default="0.75,0.5,0.3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios = [float(r) for r in args.budgets.split(",")]
    model = repro.load(args.model)
    pool = calibration_samples("tinyworld", args.calibration + args.heldout)
    cal, held = pool[:args.calibration], pool[args.calibration:]
    t0 = time.perf_counter()
    artifact = search(model, cal, [], SearchOptions(), source="tinyworld", progress=False)
    n_max = model.encode(model.prepare(held[0].images, held[0].question)).patches.numel()
    print(f"{args.model}: search on {len(cal)} samples in {time.perf_counter() - t0:.1f} s, depth step "
          f"{artifact.options.depth_step}")
    print("| model | R | mode | policy (n_v, D_A, D_P) | mean realized/R | mean where n_v < max | max realized/R "
          "| samples over R | infeasible samples |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ratios:
        for mode in ("per_sample", "fixed"):
            method = repro.method("dop", f"ratio:{r}", artifact=artifact, budget_mode=mode)
            use, n_visual, infeasible = [], [], 0
            try:
                method.policy_for(model)
            except ReproError as err:
                print(f"| {args.model} | {r} | {mode} | infeasible: {err} | | | | | |", flush=True)
                continue
            for s in held:
                try:
                    stats = model.generate(s.images, s.question, method=method, max_new_tokens=1).stats
                except ReproError:  # even no visual token fits R: an error for every method, never a clamp
                    infeasible += 1
                    continue
                use.append(stats.tflops["paper"] / stats.unpruned_tflops / r)
                n_visual.append(stats.visual_tokens)
            p = method.policy_for(model)
            policy = f"({p.n_visual}, {p.depths[0][0]}, {p.depths[0][1]})"
            if mode == "per_sample":
                policy += f", n_v per sample {min(n_visual)}-{max(n_visual)}"
            use, bound = np.array(use), np.array(n_visual) < n_max
            bound_mean = f"{use[bound].mean():.4f} ({int(bound.sum())})" if mode == "per_sample" and bound.any() else "–"
            print(f"| {args.model} | {r} | {mode} | {policy} | {use.mean():.4f} | {bound_mean} | {use.max():.4f} | "
                  f"{int((use > 1 + 1e-9).sum())}/{len(use)} | {infeasible} |", flush=True)


if __name__ == "__main__":
    main()
