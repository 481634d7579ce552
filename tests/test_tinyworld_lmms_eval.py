"""Tiny world through lmms-eval: the official metric code scores our data as intended.

An oracle model (answers from the doc's ground truth, looked up the way a real model gets its
doc) must score perfectly on every task, and a constant-answer model must score chance, computed
independently from the same docs. Both run through `simple_evaluate`, offline.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from repro import tinyworld as tw

LIMIT = 24  # whole MME/POPE pairs; 12 MME pairs cover each of its 6 categories twice
TASKS = [tw.GROUP, "tinyworld_easyvqa"]
CONSTANT = {
    "tinyworld_vqav2": "yes",
    "tinyworld_gqa": "yes",
    "tinyworld_vizwiz": "unanswerable",
    "tinyworld_textvqa": "0",
    "tinyworld_scienceqa": "A",
    "tinyworld_seed": "A",
    "tinyworld_mme": "Yes",
    "tinyworld_pope": "yes",
    "tinyworld_mmbench": "A",
    "tinyworld_mmbench_cn": "A",
    "tinyworld_ai2d": "A",
    "tinyworld_chartqa": "0",
    "tinyworld_ocrbench": "0",
    "tinyworld_easyvqa": "yes",
}
MAIN = {t.name: f"{t.main_metric},{'flexible-extract' if t.key == 'ai2d' else 'none'}" for t in tw.TASKS}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A small suite and an offline environment (HF cache in tmp) for the whole module."""
    root = tmp_path_factory.mktemp("tw_lmms")
    with pytest.MonkeyPatch.context() as mp:
        import datasets
        import huggingface_hub

        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_DATASETS_CACHE", str(root / "hf_datasets"))
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.chdir(root)  # nothing may be written into the working directory
        data = root / "data"
        tw.build(data, seed=0, sizes=tw.SplitSizes(train=2, validation=4, test=LIMIT))
        yield data, tw.task_manager(data)
        # nothing else in the working directory (the datasets cache appears only if `datasets`
        # was first imported after the env var was set, which depends on test order)
        assert {p.name for p in root.iterdir()} <= {"data", "hf_datasets"}


def _model(answer: Callable[[str, dict], str]):
    from lmms_eval.api.model import lmms

    class LookupModel(lmms):
        """Answers from the doc, fetched via task_dict exactly as a real simple model does."""

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[str, str, list]] = []

        def generate_until(self, requests):
            out = []
            for req in requests:
                context, _gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                doc = self.task_dict[task][split][doc_id]
                self.seen.append((task, context, [im.size for im in doc_to_visual(doc)]))
                out.append(answer(task, doc))
            return out

        def generate_until_multi_round(self, requests):
            return self.generate_until(requests)

        def loglikelihood(self, requests):
            raise NotImplementedError

    return LookupModel()


def _evaluate(model, tm, tasks=TASKS):
    from lmms_eval import evaluator

    out = evaluator.simple_evaluate(
        model=model, tasks=tasks, task_manager=tm, limit=LIMIT, batch_size=1, device="cpu", bootstrap_iters=0
    )
    return out["results"]


def test_oracle_scores_perfectly(suite):
    _, tm = suite
    model = _model(lambda task, doc: doc["target_text"])
    results = _evaluate(model, tm, TASKS + ["tinyworld_pope_val"])
    for spec in tw.TASKS:
        assert results[spec.name][MAIN[spec.name]] == pytest.approx(spec.full_score), spec.name
    r = results["tinyworld_mme"]
    assert r["mme_perception_score,none"] == 1000.0 and r["mme_cognition_score,none"] == 200.0
    assert results["tinyworld_pope"]["pope_accuracy,none"] == 1.0
    assert results["tinyworld_chartqa"]["relaxed_human_split,none"] == 1.0
    assert results["tinyworld_chartqa"]["relaxed_augmented_split,none"] == 1.0
    assert results["tinyworld_mmbench"]["accuracy,none"] == 1.0
    assert results["tinyworld_pope_val"]["pope_f1_score,none"] == 1.0
    # The official prompts (pre/post) and images reached the model.
    ctx = {task: context for task, context, _ in model.seen}
    assert ctx["tinyworld_pope"].endswith("\nAnswer the question using a single word or phrase.")
    assert "\nWhen the provided information is insufficient, respond with 'Unanswerable'." in ctx["tinyworld_vizwiz"]
    assert "There are several options:\nA. " in ctx["tinyworld_mmbench"]
    assert "有如下几个选项：\nA. " in ctx["tinyworld_mmbench_cn"]
    assert ctx["tinyworld_seed"].endswith("Answer with the option's letter from the given choices directly.")
    sizes = {task: s for task, _, s in model.seen}
    assert sizes["tinyworld_gqa"] == [(tw.IMAGE_SIZE, tw.IMAGE_SIZE)]
    assert sizes["tinyworld_easyvqa"] == [(64, 64)]


def _share(docs, value: str) -> float:
    return sum(d["target_text"].lower() == value.lower() for d in docs) / len(docs)


def test_constant_answers_score_chance(suite):
    data, tm = suite
    results = _evaluate(_model(lambda task, doc: CONSTANT[task]), tm)
    for spec in tw.TASKS:
        docs = tw.load_split(data, spec.key, "test").select(range(LIMIT))
        got = results[spec.name]
        if spec.key == "pope":
            assert got["pope_accuracy,none"] == 0.5 and got["pope_recall,none"] == 1.0
            assert got["pope_f1_score,none"] == pytest.approx(2 / 3)
        elif spec.key == "mme":  # acc 50 + acc+ 0 in each of the 5 perception categories
            assert got["mme_perception_score,none"] == 250.0 and got["mme_cognition_score,none"] == 50.0
        elif spec.key.startswith("mmbench"):  # circular evaluation defeats a constant letter
            assert got["circular_accuracy,none"] == 0.0
            assert got["accuracy,none"] == pytest.approx(_share(docs, "A"))
        else:
            expected = _share(docs, CONSTANT[spec.name])
            assert got[MAIN[spec.name]] == pytest.approx(expected), spec.name
            assert spec.key == "easyvqa" or expected < 0.6, spec.name  # easy-vqa: real, yes-heavy data
