"""The catalogue of tiny tasks: which paper benchmark each mirrors, how it is generated, which
official lmms-eval YAML it reuses (`include:`) and what it overrides, and its headline metric.

Overrides are limited to data location and split names, plus three documented deviations:
GQA's `process_docs` (the official one downloads GQA images from the hub), TextVQA's `submission`
metric (writes a file into the working directory) and OCRBench's aggregation (see lmms_utils).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ReproError
from . import easyvqa, tasks, tasks_mc
from .tasks import Generated

UTILS_MODULE = "tinyworld_utils"
"""Name under which lmms_utils.py is copied into the task folder (see lmms_utils docstring)."""


@dataclass(frozen=True)
class Fn:
    """A `!function` reference in a task YAML."""

    path: str


def _fn(name: str) -> Fn:
    return Fn(f"{UTILS_MODULE}.{name}")


@dataclass(frozen=True)
class TaskSpec:
    """One tiny task. `include` is relative to the installed `lmms_eval/tasks/` folder."""

    key: str
    mimics: str
    generated: Generated
    main_metric: str
    full_score: float
    include: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    own_config: dict[str, Any] = field(default_factory=dict)
    rng_key: str | None = None
    """Seed stream name; MMBench-CN shares MMBench's so its rows are translations of the same items."""
    in_group: bool = True

    @property
    def name(self) -> str:
        return f"tinyworld_{self.key}"

    @property
    def stream(self) -> str:
        return self.rng_key or self.key


_OCR_METRICS = [{"metric": "ocrbench_accuracy", "aggregation": _fn("ocrbench_mean_accuracy"), "higher_is_better": True}]
_VQA_EXACT = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True, "ignore_punctuation": True}]  # fmt: skip
_GEN = {"max_new_tokens": 16, "temperature": 0, "do_sample": False}


def _mmbench_config(lang: str) -> dict[str, Any]:
    post = {
        "en": "\nAnswer with the option's letter from the given choices directly.",
        "zh": "\n请直接使用所提供的选项字母作为答案回答。",
    }[lang]
    header = {"en": "There are several options:", "zh": "有如下几个选项："}[lang]
    return {
        "output_type": "generate_until",
        "doc_to_visual": _fn("doc_to_visual"),
        "doc_to_text": _fn("mmbench_doc_to_text"),
        "doc_to_target": "answer",
        "process_results": _fn("mmbench_process_results"),
        "generation_kwargs": _GEN,
        "metric_list": [
            {"metric": "circular_accuracy", "aggregation": _fn("circular_accuracy"), "higher_is_better": True},
            {"metric": "accuracy", "aggregation": "mean", "higher_is_better": True},
        ],
        "lmms_eval_specific_kwargs": {"default": {"pre_prompt": "", "post_prompt": post, "options_header": header}},
        "metadata": [{"version": 0.0}],
    }


_EASYVQA_CONFIG: dict[str, Any] = {
    "output_type": "generate_until",
    "doc_to_visual": _fn("doc_to_visual"),
    "doc_to_text": _fn("doc_to_text"),
    "doc_to_target": "answer",
    "process_results": _fn("exact_match_process_results"),
    "generation_kwargs": _GEN,
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    "lmms_eval_specific_kwargs": {
        "default": {"pre_prompt": "", "post_prompt": "\nAnswer the question using a single word or phrase."}
    },
    "metadata": [{"version": 0.0}],
}

TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("vqav2", "VQAv2", tasks.VQAV2, "exact_match", 1.0, include="vqav2/vqav2_val.yaml"),
    TaskSpec(
        "gqa", "GQA", tasks.GQA, "exact_match", 1.0, include="gqa/gqa.yaml",
        overrides={"dataset_name": None, "process_docs": None},
    ),
    TaskSpec("vizwiz", "VizWiz-VQA", tasks.VIZWIZ, "exact_match", 1.0, include="vizwiz_vqa/vizwiz_vqa_val.yaml"),
    TaskSpec(
        "textvqa", "TextVQA", tasks.TEXTVQA, "exact_match", 1.0, include="textvqa/textvqa_val.yaml",
        overrides={"metric_list": _VQA_EXACT},
    ),
    TaskSpec(
        "scienceqa", "ScienceQA-IMG", tasks_mc.SCIENCEQA, "exact_match", 1.0, include="scienceqa/scienceqa_img.yaml",
        overrides={"dataset_name": None},
    ),
    TaskSpec("seed", "SEED-Bench (image)", tasks_mc.SEED, "seed_image", 1.0, include="seedbench/seedbench.yaml"),
    TaskSpec("mme", "MME", tasks.MME, "mme_perception_score", 1000.0, include="mme/mme.yaml"),
    TaskSpec("pope", "POPE", tasks.POPE, "pope_f1_score", 1.0, include="pope/pope.yaml"),
    TaskSpec("mmbench", "MMBench-EN (dev)", tasks_mc.MMBENCH_EN, "circular_accuracy", 1.0, own_config=_mmbench_config("en")),
    TaskSpec(
        "mmbench_cn", "MMBench-CN (dev)", tasks_mc.MMBENCH_CN, "circular_accuracy", 1.0,
        own_config=_mmbench_config("zh"), rng_key="mmbench",
    ),
    TaskSpec("ai2d", "AI2D", tasks_mc.AI2D, "exact_match", 1.0, include="ai2d/ai2d.yaml", overrides={"tag": []}),
    TaskSpec("chartqa", "ChartQA", tasks.CHARTQA, "relaxed_overall", 1.0, include="chartqa/chartqa.yaml"),
    TaskSpec(
        "ocrbench", "OCRBench", tasks.OCRBENCH, "ocrbench_accuracy", 1.0, include="ocrbench/ocrbench.yaml",
        overrides={"tag": [], "metric_list": _OCR_METRICS},
    ),
    TaskSpec("easyvqa", "easy-vqa (third-party data)", easyvqa.EASYVQA, "exact_match", 1.0, own_config=_EASYVQA_CONFIG, in_group=False),
)  # fmt: skip

GROUP = "tinyworld"
"""lmms-eval group of the thirteen paper-shaped tasks (test splits)."""
VAL_SUFFIX = "_val"
"""`tinyworld_<key>_val` evaluates the validation split (group `tinyworld_val`): for searches and
calibration that must not touch the test split."""


def spec(key_or_name: str) -> TaskSpec:
    """Look a task up by key (`pope`) or lmms-eval name (`tinyworld_pope`)."""
    for t in TASKS:
        if key_or_name in (t.key, t.name):
            return t
    known = ", ".join(t.key for t in TASKS)
    raise ReproError(f"unknown tinyworld task {key_or_name!r}; known: {known}")


def task_names(*, split: str = "test", group_only: bool = False) -> list[str]:
    """lmms-eval task names of the suite (`split="validation"` gives the `_val` variants)."""
    suffix = VAL_SUFFIX if split == "validation" else ""
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', not {split!r}")
    return [t.name + suffix for t in TASKS if t.in_group or not group_only]
