"""DOP studies: search time and quality vs calibration samples, and policy transfer across depths."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import repro
from repro.calibration import Sample
from repro.cli import main
from repro.methods.dop import Policy, SearchOptions, search
from repro.methods.dop import studies
from repro.methods.dop.search import policy_flops

from conftest import make_image

QUESTION = "What colour is the small square?"
BUDGETS = ["ratio:0.8", "ratio:0.6"]


def samples(n, size=(150, 90)):
    return [Sample(f"s{i}", [make_image(i, size)], QUESTION) for i in range(n)]


def true_kl(model, policy: Policy, heldout, options: SearchOptions) -> float:
    """The joint divergence through the public method path (generate), not the search's runner."""
    dop = repro.method("dop", policy=policy, reducer=options.reducer)
    kls = []
    for s in heldout:
        p = model.generate(s.images, s.question, max_new_tokens=1).first_token_logprobs
        q = model.generate(s.images, s.question, method=dop, max_new_tokens=1).first_token_logprobs
        kls.append(float((p.exp() * (p - q)).sum()))
    return float(np.mean(kls))


@pytest.fixture(scope="module")
def deep():
    return repro.load("tiny-llava-1.5-deep")


def test_samples_study_times_each_search_and_scores_the_chosen_policy_on_held_out_samples(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    options = SearchOptions(reducer="uniform", depth_step=1, visual_points=5)
    pool = samples(6)
    rows = studies.samples_study(model, pool, [2, 4], 2, BUDGETS, options)
    assert [(r["samples"], r["budget"]) for r in rows] == [(2, BUDGETS[0]), (2, BUDGETS[1]), (4, BUDGETS[0]),
                                                            (4, BUDGETS[1])]
    passes = {r["samples"]: r["forward_passes"] for r in rows}
    assert passes[4] == 2 * passes[2]  # a search costs the same passes per calibration sample
    assert all(r["seconds"] > 0 and r["ratio"] <= float(r["budget"].split(":")[1]) for r in rows)
    # each count is its own search on the first `count` samples
    again = search(model, pool[:2], BUDGETS, options, progress=False)
    assert [json.loads(r["policy"]) for r in rows[:2]] == [c.policy.as_dict() for c in again.budgets]
    for row in rows[::3]:  # held-out samples are the two after the calibration pool
        policy = Policy.from_dict(json.loads(row["policy"]))
        assert row["heldout_kl"] > 0
        assert row["heldout_kl"] == pytest.approx(true_kl(model, policy, pool[4:], options), rel=1e-4, abs=1e-7)
    L = model.card.layers
    for row in rows:  # the reducer alone: every layer, the most tokens within DOP's FLOPs ratio
        assert row["reducer_alone_ratio"] <= row["ratio"] + 1e-9
        alone = Policy.single(row["reducer_alone_n_visual"], L, L)
        assert row["reducer_alone_kl"] == pytest.approx(true_kl(model, alone, pool[4:], options), rel=1e-4, abs=1e-7)
    for row in rows[:2]:  # ... and one token more would not fit (`again` is the 2-sample search)
        cost, unpruned = policy_flops(again, model.card, Policy.single(row["reducer_alone_n_visual"] + 1, L, L))
        assert cost > row["ratio"] * unpruned


def test_transfer_rescales_the_source_policy_and_compares_with_the_direct_search(tiny_models, deep):
    source = tiny_models["tiny-llava-1.5"]["sdpa"]
    options = SearchOptions(reducer="vispruner", groups="reducer", depth_step=1, visual_points=5)
    pool = samples(4)
    rows = studies.transfer_study(source, deep, pool, 3, 1, BUDGETS, options)
    assert [(r["budget"], r["policy_kind"]) for r in rows] == [(b, k) for b in BUDGETS for k in ("transferred", "direct")]
    source_art = search(source, pool[:3], BUDGETS, options, progress=False)
    target_art = search(deep, pool[:3], BUDGETS, options, progress=False)
    for budget, s_choice, t_choice in zip(BUDGETS, source_art.budgets, target_art.budgets):
        transferred, direct = (r for r in rows if r["budget"] == budget)
        policy = s_choice.policy
        assert Policy.from_dict(json.loads(transferred["policy"])) == Policy(
            policy.n_visual, tuple((2 * a, 2 * p) for a, p in policy.depths))  # 4 -> 8 layers
        assert json.loads(direct["policy"]) == t_choice.policy.as_dict()
        assert direct["target_ratio"] == pytest.approx(t_choice.ratio)
        assert direct["heldout_kl"] >= 0 and transferred["heldout_kl"] >= 0
    with pytest.raises(repro.errors.ReproError, match="two different models"):
        studies.transfer_study(source, source, pool, 3, 1, BUDGETS, options)


def test_cli_analyze_transfer_writes_csv_and_png(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["analyze", "dop-transfer", "--model", "tiny-llava-1.5", "--target-model", "tiny-llava-1.5-deep",
                     "--calibration", "tinyworld:vqav2", "--samples", "2", "--heldout", "1", "--reducer", "uniform",
                     "--budgets", "ratio:0.7", "--out", str(tmp_path)])
    assert code == 0
    csv = (tmp_path / "dop-transfer-tiny-llava-1.5-to-tiny-llava-1.5-deep.csv").read_text().splitlines()
    assert csv[0].startswith("source,target,budget,policy_kind") and len(csv) == 3
    for suffix in (".png", ".pdf"):
        assert (tmp_path / f"dop-transfer-tiny-llava-1.5-to-tiny-llava-1.5-deep{suffix}").stat().st_size > 0
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["analyze", "dop-transfer", "--model", "tiny-llava-1.5"]) == 2
    assert "--target-model" in err.getvalue()
