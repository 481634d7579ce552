"""DOP: policy execution, the additive estimate, the enumeration, artifacts and the search."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import repro
from repro import flops
from repro.calibration import Sample
from repro.errors import ReproError
from repro.methods.dop import Policy, SearchArtifact, SearchOptions, choose, policy_schedule, save_artifact, search
from repro.methods.dop.policy import flops_grid
from repro.methods.dop.search import additive_estimate, predicted_divergence

from conftest import TINY, make_image

QUESTION = "What colour is the small square?"


def synthetic_artifact(**fields) -> SearchArtifact:
    """A search artifact with the given fields (curves, shape, options, …) and placeholders elsewhere."""
    base = {"schema": SearchArtifact.schema, "version": SearchArtifact.version, "model": "synthetic", "layers": 4,
            "options": {}, "groups": ["visual"], "calibration": {"source": "", "samples": []},
            "shape": {"n_visual_max": 0, "n_other": 0.0, "n_layout": 0.0}, "curves": {},
            "reference_divergence": 0.0, "forward_passes": 0, "layer_passes": 0, "seconds": 0.0}
    return SearchArtifact.from_dict({**base, **fields})


def samples(n, size=(150, 90)):
    return [Sample(f"s{i}", [make_image(i, size)], QUESTION) for i in range(n)]


@pytest.fixture(scope="module")
def artifact(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    options = SearchOptions(reducer="uniform", depth_step=1, visual_points=5)
    return search(model, samples(3), ["ratio:0.8", "ratio:0.7"], options, source="test", progress=False)


# ------------------------------------------------------------------------------ execution

@pytest.mark.parametrize("name", TINY)
def test_full_policy_with_identity_reducer_reproduces_the_unpruned_model(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    image = make_image(3, (200, 120))
    plain = model.generate(image, QUESTION, max_new_tokens=6)
    n = model.encode(model.prepare(image, QUESTION)).patches.numel()
    L = model.card.layers
    for semantics in ("drop", "query_skip"):
        dop = repro.method("dop", policy=(n, L, L), reducer="uniform", mha_semantics=semantics)
        result = model.generate(image, QUESTION, method=dop, max_new_tokens=6)
        assert (result.first_token_logprobs - plain.first_token_logprobs).abs().max() < 1e-5
        assert result.tokens == plain.tokens
        # the visual MLP of the last layer is dead, so it is neither run nor counted
        assert result.stats.layers[-1].visual_mlp == 0 and result.stats.tflops["paper"] < plain.stats.tflops["paper"]


@pytest.mark.parametrize("semantics", ["drop", "query_skip"])
def test_policy_schedule_follows_the_depths(semantics):
    visual = torch.arange(2, 6)
    schedule = policy_schedule(Policy.single(4, 3, 5), 9, visual, None, 6, semantics)
    for layer, ops in enumerate(schedule.layers):
        attends = ops.attention is None or bool(torch.isin(visual, ops.attention).all())
        assert attends == (layer < 3)
        runs_mlp = ops.mlp is None or bool(torch.isin(visual, ops.mlp).all())
        bound = 3 if semantics == "query_skip" else 2  # D_P clamped to what reaches the output
        assert runs_mlp == (layer < bound)
        keeps_kv = ops.kv_only is not None and torch.equal(ops.kv_only, visual)
        assert keeps_kv == (semantics == "query_skip" and layer >= 3)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("policy, semantics", [((20, 2, 1), "drop"), ((12, 3, 1), "query_skip"), ((30, 1, 0), "drop")])
def test_policy_flops_equal_flopcounter(tiny_models, name, policy, semantics):
    model = tiny_models[name]["eager"]
    dop = repro.method("dop", policy=policy, reducer="uniform", mha_semantics=semantics)
    prepared = model.prepare(make_image(1, (300, 200)), QUESTION)
    seq = model.assemble(prepared, dop.reduce(model, prepared, model.encode(prepared)), dop.position_mode(model))
    with FlopCounterMode(display=False) as counter:
        out = model.engine.prefill(seq, dop.planner(model, seq))
    layers = [flops.LayerTokens(r.queries, r.keys, r.mlp) for r in out.records]
    assert counter.get_total_flops() == flops.prefill_flops(model.card, layers, "exact", lm_head_tokens=1)


def test_flops_grid_matches_the_engine_records(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    prepared = model.prepare(make_image(0), QUESTION)
    visual = model.encode(prepared)
    L = model.card.layers
    for n_v, a, p, semantics in [(64, 4, 4, "drop"), (40, 2, 3, "drop"), (17, 3, 1, "query_skip"), (0, 0, 0, "drop")]:
        dop = repro.method("dop", policy=(n_v, a, p), reducer="uniform", mha_semantics=semantics)
        result = model.generate(make_image(0), QUESTION, method=dop, max_new_tokens=1)
        n_other = result.stats.n_tokens - result.stats.visual_tokens
        grid = flops_grid(model.card, n_other, np.arange(len(visual) + 1), "paper", semantics)
        assert grid[n_v, a, p] / 1e12 == pytest.approx(result.stats.tflops["paper"], rel=1e-12)
        assert L == model.card.layers


def test_transfer_rescales_depths():
    assert Policy.single(100, 16, 8).rescaled(32, 28) == Policy.single(100, 14, 7)
    assert Policy.single(100, 32, 32).rescaled(32, 40) == Policy.single(100, 40, 40)


# ------------------------------------------------------------------------------ search

def test_additive_estimate_equals_the_sum_of_measured_curve_values(artifact):
    estimate = additive_estimate(artifact)
    curves, d0 = artifact.curves, artifact.reference_divergence
    for (i, n), (j, a), (k, p) in itertools.product(*(enumerate(curves[c].points) for c in curves)):
        measured = curves["n_visual"].values[i] + curves["attention_depth"].values[j] \
            + curves["mlp_depth"].values[k] - 2 * d0
        assert estimate[n, a, p] == pytest.approx(measured, abs=1e-12)
    assert d0 == pytest.approx(0.0, abs=1e-9)  # identity reducer at full budget: the unpruned model


def test_enumeration_returns_the_brute_force_argmin(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    rng = np.random.default_rng(0)
    L, n_max = model.card.layers, 12
    art = synthetic_artifact(
        layers=L, options={"interpolation": "linear", "mha_semantics": "drop"},
        shape={"n_visual_max": n_max, "n_other": 30.0, "n_layout": 0.0}, reference_divergence=0.0,
        curves={"n_visual": {"points": list(range(n_max + 1)), "values": rng.random(n_max + 1).tolist()},
                "attention_depth": {"points": list(range(L + 1)), "values": rng.random(L + 1).tolist()},
                "mlp_depth": {"points": list(range(L + 1)), "values": rng.random(L + 1).tolist()}})
    d_v, d_a, d_p, _ = predicted_divergence(art)
    unpruned = flops.unpruned_prefill_flops(model.card, 30 + n_max, "paper")
    for ratio in (0.95, 0.85, 0.75):
        best = None
        for n, a, p in itertools.product(range(n_max + 1), range(L + 1), range(L + 1)):
            if p > max(a - 1, 0):
                continue
            layers = [flops.LayerTokens(30 + n * (l < a), 30 + n * (l < a), 30 + n * (l < p)) for l in range(L)]
            if flops.prefill_flops(model.card, layers, "paper") <= ratio * unpruned:
                score = d_v[n] + d_a[a] + d_p[p]
                if best is None or score < best[0]:
                    best = (score, n, a, p)
        got = choose(art, model.card, f"ratio:{ratio}")
        assert got.predicted_divergence == pytest.approx(best[0])
        assert got.policy == Policy.single(*best[1:])


def test_resuming_from_the_reference_prefix_is_exact(tiny_models):
    model = tiny_models["tiny-llava-next"]["sdpa"]
    prepared = model.prepare(make_image(2), QUESTION)
    seq = model.assemble(prepared, model.encode(prepared))
    L = model.card.layers
    reference = model.engine.prefill(seq, capture={1, 2})
    for a, p in [(2, 1), (3, 2), (4, 2)]:
        schedule = policy_schedule(Policy.single(10**6, a, p), seq.n_tokens, seq.visual, None, L)
        start = min(a, min(p, max(a - 1, 0)))
        full = model.engine.prefill(seq, schedule)
        resumed = model.engine.prefill(seq, schedule, resume=repro.engine.Prefix(start, reference.captured[start]))
        assert (full.logits - resumed.logits).abs().max() < 1e-5 and resumed.cache is None


def test_search_artifact_records_everything_and_drives_evaluation(tiny_models, artifact, tmp_path):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    assert artifact.calibration.samples == ("s0", "s1", "s2") and artifact.calibration.source == "test"
    assert SearchArtifact.from_dict(json.loads(json.dumps(artifact.to_dict()))) == artifact
    # prefix resumption: the depth sweeps ran fewer layers than whole passes would
    assert artifact.layer_passes < artifact.forward_passes * model.card.layers
    for chosen in artifact.budgets:
        ratio = float(chosen.budget.split(":")[1])
        assert chosen.ratio <= ratio
    path = save_artifact(artifact, tmp_path / "dop.json")
    dop = repro.method("dop", budget="ratio:0.8", artifact=path)
    assert dop.policy_for(model) == artifact.budgets[0].policy
    result = model.generate(make_image(0), QUESTION, method=dop, max_new_tokens=2)
    assert result.stats.tflops["paper"] > 0
    # a budget the search did not list is solved analytically from the curves
    assert repro.method("dop", budget="ratio:0.75", artifact=path).policy_for(model).n_visual >= 0


def test_mismatched_artifacts_and_infeasible_budgets_are_refused(tiny_models, artifact, tmp_path):
    path = save_artifact(artifact, tmp_path / "dop.json")
    other = tiny_models["tiny-llava-next"]["sdpa"]
    with pytest.raises(ReproError, match="searched on 'tiny-llava-1.5'"):
        other.generate(make_image(0), QUESTION, method=repro.method("dop", budget="ratio:0.8", artifact=path))
    with pytest.raises(ReproError, match="no DOP policy meets"):
        repro.method("dop", budget="ratio:0.01", artifact=path).policy_for(tiny_models["tiny-llava-1.5"]["sdpa"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReproError, match="corrupt"):
        repro.method("dop", budget="ratio:0.8", artifact=tmp_path / "bad.json")
    with pytest.raises(ReproError, match="exactly one of"):
        repro.method("dop", budget="ratio:0.8")
    transferred = repro.method("dop", budget="ratio:0.8", artifact=path, transfer=True).policy_for(other)
    assert transferred.depths == artifact.budgets[0].policy.depths  # both have 4 layers


def test_proxy_analysis_and_curves_write_csv_and_png(tiny_models, artifact, tmp_path):
    from repro.methods.dop import analyses

    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    policies = analyses.random_feasible_policies(artifact, model.card, 12, seed=1)
    assert len(set(policies)) == 12
    result = analyses.proxy_vs_truth(model, artifact, samples(3), n_policies=12, seed=1)
    assert len(result["rows"]) == 12 and -1 <= result["spearman_rho"] <= 1
    for row in result["rows"]:  # the proxy of a sampled point is what the curves say there
        assert row["true"] >= 0
    paths = analyses.write_proxy_analysis(result, tmp_path, "proxy") + analyses.write_curves(artifact, tmp_path, "curves")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "curves.csv").read_text().count("\n") == 1 + sum(len(c.points) for c in artifact.curves.values())


@pytest.mark.parametrize("reducer", ["vispruner", "divprune"])
def test_n_v_counts_every_image_whatever_the_reducers_knob(tiny_models, reducer):
    """DOP's n_v is the sample's total, while VisPruner's tokens:N is per image and DivPrune's is
    one pool: on two images both reducers give n_v tokens in all, and a ratio budget is met."""
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    images, question = [make_image(1), make_image(2)], "What colour is the square?"
    prepared = model.prepare(images, question)
    visual = model.encode(prepared)
    assert visual.patches.numel() == 128
    kept = repro.method("dop", policy=(20, 4, 4), reducer=reducer).reduce(model, prepared, visual)
    assert kept.patches.numel() == 20
    full = model.generate(images, question, max_new_tokens=1).stats.tflops["paper"]
    got = model.generate(images, question, method=repro.method("dop", "ratio:0.5", policy=(20, 4, 4), reducer=reducer),
                         max_new_tokens=1).stats
    assert got.tflops["paper"] <= 0.5 * full * (1 + 1e-12) and got.visual_tokens >= 60
