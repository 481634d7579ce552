"""`python -m repro <command>`: one small handler per subcommand.

To add a command, write `_configure_x(parser)` and `_run_x(args) -> int` and add a `Command` to
`COMMANDS`. A ReproError from any handler is printed as `error: <message>` (no traceback) and the
exit code is 2. Heavy imports (torch, transformers) belong inside handlers, never at module level.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from repro.errors import ReproError
from repro.report.text import fmt, plain_table

if TYPE_CHECKING:
    from repro.budget import Budget
    from repro.models.cards import ArchCard
    from repro.models.registry import ModelEntry

USER_ERROR_EXIT = 2


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, how it declares arguments, and what it runs."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line: `error: <what>; see <prog> --help`."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(USER_ERROR_EXIT, f"error: {message}; see `{self.prog} --help`\n")


def _whole_number(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


# --- models ---------------------------------------------------------------------------------


def _configure_models(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def _run_models(args: argparse.Namespace) -> int:
    from repro.models.registry import entries, local_weights

    header = ["name", "family", "HF id", "layers/hidden/heads/kv", "visual tokens", "local weights"]
    rows = []
    for e in entries():
        c = e.card
        arch = f"{c.layers}/{c.hidden}/{c.heads}/{c.kv_heads}"
        rows.append([e.name, e.family, e.hf_id, arch, str(c.visual_tokens), local_weights(e) or "no"])
    from repro.models.shipped import listing_rows

    rows += listing_rows()  # checkpoints trained here and shipped in the package (tinyworld-llava)
    print(plain_table(header, rows))
    return 0


# --- flops ----------------------------------------------------------------------------------


def _configure_flops(parser: argparse.ArgumentParser) -> None:
    from repro.flops import CONVENTIONS, DEFAULT_TEXT_TOKENS

    parser.add_argument(
        "--model",
        default="all",
        help="model name, comma-separated names, or 'all' (default); see `python -m repro models`",
    )
    parser.add_argument(
        "--visual-tokens", type=_non_negative_int, default=None, help="default: the model card's visual tokens"
    )
    parser.add_argument(
        "--text-tokens",
        type=_non_negative_int,
        default=DEFAULT_TEXT_TOKENS,
        help=f"default {DEFAULT_TEXT_TOKENS}: 35-token vicuna_v1 prefix + 64 question/suffix tokens (MODELS.md 8)",
    )
    parser.add_argument("--image-size", default=None, metavar="WxH",
                        help="derive the visual tokens from an image size (qwen2.5-vl, internvl3, llava-1.5)")
    parser.add_argument("--min-pixels", type=int, default=None, help="Qwen2.5-VL resize bound (default: lmms-eval's)")
    parser.add_argument("--max-pixels", type=int, default=None, help="Qwen2.5-VL resize bound (default: lmms-eval's)")
    parser.add_argument("--max-tiles", type=int, default=12, help="InternVL3 dynamic tiling bound (default 12)")
    parser.add_argument("--convention", choices=CONVENTIONS, default="paper", help="FLOPs convention (default paper)")
    parser.add_argument(
        "--budget",
        default=None,
        help="also report a budget's TFLOPs: tokens:N (N visual tokens in every layer), ratio:R or tflops:X (ceiling)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (an object for one model, else a list)")
    parser.add_argument(
        "--table", action="store_true", help="write flops.md and flops.csv (both conventions, budgets) instead"
    )
    parser.add_argument("--out", default="paper_tables", help="output folder for --table (default paper_tables)")


def _selected_models(spec: str) -> list[ModelEntry]:
    from repro.models.registry import entries, get_entry

    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names or names == ["all"]:
        return entries()
    return [get_entry(name) for name in names]


def _budget_flops(budget: Budget, card: ArchCard, text_tokens: int, unpruned: int, convention: str) -> float:
    """TFLOPs of a budget: its ceiling (ratio, tflops) or the cost of N visual tokens (tokens)."""
    from repro.flops import unpruned_prefill_flops

    ceiling = budget.max_flops(unpruned)
    if ceiling is None:
        ceiling = unpruned_prefill_flops(card, budget.tokens + text_tokens, convention)
    return ceiling / 1e12


def _run_flops(args: argparse.Namespace) -> int:
    from repro.budget import as_budget
    from repro.flops import unpruned_prefill_flops

    budget = as_budget(args.budget)
    models = _selected_models(args.model)
    if args.table:
        from repro.paths import check_output_dir
        from repro.report.flops import write_flops_table

        check_output_dir(args.out, "--out")
        for path in write_flops_table(args.out, models, args.text_tokens):
            print(f"wrote {path}")
        return 0
    if args.image_size and args.visual_tokens is not None:
        raise ReproError("give either --visual-tokens or --image-size, not both")
    records = []
    for entry in models:
        n_vis = entry.card.visual_tokens if args.visual_tokens is None else args.visual_tokens
        if args.image_size:
            from repro.models.geometry import parse_image_size, visual_tokens_for_image

            n_vis = visual_tokens_for_image(entry, *parse_image_size(args.image_size), min_pixels=args.min_pixels,
                                            max_pixels=args.max_pixels, max_tiles=args.max_tiles)
        flops = unpruned_prefill_flops(entry.card, n_vis + args.text_tokens, args.convention)
        records.append(
            {
                "model": entry.name,
                "convention": args.convention,
                "visual_tokens": n_vis,
                "text_tokens": args.text_tokens,
                "tflops": flops / 1e12,
            }
        )
        if budget is not None:
            records[-1]["budget"] = str(budget)
            records[-1]["budget_tflops"] = _budget_flops(
                budget, entry.card, args.text_tokens, flops, args.convention
            )
    if args.json:
        single = len(records) == 1 and args.model.strip() != "all"
        print(json.dumps(records[0] if single else records, indent=2))
        return 0
    header = ["model", "convention", "visual tokens", "text tokens", "prefill TFLOPs"]
    rows = [
        [r["model"], r["convention"], str(r["visual_tokens"]), str(r["text_tokens"]), f"{r['tflops']:.2f}"]
        for r in records
    ]
    if budget is not None:
        header.append(f"{budget} TFLOPs")
        for row, r in zip(rows, records):
            row.append(f"{r['budget_tflops']:.2f}")
    print(plain_table(header, rows))
    return 0


# --- methods --------------------------------------------------------------------------------


def _configure_methods(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def _run_methods(args: argparse.Namespace) -> int:
    from repro.methods import specs

    rows = [(s.name, s.stage, s.knob, s.reference) for s in specs()]
    print(plain_table(("method", "stage", "tokens:N means", "reference"), rows))
    print("\nfaithful defaults (the official code's settings) and harness variants:")
    for spec in specs():
        defaults = ", ".join(f"{k}={v!r}" for k, v in spec.faithful_options().items())
        print(f"  {spec.name}: {defaults or '-'}")
        for option, doc in spec.variants.items():
            print(f"    variant {option}: {doc}")
    return 0


# --- generate -------------------------------------------------------------------------------


def _configure_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registry name, tiny name, HF id or local directory")
    parser.add_argument("--image", required=True, action="append", help="image file (repeat for several)")
    parser.add_argument("--question", required=True)
    parser.add_argument("--method", default=None, help="a registered method (python -m repro methods)")
    parser.add_argument("--budget", default=None, help="tokens:N, ratio:R or tflops:X")
    parser.add_argument("--max-new-tokens", type=_non_negative_int, default=16)
    parser.add_argument("--json", action="store_true", help="print the answer and its statistics as JSON")


def _run_generate(args: argparse.Namespace) -> int:
    import repro
    from repro.models.model import read_image

    images = [read_image(path) for path in args.image]
    method = repro.method(args.method, args.budget) if args.method else None
    if method is None and args.budget:
        raise ReproError("--budget needs --method")
    result = repro.load(args.model).generate(images, args.question, method=method,
                                             max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"text": result.text, "prompt": result.prompt, "stats": result.stats.as_dict()}))
    else:
        print(result.text)
        print(f"# prefill TFLOPs: paper {result.stats.tflops['paper']:.6g}, exact {result.stats.tflops['exact']:.6g}; "
              f"visual tokens {result.stats.visual_tokens}", file=sys.stderr)
    return 0


# --- search ---------------------------------------------------------------------------------


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    """The options of a DOP search (values are checked by SearchOptions.check, which needs torch)."""
    parser.add_argument("--reducer", default=None, help="a registered pre-LLM method (default: DOP's, vispruner)")
    parser.add_argument("--calibration", default="tinyworld",
                        help="tinyworld, tinyworld:KEY,KEY (validation splits), lmms:TASK or lmms:TASK:SPLIT")
    parser.add_argument("--staged", default=None, help="staged paper data (for lmms:TASK of a paper task)")
    parser.add_argument("--budgets", default="ratio:0.14,ratio:0.23", help="comma-separated ratio:R / tflops:X")
    parser.add_argument("--mha-semantics", default="drop", help="drop (default) or query_skip")
    parser.add_argument("--kl-direction", default="forward", help="forward (default) or reverse")
    parser.add_argument("--kl-tokens", type=_positive_int, default=1, help="answer tokens the KL averages over (default 1)")
    parser.add_argument("--interpolation", default="linear", help="linear (default) or pchip (monotone cubic)")
    parser.add_argument("--groups", default="single",
                        help="single (default: one visual group) or reducer (D_A, D_P per reducer token group)")
    parser.add_argument("--depth-step", type=_positive_int, default=None,
                        help="layers between sampled depths, ends included (default L/8, at least 1; recorded)")
    parser.add_argument("--visual-points", type=_positive_int, default=8, help="sampled visual-token counts")
    parser.add_argument("--threads", type=_non_negative_int, default=1,
                        help="torch CPU threads (default 1, as the shipped sweeps: on a shared 2-core machine 1 "
                             "thread is many times faster; 0: torch's default)")


def _search_options(args: argparse.Namespace):
    from repro.methods.dop import DOP

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    fit = {"mha_semantics": args.mha_semantics, "kl_direction": args.kl_direction, "kl_tokens": args.kl_tokens,
           "interpolation": args.interpolation, "groups": args.groups, "depth_step": args.depth_step,
           "visual_points": args.visual_points}
    return DOP.fit_config({"reducer": args.reducer} if args.reducer else {}, fit)  # fails before any compute


def _budget_list(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def _configure_search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=["dop"], help="the method whose policy is searched")
    parser.add_argument("--model", required=True)
    parser.add_argument("--samples", type=_positive_int, default=25)
    parser.add_argument("--out", required=True, help="artifact path (JSON)")
    _add_search_options(parser)


def _run_search(args: argparse.Namespace) -> int:
    import repro
    from repro.calibration import calibration_set
    from repro.methods.dop.search import save_artifact, search

    from repro.paths import check_output_file

    check_output_file(args.out, "--out")
    options = _search_options(args)
    cal = calibration_set(args.calibration, args.samples, staged=args.staged)
    model = repro.load(args.model)
    artifact = search(model, cal.samples, _budget_list(args.budgets), options, source=args.calibration,
                      excluded=cal.excluded)
    path = save_artifact(artifact, args.out)
    print(f"wrote {path}: {artifact.forward_passes} forward passes in {artifact.seconds:.1f} s "
          f"(depth step {artifact.options.depth_step})")
    for chosen in artifact.budgets:
        print(f"  {chosen.budget}: policy {chosen.policy.as_dict()}, predicted KL {chosen.predicted_divergence:.4g}, "
              f"{chosen.tflops:.4g} TFLOPs ({chosen.ratio:.1%} of unpruned)")
    if cal.excluded:
        print(f"  calibrated on {len(cal.excluded)} documents of the evaluated split: evaluate with a limit that "
              f"stops before them ({cal.excluded[0]} ...)")
    return 0


# --- analyze --------------------------------------------------------------------------------


ANALYSES = {
    "dop-proxy": "additive estimate vs measured joint KL of random feasible policies (Spearman)",
    "dop-curves": "the single-parameter divergence curves of an artifact",
    "dop-samples": "search time and held-out KL of the chosen policies vs calibration samples (e.g. 25,50,100)",
    "dop-transfer": "a policy searched on --model applied to --target-model (depths rescaled) vs searched there",
}


def _configure_analyze(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("analysis", choices=list(ANALYSES), help="; ".join(f"{k}: {v}" for k, v in ANALYSES.items()))
    parser.add_argument("--artifact", default=None, help="dop-proxy, dop-curves: a DOP search artifact")
    parser.add_argument("--model", default=None,
                        help="dop-proxy: the model (default: the artifact's); dop-samples: the model; "
                             "dop-transfer: the source model")
    parser.add_argument("--target-model", default=None, help="dop-transfer: the model the policy is applied to")
    parser.add_argument("--policies", type=_positive_int, default=200, help="dop-proxy: random feasible policies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-counts", default="25,50,100", help="dop-samples: calibration sizes searched")
    parser.add_argument("--samples", type=_positive_int, default=25, help="dop-transfer: calibration samples")
    parser.add_argument("--heldout", type=_non_negative_int, default=25,
                        help="dop-proxy: held-out samples for a held-out rho too (0: none); dop-samples, dop-transfer: "
                             "held-out samples (after the calibration ones) for the true KL")
    parser.add_argument("--out", default="results/dop", help="output folder for CSV + PNG (default results/dop)")
    _add_search_options(parser)


def _run_analyze(args: argparse.Namespace) -> int:
    from repro.paths import check_output_dir

    check_output_dir(args.out, "--out")
    if args.analysis in ("dop-proxy", "dop-curves"):
        paths = _run_artifact_analysis(args)
    else:
        paths = _run_search_study(args)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _run_artifact_analysis(args: argparse.Namespace) -> list:
    from repro.methods.dop import analyses, load_artifact

    if not args.artifact:
        raise ReproError(f"{args.analysis} needs --artifact (from `python -m repro search dop ...`)")
    artifact = load_artifact(args.artifact)
    name = f"{args.analysis}-{artifact.model}"
    if args.analysis == "dop-curves":
        return analyses.write_curves(artifact, args.out, name)
    import repro
    from repro.calibration import calibration_samples

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cal = artifact.calibration
    pool = calibration_samples(cal.source, len(cal.samples) + args.heldout, staged=args.staged)
    samples, heldout = _split_pool(pool, cal)
    result = analyses.proxy_vs_truth(repro.load(args.model or artifact.model), artifact, samples,
                                     args.policies, args.seed, heldout=heldout, progress=True)
    print(f"Spearman rho = {result['spearman_rho']:.3f}, p = {result['p_value']:.2e} over {args.policies} policies "
          f"on the {len(samples)} calibration samples")
    if heldout:
        print(f"held-out rho = {result['heldout_rho']:.3f}, p = {result['heldout_p']:.2e} on {len(heldout)} samples "
              "the search never saw")
    return analyses.write_proxy_analysis(result, args.out, name)


def _split_pool(pool: list, cal) -> tuple[list, list]:
    """The artifact's calibration samples (rebuilt from its source) and the held-out others."""
    by_id = {s.id: s for s in pool}
    if any(i not in by_id for i in cal.samples):
        raise ReproError("the artifact's calibration samples cannot be rebuilt from its source; rerun the search")
    return [by_id[i] for i in cal.samples], [s for s in pool if s.id not in set(cal.samples)]


def _run_search_study(args: argparse.Namespace) -> list:
    if not args.model or (args.analysis == "dop-transfer" and not args.target_model):
        raise ReproError(f"{args.analysis} needs --model" + (" and --target-model" if args.analysis == "dop-transfer" else ""))
    try:
        counts = [int(c) for c in args.sample_counts.split(",") if c.strip()]
    except ValueError:
        raise ReproError(f"--sample-counts must be comma-separated integers, got {args.sample_counts!r}") from None
    if not counts or min(counts) < 1:
        raise ReproError("--sample-counts needs positive counts")
    import repro
    from repro.calibration import calibration_samples
    from repro.methods.dop import studies

    options = _search_options(args)
    budgets = _budget_list(args.budgets)
    model = repro.load(args.model)
    if args.analysis == "dop-samples":
        samples = calibration_samples(args.calibration, max(counts) + args.heldout, staged=args.staged)
        rows = studies.samples_study(model, samples, counts, args.heldout, budgets, options, source=args.calibration,
                                     progress=True)
        for row in rows:
            print(f"{row['samples']:>4} samples  {row['seconds']:8.2f} s  {row['budget']}: held-out KL "
                  f"{row['heldout_kl']:.4g} (predicted {row['predicted_kl']:.4g}); reducer alone "
                  f"({row['reducer_alone_n_visual']} tokens) {row['reducer_alone_kl']:.4g}")
        return studies.write_samples_study(rows, args.out, f"dop-samples-{model.name}")
    target = repro.load(args.target_model)
    samples = calibration_samples(args.calibration, args.samples + args.heldout, staged=args.staged)
    rows = studies.transfer_study(model, target, samples, args.samples, args.heldout, budgets, options,
                                  source=args.calibration, progress=True)
    for row in rows:
        print(f"{row['budget']} {row['policy_kind']:>11}: {row['policy']} held-out KL {row['heldout_kl']:.4g} "
              f"({row['target_ratio']:.1%} of unpruned on {row['target']})")
    return studies.write_transfer_study(rows, args.out, f"dop-transfer-{model.name}-to-{target.name}")


# --- latency --------------------------------------------------------------------------------

def _configure_latency(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", default=None,
                        help="a latency spec (sweeps/<profile>/latency.yaml): its keys set the options not given here")
    parser.add_argument("--model", default=None, help="required (here or in --spec): a model name (registry names need --random-weights or weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="time the real architecture with random weights (speed only; answers are meaningless)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: float32 on CPU)")
    parser.add_argument("--methods", default="fastv,vispruner", help="methods timed next to the unpruned model")
    parser.add_argument("--budgets", default="ratio:0.5", help="comma-separated budgets for every method")
    parser.add_argument("--dop-artifact", default=None, help="time DOP too, with this search artifact")
    parser.add_argument("--image-size", default=None, metavar="WxH", help="default: the model's protocol size")
    parser.add_argument("--image", default=None, help="a real image file instead of the synthetic one")
    parser.add_argument("--protocol", default=None, choices=["native", "fixed"],
                        help="LLaVA-NeXT: 'fixed' is the 672x672 / 2880-token protocol of VisPruner and CDPruner")
    parser.add_argument("--repeats", type=_positive_int, default=20)
    parser.add_argument("--warmup", type=_non_negative_int, default=3)
    parser.add_argument("--answer-tokens", type=_positive_int, default=16, help="fixed answer length for decode/end-to-end")
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's); recorded")
    parser.add_argument("--out", default=None, help="write latency.{md,tex,csv} and records JSON here")


def _apply_latency_spec(args: argparse.Namespace) -> argparse.Namespace:
    """Options from a latency spec (YAML keys = option names; lists become comma-separated)."""
    if args.spec:
        import yaml

        try:
            spec = yaml.safe_load(Path(args.spec).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ReproError(f"cannot read latency spec {args.spec}: {err}") from None
        if not isinstance(spec, dict):
            raise ReproError(f"{args.spec}: a latency spec is a mapping of `python -m repro latency` options")
        defaults = vars(build_parser().parse_args(["latency"]))
        types = _option_types("latency")
        for key, value in spec.items():
            dest = str(key).replace("-", "_")
            if dest in ("profile", "table"):
                continue
            if dest == "spec" or not hasattr(args, dest):
                raise ReproError(f"{args.spec}: unknown latency option {key!r}; see `python -m repro latency --help`")
            value = ",".join(map(str, value)) if isinstance(value, list) else value
            if types.get(dest) is not None and value is not None:
                try:
                    value = types[dest](str(value))
                except (argparse.ArgumentTypeError, ValueError) as err:
                    raise ReproError(f"{args.spec}: {key}: {err}") from None
            if getattr(args, dest) == defaults[dest]:  # options given on the command line win
                setattr(args, dest, value)
    if not args.model:
        raise ReproError("latency needs --model (or a --spec that names a model)")
    return args


def _option_types(command: str) -> dict:
    """dest -> the argparse `type` of each option of `command` (to check values from a spec file)."""
    parser = argparse.ArgumentParser()
    COMMANDS[command].configure(parser)
    return {a.dest: a.type for a in parser._actions if a.type is not None and not isinstance(a.type, str)}


def _run_latency(args: argparse.Namespace) -> int:
    args = _apply_latency_spec(args)
    import repro
    from repro.latency import (
        check_device,
        default_image_size,
        measure_cells,
        synthetic_image,
    )
    from repro.models.geometry import parse_image_size
    from repro.report.latency_table import COLUMNS, table_rows, write_latency_table

    check_device(args.device)
    if args.out:
        from repro.paths import check_output_dir

        check_output_dir(args.out, "--out")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {"protocol": args.protocol} if args.protocol else {}
    model = repro.load(args.model, random_weights=args.random_weights, device=args.device, dtype=args.dtype, **options)
    if args.random_weights:
        print("note: random weights: timings are real, answers are meaningless", file=sys.stderr)
    size = parse_image_size(args.image_size) if args.image_size else default_image_size(model)
    image = _read_image(args.image) if args.image else synthetic_image(*size)
    size = image.size
    question = "What is in the image? Answer the question using a single word."
    cells = [("unpruned", None, "-")]
    for name in [m for m in args.methods.split(",") if m]:
        cells += [(name, repro.method(name, b), b) for b in args.budgets.split(",") if b]
    if args.dop_artifact:
        cells += [("dop", repro.method("dop", b, artifact=args.dop_artifact), b) for b in args.budgets.split(",") if b]
    records = measure_cells(model, [image], question, cells, device=args.device, repeats=args.repeats,
                            warmup=args.warmup, answer_tokens=args.answer_tokens)
    rows = table_rows(records)
    print(plain_table(COLUMNS[:-1], [[fmt(r.get(c, "")) for c in COLUMNS[:-1]] for r in rows]))
    print(f"device: {rows[0]['device']}; {args.repeats} repeats, medians", file=sys.stderr)
    if args.out:
        caption = f"prefill latency, {rows[0]['device']}, image {size[0]}x{size[1]}, {args.repeats} repeats (median)"
        for path in write_latency_table(rows, args.out, caption):
            print(f"wrote {path}")
        records_path = Path(args.out) / "latency_records.json"
        records_path.write_text(json.dumps([r.as_dict() for r in records], indent=2))
        print(f"wrote {records_path}")
    return 0


def _read_image(path: str):
    from repro.models.model import read_image

    return read_image(path)


# --- throughput ----------------------------------------------------------------------------

def _configure_throughput(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model name (registry names need --random-weights or weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="the real architecture with random weights (speed only; answers are meaningless)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: float32 on CPU)")
    parser.add_argument("--batch-sizes", default="1,4,16", help="comma-separated samples per pass (1: the engine; "
                        "more: packed)")
    parser.add_argument("--samples", type=_positive_int, default=32, help="requests timed at each batch size")
    parser.add_argument("--answer-tokens", type=_positive_int, default=8, help="fixed answer length (EOS ignored)")
    parser.add_argument("--image-size", default=None, metavar="WxH", help="default: the model's protocol size")
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's); recorded")
    parser.add_argument("--out", default="results/benchmarks",
                        help="folder of the record throughput-<model>.json, which the paper plan reads")


def _run_throughput(args: argparse.Namespace) -> int:
    import repro
    from repro.latency import check_device
    from repro.models.geometry import parse_image_size
    from repro.paths import check_output_dir
    from repro.throughput import measure

    check_device(args.device)
    check_output_dir(args.out, "--out")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise ReproError(f"--batch-sizes takes whole numbers separated by commas, got {args.batch_sizes!r}") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = repro.load(args.model, random_weights=args.random_weights, device=args.device, dtype=args.dtype)
    record = measure(model, batch_sizes, samples=args.samples, answer_tokens=args.answer_tokens, device=args.device,
                     image_size=parse_image_size(args.image_size) if args.image_size else None)
    rows = [[b, fmt(v["samples_per_s"]), fmt(v["samples_per_s"] / record.batches[min(record.batches)]["samples_per_s"]),
             fmt(v["prefill_samples_per_s"]), fmt(v["decode_tokens_per_s"] or float("nan")),
             v["same_answers_as_smallest_batch"]] for b, v in record.batches.items()]
    print(plain_table(["batch", "samples/s", "speedup", "prefill samples/s", "decode tokens/s", "same answers"], rows))
    print(f"wrote {record.write(args.out)}: {record.describe()}")
    return 0


# --- sweep / tables / check ---------------------------------------------------------------


def _configure_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="a sweep spec, e.g. sweeps/tiny/main.yaml")
    parser.add_argument("--store", default=None, help="results store (default results/<profile>/store)")
    parser.add_argument("--models", default=None, help="comma-separated subset of the spec's models")
    parser.add_argument("--limit", type=_positive_int, default=None, help="override the spec's documents per task")
    parser.add_argument("--executor", choices=["local", "slurm"], default="local",
                        help="local: in this process (default); slurm: submitit jobs")
    parser.add_argument("--slurm-partition", default=None)
    parser.add_argument("--slurm-account", default=None, help="SLURM account to charge (--account)")
    parser.add_argument("--slurm-qos", default=None, help="SLURM quality of service (--qos)")
    parser.add_argument("--slurm-constraint", default=None, help="SLURM node features, e.g. a100|h100 (--constraint)")
    parser.add_argument("--slurm-mem-gb", type=_non_negative_int, default=64, help="memory per job in GB")
    parser.add_argument("--gpus-per-job", type=_non_negative_int, default=1)
    parser.add_argument("--cpus-per-job", type=_positive_int, default=8)
    parser.add_argument("--rows-per-job", type=_positive_int, default=1,
                        help="rows (model x method x budget x seed, all tasks) per SLURM job")
    parser.add_argument("--slurm-timeout-min", type=_positive_int, default=24 * 60)
    parser.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], default=None,
                        help="submitit cluster (default: SLURM when available); 'local' runs the jobs as local processes")
    parser.add_argument("--staged", default=None, help="paper profile: staged datasets (default: the spec's, else data/staged)")
    parser.add_argument("--data-dir", default=None, help="tiny profile: tiny-world data (default: the per-user cache)")
    parser.add_argument("--tables", default=None, help="table folder (default paper_tables/<profile>)")
    parser.add_argument("--figures", default=None, help="figure folder (default results/<profile>/figures)")
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: the spec's `threads`)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="local executor: worker processes, one thread each when several (default: the spec's "
                             "`workers`, else one per available core on a CPU, one on an accelerator)")
    parser.add_argument("--encode-cache-mb", type=_non_negative_int, default=None,
                        help="each worker's caches of processor outputs and image encodings, in MiB each "
                             "(default 1024; 0 turns them off)")
    parser.add_argument("--batch-size", type=_positive_int, default=1,
                        help="samples packed into one pass (equal to 1 up to fp32 rounding; 1 on a CPU: packing "
                             "does not pay there)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the missing inputs; compute nothing")
    parser.add_argument("--allow-missing", action="store_true", help="exit 0 even when the table has incomplete rows")


def _run_sweep(args: argparse.Namespace) -> int:
    from repro.runner.plan import make_plan
    from repro.runner.spec import load_spec
    from repro.runner.store import Store
    from repro.runner.sweep import default_store, run_sweep

    models = [m for m in (args.models or "").split(",") if m and m != "all"] or None
    spec = load_spec(args.spec, models=models, limit=args.limit)
    staged = Path(args.staged) if args.staged else (Path(spec.staged) if spec.staged else None)
    if args.dry_run:
        plan = make_plan(spec, staged)
        print("\n".join(plan.lines()))
        return 0
    from repro.paths import check_output_dir
    from repro.report.sweep import default_figures_dir, default_tables_dir
    from repro.runner.executors import SlurmOptions

    check_output_dir(args.tables or default_tables_dir(spec.profile), "--tables")
    check_output_dir(args.figures or default_figures_dir(spec.profile), "--figures")
    store = Path(args.store) if args.store else default_store(spec.profile)
    slurm = SlurmOptions(partition=args.slurm_partition, account=args.slurm_account, qos=args.slurm_qos,
                         constraint=args.slurm_constraint, mem_gb=args.slurm_mem_gb, gpus_per_job=args.gpus_per_job,
                         cpus_per_job=args.cpus_per_job, timeout_min=args.slurm_timeout_min,
                         rows_per_job=args.rows_per_job, cluster=args.slurm_cluster)
    run_sweep(spec, store, executor=args.executor, slurm=slurm, data_dir=args.data_dir, staged=staged,
              threads=args.threads, workers=args.workers, encode_cache_mb=args.encode_cache_mb,
              batch_size=max(1, args.batch_size))
    from repro.eval.parallel import is_main

    if not is_main():  # a non-zero rank under `accelerate launch`: rank 0 writes the reports
        return 0
    return _report(spec, Store(store), args, data_dir=args.data_dir, staged=staged)


def _configure_tables(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the sweep spec whose table to regenerate from the store")
    parser.add_argument("--store", default=None, help="results store (default results/<profile>/store)")
    parser.add_argument("--tables", default=None, help="table folder (default paper_tables/<profile>)")
    parser.add_argument("--figures", default=None, help="figure folder (default results/<profile>/figures)")
    parser.add_argument("--data-dir", default=None, help="tiny profile: tiny-world data (default: the per-user cache)")
    parser.add_argument("--staged", default=None, help="paper profile: staged datasets (default: the spec's)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 even when cells are missing (their rows are still marked incomplete)")


def _run_tables(args: argparse.Namespace) -> int:
    from repro.paths import check_output_dir
    from repro.report.sweep import default_figures_dir, default_tables_dir
    from repro.runner.spec import load_spec
    from repro.runner.store import Store
    from repro.runner.sweep import default_store

    spec = load_spec(args.spec)
    store = Store(args.store or default_store(spec.profile))
    store.check_usable(writing=False)
    check_output_dir(args.tables or default_tables_dir(spec.profile), "--tables")
    check_output_dir(args.figures or default_figures_dir(spec.profile), "--figures")
    return _report(spec, store, args, data_dir=args.data_dir, staged=args.staged or spec.staged)


def _report(spec, store, args: argparse.Namespace, **where) -> int:
    """Write the sweep's table and figures; 1 when cells are missing, unless --allow-missing."""
    from repro.report.sweep import (
        default_figures_dir,
        default_tables_dir,
        write_reports,
    )

    reports = write_reports(spec, store, args.tables or default_tables_dir(spec.profile),
                            args.figures or default_figures_dir(spec.profile), **where)
    for path in reports.paths:
        print(f"wrote {path}")
    for note in reports.notes:
        print(f"note: {note}", file=sys.stderr)
    if reports.rel_avg_half_width is not None:
        print(f"Rel. Avg: widest 95% interval of a pruned row ±{reports.rel_avg_half_width:.2f} points "
              f"(limit {spec.limit or 'all'} documents per task)")
    if reports.missing:
        print(f"{'warning' if args.allow_missing else 'error'}: {reports.missing} cell(s) of {spec.path} have no "
              f"intact record in {store.root}; their rows are marked incomplete (run the sweep to fill them"
              + (")" if args.allow_missing else ", or pass --allow-missing)"), file=sys.stderr)
        return 0 if args.allow_missing else 1
    return 0


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--spec", default=None, help="sweep spec (default sweeps/<profile>/main.yaml)")
    parser.add_argument("--store", default=None, help="results store (default results/<profile>/store)")
    parser.add_argument("--reference", default=None,
                        help="reference registry (default: paper_tables/golden/tiny.csv for tiny, "
                             "paper_tables/reported/*.csv for paper)")
    parser.add_argument("--tolerances", default=None, help="per-metric tolerances (default paper_tables/tolerances.yaml)")
    parser.add_argument("--update-golden", action="store_true",
                        help="tiny: rewrite the golden registry from the store (after the weights change)")
    parser.add_argument("--out", default=None, help="also write the check table (md/tex/csv) into this folder")


def _run_check(args: argparse.Namespace) -> int:
    from repro.check import TOLERANCES
    from repro.report.check_report import run_check

    return run_check(profile=args.profile, spec_path=args.spec, store=args.store, reference=args.reference,
                     tolerances=args.tolerances or TOLERANCES, update_golden=args.update_golden, out=args.out)


COMMANDS: MappingProxyType[str, Command] = MappingProxyType(
    {
        "models": Command("list the registered checkpoints and whether weights are cached", _configure_models, _run_models),
        "flops": Command("analytic unpruned prefill FLOPs, or the FLOPs table", _configure_flops, _run_flops),
        "methods": Command("list the registered methods: stage, budget knob, reference", _configure_methods, _run_methods),
        "generate": Command("answer a question about images with a model and an optional method",
                            _configure_generate, _run_generate),
        "search": Command("search a DOP policy (additive approximation) and write its artifact",
                          _configure_search, _run_search),
        "analyze": Command("DOP analyses (proxy vs truth, curves, calibration size, transfer) as CSV + PNG",
                           _configure_analyze, _run_analyze),
        "latency": Command("time each stage (vision, prefill, decode) per method and budget; the latency table",
                           _configure_latency, _run_latency),
        "throughput": Command("samples per second at batch size 1 and packed (prefill, decode); the plan's GPU hours use it",
                              _configure_throughput, _run_throughput),
        "sweep": Command("run a sweep spec into the results store (resumable), then write its table and figures",
                         _configure_sweep, _run_sweep),
        "tables": Command("regenerate a sweep's table and figures from the store", _configure_tables, _run_tables),
        "check": Command("compare reproduced cells with reported (paper) or golden (tiny) numbers",
                         _configure_check, _run_check),
    }
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of COMMANDS."""
    parser = _Parser(
        prog="python -m repro",
        description="Reproduction harness for DOP (arXiv 2507.02909) and visual-token-pruning baselines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, command in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.configure(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one line, `error: ...`, and return 2. An OSError about
    a path the user gave (permissions, a file where a folder belongs, a full disk) is a user error
    too; any other exception is our bug and keeps its traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error, already printed as one line
        return int(stop.code or 0)
    try:
        return COMMANDS[args.command].run(args)
    except ReproError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    except OSError as err:
        if err.filename is None:
            raise
        print(f"error: {err.filename}: {err.strerror or err}; check the path and its permissions", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
