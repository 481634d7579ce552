"""PDrop, SparseVLM, FitPrune and DART: hand-built cases with known answers (ties included), the
engine's merged tokens, and bad input. The registry-wide contract is test_method_contract.py."""

from __future__ import annotations

import pytest
import torch

import repro
from baselines import dart, fitprune, pdrop, sparsevlm
from repro.engine import Merge, Sequence
from repro.errors import ReproError
from repro.methods.base import top_indices

from conftest import make_image


class FakeProbe:
    """Stands in for a Probe: fixed attention rows over the active keys, fixed hidden states."""

    def __init__(self, rows, active, hidden=None, expect_reduce="mean"):
        self.rows, self.active, self.hidden_states = rows, active, hidden
        self.expect_reduce = expect_reduce
        self.cost = type("Cost", (), {"flops": 0})()

    def attention_rows(self, queries, keys=None, reduce="mean"):
        assert reduce == self.expect_reduce
        return self.rows


def fake_sequence(n_prefix, n_visual, n_text, dim=4):
    n = n_prefix + n_visual + n_text
    return Sequence(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), torch.arange(n),
                    torch.arange(n_prefix, n_prefix + n_visual), torch.zeros(n, dtype=torch.long))


# ------------------------------------------------------------------------------ PDrop

def test_pdrop_stage_counts_of_the_official_setting():
    counts = pdrop.stage_counts(576, 0.5, 3)
    assert counts == [576, 288, 144, 72]
    per_layer = pdrop.per_layer_counts(32, (8, 16, 24), counts)
    assert [per_layer[i] for i in (0, 8, 16, 24)] == counts and len(per_layer) == 32


def test_pdrop_card_average_with_early_boundaries():
    counts = pdrop.stage_counts(576, 0.19, 3)
    assert counts == [576, 109, 20, 3]
    assert sum(pdrop.per_layer_counts(32, (2, 8, 16), counts)) / 32 == pytest.approx(62.94, abs=0.01)


def test_pdrop_ranks_survivors_at_each_boundary_ties_to_the_earlier_token():
    seq = fake_sequence(2, 4, 2)  # visual at 2..5, text 6..7
    planner = pdrop.PDropPlanner(seq, (1, 2), [4, 2, 1], inverse=False, renumber=True)
    assert planner.layer_ops(0, None).attention is None
    everyone = torch.arange(8)
    ops = planner.layer_ops(1, FakeProbe(torch.tensor([[0, 0, .1, .5, .5, .2, 0, 0]]), everyone))
    assert ops.attention.tolist() == [0, 1, 3, 4, 6, 7]  # offsets 1 and 2 tie at 0.5: both kept
    ops = planner.layer_ops(2, FakeProbe(torch.tensor([[0, 0, .3, .3, 0, 0]]), ops.attention))
    assert ops.attention.tolist() == [0, 1, 3, 6, 7]  # tie between 3 and 4: the earlier stays
    assert planner.layer_ops(3, None).attention.tolist() == [0, 1, 3, 6, 7]


def test_pdrop_probe_uses_the_next_layers_projections(tiny_models):
    """The boundary's probe is layer b's: moving the boundary by one layer changes the kept set."""
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    image = make_image(3, (300, 200))
    a = model.generate(image, "What?", method=repro.method("pdrop", layers=(1, 3), lam=0.5), max_new_tokens=1)
    b = model.generate(image, "What?", method=repro.method("pdrop", layers=(2, 3), lam=0.5), max_new_tokens=1)
    assert [r.visual_queries for r in a.stats.layers] == [64, 32, 32, 16]
    assert [r.visual_queries for r in b.stats.layers] == [64, 64, 32, 16]


# ------------------------------------------------------------------------------ DART

def test_dart_count_is_four_plus_eight_floor_t_over_eight():
    for t in range(1, 201):
        assert dart.dart_count(576, t, 4, 8) == 4 + 8 * (t // 8)
    assert [dart.dart_count(2880, t, 4, 8, next_mode=True) for t in (640, 320, 160)] == [644, 324, 164]
    assert dart.dart_count(40, 400, 4, 8, next_mode=True) == 40  # NeXT: T' = min(T, N - 4)
    assert dart.dart_count(64, 64, 4, 8) == 64  # the full budget keeps every token


def test_dart_image_pivots_are_the_largest_key_norms():
    visual, text = torch.arange(6), torch.arange(6, 8)
    norms = torch.tensor([3., 9, 1, 7, 5, 2, 0, 0])
    kept = dart.dart_select(norms, torch.eye(8), visual, text, quota=0, n_text_pivots=0)
    assert kept.tolist() == [0, 1, 3, 4]  # the card's {1, 3, 4, 0}
    tied = dart.dart_select(torch.ones(8), torch.eye(8), visual, text, quota=0, n_text_pivots=0)
    assert tied.tolist() == [0, 1, 2, 3]  # equal norms: the earlier tokens


def test_dart_never_picks_duplicates_of_a_pivot():
    visual, text = torch.arange(30), torch.arange(30, 32)
    states = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    states[10:20] = states[0]  # copies of the pivot
    norms = torch.zeros(32)
    norms[0] = 10
    kept = dart.dart_select(norms, states, visual, text, quota=10, n_image_pivots=1, n_text_pivots=0)
    assert kept.numel() == 11 and 0 in kept.tolist()
    assert not set(range(10, 20)) & set(kept.tolist())


def test_dart_pivot_order_is_python_set_order_and_it_matters():
    """Pivots 3 (image) and 9 (text): a Python set iterates {9, 3}, sorted is [3, 9]; both pivots'
    least similar token is 1, so whoever goes first takes it."""
    assert dart.pivot_order([3, 9], "python_set") == list({3, 9}) == [9, 3]
    visual, text = torch.arange(1, 6), torch.arange(6, 10)
    states = torch.zeros(10, 2)
    states[3], states[9] = torch.tensor([1., 0]), torch.tensor([0., 1])
    states[1], states[2], states[4], states[5] = (torch.tensor(v) for v in ([-1., -1], [-1., 2], [2., -1], [1., 1]))
    norms = torch.zeros(10)
    norms[3], norms[9] = 5, 5
    select = lambda order: dart.dart_select(norms, states, visual, text, quota=1, n_image_pivots=1,  # noqa: E731
                                            n_text_pivots=1, order=order).tolist()
    assert select("python_set") == [1, 2, 3] and select("sorted") == [1, 3, 4]


# ------------------------------------------------------------------------------ SparseVLM

def test_sparsevlm_raters_card_example():
    raters = sparsevlm.choose_raters(torch.tensor([[1., 0], [0, 1]]), torch.tensor([[2., 0], [0, 0], [0, 2]]))
    assert raters.tolist() == [0, 2]


def test_sparsevlm_schedule_and_recycling_counts():
    assert sparsevlm.stage_keeps(576, 192) == (300, 200, 110)
    counts = sparsevlm.visual_counts(576, sparsevlm.stage_keeps(576, 192))
    assert counts == [309, 204, 113]
    assert sparsevlm.per_layer_visual(32, (2, 6, 15), counts, 576) == [576] * 3 + [309] * 4 + [204] * 9 + [113] * 16
    assert sparsevlm.recycled(510) == (154, 16)
    assert sparsevlm.stage_keeps(2880, 640) == (1515, 550, 180)  # NeXT: 5 x the "128" row
    assert sparsevlm.stage_keeps(2880, 160) == (165, 75, 42)  # half of the scaled "64" row
    assert sparsevlm.stage_keeps(576, 576) is None  # the full budget prunes nothing


def test_sparsevlm_clusters_two_separated_groups_into_their_means():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 8, generator=g) * 0.01 + 5
    b = torch.randn(5, 8, generator=g) * 0.01 - 5
    x = torch.cat([a, b])[torch.randperm(10, generator=g)]
    assign = sparsevlm.dpc_knn(x, 2, torch.Generator().manual_seed(0))
    merged = sparsevlm.merge_clusters(x, assign, 2)
    means = sorted([a.mean(0), b.mean(0)], key=lambda m: float(m[0]))
    got = sorted(merged, key=lambda m: float(m[0]))
    assert all(torch.allclose(g_, m, atol=1e-6) for g_, m in zip(got, means))


def test_sparsevlm_planner_keeps_top_raters_and_merges_after_the_span():
    seq = fake_sequence(1, 6, 3)  # visual 1..6, text 7..9
    planner = sparsevlm.SparseVLMPlanner(seq, (0,), (2,), recycle=True, seed=0, inverse=False)
    planner.raters = torch.tensor([8, 9])
    rows = torch.tensor([[0, .1, .4, .4, .0, .2, .3, 0, 0, 0], [0, .1, .4, .4, .0, .2, .3, 0, 0, 0]])
    ops = planner.layer_ops(0, FakeProbe(rows, torch.arange(10)))
    assert ops.attention is None  # the sparse layer itself runs every token
    hidden = torch.arange(40.).view(10, 4)
    merge = planner.merge_after(0, FakeProbe(None, torch.arange(10), hidden))
    # offsets 1 and 2 tie at 0.4: both kept; 4 removed -> int(1.2) + 1 = 2 candidates (scores .3, .2) -> 1 cluster
    assert merge.at == 7 and merge.size == 1
    assert torch.equal(merge.states[0], hidden[[6, 5]].mean(0))
    assert planner.visual.tolist() == [2, 3, 7] and planner.raters.tolist() == [9, 10]
    assert planner.layer_ops(1, None).attention.tolist() == [0, 2, 3, 7, 8, 9, 10]


def test_engine_inserts_merged_tokens_as_visual_with_their_positions(tiny_models):
    """Through the engine: the records count recycled tokens as visual at the card's counts and
    decoding runs over the longer caches; Merge.remap shifts every index from `at` on."""
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    result = model.generate(make_image(3, (300, 200)), "What?", method=repro.method("sparsevlm", "tokens:20"),
                            max_new_tokens=3)
    counts = sparsevlm.visual_counts(64, sparsevlm.stage_keeps(64, 20))
    assert [r.visual_queries for r in result.stats.layers] == sparsevlm.per_layer_visual(4, (0, 1, 2), counts, 64)
    assert counts[0] > sparsevlm.stage_keeps(64, 20)[0]  # recycled tokens took part
    merge = Merge(5, torch.zeros(2, 4), torch.tensor([4, 4]))
    assert merge.remap(torch.tensor([0, 4, 5, 9])).tolist() == [0, 4, 7, 11]


def test_sparsevlm_v2_divides_by_the_rope_pattern_and_averages_the_top_heads():
    probs = torch.tensor([[[.1, .2, .3]], [[.3, .3, .3]], [[.5, .1, .1]]])  # (heads, raters, visual)
    rope = torch.tensor([[1., 2., 1.]])
    # corrected: head 0 [.1 .1 .3] (sum .5), head 1 [.3 .15 .3] (.75), head 2 [.5 .05 .1] (.65)
    assert torch.allclose(sparsevlm.v2_scores(probs, rope, n_heads=2), torch.tensor([.4, .1, .2]))
    # heads with equal sums: the earlier one is taken
    tied = torch.tensor([[[.2, .2]], [[.1, .3]], [[.4, .0]]])
    assert torch.allclose(sparsevlm.v2_scores(tied, torch.ones(1, 2), n_heads=1), torch.tensor([.2, .2]))
    assert sparsevlm.stage_keeps(576, 192, sparsevlm.SCHEDULES_V2) == (300, 200, 118)
    assert sparsevlm.visual_counts(576, (300, 200, 118), recycle=False) == [300, 200, 118]


def test_rope_pattern_is_the_rotated_ones_product(tiny_models):
    """2·Σ_i cos((m − n)·θ_i)/√d for 1-D RoPE: √d on the diagonal, a function of m − n only."""
    from repro.engine.probes import Probe

    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    dec = model.engine.decoder
    n = 12
    probe = Probe(dec, 1, torch.zeros(n, model.card.hidden), torch.arange(n), torch.arange(n), torch.arange(2, 8))
    pattern = probe.rope_pattern(torch.arange(8, 12), torch.arange(2, 8))
    d = dec.attention(1).head_dim
    distance = (torch.arange(8, 12)[:, None] - torch.arange(2, 8)[None, :]).float()
    expected = 2 * torch.cos(distance[..., None] * dec.rotary_emb.inv_freq.float()).sum(-1) / d ** 0.5
    assert torch.allclose(pattern, expected, atol=1e-5)
    assert torch.allclose(probe.rope_pattern(torch.arange(3), torch.arange(3)).diagonal(), torch.full((3,), d ** 0.5))


def test_sparsevlm_v2_keeps_original_positions_and_its_own_counts(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    result = model.generate(make_image(2, (300, 200)), "What colour is the square?",
                            method=repro.method("sparsevlm", "tokens:20", version="2.0"), max_new_tokens=1)
    counts = sparsevlm.visual_counts(64, sparsevlm.stage_keeps(64, 20, sparsevlm.SCHEDULES_V2), recycle=False)
    assert [r.visual_queries for r in result.stats.layers] == sparsevlm.per_layer_visual(4, (0, 1, 2), counts, 64)


def test_dart_pivots_enter_the_set_in_rank_order_as_the_reference():
    """The reference builds its pivot set from `topk` lists (rank order); when two pivots share a
    hash slot, that insertion order decides the set's iteration order and so which pivot picks
    first. The expected set is what the official `get_retained_image_token` (VTC-Bench @ 983e443)
    returned on these tensors; entering the pivots in position order instead keeps token 2, not 14."""
    g = torch.Generator().manual_seed(12)
    keys, states = torch.randn(1, 2, 47, 4, generator=g), torch.randn(1, 47, 8, generator=g)
    norms = keys[0].permute(1, 0, 2).reshape(47, -1).abs().sum(-1)
    kept = dart.dart_select(norms, states[0], torch.arange(1, 41), torch.arange(41, 47), 2)
    assert kept.tolist() == [3, 6, 11, 12, 14, 15, 17, 18, 20, 22, 23, 25, 26, 27, 29, 31, 34, 37, 38, 40]


# ------------------------------------------------------------------------------ FitPrune

def test_fitprune_card_hand_example_deletes_the_lowest_product():
    visual_rows = torch.tensor([[.5, .1, .1], [.2, .3, .1], [.1, .1, .4]])
    text_rows = torch.tensor([[.1, .3, .2], [.2, .1, .1]])
    scores = fitprune.fitprune_scores(torch.cat([visual_rows, text_rows]), n_text=2)
    assert torch.allclose(scores * 3, torch.tensor([.24, .20, .18]))
    assert top_indices(scores, 1, inverse=True).tolist() == [2]


def test_fitprune_official_tables_replay():
    survivors = {r: 576 - sum(t) for r, t in fitprune.RECIPES.items()}
    assert survivors[90] == 37 and survivors[80] == 62 and survivors[60] == 127  # correction 1: 62, not 61
    attn, mlp = fitprune.visual_counts(list(fitprune.RECIPES[80]), 576)
    assert round(sum(attn) / 32, 1) == 130.6 and round(sum(mlp) / 32, 1) == 114.5
    assert all(fitprune.scaled_recipe(r, 32, 576) == list(t) for r, t in fitprune.RECIPES.items())


def test_fitprune_planner_uses_head_max_and_deletes_ties_earliest_first():
    seq = fake_sequence(1, 4, 2)  # visual 1..4, text 5..6
    planner = fitprune.FitPrunePlanner(seq, fitprune.RecipeRule([2, 0, 0]))
    flat = torch.full((6, 7), 0.1)  # every visual token scores the same
    ops = planner.layer_ops(0, FakeProbe(flat, torch.arange(7), expect_reduce="max"))
    assert ops.attention is None and ops.mlp.tolist() == [0, 3, 4, 5, 6]  # tokens 1 and 2 lose their MLP
    assert planner.layer_ops(1, None).attention.tolist() == [0, 3, 4, 5, 6]


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("name, options, message", [
    ("pdrop", {"colour": 1}, "bad options"),
    ("pdrop", {"lam": 1.5}, "lam must be"),
    ("sparsevlm", {"retain": 100}, "reference rows"),
    ("sparsevlm", {"version": "3.0"}, "version must be one of"),
    ("sparsevlm", {"version": "2.0", "recycle": True}, "no recycling"),
    ("fitprune", {"ratio": 65}, "official tables"),
    ("fitprune", {"recipe": "fitted"}, "needs a fit on this model"),
    ("dart", {"reduction_ratio": 2}, "reduction_ratio"),
    ("dart", {"pivot_order": "random"}, "pivot_order"),
    ("dart", {"k": 0}, "K >= 1"),
])
def test_bad_options_are_one_clear_error(name, options, message):
    with pytest.raises(ReproError, match=message):
        repro.method(name, **options)


@pytest.mark.parametrize("name, options, message", [
    ("pdrop", {"layers": (1, 8)}, r"outside \[1, 3\]"),
    ("pdrop", {"layers": (2, 1)}, "ascending"),
    ("sparsevlm", {"layers": (2, 6, 15)}, r"outside \[0, 2\]"),
    ("dart", {"k": 4}, "below the model's 4 layers"),
])
def test_stage_layers_beyond_the_models_depth_are_refused(tiny_models, name, options, message):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    with pytest.raises(ReproError, match=message):
        model.generate(make_image(0), "What?", method=repro.method(name, **options), max_new_tokens=1)


# ------------------------------------------------------------------------------ positions

@pytest.mark.parametrize("name, options, renumbered", [
    ("pdrop", {}, True), ("sparsevlm", {}, True), ("sparsevlm", {"version": "2.0"}, False), ("fitprune", {}, False),
    ("dart", {}, False)])
def test_decode_positions_follow_the_cards_position_rule(tiny_models, name, options, renumbered):
    """Renumbering methods decode each layer from its own cache length; the others from the
    unpruned prompt length (METHODS.md §1.2)."""
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    method = repro.method(name, "ratio:0.6", **options)
    prepared = model.prepare(make_image(3, (300, 200)), "What?")
    seq = model.assemble(prepared, model.encode(prepared), method.position_mode(model))
    out = model.engine.prefill(seq, method.planner(model, seq))
    expected = [r.keys for r in out.records] if renumbered else [seq.n_tokens] * model.card.layers
    assert [int(p) for p in out.cache.next_position] == expected


@pytest.mark.parametrize("name, budget", [("pdrop", "tokens:1"), ("fitprune", "ratio:0.05"), ("dart", "ratio:0.3"),
                                          ("sparsevlm", "ratio:0.05")])
def test_infeasible_budgets_are_infeasible_budget_errors(tiny_models, name, budget):
    """The runner records InfeasibleBudget samples as infeasible instead of failing the sweep."""
    from repro.errors import InfeasibleBudget

    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    with pytest.raises(InfeasibleBudget, match="infeasible"):
        model.generate(make_image(0), "What?", method=repro.method(name, budget), max_new_tokens=1)
