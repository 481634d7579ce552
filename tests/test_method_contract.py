"""The contract every registered method keeps, on every tiny family (METHODS.md §1.10).

Driven by the registry × the four tiny families; how each method is exercised comes from its row
in method_settings.py, and a registered method without a row fails. Checks: the full budget is the
unpruned model; tokens:T realizes the card's count; ratio:R lands in [floor·R, R] or is refused as
infeasible; analytic FLOPs equal FlopCounterMode (eager); keeping the lowest-scored tokens is worse
by KL on tinyworld-llava; methods alternating on one model equal each alone; same input, same output.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import repro
from repro import flops
from repro.budget import as_budget
from repro.errors import ReproError
from repro.methods import specs

from conftest import TINY, make_image
from method_settings import CHECKS, SETTINGS, Shape

QUESTION = "What colour is the small square?"
IMAGE = (300, 200)  # large enough that every tiny family has a real visual budget
REGISTERED = [s.name for s in specs()]
NAMES = REGISTERED + [name for name, row in SETTINGS.items() if row.variant_of]  # named variants too


def settings(name: str):
    if name not in SETTINGS:
        pytest.fail(f"method {name!r} is registered without a row in tests/method_settings.py")
    return SETTINGS[name]


def method_cases(check: str):
    """Methods for `check`: not-applicable checks are left out (their reason is in the settings
    row), known failures are strict xfails; a method without a row is kept, so it fails."""
    out = []
    for name in NAMES:
        row = SETTINGS.get(name)
        if row is not None and check in row.not_applicable:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=row.xfail[check])] if row and check in row.xfail else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def defined(name: str, family: str) -> bool:
    row = SETTINGS.get(name)
    return row is None or FAMILY[family] not in row.undefined


def cases(check: str):
    """(method, family) pairs for `check`, over the tiny families each method defines."""
    return [pytest.param(p.values[0], family, marks=p.marks, id=f"{p.values[0]}-{family}")
            for p in method_cases(check) for family in TINY if defined(p.values[0], family)]


FAMILY = {"tiny-llava-1.5": "llava-1.5", "tiny-llava-next": "llava-next", "tiny-qwen2.5-vl": "qwen2.5-vl",
          "tiny-internvl3": "internvl3"}


@pytest.fixture(scope="module")
def shapes(tiny_models):
    out = {}
    for family in TINY:
        model = tiny_models[family]["sdpa"]
        prepared = model.prepare(make_image(7, IMAGE), QUESTION)
        visual = model.encode(prepared)
        out[family] = Shape(model.family, model.card.layers, len(visual), visual.patches.numel(),
                            len(torch.unique(visual.meta["crop"][visual.meta["crop"] >= 0])))  # -1: newlines
    return out


@pytest.fixture(scope="module")
def plain(tiny_models):
    """The unpruned run of the test input on each family (4 generated tokens)."""
    return {family: run(tiny_models[family]["sdpa"], tokens=4) for family in TINY}


def run(model, method=None, image=None, tokens=1):
    return model.generate(image or make_image(7, IMAGE), QUESTION, method=method, max_new_tokens=tokens)


def test_every_registered_method_has_settings():
    missing = sorted(set(REGISTERED) - set(SETTINGS))
    assert not missing, f"registered without a row in tests/method_settings.py: {missing}"
    for name, row in SETTINGS.items():
        assert set(row.not_applicable) | set(row.xfail) <= set(CHECKS), name
        assert all(reason for reason in row.not_applicable.values()), name


@pytest.mark.parametrize("name, family", [(n, f) for n, row in SETTINGS.items() for f in TINY
                                          if FAMILY[f] in row.undefined])
def test_a_family_the_method_does_not_define_is_a_clear_error(tiny_models, shapes, name, family):
    row = settings(name)
    with pytest.raises(ReproError, match=row.undefined[FAMILY[family]]):
        run(tiny_models[family]["sdpa"], row.make(name, f"tokens:{row.tokens(shapes[family])}", shapes[family]))


@pytest.mark.parametrize("name, family", cases("full"))
def test_full_budget_reproduces_the_unpruned_model(tiny_models, shapes, plain, name, family):
    model, shape = tiny_models[family]["sdpa"], shapes[family]
    row = settings(name)
    full = shape.n_patches if row.full == "patches" else shape.n_visual
    result = run(model, row.make(name, f"tokens:{full}", shape, **row.full_options), tokens=4)
    unpruned = plain[family]
    assert (result.first_token_logprobs - unpruned.first_token_logprobs).abs().max() < 1e-5
    assert result.text == unpruned.text and result.tokens == unpruned.tokens


@pytest.mark.parametrize("name, family", cases("tokens"))
def test_token_budget_realizes_the_cards_count(tiny_models, shapes, name, family):
    model, shape = tiny_models[family]["sdpa"], shapes[family]
    row = settings(name)
    t = row.tokens(shape)
    result = run(model, row.make(name, f"tokens:{t}", shape))
    assert [r.visual_queries for r in result.stats.layers] == row.count(shape, t)


@pytest.mark.parametrize("name, family", cases("ratio"))
def test_ratio_budget_is_met_from_below_or_refused(tiny_models, shapes, plain, name, family):
    model, shape = tiny_models[family]["sdpa"], shapes[family]
    row = settings(name)
    full = plain[family].stats.tflops["paper"]
    n_other = plain[family].stats.n_tokens - shape.n_visual
    for ratio in row.ratios:
        method = row.make(name, f"ratio:{ratio}", shape)
        got = run(model, method).stats.tflops["paper"]
        assert row.ratio_floor * ratio * full <= got <= ratio * full * (1 + 1e-12), ratio
        # the floor behind the dry run's infeasibility warnings is a lower bound of every run
        assert method.min_flops(model.card, shape.n_visual, n_other) <= got * 1e12 * (1 + 1e-9)
    if row.infeasible is not None:
        method = row.make(name, row.infeasible, shape)
        budget = as_budget(row.infeasible)
        if budget.kind != "tokens":  # and it explains the refusal
            assert method.min_flops(model.card, shape.n_visual, n_other) > budget.max_flops(full * 1e12)
        with pytest.raises(ReproError, match="infeasible"):
            run(model, method)


@pytest.mark.parametrize("name, family", cases("flops"))
def test_analytic_flops_equal_flopcounter(tiny_models, shapes, name, family):
    model, shape = tiny_models[family]["eager"], shapes[family]
    row = settings(name)
    method = row.make(name, f"tokens:{row.tokens(shape)}", shape)
    prepared = model.prepare(make_image(7, IMAGE), QUESTION)
    seq = model.assemble(prepared, method.reduce(model, prepared, model.encode(prepared)), method.position_mode(model))
    with FlopCounterMode(display=False) as counter:
        out = model.engine.prefill(seq, method.planner(model, seq))
    layers = [flops.LayerTokens(r.queries, r.keys, r.mlp) for r in out.records]
    assert counter.get_total_flops() == flops.prefill_flops(model.card, layers, "exact", lm_head_tokens=1) + out.probe_flops


@pytest.mark.parametrize("name, family", cases("determinism"))
def test_same_input_same_output(tiny_models, shapes, name, family):
    model, shape = tiny_models[family]["sdpa"], shapes[family]
    row = settings(name)
    method = row.make(name, f"tokens:{row.tokens(shape)}", shape)
    a, b = run(model, method, tokens=2), run(model, method, tokens=2)
    assert a.tokens == b.tokens and torch.equal(a.first_token_logprobs, b.first_token_logprobs)
    assert a.stats.layers == b.stats.layers


@pytest.mark.parametrize("family", TINY)
def test_methods_alternating_on_one_model_equal_each_alone(tiny_models, shapes, family):
    """Every method in turn on one loaded model, per image, against each method's own run."""
    model, shape = tiny_models[family]["sdpa"], shapes[family]
    names = [n for n in NAMES if "alternating" not in settings(n).not_applicable and defined(n, family)]
    methods = {n: settings(n).make(n, f"tokens:{settings(n).tokens(shape)}", shape) for n in names}
    images = [make_image(i, IMAGE) for i in range(2)]
    def outcome(method, image):
        result = run(model, method, image)
        return result.first_token_logprobs.tolist(), result.stats.layers

    alone = {n: [outcome(m, image) for image in images] for n, m in methods.items()}
    mixed = {n: [] for n in names}
    for image in images:
        for n, m in methods.items():
            mixed[n].append(outcome(m, image))
    assert mixed == alone


# ------------------------------------------------------------------ the inverse check (real weights)

@pytest.fixture(scope="module")
def tinyworld():
    torch.set_num_threads(1)
    return repro.load("tinyworld-llava")


@pytest.fixture(scope="module")
def val_samples(tmp_path_factory):
    """12 validation rows of each of four tasks whose answers depend on the image."""
    from repro import tinyworld as tw
    from repro.tinyworld.train import task_objects

    data = tmp_path_factory.mktemp("contract_val")
    keys = ["pope", "vqav2", "gqa", "easyvqa"]
    tw.build(data, seed=0, sizes=tw.SplitSizes(train=2, validation=12, test=2), tasks=keys)
    tasks = task_objects(data, keys)
    return [(tasks[k].doc_to_visual(doc), tasks[k].doc_to_text(doc)) for k in keys for doc in tw.load_split(data, k, "validation")]


@pytest.fixture(scope="module")
def val_references(tinyworld, val_samples):
    """The unpruned model's first-token log-probabilities on the samples (shared by every method)."""
    return [tinyworld.generate(image, text, max_new_tokens=1).first_token_logprobs for image, text in val_samples]


@pytest.mark.parametrize("name", method_cases("inverse"))
def test_keeping_the_lowest_scored_tokens_is_worse(tinyworld, val_samples, val_references, name):
    from repro.methods.sanity import inverse_check

    row = settings(name)
    check = inverse_check(tinyworld, row.variant_of or name, row.inverse_budget, val_samples, val_references,
                          **row.options)
    assert check.passed, check
