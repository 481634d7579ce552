"""lmms-eval hooks for the paper task set (copied next to the generated YAMLs as
`repro_paper_utils.py`, with the staged paths written into `STAGED` below; keep this module free
of imports from `repro` so the folder also works with the plain `lmms-eval` CLI).

* `mmbench_cn_aggregate_static`: MMBench-CN dev scored like lmms-eval's own
  `mmbench_en_dev_static` (CircularEval, answers parsed without any API call), see
  repro/eval/tasks.py for the parsing rules.
* `ocrbench_mean_accuracy`: mean of the official per-sample OCRBench scores (the official
  aggregation divides a process-global counter by 1000: right only for exactly one evaluation of
  exactly 1000 samples per process).
* `gqa_process_docs_local`: GQA's official `process_docs` joined the questions with the image set
  downloaded from the hub; this joins them with the staged image parquet files instead.
"""

from __future__ import annotations

STAGED: dict = {}  # filled in by repro.eval.tasks when the folder is written


def mmbench_cn_aggregate_static(results, args=None):
    from lmms_eval.tasks.mmbench.cn_utils import mmbench_evaluator

    overall_acc, _category_acc, _l2_category_acc = mmbench_evaluator.eval_result(results, eval_method="static")
    return overall_acc * 100


def mmbench_en_aggregate_static(results, args=None):
    """As lmms-eval's `mmbench_aggregate_dev_results_static`, without writing a results file."""
    from lmms_eval.tasks.mmbench.en_utils import mmbench_evaluator

    overall_acc, _category_acc, _l2_category_acc = mmbench_evaluator.eval_result(results, eval_method="static")
    return overall_acc * 100


def ocrbench_mean_accuracy(items):
    return sum(it["score"] for it in items) / len(items) if items else 0.0


def gqa_process_docs_local(dataset):
    """Attach the image of every question from the staged GQA image set (`id` -> `image`)."""
    if "image" in dataset.column_names:
        return dataset
    from datasets import Image, load_dataset

    images = load_dataset("parquet", data_files={"testdev": STAGED["gqa_images"]}, split="testdev")
    if not isinstance(images.features["image"], Image):  # parquet written without HF feature metadata
        images = images.cast_column("image", Image())
    wanted = set(dataset["imageId"])
    id2image = {row["id"]: row["image"] for row in images if row["id"] in wanted}
    missing = wanted - set(id2image)
    if missing:
        raise ValueError(f"staged GQA images lack {len(missing)} imageIds (e.g. {sorted(missing)[:3]})")
    return dataset.map(lambda doc: {"image": id2image[doc["imageId"]].convert("RGB")})
