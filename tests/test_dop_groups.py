"""DOP's per-group form (groups="reducer"): execution, FLOPs, the additive estimate, the enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import repro
from repro import flops
from repro.calibration import Sample
from repro.errors import ReproError
from repro.methods.dop import Policy, SearchOptions, choose, policy_schedule, save_artifact, search
from repro.methods.dop import grouped
from repro.methods.dop.policy import effective_mlp_depth, grouped_flops

from conftest import make_image
from test_dop import synthetic_artifact

QUESTION = "What colour is the small square?"
MODEL = "tiny-llava-next"  # VisPruner per crop, plus layout (newline) tokens in group 0


def samples(n, size=(150, 90)):
    return [Sample(f"s{i}", [make_image(i, size)], QUESTION) for i in range(n)]


@pytest.fixture(scope="module")
def artifact(tiny_models):
    options = SearchOptions(reducer="vispruner", groups="reducer", depth_step=1, visual_points=5)
    return search(tiny_models[MODEL]["sdpa"], samples(2), ["ratio:0.8", "ratio:0.6"], options, progress=False)


@pytest.mark.parametrize("semantics", ["drop", "query_skip"])
def test_each_group_follows_its_own_depths(semantics):
    visual, groups = torch.arange(2, 8), torch.tensor([0, 1, 0, 1, 1, 0])
    policy = Policy(6, ((3, 2), (1, 5)))
    schedule = policy_schedule(policy, 10, visual, groups, 5, semantics)
    for layer, ops in enumerate(schedule.layers):
        for g, (a, p) in enumerate(policy.depths):
            mine = visual[groups == g]
            attends = ops.attention is None or bool(torch.isin(mine, ops.attention).all())
            assert attends == (layer < a)
            assert not (ops.attention is not None and torch.isin(mine, ops.attention).any() and not attends)
            runs_mlp = ops.mlp is None or bool(torch.isin(mine, ops.mlp).all())
            assert runs_mlp == (layer < effective_mlp_depth(a, p, semantics, 5))
    with pytest.raises(ValueError, match="needs the visual tokens' groups"):
        policy_schedule(policy, 10, visual, None, 5, semantics)


def test_vispruner_tags_important_and_diverse_tokens(tiny_models):
    model = tiny_models[MODEL]["sdpa"]
    prepared = model.prepare(make_image(0, (150, 90)), QUESTION)
    visual = model.encode(prepared)
    # the unpadded variant, which DOP stacks on (its search models the newline tokens)
    reduced = repro.method("vispruner", "tokens:24", full_crops=False).reduce(model, prepared, visual)
    seq = model.assemble(prepared, reduced)
    assert seq.visual_groups is not None and seq.visual_groups.numel() == seq.visual.numel()
    layout = reduced.meta["kind"] == 1
    assert (reduced.meta["group"][layout] == 0).all()  # newline tokens count with group 0
    # crops of 16, 8, 8, 8, 8 patches share 24 as 5, 5, 5, 5, 4: int(share/2) important each (even residuals)
    assert int((reduced.meta["group"][~layout] == 0).sum()) == 10 and int((reduced.meta["group"] == 1).sum()) == 14
    scores = visual.signals.cls_attention()
    important = reduced.meta["index"][(reduced.meta["group"] == 0) & ~layout]
    for crop in torch.unique(visual.meta["crop"][visual.patches]):  # the important ones top their crop's scores
        mine = visual.patches[visual.meta["crop"][visual.patches] == crop]
        top = mine[torch.isin(visual.meta["index"][mine], important)]
        rest = mine[~torch.isin(visual.meta["index"][mine], important)]
        assert scores[top].min() >= scores[rest].max()
    # groups travel to the sequence in sequence order: a token's group is its meta group
    order = torch.argsort(reduced.meta["index"])
    assert torch.equal(seq.visual_groups, reduced.meta["group"][order])


@pytest.mark.parametrize("policy, semantics", [((24, (3, 1), (1, 0)), "drop"), ((36, (2, 2), (4, 3)), "query_skip"),
                                               ((48, (4, 4), (2, 1)), "drop")])
def test_grouped_flops_equal_the_engine_records(tiny_models, policy, semantics):
    model = tiny_models[MODEL]["sdpa"]
    dop = repro.method("dop", policy=policy, reducer="vispruner", mha_semantics=semantics)  # (n_v, (D_A, D_P), …)
    assert dop.policy == Policy(policy[0], policy[1:])
    image = make_image(1, (150, 90))
    result = model.generate(image, QUESTION, method=dop, max_new_tokens=1)
    prepared = model.prepare(image, QUESTION)
    seq = model.assemble(prepared, dop.reduce(model, prepared, model.encode(prepared)), dop.position_mode(model))
    counts = torch.bincount(seq.visual_groups, minlength=2).numpy()
    depths = np.array(policy[1:])
    cost = grouped_flops(model.card, seq.n_tokens - seq.visual.numel(), counts, depths[:, 0], depths[:, 1], "paper",
                         semantics)
    assert cost / 1e12 == pytest.approx(result.stats.tflops["paper"], rel=1e-12)
    # the visual tokens each layer's MLP ran are those of the groups below their D_P
    for layer, record in enumerate(result.stats.layers):
        expected = sum(int(c) for c, (a, p) in zip(counts, depths)
                       if layer < effective_mlp_depth(int(a), int(p), semantics, model.card.layers))
        assert record.visual_mlp == expected


def test_per_group_additive_estimate_equals_the_sum_of_measured_curve_values(artifact):
    curves, d0 = artifact.curves, artifact.reference_divergence
    names = grouped.parameter_names(artifact.groups)
    assert list(curves) == names and artifact.groups == ("important", "diverse")
    combos = list(itertools.product(*(enumerate(curves[n].points) for n in names)))
    policies = [Policy(c[0][1], ((c[1][1], c[2][1]), (c[3][1], c[4][1]))) for c in combos]
    estimate = grouped.estimate(artifact, policies)
    for combo, value in zip(combos, estimate):
        measured = sum(curves[n].values[i] for n, (i, _) in zip(names, combo)) - 4 * d0
        assert value == pytest.approx(measured, abs=1e-12)
    assert d0 == pytest.approx(0.0, abs=1e-9)  # VisPruner at full budget keeps every token
    assert np.ptp(estimate) > 0


def grouped_artifact(card, semantics, seed):
    rng = np.random.default_rng(seed)
    L, n_max = card.layers, 12
    depth = {"points": list(range(L + 1))}
    curves = {"n_visual": {"points": list(range(n_max + 1)), "values": rng.random(n_max + 1).tolist()}}
    for g in ("important", "diverse"):
        for p in grouped.DEPTH_PARAMETERS:
            curves[f"{p}.{g}"] = {**depth, "values": rng.random(L + 1).tolist()}
    return synthetic_artifact(layers=L, groups=["important", "diverse"],
                              options={"interpolation": "linear", "mha_semantics": semantics, "groups": "reducer"},
                              shape={"n_visual_max": n_max, "n_other": 30.0, "n_layout": 2.0,
                                     "group_tokens": {"points": [0, 6, 12], "counts": [[2, 0], [5, 3], [9, 5]]}},
                              reference_divergence=0.01, curves=curves)


@pytest.mark.parametrize("semantics", ["drop", "query_skip"])
def test_per_group_enumeration_returns_the_brute_force_argmin(tiny_models, semantics):
    card = tiny_models[MODEL]["sdpa"].card
    art = grouped_artifact(card, semantics, seed=3)
    L, n_max = card.layers, 12
    counts = grouped.group_counts(art)
    assert counts.sum(-1).tolist() == [n + 2 for n in range(n_max + 1)]
    d_v, d_a, d_p, d0 = grouped.curves(art)
    unpruned = flops.unpruned_prefill_flops(card, 30 + n_max + 2, "paper")
    for ratio in (0.95, 0.8, 0.7):
        best = None
        for n, a1, p1, a2, p2 in itertools.product(range(n_max + 1), *[range(L + 1)] * 4):
            pairs = ((a1, p1), (a2, p2))
            if any(p > effective_mlp_depth(a, L, semantics, L) for a, p in pairs):
                continue  # a D_P beyond its bound is the same policy as the bound
            layers = []
            for layer in range(L):
                q = 30 + sum(int(c) for c, (a, _) in zip(counts[n], pairs) if layer < a)
                k = 30 + int(counts[n].sum()) if semantics == "query_skip" else q
                m = 30 + sum(int(c) for c, (a, p) in zip(counts[n], pairs)
                             if layer < effective_mlp_depth(a, p, semantics, L))
                layers.append(flops.LayerTokens(q, k, m))
            if flops.prefill_flops(card, layers, "paper") <= ratio * unpruned:
                score = d_v[n] + d_a[0][a1] + d_p[0][p1] + d_a[1][a2] + d_p[1][p2] - 4 * d0
                if best is None or score < best[0]:
                    best = (score, Policy(n, pairs))
        got = choose(art, card, f"ratio:{ratio}")
        assert got.predicted_divergence == pytest.approx(best[0], abs=1e-12)
        assert got.policy == best[1]
        assert got.ratio <= ratio


def test_grouped_artifact_drives_evaluation(tiny_models, artifact, tmp_path):
    model = tiny_models[MODEL]["sdpa"]
    assert artifact.shape.group_tokens.counts[-1] == (28.0, 24.0)  # 48 patches + 4 newlines
    # θ₀'s sequence (VisPruner at n_max) is the full one, so depth sweeps resumed from the prefix
    assert artifact.layer_passes < artifact.forward_passes * model.card.layers
    path = save_artifact(artifact, tmp_path / "dop.json")
    for chosen in artifact.budgets:
        policy = chosen.policy
        assert len(policy.depths) == 2 and chosen.ratio <= float(chosen.budget.split(":")[1])
        dop = repro.method("dop", budget=chosen.budget, artifact=path, budget_mode="fixed")
        assert dop.policy_for(model) == policy
        result = model.generate(make_image(0, (150, 90)), QUESTION, method=dop, max_new_tokens=2)
        if policy.n_visual in artifact.shape.group_tokens.points:  # exact group sizes: exact FLOPs
            assert result.stats.tflops["paper"] == pytest.approx(chosen.tflops, rel=1e-12)
        # per sample (the default): n_v re-solved with the reducer's real group sizes, never over R
        for size, question in (((150, 90), QUESTION), ((90, 150), QUESTION + " Answer in one word, please.")):
            stats = model.generate(make_image(1, size), question, max_new_tokens=1,
                                   method=repro.method("dop", budget=chosen.budget, artifact=path)).stats
            assert stats.tflops["paper"] <= float(chosen.budget.split(":")[1]) * stats.unpruned_tflops * (1 + 1e-12)


def test_groups_need_a_reducer_with_groups(tiny_models):
    model = tiny_models[MODEL]["sdpa"]
    with pytest.raises(ReproError, match="defines no token groups"):
        search(model, samples(1), ["ratio:0.8"], SearchOptions(reducer="uniform", groups="reducer"), progress=False)
    dop = repro.method("dop", policy=Policy(20, ((2, 1), (3, 1))), reducer="uniform")
    with pytest.raises(ReproError, match="tags token groups"):
        model.generate(make_image(0), QUESTION, method=dop, max_new_tokens=1)


def test_proxy_analysis_and_curves_on_a_grouped_artifact(tiny_models, artifact, tmp_path):
    from repro.methods.dop import analyses

    model = tiny_models[MODEL]["sdpa"]
    policies = analyses.random_feasible_policies(artifact, model.card, 8, seed=2, max_ratio=0.9)
    assert len(set(policies)) == 8 and all(len(p.depths) == 2 for p in policies)
    assert all(search_policy_ratio(artifact, model.card, p) <= 0.9 for p in policies)
    result = analyses.proxy_vs_truth(model, artifact, samples(2), n_policies=8, seed=2)
    assert [r["proxy"] for r in result["rows"]] == pytest.approx(
        grouped.estimate(artifact, analyses.random_feasible_policies(artifact, model.card, 8, seed=2)).tolist())
    assert {"attention_depth.important", "mlp_depth.diverse"} <= set(result["rows"][0])
    paths = analyses.write_curves(artifact, tmp_path, "curves")
    assert (tmp_path / "curves.csv").read_text().count("\n") == 1 + sum(len(c.points) for c in artifact.curves.values())
    assert all(p.stat().st_size > 0 for p in paths)


def search_policy_ratio(artifact, card, policy):
    from repro.methods.dop.search import policy_flops

    cost, unpruned = policy_flops(artifact, card, policy)
    return cost / unpruned


def test_a_policy_that_moves_one_parameter_measures_its_curve_value(tiny_models, artifact):
    from repro.methods.dop.studies import HeldOut

    model = tiny_models[MODEL]["sdpa"]
    truth = HeldOut(model, samples(2), artifact.options)  # the calibration samples again
    L, curves = model.card.layers, artifact.curves
    cases = [(Policy(48, ((2, L), (L, L))), curves["attention_depth.important"].values[2]),
             (Policy(48, ((L, L), (L, 1))), curves["mlp_depth.diverse"].values[1]),
             (Policy(24, ((L, L), (L, L))), curves["n_visual"].values[2])]
    for policy, measured in cases:
        assert truth.divergence(policy) == pytest.approx(measured, rel=1e-4, abs=1e-9)
        assert measured > 0
