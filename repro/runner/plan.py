"""What a sweep needs before it runs: the cells, an estimate of GPU hours, and which weights and
datasets are missing with the command that stages each. A run with missing inputs stops here,
before any compute."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from repro.errors import ReproError
from repro.runner.spec import Spec, expand

# Full evaluation-split sizes of the paper tasks (lmms-eval's datasets) and rough seconds per
# sample on one H100 in bf16 (short answers); only for the plan's order-of-magnitude estimate.
TASK_SIZES = {"textvqa_val": 5000, "vqav2_val": 214354, "gqa": 12578, "vizwiz_vqa_val": 4319,
              "scienceqa_img": 2017, "seedbench": 17990, "mme": 2374, "pope": 9000, "mmbench_en_dev": 4329,
              "mmbench_cn_dev": 4329, "ai2d": 3088, "chartqa": 2500, "ocrbench": 1000}
SECONDS_PER_SAMPLE = {"llava-1.5-7b": 0.12, "llava-1.5-13b": 0.2, "llava-next-7b": 0.3, "llava-next-13b": 0.5,
                      "qwen2.5-vl-7b": 0.3, "internvl3-8b": 0.4}
THROUGHPUT_NOTE = ("assumed throughput: batch size 1, bf16, one H100-class GPU, short answers, "
                   "0.12-0.5 s a sample by model (runner/plan.py SECONDS_PER_SAMPLE); pruned cells are counted at "
                   "the unpruned speed, so this is an upper bound")
MEASURE_HINT = ("not measured here: `python -m repro throughput --model MODEL --random-weights --device cuda "
                "--dtype bfloat16` on a GPU writes a record to results/benchmarks/ that the plan then uses")
THROUGHPUT_DIR = Path("results") / "benchmarks"  # where `python -m repro throughput` writes its records
REDUCED_DOCS = 500  # the reduced run the plan prices when the spec sets no `subset`
TINY_TEXT_TOKENS = 33  # the tiny world's mean prompt text tokens (the paper's: flops.DEFAULT_TEXT_TOKENS)


@dataclass
class Plan:
    cells: int
    models: list[str]
    tasks: list[str]
    rows: int
    samples: int
    gpu_hours: float | None
    missing: list[tuple[str, str]] = field(default_factory=list)  # (what is missing, command that stages it)
    methods: dict[str, list[str]] = field(default_factory=dict)  # method label -> "model: budgets" entries
    model_options: dict[str, dict] = field(default_factory=dict)
    reduced: tuple[int, float] | None = None  # (documents per task, GPU hours) of the reduced run
    infeasible: list[str] = field(default_factory=list)  # model x method x budget warnings
    throughput: list[str] = field(default_factory=list)  # what the GPU hours assume, a line each

    def lines(self) -> list[str]:
        out = [f"plan: {self.cells} cells = {self.rows} rows (model x method x budget x seed) x {len(self.tasks)} tasks",
               f"  models: {', '.join(self.models)}", f"  tasks: {', '.join(self.tasks)}"]
        out += [f"  model options: {m}: {', '.join(f'{k}={v}' for k, v in o.items())}"
                for m, o in self.model_options.items()]
        out += [f"  method {label}: {'; '.join(budgets)}" for label, budgets in self.methods.items()]
        out.append(f"  samples to evaluate: {self.samples}")
        if self.gpu_hours is not None:
            out.append(f"  estimate: {self.gpu_hours:.0f} GPU hours for the full splits")
            if self.reduced:
                out.append(f"  estimate: {self.reduced[1]:.0f} GPU hours for the reduced run (`subset: "
                           f"{self.reduced[0]}` documents per task)")
            out += [f"  ({line})" for line in self.throughput]
        if self.infeasible:
            out.append(f"infeasible budgets ({len(self.infeasible)}; their samples will be recorded as infeasible):")
            out += [f"  - {line}" for line in self.infeasible]
        if self.missing:
            out.append(f"missing inputs ({len(self.missing)}):")
            out += [f"  - {what}\n      stage with: {cmd}" for what, cmd in self.missing]
        else:
            out.append("all weights and datasets are present")
        return out


def missing_inputs(spec: Spec, staged: Path | None) -> list[tuple[str, str]]:
    """Paper weights absent from the local HF cache and paper tasks without staged data."""
    if spec.profile == "tiny":
        return []
    from repro.eval.tasks import GQA_IMAGES, download_hint, gqa_images_hint, paper_task, staged_source
    from repro.models.registry import entries, local_weights

    missing = []
    by_name = {e.name: e for e in entries()}
    from repro.methods.registry import method_spec
    from repro.models.registry import local_snapshot

    text_methods = [m.name for m in spec.methods if "text_tower" in getattr(method_spec(m.name), "requires", ())]
    for m in spec.models:
        entry = by_name.get(m)
        if entry is not None and local_weights(entry) is None:
            missing.append((f"weights of {m} ({entry.hf_id})",
                            f"hf download {entry.hf_id} --revision {spec.revision}  (or set HF_HOME to a staged cache)"))
        if entry is not None and entry.text_tower and text_methods and local_snapshot(entry.text_tower) is None:
            missing.append((f"CLIP text tower of {m} for {', '.join(text_methods)} ({entry.text_tower})",
                            f"hf download {entry.text_tower}  (or set HF_HOME to a staged cache)"))
    root = Path(staged) if staged else Path("data/staged")
    for name in spec.tasks:
        t = paper_task(name)
        folders = [t.name] + ([GQA_IMAGES] if t.name == "gqa" else [])
        for folder in folders:
            try:
                staged_source(root, t, folder)
            except ReproError:
                hint = gqa_images_hint(root) if folder == GQA_IMAGES else download_hint(t, root)
                missing.append((f"dataset {folder} in {root / folder}", hint.strip("`").split("` on a")[0]))
    return missing


def make_plan(spec: Spec, staged: Path | None = None, throughput_dir: Path = THROUGHPUT_DIR) -> Plan:
    """The plan; GPU hours use the measured throughput records in `throughput_dir` (repro/throughput.py)
    for the models that have one, the stated assumption for the others."""
    cells = expand(spec)
    rows = len({c.group for c in cells})
    per_task = {t: (min(spec.limit, TASK_SIZES.get(t, spec.limit)) if spec.limit else TASK_SIZES.get(t, 0))
                for t in spec.tasks}
    if spec.profile == "tiny":
        per_task = {t: spec.limit or 300 for t in spec.tasks}  # tiny-world test splits hold 300 rows
    docs = spec.subset["docs"] if spec.subset else REDUCED_DOCS
    reduced_per_task = {t: min(n, docs) for t, n in per_task.items()}
    if spec.subset:
        per_task = reduced_per_task
    samples = sum(per_task[c.task] for c in cells)
    gpu = reduced = None
    throughput = [THROUGHPUT_NOTE, MEASURE_HINT]
    if spec.profile == "paper":
        from repro.throughput import measured

        records = {m: r for m, r in measured(throughput_dir).items() if m in spec.models}
        seconds = {**SECONDS_PER_SAMPLE, **{m: r.seconds_per_sample for m, r in records.items()}}

        def hours(sizes: dict) -> float:
            return sum(sizes[c.task] * seconds.get(c.model, 0.3) for c in cells) / 3600

        full = {t: (min(spec.limit, TASK_SIZES.get(t, spec.limit)) if spec.limit else TASK_SIZES.get(t, 0))
                for t in spec.tasks}
        gpu, reduced = hours(full), (docs, hours(reduced_per_task))
        if records:
            throughput = [f"measured throughput ({throughput_dir}): " + "; ".join(r.describe() for r in records.values())
                          + "; unpruned, fixed answer length, so an upper bound"]
            if set(spec.models) - set(records):
                throughput.append(f"the other models: {THROUGHPUT_NOTE}")
    return Plan(len(cells), list(spec.models), list(spec.tasks), rows, samples, gpu,
                missing_inputs(spec, staged), _method_budgets(spec), dict(spec.model_options), reduced,
                infeasible_budgets(spec), throughput)


def infeasible_budgets(spec: Spec) -> list[str]:
    """Each model x method x ratio:/tflops: budget below the method's cheapest run (`min_flops`) on
    the model's nominal prompt (its card's visual tokens + the profile's mean text tokens). Entries with a fit
    (`search:`) are left out: their knob is known only after the fit."""
    from repro.budget import as_budget
    from repro.flops import DEFAULT_TEXT_TOKENS, unpruned_prefill_flops
    from repro.methods.registry import method as build_method
    from repro.models.registry import entries

    cards = {e.name: e.card for e in entries()}
    n_other = TINY_TEXT_TOKENS if spec.profile == "tiny" else DEFAULT_TEXT_TOKENS
    out = []
    for entry in spec.methods:
        if entry.search is not None:
            continue
        for model in spec.models:
            card = cards.get(model)
            for budget in entry.budgets_for(model) if card is not None else ():
                if budget is None or as_budget(budget).kind == "tokens":
                    continue
                floor = build_method(entry.name, budget, **entry.options).min_flops(card, card.visual_tokens, n_other)
                unpruned = unpruned_prefill_flops(card, card.visual_tokens + n_other, "paper")
                if floor > as_budget(budget).max_flops(unpruned):
                    out.append(f"{entry.display} on {model} at {budget}: its cheapest run is {floor / unpruned:.3f} "
                               f"of the unpruned prefill FLOPs ({card.visual_tokens} visual + {n_other} text tokens)")
    return out


def _method_budgets(spec: Spec) -> dict[str, list[str]]:
    """method label -> its budgets, one entry per group of models sharing them."""
    out = {}
    for entry in spec.methods:
        by_budgets: dict[tuple, list[str]] = {}
        for model in spec.models:
            shown = tuple(f"{b} ({label})" if label else (b or "all tokens") for b, label in entry.labelled_budgets(model))
            by_budgets.setdefault(shown, []).append(model)
        out[entry.display] = [f"{', '.join(models)}: {', '.join(budgets)}" for budgets, models in by_budgets.items()]
    return out


def require_inputs(spec: Spec, staged: Path | None) -> None:
    """ReproError listing every missing input and its staging command (before any compute)."""
    missing = missing_inputs(spec, staged)
    if missing:
        listing = "\n".join(f"  - {what}: {cmd}" for what, cmd in missing)
        raise ReproError(f"{len(missing)} input(s) of {spec.path} are missing; stage them first "
                         f"(or preview with --dry-run):\n{listing}")
