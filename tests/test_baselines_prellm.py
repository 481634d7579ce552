"""The pre-LLM baselines: DivPrune, VisionZip, PruMerge+, CDPruner, TRIM, Resize, and VisPruner's
official LLaVA-NeXT packing. Hand-built tensor cases (ties included) for every selection and
merge rule, merged features against a direct computation, and the methods on the tiny families."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import repro
from baselines.cdpruner import cdpruner_select, dpp_greedy, instruction_text, normalised_relevance
from baselines.divprune import divprune_select
from baselines.prumerge_plus import iqr_outliers, prumerge_plus_keep, prumerge_plus_merge
from baselines.resize import pool_grid
from baselines.trim import trim_keep, trim_merge, trim_scores
from baselines.visionzip import split_dominant, visionzip_crop
from repro import flops
from repro.errors import ReproError
from repro.models.adapter import PATCH, VisualTokens

from conftest import TINY, make_image

QUESTION = "What colour is the small square?\nAnswer the question using a single word or phrase."
IMAGE = (300, 200)
NEW = ["divprune", "visionzip", "prumerge_plus", "cdpruner", "trim", "resize"]
FIXED = {"prumerge_plus": {"mode": "fixed"}}


def unit(*angles):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles])


# ------------------------------------------------------------------------------ DivPrune

def test_divprune_card_example():
    """Unit vectors at 0°, 10°, 90°, 180°: first pick 3 (farthest from its nearest neighbour), then 0, then 2."""
    assert divprune_select(unit(0, 10, 90, 180), 3).tolist() == [0, 2, 3]
    assert divprune_select(unit(0, 10, 90, 180), 1).tolist() == [3]


def test_divprune_duplicates_never_repeat_and_ties_go_early():
    same = torch.ones(5, 4)
    assert divprune_select(same, 3).tolist() == [0, 1, 2]  # every distance 0: earliest first, no repeats
    assert divprune_select(unit(0, 0, 90, 90), 2).tolist() == [0, 2]


def test_divprune_bounds():
    x = torch.randn(6, 3)
    assert divprune_select(x, 6).tolist() == list(range(6))
    assert divprune_select(x, 0).numel() == 0


# ------------------------------------------------------------------------------ VisionZip

def test_visionzip_card_contextual_example():
    """|rest| = 10, C = 3: targets at rest positions {0, 3, 6}; contextual = target + mean(assigned)."""
    scores = torch.tensor([9.0, 8.0] + [0.0] * 10)  # tokens 0, 1 dominant; rest = tokens 2..11
    e0, e1, e2 = torch.eye(3)
    # rest positions:  0   1   2   3   4   5   6   7   8   9
    keys = torch.stack([e0, e0, e0, e0, e0, e1, e1, e2, e2, e2, e2, e2])
    keys[2:] = torch.stack([e0, e0, e0, e1, e1, e2, e2, e2, e2, e2])
    features = torch.randn(12, 5)
    z = visionzip_crop(scores, keys, features, n_dominant=2, n_contextual=3)
    F = features
    assert z.dominant.tolist() == [0, 1] and z.targets.tolist() == [2, 5, 8]
    expected = torch.stack([F[2] + (F[3] + F[4]) / 2, F[5] + F[6], F[8] + (F[7] + F[9] + F[10] + F[11]) / 4])
    assert torch.allclose(z.contextual, expected, atol=1e-6)


def test_visionzip_lonely_target_and_first_target_wins_ties():
    features = torch.randn(4, 3)
    # no dominant tokens; rest = 0..3, C = 2 -> step 2, targets 0 and 2
    lonely = visionzip_crop(torch.zeros(4), torch.tensor([[1.0, 0], [0, 1], [0, 1], [0, 1]]), features, 0, 2)
    assert lonely.targets.tolist() == [0, 2]
    assert torch.equal(lonely.contextual[0], features[0])  # nothing assigned: exactly its own feature
    assert torch.allclose(lonely.contextual[1], features[2] + (features[1] + features[3]) / 2, atol=1e-6)
    # token 1 at 45° to both targets: the first target takes it (the reference's first maximum)
    tie = visionzip_crop(torch.zeros(4), torch.tensor([[1.0, 0], [1, 1], [0, 1], [0, 1]]), features, 0, 2)
    assert torch.allclose(tie.contextual, torch.stack([features[0] + features[1], features[2] + features[3]]), atol=1e-6)


def test_visionzip_dominant_ties_go_early_and_split():
    z = visionzip_crop(torch.tensor([0.5, 0.9, 0.5, 0.5]), torch.eye(4), torch.randn(4, 2), 2, 0)
    assert z.dominant.tolist() == [0, 1]  # tie 0/2/3 at 0.5: the earliest
    assert [split_dominant(t) for t in (64, 128, 192, 32)] == [(54, 10), (108, 20), (162, 30), (27, 5)]


def test_visionzip_keys_are_averaged_over_heads():
    """Two heads of 2 dims: head-averaged keys decide the assignment, not the concatenation."""
    keys = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0.2], [0, 1, 0.1, 1]])
    features = torch.randn(4, 2)
    z = visionzip_crop(torch.zeros(4), keys, features, 0, 2, heads=2)  # targets 0, 2
    # token 1 averages to [0, 1] (far from both) -> the more similar is target 2 ([1, 0.1])
    # token 3 averages to [0.05, 1] -> also target 2
    assert torch.allclose(z.contextual[1], features[2] + (features[1] + features[3]) / 2, atol=1e-6)


# ------------------------------------------------------------------------------ PruMerge+

def test_prumerge_iqr_card_example_and_adaptive_keep():
    a = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 10])
    assert iqr_outliers(a) == 1
    # ratio 1/8 -> s = 8, stride int(8/3) = 2 over 0..6: 0, 2, 4, 6 appended after the pick 7
    assert prumerge_plus_keep(a).tolist() == [7, 0, 2, 4, 6]
    b = torch.tensor([1.0, 1, 1, 1, 1, 1, 10, 1])  # the pick sits on a strided position: not repeated
    assert prumerge_plus_keep(b).tolist() == [6, 0, 2, 4]


def test_prumerge_iqr_matches_numpy_and_no_outlier_fix():
    rng = np.random.RandomState(0)
    for _ in range(5):
        x = rng.gamma(0.5, size=37)
        q1, q3 = np.percentile(x, [25, 75])
        assert iqr_outliers(torch.tensor(x)) == int((x > q3 + 1.5 * (q3 - q1)).sum())
    flat = torch.ones(6)  # FIX: no outlier (the reference divides by zero) -> the top token, ties early
    assert prumerge_plus_keep(flat)[0].item() == 0


def test_prumerge_merge_card_example_and_extra_token():
    a = torch.tensor([0.5, 0.3, 0.2])
    keys = torch.tensor([[1.0, 0], [1, 0.1], [0, 1]])
    F = torch.randn(3, 4)
    merged, extra = prumerge_plus_merge(a, keys, F, torch.tensor([0]), neighbours=2)
    assert torch.allclose(merged[0], F[0] + 0.3 * F[1] + 0.2 * F[2], atol=1e-6)
    assert torch.allclose(extra, 0.3 * F[1] + 0.2 * F[2], atol=1e-6)
    # one neighbour: tokens 1 and 2 are exact duplicates in key space -> the earlier one
    keys = torch.tensor([[1.0, 0], [0, 1], [0, 1]])
    merged, _ = prumerge_plus_merge(a, keys, F, torch.tensor([0]), neighbours=1)
    assert torch.allclose(merged[0], F[0] + 0.3 * F[1], atol=1e-6)


def test_prumerge_fixed_mode_fills_by_stride_then_attention():
    a = torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 10])
    assert prumerge_plus_keep(a, 3).tolist() == [7, 0, 2]  # the outlier, then stride 8 // 3 = 2
    assert prumerge_plus_keep(a, 1).tolist() == [7]
    assert prumerge_plus_keep(a, 8).tolist()[:1] == [7] and sorted(prumerge_plus_keep(a, 8).tolist()) == list(range(8))


# ------------------------------------------------------------------------------ CDPruner

def test_cdpruner_card_example_duplicates_lose_to_diversity():
    x = torch.tensor([[1.0, 0], [1, 0], [0, 1]])
    q = torch.tensor([1.0, 0.9, 0.5])
    assert cdpruner_select(x, q, 2).tolist() == [0, 2]  # although q_1 > q_2


def test_cdpruner_orthogonal_is_top_relevance_with_early_ties():
    q = torch.tensor([0.2, 0.9, 0.5, 0.9, 0.1])
    assert cdpruner_select(torch.eye(5), q, 3).tolist() == [1, 2, 3]
    assert cdpruner_select(torch.eye(4), torch.ones(4), 2).tolist() == [0, 1]  # all tied: earliest


def test_dpp_greedy_equals_naive_determinant_greedy():
    g = torch.Generator().manual_seed(0)
    for n in range(2, 8):
        b = torch.randn(n, n + 2, generator=g, dtype=torch.float64)
        kernel = b @ b.T
        picks: list[int] = []
        for _ in range(n - 1):
            best = max((j for j in range(n) if j not in picks),
                       key=lambda j: float(torch.det(kernel[picks + [j]][:, picks + [j]])))
            picks.append(best)
        assert dpp_greedy(kernel, n - 1).tolist() == sorted(picks)


def test_cdpruner_relevance_and_instruction_text():
    e = torch.tensor([[1.0, 0], [0, 1], [-1, 0]])
    q = normalised_relevance(e, torch.tensor([[1.0, 0]]))  # negated cosine: -1, 0, 1
    assert torch.allclose(q, torch.tensor([1e-6 / 2, (1 + 1e-6) / 2, (2 + 1e-6) / 2]))
    assert instruction_text(QUESTION) == "What colour is the small square?"
    # a duplicate pair at q = 0.5 and 1.0: residual 0 after the first; T = N floors d² (FIX), no NaN
    kept = cdpruner_select(torch.tensor([[1.0, 0], [1, 0]]), torch.tensor([1.0, 1.0]), 2)
    assert kept.tolist() == [0, 1]


# ------------------------------------------------------------------------------ TRIM

def test_trim_card_example():
    """Dot products [2, −1, 0.5, 0], ϱ = 0.5 -> n = 2: keep 1 and 3, plus mean(F_0, F_2)."""
    e = torch.tensor([[2.0], [-1.0], [0.5], [0.0]])
    sigma = trim_scores(e, torch.tensor([1.0]))
    keep = trim_keep(sigma, int(4 * 0.5))
    assert keep.tolist() == [1, 3]
    F = torch.randn(4, 3)
    kept, mean = trim_merge(F, keep)
    assert torch.equal(kept, F[[1, 3]]) and torch.allclose(mean, (F[0] + F[2]) / 2)


def test_trim_ties_and_empty_complement():
    sigma = torch.tensor([0.25, 0.25, 0.25, 0.25])
    assert trim_keep(sigma, 2).tolist() == [0, 1]
    F = torch.randn(2, 3)
    _, mean = trim_merge(F, torch.tensor([0, 1]))
    assert torch.equal(mean, torch.zeros(3))


def test_trim_adaptive_count_is_the_iqr_count_of_sigma():
    e = torch.tensor([[0.0]] * 7 + [[-6.0]])
    sigma = trim_scores(e, torch.tensor([1.0]))
    assert iqr_outliers(sigma) == 1 and trim_keep(sigma, 1).tolist() == [7]


# ------------------------------------------------------------------------------ Resize

def test_resize_pooling_is_block_means():
    x = torch.randn(36, 3)
    pooled = pool_grid(x, 2)  # 6x6 -> 2x2: exact 3x3 means
    grid = x.view(6, 6, 3)
    direct = torch.stack([grid[r:r + 3, c:c + 3].reshape(-1, 3).mean(0) for r in (0, 3) for c in (0, 3)])
    assert torch.allclose(pooled, direct, atol=1e-6)
    assert torch.allclose(pool_grid(torch.full((16, 2), 7.0), 3), torch.full((9, 2), 7.0))
    assert torch.equal(pool_grid(x, 6), x)


# ------------------------------------------------------------------------------ VisualTokens.merge

def _visual(n=4):
    meta = {"index": torch.arange(n), "image": torch.zeros(n, dtype=torch.long), "crop": torch.zeros(n, dtype=torch.long),
            "patch": torch.arange(n), "row": torch.zeros(n, dtype=torch.long), "col": torch.arange(n),
            "kind": torch.full((n,), PATCH)}
    return VisualTokens(torch.randn(n, 3), meta)


def test_merge_takes_anchor_metadata_and_new_features():
    v = _visual()
    new = torch.randn(3, 3)
    out = v.merge(torch.tensor([2, 0, 2]), new)
    assert torch.equal(out.features, new) and out.meta["index"].tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match="do not match"):
        v.merge(torch.tensor([0]), torch.randn(2, 3))


def test_contiguous_assembly_follows_row_order(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    prepared = model.prepare(make_image(7, IMAGE), QUESTION)
    visual = model.encode(prepared)
    rows = visual.merge(torch.tensor([5, 1, 3]), visual.features[[5, 1, 3]] * 2)
    seq = model.assemble(prepared, rows, "contiguous")
    assert torch.equal(seq.embeds[seq.visual], (visual.features[[5, 1, 3]] * 2).to(seq.embeds.dtype))
    assert seq.positions.tolist() == list(range(seq.n_tokens))
    original = model.assemble(prepared, visual.select(torch.tensor([1, 3, 5])), "original")
    assert torch.equal(model.assemble(prepared, visual.select(torch.tensor([1, 3, 5])), "contiguous").embeds,
                       original.embeds)  # an index-ordered subset: both placements agree


# ------------------------------------------------------------------------------ on the tiny families

def reduced(model, name, budget, **options):
    prepared = model.prepare(make_image(7, IMAGE), QUESTION)
    method = repro.method(name, budget, **{**FIXED.get(name, {}), **options})
    return method.reduce(model, prepared, model.encode(prepared)), prepared, method


@pytest.mark.parametrize("name", TINY)
def test_token_budgets_are_realized(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    for method in NEW:
        if method == "resize" and model.family in ("qwen2.5-vl", "internvl3"):
            with pytest.raises(ReproError, match="load the model with"):
                reduced(model, method, "tokens:16")
            continue
        out, _, _ = reduced(model, method, "tokens:12")
        if method == "resize":
            assert 0 < len(out) <= 12
        else:
            assert len(out) == 12, method


@pytest.mark.parametrize("name", ["tiny-llava-1.5", "tiny-qwen2.5-vl", "tiny-internvl3"])
def test_full_budgets_reproduce_the_unpruned_model(tiny_models, name):
    model = tiny_models[name]["sdpa"]
    image = make_image(7, IMAGE)
    plain = model.generate(image, QUESTION, max_new_tokens=4)
    n = len(model.encode(model.prepare(image, QUESTION)))
    methods = [repro.method("divprune", f"tokens:{n}"), repro.method("cdpruner", f"tokens:{n}")]
    if name == "tiny-llava-1.5":
        methods.append(repro.method("resize", f"tokens:{n}"))
    for method in methods:
        got = model.generate(image, QUESTION, method=method, max_new_tokens=4)
        assert (got.first_token_logprobs - plain.first_token_logprobs).abs().max() < 1e-5, method.name
        assert got.tokens == plain.tokens, method.name


@torch.inference_mode()
def test_merged_features_equal_a_direct_computation(tiny_models):
    """VisionZip and PruMerge+ on tiny LLaVA-1.5, recomputed from the HF tower's own outputs."""
    model = tiny_models["tiny-llava-1.5"]["eager"]
    hf = model.hf
    out, prepared, _ = reduced(model, "visionzip", "tokens:12")
    tower = hf.model.vision_tower
    vo = tower(prepared.inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
    layer = hf.config.vision_feature_layer
    hidden = vo.hidden_states[layer][0]  # (1 + P, d): [CLS] + patches
    attn = vo.attentions[layer][0]  # (heads, 1 + P, 1 + P)
    project = hf.model.multi_modal_projector
    assert torch.allclose(out.features[0], project(hidden[0]), atol=1e-5)  # [CLS] first
    n_dom, n_ctx = split_dominant(12)
    cls_row = attn[:, 0, 1:].sum(0)
    dominant = torch.sort(torch.argsort(-cls_row, stable=True)[: n_dom - 1]).values
    assert torch.allclose(out.features[1:n_dom], project(hidden[1:][dominant]), atol=1e-5)
    # contextual: keys of the same layer (head-averaged) from the layer's own k_proj
    encoder = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder
    block = encoder.layers[len(encoder.layers) + layer]
    k = block.self_attn.k_proj(block.layer_norm1(vo.hidden_states[len(encoder.layers) + layer][0]))[1:]
    heads = block.self_attn.num_heads
    rest = torch.tensor([i for i in range(hidden.shape[0] - 1) if i not in dominant.tolist()])
    step = max(1, rest.numel() // n_ctx)
    slots = torch.arange(0, rest.numel(), step)[:n_ctx]
    u = torch.nn.functional.normalize(k[rest].view(rest.numel(), heads, -1).mean(1), dim=-1)
    others = torch.tensor([i for i in range(rest.numel()) if i not in slots.tolist()])
    assign = (u[others] @ u[slots].T).argmax(-1)
    F = hidden[1:][rest]
    for t, slot in enumerate(slots.tolist()):
        members = others[assign == t]
        direct = F[slot] + (F[members].mean(0) if members.numel() else 0)
        assert torch.allclose(out.features[n_dom + t], project(direct), atol=1e-5)
    # PruMerge+: the extra token is the projected attention-weighted sum of the unkept patches,
    # with single-head full-width scores of the last layer
    out, _, _ = reduced(model, "prumerge_plus", "tokens:8")
    last = encoder.layers[-1]
    x = last.layer_norm1(vo.hidden_states[-2][0])
    q, kk = last.self_attn.q_proj(x), last.self_attn.k_proj(x)
    a = ((q[:1] @ kk.T) / kk.shape[-1] ** 0.5).softmax(-1)[0, 1:]
    keep = prumerge_plus_keep(a, 7)
    rest = torch.ones(a.numel(), dtype=torch.bool)
    rest[keep] = False
    assert torch.allclose(out.features[-1], project((a[rest, None] * hidden[1:][rest]).sum(0)), atol=1e-5)


def test_vispruner_official_llava_next_packing(tiny_models):
    """Every crop patch (padding included) is a candidate, no newline tokens, T exactly, base crop
    first and then the tiles in raster order of the stitched grid."""
    model = tiny_models["tiny-llava-next"]["sdpa"]
    prepared = model.prepare(make_image(7, IMAGE), QUESTION)
    visual = model.encode(prepared)
    n_crops = int(visual.meta["crop"].max()) + 1
    out = repro.method("vispruner", "tokens:20").reduce(model, prepared, visual)
    assert len(out) == 20 and bool((out.meta["kind"] == PATCH).all())
    crop = out.meta["crop"]
    assert torch.bincount(crop, minlength=n_crops).tolist() == [20 // n_crops + (i < 20 % n_crops) for i in range(n_crops)]
    tiles = crop > 0
    assert bool((crop[: int((~tiles).sum())] == 0).all())
    key = out.meta["row"][tiles] * 1000 + out.meta["col"][tiles]
    assert torch.equal(key, torch.sort(key).values)
    side = 4  # tiny-llava-next: 56 px crops of 14 px patches
    full = repro.method("vispruner", f"tokens:{n_crops * side * side}").reduce(model, prepared, visual)
    assert len(full) == n_crops * side * side > visual.patches.numel()  # padding patches are candidates


def test_several_images_keep_t_each(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    images = [make_image(1, IMAGE), make_image(2, IMAGE)]
    prepared = model.prepare(images, QUESTION)
    visual = model.encode(prepared)
    for name in ("vispruner", "visionzip", "cdpruner"):
        out = repro.method(name, "tokens:5").reduce(model, prepared, visual)
        assert torch.bincount(out.meta["image"]).tolist() == [5, 5], name


def test_flops_of_a_merging_method_equal_flopcounter(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["eager"]
    for name in ("visionzip", "trim"):
        out, prepared, method = reduced(model, name, "ratio:0.6")
        seq = model.assemble(prepared, out, method.position_mode(model))
        with FlopCounterMode(display=False) as counter:
            run = model.engine.prefill(seq, method.planner(model, seq))
        layers = [flops.LayerTokens(r.queries, r.keys, r.mlp) for r in run.records]
        assert counter.get_total_flops() == flops.prefill_flops(model.card, layers, "exact", lm_head_tokens=1)
        full = flops.unpruned_prefill_flops(model.card, prepared.input_ids.numel(), "paper")
        assert flops.prefill_flops(model.card, layers, "paper") <= 0.6 * full * (1 + 1e-12)


# ------------------------------------------------------------------------------ bad input

def test_bad_input_is_one_clear_error(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    for name in NEW + ["vispruner"]:
        with pytest.raises(ReproError, match="more visual tokens than"):
            reduced(model, name, "tokens:100000")
        with pytest.raises(ReproError, match="bad options"):
            repro.method(name, "tokens:4", no_such_option=1)
    with pytest.raises(ReproError, match="pass mode='fixed'"):
        repro.method("prumerge_plus", "tokens:8")
    with pytest.raises(ReproError, match="hf download"):
        reduced(model, "cdpruner", "tokens:4", text_tower="/nonexistent/clip-text")
    with pytest.raises(ReproError, match="needs a budget"):
        repro.method("visionzip")


@torch.inference_mode()
def test_visionzip_and_cdpruner_follow_the_official_llava_next_packing(tiny_models):
    """VisionZip: the base crop's [CLS] first, then its dominant and contextual tokens, then the
    tiles' dominant patches in stitched raster order; CDPruner: T per crop, no newline tokens."""
    model = tiny_models["tiny-llava-next"]["sdpa"]
    prepared = model.prepare(make_image(7, IMAGE), QUESTION)
    visual = model.encode(prepared)
    n_crops = int(visual.meta["crop"].max()) + 1
    out = repro.method("visionzip", f"tokens:{7 * n_crops}").reduce(model, prepared, visual)
    assert len(out) == 7 * n_crops and bool((out.meta["kind"] == PATCH).all())
    cls = visual.signals.project(visual.signals.cls_feature()[0])
    assert torch.allclose(out.features[0], cls, atol=1e-6)
    n_dom, n_ctx = split_dominant(7)
    base = out.meta["crop"][: n_dom + n_ctx]
    assert bool((base == 0).all()) and out.meta["group"][:n_dom].tolist() == [0] * n_dom
    tiles = out.meta["crop"][n_dom + n_ctx:][: (n_crops - 1) * (n_dom - 1)]
    rows, cols = (out.meta[k][n_dom + n_ctx:][: tiles.numel()] for k in ("row", "col"))
    assert bool((tiles > 0).all()) and torch.equal(rows * 1000 + cols, torch.sort(rows * 1000 + cols).values)
    kept = repro.method("cdpruner", f"tokens:{3 * n_crops}").reduce(model, prepared, visual)
    assert torch.bincount(kept.meta["crop"], minlength=n_crops).tolist() == [3] * n_crops


def test_tinyworld_text_tower_is_shipped_verified_and_used():
    """The shipped tower loads through the checksummed path; CDPruner and TRIM run with it."""
    model = repro.load("tinyworld-llava")
    tower = model.text_tower()
    assert "tinyworld-text-tower" in tower.source
    image = make_image(3, (168, 168))
    for name in ("cdpruner", "trim"):
        result = model.generate(image, QUESTION, method=repro.method(name, "tokens:16"), max_new_tokens=1)
        assert result.stats.visual_tokens == 16, name
    caption = tower.embed("top left: big red circle")
    assert caption.shape == (tower.visual_projection.out_features,) and torch.isfinite(caption).all()
