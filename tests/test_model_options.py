"""Model options and the hub revision travel from specs and model_args into `repro.load`, and
into the cell key (the paper protocol's LLaVA-NeXT grid, Qwen2.5-VL pixel bounds, InternVL3 tiles)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from repro.errors import ReproError
from repro.models.llava import fixed_grid_pinpoints
from repro.runner.spec import expand, load_spec

SPEC = textwrap.dedent("""\
    profile: tiny
    models: [tiny-llava-next, tiny-llava-1.5]
    tasks: [tinyworld_gqa]
    limit: 2
    methods:
      - name: none
    {options}
""")


def _spec(tmp_path, options: str):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(options=options))
    return load_spec(path)


def test_model_options_enter_the_cells_and_only_their_keys(tmp_path):
    plain = {c.model: c for c in expand(_spec(tmp_path, ""))}
    fixed = {c.model: c for c in expand(_spec(tmp_path, "model_options: {tiny-llava-next: {protocol: fixed}}"))}
    assert fixed["tiny-llava-next"].model_options == {"protocol": "fixed"}
    assert fixed["tiny-llava-next"].key != plain["tiny-llava-next"].key
    assert fixed["tiny-llava-1.5"].key == plain["tiny-llava-1.5"].key  # a model without options keeps its key
    assert fixed["tiny-llava-next"].loaded != plain["tiny-llava-next"].loaded  # loaded again, with the option


@pytest.mark.parametrize("options, message", [
    ("model_options: {tiny-llava-1.5: {protocol: fixed}}", "accepted: none"),
    ("model_options: {tiny-llava-next: {max_pixels: 10}}", "accepted: protocol"),
    ("model_options: [protocol]", "maps a model to its options"),
])
def test_bad_model_options_are_refused_before_any_work(tmp_path, options, message):
    with pytest.raises(ReproError, match=message):
        _spec(tmp_path, options)


def test_model_args_carry_model_options():
    from repro.eval.lmms_model import ReproLMM

    lm = ReproLMM(model="tiny-llava-next", model_options='{"protocol":"fixed"}')
    hf = lm.model.hf
    assert hf.config.image_grid_pinpoints == fixed_grid_pinpoints(hf)
    with pytest.raises(ReproError, match="model_options"):
        ReproLMM(model="tiny-llava-next", model_options="protocol=fixed")


def test_the_revision_reaches_from_pretrained(tmp_path):
    """A hub cache holding only revision `v2` of a model: loading it by that revision works, and
    `main` is not silently taken instead (offline, in a subprocess with its own HF_HOME)."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from repro.models.tiny import tiny_llava15
        import repro
        from repro.errors import ReproError
        hf, processor = tiny_llava15()
        snap = Path({str(tmp_path)!r}) / "hub" / "models--org--tiny" / "snapshots" / ("a" * 40)
        hf.save_pretrained(snap)
        processor.save_pretrained(snap)
        refs = snap.parents[1] / "refs"
        refs.mkdir()
        (refs / "v2").write_text("a" * 40)
        model = repro.load("org/tiny", revision="v2")
        print("loaded", model.card.layers)
        try:
            repro.load("org/tiny", revision="main")
        except ReproError as err:
            print("refused main")
    """)
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "loaded" in out.stdout and "refused main" in out.stdout, out.stderr[-2000:]


def test_token_budgets_at_equal_flops_resolve_per_model(tmp_path):
    """flops-of-tokens:N is the FLOPs ratio of N visual tokens in every layer on the model's nominal
    prompt (paper_tables/flops.md: 64 tokens = 23.7% of LLaVA-1.5-7B), and the label travels along."""
    from repro.runner.spec import resolve_budget

    assert resolve_budget("flops-of-tokens:64", "llava-1.5-7b") == ("ratio:0.2366", "flops-of-tokens:64")
    assert resolve_budget("ratio:0.5", "llava-1.5-7b") == ("ratio:0.5", "")
    with pytest.raises(ReproError, match="registry model"):
        resolve_budget("flops-of-tokens:64", "tiny-llava-1.5")
    path = tmp_path / "paper.yaml"
    path.write_text(textwrap.dedent("""\
        profile: paper
        models: [llava-1.5-7b, llava-next-7b]
        tasks: [gqa]
        budgets: {default: [ratio:0.14], llava-next-7b: [flops-of-tokens:320]}
        methods: [{name: fastv}]
    """))
    cells = {c.model: c for c in expand(load_spec(path))}
    assert cells["llava-1.5-7b"].budget == "ratio:0.14" and cells["llava-1.5-7b"].budget_shown == "ratio:0.14"
    assert cells["llava-next-7b"].budget == "ratio:0.1276"
    assert cells["llava-next-7b"].budget_shown == "ratio:0.1276 (flops-of-tokens:320)"
    assert "budget_label" not in cells["llava-next-7b"].config()  # the ratio alone decides the key
