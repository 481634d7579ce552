"""lmms-eval hooks (`doc_to_text`, `process_results`, aggregations) for the tiny tasks that have no
reusable official scorer: MMBench-shaped tasks (the official ones may call a GPT judge), easy-vqa,
and a mean-accuracy aggregation for OCRBench (the official one divides a process-global running
total by 1000, see the README).

`build` copies this file next to the generated task YAMLs as `tinyworld_utils.py`, so the YAMLs'
`!function tinyworld_utils.<name>` resolve without importing `repro`: the task folder then also
works with the plain `lmms-eval` CLI. Keep this module free of imports from `repro`.
"""

from __future__ import annotations

import re

from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

OPTION_LETTERS = ("A", "B", "C", "D")


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def normalize_answer(text: str) -> str:
    """Lower case, collapse spaces, drop surrounding punctuation ("Red." == "red")."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,!?;:'\"")


def exact_match_process_results(doc: dict, results: list[str]) -> dict:
    return {"exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}


# ------------------------------------------------------------------ MMBench-shaped tasks


def _options(doc: dict) -> dict[str, str]:
    return {k: doc[k] for k in OPTION_LETTERS if doc.get(k) not in (None, "", "nan")}


def mmbench_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """MMBench's prompt layout: '<hint> <question> <header>\\nA. ..\\nB. ..' then the post prompt."""
    kw = lmms_eval_specific_kwargs or {}
    header = kw.get("options_header", "There are several options:")
    options = "\n".join(f"{k}. {v}" for k, v in _options(doc).items())
    body = f"{doc['question']} {header}\n{options}"
    if doc.get("hint"):
        body = f"{doc['hint']} {body}"
    return f"{kw.get('pre_prompt', '')}{body}{kw.get('post_prompt', '')}"


def parse_choice(response: str, options: dict[str, str]) -> str:
    """The option letter a free-form response picks, or "" when none can be inferred.

    1. the response equals an option's text (case-insensitive) -> that letter;
    2. otherwise lmms-eval's own no-API extractor (`extract_mcq_answer`, used by MMBench's
       static evaluation) restricted to the letters this question offers.
    Step 1 comes first because the extractor's last-resort fallback would read "Blue" as "B".
    """
    norm = normalize_answer(response)
    by_text = [k for k, v in options.items() if normalize_answer(v) == norm]
    if len(by_text) == 1:
        return by_text[0]
    return extract_mcq_answer(response, choices=list(options))


def mmbench_process_results(doc: dict, results: list[str]) -> dict:
    pred = parse_choice(results[0], _options(doc))
    hit = float(pred == doc["answer"])
    return {
        "circular_accuracy": {"circular_id": doc["circular_id"], "index": doc["index"], "hit": hit},
        "accuracy": hit,
    }


def circular_accuracy(items: list[dict]) -> float:
    """A question counts as solved only if every rotation of its options was answered right
    (MMBench's CircularEval); rotations cut off by `--limit` are simply absent."""
    solved: dict[int, bool] = {}
    for it in items:
        solved[it["circular_id"]] = solved.get(it["circular_id"], True) and it["hit"] == 1.0
    return sum(solved.values()) / len(solved) if solved else 0.0


# ------------------------------------------------------------------ OCRBench-shaped task


def ocrbench_mean_accuracy(items: list[dict]) -> float:
    """Mean of the official per-sample OCRBench scores (the official aggregation returns
    total/1000 from a module-level counter, which is accuracy only for exactly 1000 samples)."""
    return sum(it["score"] for it in items) / len(items) if items else 0.0
