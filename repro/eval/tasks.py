"""The paper profile's task set: the thirteen lmms-eval tasks of DOP's evaluation, pointed at
pre-staged local data.

Staging (on a machine with network access, once): put each task's evaluation split under
`STAGED/<task>/` as the hub's parquet files, e.g.

    hf download lmms-lab-encoder/textvqa --repo-type dataset --include "*validation*" --local-dir STAGED/textvqa_val

(`official_dataset` reads the repository and configuration from the installed lmms-eval YAML
itself, so the hints follow lmms-eval; `PaperTask.split` says which split), or as a
`datasets.DatasetDict` saved with `save_to_disk` (a folder with `dataset_dict.json` that holds
the split). GQA also needs its image set (`testdev_balanced_images`, split `testdev`) under
`STAGED/gqa_images/`. Parquet files are found recursively; when some are named `<split>-*.parquet`
(the hub's convention) only those are used.

`write_task_folder(STAGED, OUT)` then writes one YAML per task into `OUT` that `include:`s the
installed official YAML and overrides only the data location (`dataset_path: parquet` +
`dataset_kwargs.data_files`, or `load_from_disk`), `dataset_name` where the official one names a
hub configuration, and these documented deviations:

* MMBench-EN/CN dev run as `mmbench_en_dev_static` / `mmbench_cn_dev_static`: no GPT judge and no
  network. lmms-eval ships the EN static task; the CN one is the same pattern over the official
  CN template. Answers are parsed by lmms-eval's `MMBench_Evaluator` with `eval_method="static"`,
  CircularEval (a question counts only if every circular rotation, `index + k*1e6`, is right):
  first its rule-based prefetch (`can_infer`: exactly one option letter standing alone or written
  as `A.`, `(A)`, `A:` ...; otherwise exactly one option text contained in the response), then,
  for responses it cannot read, `extract_mcq_answer` (lmms-eval's no-API letter extractor) over
  the offered letters; an unreadable response is wrong. Scores are percentages (0-100).
  The official `submission` metric (an xlsx file) and results-file writing are dropped.
* TextVQA: the `submission` metric (a JSON file in the working directory) is dropped.
* OCRBench: the aggregation is the mean of the official per-sample scores (identical to the
  official `total/1000` for the real 1000 samples, and correct for `--limit` and repeated runs).
* GQA: `process_docs` joins questions with the staged image set instead of downloading it.

`task_manager(STAGED)` verifies the staged files (missing or unreadable parquet -> ReproError
naming the file and the download command) and returns a TaskManager over the written folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro.errors import ReproError

UTILS_MODULE = "repro_paper_utils"


@dataclass(frozen=True)
class PaperTask:
    name: str  # lmms-eval task name of the benchmark (as the paper profile names it)
    benchmark: str
    include: str  # official YAML, relative to lmms_eval/tasks/
    split: str  # the split the official YAML evaluates
    main_metric: str  # "<metric>,<filter>" key in lmms-eval results
    run_name: str | None = None  # task name in runs, when it differs from `name`
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.run_name or self.name


def _fn(name: str):
    from repro.tinyworld.suite import Fn

    return Fn(f"{UTILS_MODULE}.{name}")


_EXACT = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
          "ignore_punctuation": True}

PAPER_TASKS: tuple[PaperTask, ...] = (
    PaperTask("textvqa_val", "TextVQA", "textvqa/textvqa_val.yaml", "validation",
              "exact_match,none", overrides={"metric_list": [_EXACT]}),
    PaperTask("vqav2_val", "VQAv2", "vqav2/vqav2_val.yaml", "validation", "exact_match,none"),
    PaperTask("gqa", "GQA", "gqa/gqa.yaml", "testdev", "exact_match,none",
              overrides={"process_docs": "gqa_process_docs_local"}),
    PaperTask("vizwiz_vqa_val", "VizWiz", "vizwiz_vqa/vizwiz_vqa_val.yaml", "val",
              "exact_match,none"),
    PaperTask("scienceqa_img", "ScienceQA-IMG", "scienceqa/scienceqa_img.yaml", "test",
              "exact_match,none"),
    PaperTask("seedbench", "SEED-Bench", "seedbench/seedbench.yaml", "test", "seed_image,none"),
    PaperTask("mme", "MME", "mme/mme.yaml", "test", "mme_perception_score,none"),
    PaperTask("pope", "POPE", "pope/pope.yaml", "test", "pope_f1_score,none"),
    PaperTask("mmbench_en_dev", "MMBench-EN", "mmbench/mmbench_en_dev_static.yaml", "dev",
              "gpt_eval_score,none", run_name="mmbench_en_dev_static",
              overrides={"metric_list": [{"metric": "gpt_eval_score", "aggregation": "mmbench_en_aggregate_static",
                                          "higher_is_better": True}]}),
    PaperTask("mmbench_cn_dev", "MMBench-CN", "mmbench/_default_template_mmbench_cn_yaml", "dev",
              "gpt_eval_score,none", run_name="mmbench_cn_dev_static",
              overrides={"metric_list": [{"metric": "gpt_eval_score", "aggregation": "mmbench_cn_aggregate_static",
                                          "higher_is_better": True}]}),
    PaperTask("ai2d", "AI2D", "ai2d/ai2d.yaml", "test", "exact_match,flexible-extract",
              overrides={"tag": []}),
    PaperTask("chartqa", "ChartQA", "chartqa/chartqa.yaml", "test", "relaxed_overall,none"),
    PaperTask("ocrbench", "OCRBench", "ocrbench/ocrbench.yaml", "test", "ocrbench_accuracy,none",
              overrides={"tag": [], "metric_list": [{"metric": "ocrbench_accuracy",
                                                     "aggregation": "ocrbench_mean_accuracy",
                                                     "higher_is_better": True}]}),
)
GROUP = "repro_paper"
GQA_IMAGES = "gqa_images"


def paper_task(name: str) -> PaperTask:
    for t in PAPER_TASKS:
        if name in (t.name, t.task):
            return t
    raise ReproError(f"unknown paper task {name!r}; the paper profile has: {', '.join(t.name for t in PAPER_TASKS)}")


def official_dataset(t: PaperTask) -> tuple[str, str | None]:
    """(dataset repository, configuration) that the installed lmms-eval YAML of `t` reads,
    following its `include:` chain."""
    from repro.tinyworld.yamls import lmms_eval_tasks_dir

    found: dict[str, Any] = {}
    path = Path(lmms_eval_tasks_dir()) / t.include
    while path is not None:
        cfg = _read_task_yaml(path)
        for key in ("dataset_path", "dataset_name"):
            if key in cfg and key not in found:  # the including file overrides what it includes
                found[key] = cfg[key]
        path = path.parent / cfg["include"] if cfg.get("include") else None
    if not found.get("dataset_path"):
        raise ReproError(f"{t.include} names no dataset_path; install the lmms-eval version of requirements.lock")
    return str(found["dataset_path"]), found.get("dataset_name")


def _read_task_yaml(path: Path) -> dict[str, Any]:
    """An lmms-eval task YAML, its `!function` tags read as plain strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader) or {}  # noqa: S506 - SafeLoader subclass
    except FileNotFoundError:
        raise ReproError(f"lmms-eval task file {path} is missing; install the lmms-eval version of "
                         "requirements.lock") from None


def download_hint(t: PaperTask, staged: Path) -> str:
    hub, config = official_dataset(t)
    pattern = f"{config}/{t.split}-*" if config else f"*{t.split}*"
    return (f"`hf download {hub} --repo-type dataset --include \"{pattern}\" --local-dir {staged / t.name}` "
            "on a machine with network access (or save a DatasetDict with that split there)")


def gqa_images_hint(staged: Path) -> str:
    """The image set GQA's official utils load (`testdev_balanced_images`) from the same repository."""
    hub, _ = official_dataset(paper_task("gqa"))
    return (f"hf download {hub} --repo-type dataset --include \"testdev_balanced_images/*\" "
            f"--local-dir {staged / GQA_IMAGES}")


def staged_source(staged: Path, t: PaperTask, folder: str | None = None) -> dict[str, Any]:
    """`dataset_path`/`dataset_kwargs` for one staged task; ReproError when nothing usable is there."""
    root = Path(staged) / (folder or t.name)
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        if t.split not in splits:
            raise ReproError(f"{root} is a saved DatasetDict without split {t.split!r} (has {splits}); "
                             f"{download_hint(t, Path(staged))}")
        return {"dataset_path": str(root.resolve()), "dataset_kwargs": {"load_from_disk": True}}
    files = parquet_files(root, t.split)
    if not files:
        raise ReproError(f"no staged data for {t.name} in {root}: {download_hint(t, Path(staged))}")
    return {"dataset_path": "parquet", "dataset_kwargs": {"data_files": {t.split: [str(f) for f in files]}}}


def parquet_files(root: Path, split: str) -> list[Path]:
    if not root.is_dir():
        return []
    files = sorted(p.resolve() for p in root.rglob("*.parquet") if p.is_file())
    named = [p for p in files if p.name.startswith((f"{split}-", f"{split}."))]
    return named or files


def verify_staged(staged: Path | str, names: list[str] | None = None) -> None:
    """Every selected task has readable parquet files (or a saved DatasetDict); else ReproError."""
    import pyarrow.parquet as pq

    staged = Path(staged)
    selected = [paper_task(n) for n in names] if names else list(PAPER_TASKS)
    problems = []
    for t in selected:
        folders = [(t.name, t)] + ([(GQA_IMAGES, t)] if t.name == "gqa" else [])
        for folder, spec in folders:
            try:
                source = staged_source(staged, spec, folder)
            except ReproError as err:
                problems.append(str(err))
                continue
            for f in source["dataset_kwargs"].get("data_files", {}).get(spec.split, []):
                try:
                    pq.read_metadata(f)
                except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
                    problems.append(f"{f} is not a readable parquet file ({type(err).__name__}); re-download it: "
                                    f"{download_hint(spec, staged)}")
    if problems:
        raise ReproError("staged paper data is incomplete or damaged:\n  " + "\n  ".join(problems))


def task_config(t: PaperTask, staged: Path, tasks_dir: Path) -> dict[str, Any]:
    included = tasks_dir / t.include
    if not included.is_file():
        raise ReproError(f"lmms-eval task file {included} is missing; install the lmms-eval version pinned in "
                         "pyproject.toml")
    cfg: dict[str, Any] = {"include": str(included), "task": t.task, **staged_source(staged, t), "test_split": t.split}
    if official_dataset(t)[1] is not None:
        cfg["dataset_name"] = None
    for key, value in t.overrides.items():
        if key == "process_docs":
            value = _fn(value)
        elif key == "metric_list":
            value = [{**m, "aggregation": _fn(m["aggregation"])} if m.get("aggregation") not in (None, "mean")
                     else m for m in value]
        cfg[key] = value
    return cfg


def subset_table(staged: Path, t: PaperTask, n: int, seed: int):
    """(rows of the reduced run's subset of `t`'s staged split as a pyarrow Table, their positions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .subset import needed_columns, subset_rows

    source = staged_source(staged, t)
    if source["dataset_path"] == "parquet":
        table = pa.concat_tables([pq.read_table(f) for f in source["dataset_kwargs"]["data_files"][t.split]])
    else:
        import datasets

        table = datasets.load_from_disk(source["dataset_path"])[t.split].data.table
    columns = {c: table.column(c).to_pylist() for c in needed_columns(t.name)}
    rows = subset_rows(t.name, table.num_rows, columns, n, seed)
    return table.take(rows), rows


def write_task_folder(staged: Path | str, out: Path | str, names: list[str] | None = None,
                      subset: tuple[int, int] | None = None) -> list[Path]:
    """Write the override YAMLs (and the group `repro_paper`) for the staged tasks into `out`.
    `subset` (documents per task, seed) points each task at its reduced-run subset instead
    (`repro.eval.subset`), written as parquet under `out/_subset/`."""
    from repro.tinyworld.yamls import _write_if_changed, lmms_eval_tasks_dir, render_yaml

    staged, out = Path(staged), Path(out)
    verify_staged(staged, names)
    out.mkdir(parents=True, exist_ok=True)
    selected = [paper_task(n) for n in names] if names else list(PAPER_TASKS)
    utils = (Path(__file__).parent / "paper_utils.py").read_text(encoding="utf-8")
    paths = {}
    if any(t.name == "gqa" for t in selected):
        gqa = paper_task("gqa")
        paths["gqa_images"] = [str(p) for p in parquet_files(staged / GQA_IMAGES, gqa.split)]
    utils = utils.replace("STAGED: dict = {}", f"STAGED: dict = {json.dumps(paths)}", 1)
    _write_if_changed(out / f"{UTILS_MODULE}.py", utils)
    written = []
    tasks_dir = lmms_eval_tasks_dir()
    for t in selected:
        path = out / f"{t.task}.yaml"
        cfg = task_config(t, staged, tasks_dir)
        if subset is not None:
            import pyarrow.parquet as pq

            table, _ = subset_table(staged, t, *subset)
            data = out / "_subset" / t.name / f"{t.split}-subset.parquet"
            data.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, data)
            cfg.update(dataset_path="parquet", dataset_kwargs={"data_files": {t.split: [str(data.resolve())]}})
        _write_if_changed(path, _header(render_yaml(cfg)))
        written.append(path)
    group = out / f"_{GROUP}.yaml"
    _write_if_changed(group, _header(render_yaml({"group": GROUP, "task": [t.task for t in selected]})))
    return [*written, group]


def _header(text: str) -> str:
    first, rest = text.split("\n", 1)
    return "# Generated by repro.eval.tasks.write_task_folder from staged data; do not edit.\n" + rest


def task_manager(staged: Path | str, out: Path | str | None = None, names: list[str] | None = None,
                 subset: tuple[int, int] | None = None):
    """TaskManager over the override folder (default `STAGED/_lmms_tasks`, or
    `STAGED/_lmms_tasks_subset<N>_seed<S>` for a reduced run), after verifying the data."""
    from lmms_eval.tasks import TaskManager

    default = "_lmms_tasks" + (f"_subset{subset[0]}_seed{subset[1]}" if subset else "")
    out = Path(out) if out is not None else Path(staged) / default
    write_task_folder(staged, out, names, subset)
    return TaskManager(include_path=str(out), include_defaults=False)
