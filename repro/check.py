"""`python -m repro check`: reproduced cells against reference numbers, with per-metric tolerances.

Two registries:
- `paper` profile: the published numbers in paper_tables/reported/*.csv (with their provenance),
  mapped onto the cells of sweeps/paper/{main,budgets}.yaml (model, method, budget, benchmark).
- `tiny` profile: our own golden results, paper_tables/golden/tiny.csv, made from
  sweeps/tiny/golden.yaml (run here first; it is small and resumable). They guard the harness
  against regressions and are refreshed after the shipped weights change with
  `python -m repro check --profile tiny --update-golden`.

The command (`run_check`: printing, exit status, the check table) is repro.report.check_report.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from repro.errors import ReproError
from repro.runner.records import CellRecord, SampleRecord
from repro.runner.spec import UNPRUNED, Cell, Spec, expand
from repro.runner.store import Store

REPO = Path(__file__).resolve().parents[1]  # the checkout: registries live beside the code
GOLDEN = REPO / "paper_tables" / "golden" / "tiny.csv"
REPORTED = REPO / "paper_tables" / "reported"
TOLERANCES = REPO / "paper_tables" / "tolerances.yaml"
GOLDEN_COLUMNS = ["model", "model_revision", "method", "budget", "seed", "task", "benchmark", "metric", "value", "source",
                  "cpu_capability"]
GOLDEN_REQUIRED = GOLDEN_COLUMNS[:-1]  # cpu_capability is optional (registries made before it)
PAPER_SPECS = (REPO / "sweeps" / "paper" / "main.yaml", REPO / "sweeps" / "paper" / "budgets.yaml")
UPDATE_COMMAND = "python -m repro check --profile tiny --update-golden"

# reported names -> ours (paper_tables/reported/README.md)
MODELS = {"LLaVA-1.5-7B": "llava-1.5-7b", "LLaVA-1.5-13B": "llava-1.5-13b", "LLaVA-NeXT-7B": "llava-next-7b",
          "LLaVA-NeXT-13B": "llava-next-13b", "Qwen2.5-VL-7B": "qwen2.5-vl-7b", "InternVL3-8B": "internvl3-8b"}
METHODS = {"Vanilla": UNPRUNED, "FastV": "fastv", "VisPruner": "vispruner", "DOP": "dop", "PDrop": "pdrop",
           "SparseVLM": "sparsevlm", "FitPrune": "fitprune", "DART": "dart", "VisionZip": "visionzip",
           "CDPruner": "cdpruner", "DivPrune": "divprune", "PruMerge+": "prumerge_plus", "TRIM": "trim"}
BENCHMARKS = {"VQAv2": "VQAv2", "GQA": "GQA", "VizWiz": "VizWiz", "SQA-IMG": "ScienceQA-IMG", "TextVQA": "TextVQA",
              "POPE": "POPE", "MME": "MME", "MMB-EN": "MMBench-EN", "MMB-CN": "MMBench-CN", "AI2D": "AI2D",
              "ChartQA": "ChartQA", "OCRBench": "OCRBench", "SEED-I (image)": "SEED-Bench"}
# reported metrics that measure what our headline metric measures (MME perception+cognition does not)
COMPARABLE = {"accuracy", "F1", "score_likely_F1", "score", "perception_score", "relaxed_accuracy", "score_0_1000",
              "gpt_score"}
# our record's raw lmms-eval value -> the reported scale
REPORTED_SCALE = {"MME": 1.0, "OCRBench": 1000.0}


@dataclass
class CheckRow:
    model: str
    method: str
    budget: str
    benchmark: str
    metric: str
    reference: float | str  # a string (a checksum) must match exactly
    reproduced: float | str | None
    tolerance: float
    source: str
    alternates: str = ""  # other sources' values for the same identity (reported registry)
    kernel: str = ""  # set when compared across CPU capabilities under a kernel-sensitive tolerance

    @property
    def delta(self) -> float | None:
        if self.reproduced is None or isinstance(self.reference, str):
            return None
        return self.reproduced - self.reference

    @property
    def status(self) -> str:
        if self.reproduced is None:
            return "missing"
        if isinstance(self.reference, str):
            if self.reproduced == self.reference:
                return "pass"
            return "kernel" if self.kernel else "fail"  # changed answers across CPU kernels: reported, allowed
        return "pass" if abs(self.reproduced - self.reference) <= self.tolerance else "fail"


def _tolerance_file(path: Path | str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ReproError(f"no tolerance file at {path} (paper_tables/tolerances.yaml in the repository)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ReproError(f"cannot read tolerances {path} ({type(err).__name__}); "
                         "give a YAML file like paper_tables/tolerances.yaml") from None
    if not isinstance(data, dict):
        raise ReproError(f"{path}: tolerances are a mapping (golden:, reported:, ...) like paper_tables/tolerances.yaml")
    return data


def load_tolerances(path: Path | str, registry: str) -> dict[str, float]:
    table = _tolerance_file(path).get(registry)
    if not isinstance(table, dict) or "default" not in table:
        raise ReproError(f"{path}: needs a `{registry}:` mapping with a `default` tolerance")
    bad = [str(k) for k, v in table.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0]
    if bad:
        raise ReproError(f"{path}: tolerance(s) {', '.join(bad)} of `{registry}` must be numbers >= 0")
    return {str(k): float(v) for k, v in table.items()}


REPORTED_COLUMNS = ["source", "source_table", "model", "method", "budget_kind", "budget_value", "benchmark", "metric",
                    "value"]


def read_registry(path: Path, columns: list[str]) -> list[dict]:
    """The rows of a reference CSV; ReproError naming the file and its missing columns when it is not one."""
    try:
        with Path(path).open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise ReproError(f"reference {path} is not a registry: column(s) {', '.join(missing)} missing "
                                 f"(expected a CSV with the header {','.join(columns)})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReproError(f"cannot read reference {path} ({type(err).__name__}); give a CSV registry "
                         f"with the header {','.join(columns)}") from None
    short = next((i for i, r in enumerate(rows, start=2) if None in r.values() or None in r), None)
    if short is not None:
        raise ReproError(f"reference {path}: line {short} has another number of fields than the header")
    return rows


def reported_registries(registry: Path) -> list[Path]:
    """The CSVs of a reported-numbers folder (or the one CSV given), each checked."""
    registry = Path(registry)
    if registry.is_file():
        paths = [registry]
    elif registry.is_dir():
        paths = sorted(registry.glob("*.csv"))
    else:
        raise ReproError(f"no reference at {registry}; give a CSV or a folder of them (default {REPORTED})")
    for path in paths:
        read_registry(path, REPORTED_COLUMNS)
    return paths


def tolerance(tols: dict[str, float], metric: str) -> float:
    return tols.get(metric, tols["default"])


def load_kernel_tolerances(path: Path | str) -> dict[str, dict[str, float]]:
    """`golden_kernel_sensitive:` of the tolerance file: per method, the tolerances that apply when
    the golden registry was made on another torch CPU capability (AVX2 vs AVX512, ...)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    table = data.get("golden_kernel_sensitive") or {}
    if not isinstance(table, dict) or any(not isinstance(v, dict) or "default" not in v for v in table.values()):
        raise ReproError(f"{path}: `golden_kernel_sensitive:` maps methods to tolerances with a `default`")
    return {str(m): {str(k): float(v) for k, v in t.items()} for m, t in table.items()}


# --------------------------------------------------------------------------- golden (tiny)

def golden_rows(spec: Spec, store: Store) -> list[dict]:
    """One row per cell and value (the headline score and the realized TFLOPs) from the store."""
    rows = []
    for cell in expand(spec):
        rec = store.read_cell(cell.key)
        if rec is None:
            raise ReproError(f"cell {cell.describe()} has no record in {store.root}; run the sweep first")
        base = {"model": cell.model, "model_revision": cell.model_revision, "method": cell.label,
                "budget": cell.budget or "-", "seed": cell.seed, "task": cell.task,
                "benchmark": rec.metrics.benchmark, "source": f"{spec.path} record {cell.key}",
                "cpu_capability": (rec.provenance.get("platform") or {}).get("cpu_capability", "unrecorded")}
        rows.append({**base, "metric": rec.metrics.metric, "value": repr(rec.metrics.score)})
        rows.append({**base, "metric": "tflops_paper", "value": repr(rec.tflops_paper_mean)})
        rows.append({**base, "metric": "responses_sha256",
                     "value": responses_digest(store.read_sample_records(cell.key))})
    return rows


def responses_digest(samples: list[SampleRecord]) -> str:
    """sha256 (16 hex digits) of the cell's answers in document order: any changed answer shows."""
    import hashlib
    import json

    answers = [(s.doc_id, s.responses) for s in sorted(samples, key=lambda s: s.doc_id)]
    return hashlib.sha256(json.dumps(answers, ensure_ascii=False).encode()).hexdigest()[:16]


def _value(text: str, metric: str = "") -> float | str:
    if metric == "responses_sha256":  # hex digits can read as a number ("123e4...")
        return text
    try:
        return float(text)
    except ValueError:
        return text


def _golden_key(row: dict) -> tuple:
    return (row["model"], row["method"], row["budget"], str(row["seed"]), row["task"], row["metric"])


def write_golden(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, GOLDEN_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def compare_golden(spec: Spec, store: Store, golden: Path, tols: dict[str, float],
                   kernel_tols: dict[str, dict[str, float]] | None = None) -> list[CheckRow]:
    """Every golden value against the store's. Exact (`tols`) where the golden row was made on the
    same torch CPU capability; a kernel-sensitive method's cells (`kernel_tols`) made on another one
    are compared with its declared tolerances, and changed answers are reported, not failed."""
    if not golden.is_file():
        raise ReproError(f"no golden registry at {golden}; create it with `{UPDATE_COMMAND}`")
    reference = read_registry(golden, GOLDEN_REQUIRED)
    ours = {_golden_key(r): r for r in golden_rows(spec, store)}
    stale = {(r["model"], r["model_revision"]) for r in reference} - {(r["model"], r["model_revision"]) for r in ours.values()}
    if stale:
        raise ReproError(f"the golden registry {golden} was made with other weights ({sorted(stale)}); "
                         f"if the new weights are intended, refresh it with `{UPDATE_COMMAND}`")
    out = []
    for r in reference:
        mine = ours.get(_golden_key(r))
        tol, kernel = tolerance(tols, r["metric"]), ""
        theirs = r.get("cpu_capability") or "unrecorded"
        if mine and r["method"] in (kernel_tols or {}) and theirs != mine["cpu_capability"]:
            tol, kernel = tolerance(kernel_tols[r["method"]], r["metric"]), f"{theirs} -> {mine['cpu_capability']}"
        out.append(CheckRow(r["model"], r["method"], r["budget"], r["task"], r["metric"], _value(r["value"], r["metric"]),
                            _value(mine["value"], r["metric"]) if mine else None, tol, r["source"], kernel=kernel))
    return out


# --------------------------------------------------------------------------- reported (paper)

# Several sources report the same (model, method, budget, benchmark, metric): one is the
# reference, the others are kept as alternates and shown (paper_tables/reported/README.md,
# "Choosing one reference"). Preference, first difference wins:
#   1. the source's protocol matches ours: the other papers ran LLaVA-NeXT at native anyres,
#      the CDPruner and VisPruner pages on the fixed 672x672 grid our paper profile uses;
#   2. the method's own publication;
#   3. the CDPruner page, then the VisPruner page (both read twice from the full-resolution
#      images), then the third-party transcription of the other papers.
SOURCE_ORDER = ("baselines_cdpruner.csv", "baselines_vispruner.csv", "other_papers.csv")
OWN_SOURCE = {"CDPruner": ("baselines_cdpruner.csv", ""), "VisPruner": ("baselines_vispruner.csv", ""),
              "VisionZip": ("other_papers.csv", "VisionZip"), "PDrop": ("other_papers.csv", "PyramidDrop"),
              "FastV": ("other_papers.csv", "FastV README")}
NATIVE_ANYRES = ("other_papers.csv",)  # sources whose LLaVA-NeXT rows do not use the fixed grid


@dataclass(frozen=True)
class Reported:
    """One reported value and where it was read."""
    value: float
    metric: str
    file: str
    source: str
    source_table: str

    def rank(self, model: str, method: str) -> tuple:
        mismatch = model.startswith("llava-next") and self.file in NATIVE_ANYRES
        own_file, own_text = OWN_SOURCE.get(method, ("", None))
        own = self.file == own_file and own_text is not None and own_text in self.source
        order = SOURCE_ORDER.index(self.file) if self.file in SOURCE_ORDER else len(SOURCE_ORDER)
        return (mismatch, not own, order)

    def cite(self) -> str:
        return f"{self.file}: {self.source_table}"


def reported_references(registry: Path) -> dict[tuple, list[Reported]]:
    """(model, reported method, budget, benchmark) -> its reported values, preferred first."""
    found: dict[tuple, list[Reported]] = {}
    for path in reported_registries(registry):
        for line, r in enumerate(read_registry(path, REPORTED_COLUMNS), start=2):
            where = f"{path}: line {line}"
            ident = _reported_identity(r, where)
            if ident is None or not r["value"]:
                continue
            key = (ident[0], r["method"], ident[2], ident[3])
            found.setdefault(key, []).append(
                Reported(_number(r["value"], where + ": value"), r["metric"], path.name, r["source"],
                         r["source_table"]))
    for (model, method, _, _), values in found.items():
        values.sort(key=lambda v: v.rank(model, method))
    return found


def _cells_by_identity(cells: list[Cell]) -> dict[tuple, list[Cell]]:
    from repro.runner import benchmarks

    found: dict[tuple, list[Cell]] = {}
    for c in cells:
        found.setdefault((c.model, c.method, c.budget or "-", benchmarks.headline(c.task).benchmark), []).append(c)
    return found


def load_allowances(path: Path | str) -> dict[str, float]:
    """benchmark -> extra tolerance for a known protocol difference between the reporting papers
    and lmms-eval (`reported_protocol:` in the tolerance file)."""
    table = _tolerance_file(path).get("reported_protocol") or {}
    if not isinstance(table, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                          for v in table.values()):
        raise ReproError(f"{path}: `reported_protocol:` must map benchmarks to extra tolerances (numbers)")
    return {str(k): float(v) for k, v in table.items()}


def compare_reported(specs: list[Spec], store: Store, registry: Path, tols: dict[str, float],
                     allowances: dict[str, float] | None = None) -> list[CheckRow]:
    """One row per reported identity whose (model, method, budget, benchmark) is a cell of the
    specs, against its preferred reference; cells shared by several specs count once."""
    unique = {c.key: c for spec in specs for c in expand(spec)}
    cells = _cells_by_identity(list(unique.values()))
    out = []
    for (model, method, budget, bench), values in reported_references(registry).items():
        ident = (model, METHODS[method], budget, bench)
        if ident not in cells:
            continue
        ref = values[0]
        reproduced = [_reported_scale(store.read_cell(c.key), bench) for c in cells[ident]]
        reproduced = [v for v in reproduced if v is not None]
        mine = sum(reproduced) / len(reproduced) if reproduced else None
        alternates = "; ".join(f"{v.value:g} ({v.cite()})" for v in values[1:])
        out.append(CheckRow(model, method, budget, bench, ref.metric, ref.value, mine,
                            tolerance(tols, ref.metric) + (allowances or {}).get(bench, 0.0), ref.cite(), alternates))
    return out


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ReproError(f"{where} is {text!r}, not a number; fix the reference file") from None


def _reported_identity(r: dict, where: str) -> tuple | None:
    model, method, bench = MODELS.get(r["model"]), METHODS.get(r["method"]), BENCHMARKS.get(r["benchmark"])
    if None in (model, method, bench) or r["metric"] not in COMPARABLE:
        return None
    if r["budget_kind"] == "all_visual_tokens":
        budget = "-"
    elif r["budget_kind"] == "retained_visual_tokens":
        budget = f"tokens:{int(_number(r['budget_value'], where + ': budget_value'))}"
    else:
        return None
    return (model, method, budget, bench)


def _reported_scale(record: CellRecord | None, benchmark: str) -> float | None:
    if record is None:
        return None
    return record.metrics.raw * REPORTED_SCALE.get(benchmark, 100.0)


# --------------------------------------------------------------------------- command

def environment_note(records: list[dict | None]) -> str | None:
    """A line naming the stored cells computed under another lock, or off the lock, than this checkout."""
    from repro.environment import lock_sha256

    current = lock_sha256()
    found = [r.get("provenance") or {} for r in records if r is not None]
    other = [p.get("lock_sha256", "unrecorded") for p in found if p.get("lock_sha256", "unrecorded") != current]
    off = sum(bool(p.get("lock_departures")) for p in found)
    if not other and not off:
        return None
    parts = []
    if other:
        shas = ", ".join(f"{sha} ({other.count(sha)})" for sha in sorted(set(other)))
        parts.append(f"{len(other)} of {len(found)} cells were computed under another lock than this checkout's "
                     f"{current}: {shas}")
    if off:
        parts.append(f"{off} of {len(found)} cells in an environment that departs from its lock "
                     "(record provenance.lock_departures)")
    return "environment: " + "; ".join(parts) + "; a difference may come from package versions"
