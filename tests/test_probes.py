"""Probes compute what the layer's own attention computes, under any backend."""

from __future__ import annotations

import pytest
import torch

from repro.engine import LayerOps, Schedule, random_schedule

from conftest import TINY, make_image


class Recorder:
    """A planner that runs the given schedule and records what a probe sees at every layer."""

    def __init__(self, schedule: Schedule, queries: torch.Tensor):
        self.schedule, self.queries, self.seen = schedule, queries, []

    def layer_ops(self, layer, probe) -> LayerOps:
        self.seen.append({
            "rows": probe.attention_rows(self.queries, reduce=None),
            "mean": probe.attention_rows(self.queries),
            "max": probe.attention_rows(self.queries, reduce="max"),
            "hidden": probe.hidden().clone(),
            "normed": probe.normed_hidden().clone(),
            "keys": probe.keys().clone(),
            "active": probe.active.clone(),
        })
        return self.schedule.layer_ops(layer, probe)


@pytest.mark.parametrize("name", TINY)
def test_attention_rows_equal_eager_attention_weights(tiny_models, name):
    sdpa, eager = tiny_models[name]["sdpa"], tiny_models[name]["eager"]
    prepared = sdpa.prepare(make_image(2), "Where is the red square?")
    seq = sdpa.assemble(prepared, sdpa.encode(prepared))
    queries = torch.tensor([0, seq.visual[3].item(), seq.n_tokens - 2, seq.n_tokens - 1])
    recorder = Recorder(Schedule.full(sdpa.card.layers), queries)
    sdpa.engine.prefill(seq, recorder)  # probes run under sdpa
    with torch.inference_mode():
        out = eager.hf(**prepared.inputs, output_attentions=True, output_hidden_states=True)
    for layer, seen in enumerate(recorder.seen):
        ref = out.attentions[layer][0][:, queries]  # (heads, rows, keys)
        assert (seen["rows"] - ref).abs().max() < 1e-5
        assert (seen["mean"] - ref.mean(0)).abs().max() < 1e-5
        assert (seen["max"] - ref.amax(0)).abs().max() < 1e-5
        assert (seen["hidden"] - out.hidden_states[layer][0]).abs().max() < 1e-5
        block = eager.hf.get_decoder().layers[layer]
        assert (seen["normed"] - block.input_layernorm(out.hidden_states[layer][0])).abs().max() < 1e-5
        assert seen["keys"].shape == (sdpa.card.kv_heads, seq.n_tokens, sdpa.card.head_dim)
        rows_sum = seen["rows"].sum(-1)
        assert torch.allclose(rows_sum, torch.ones_like(rows_sum), atol=1e-5)


def test_probe_follows_the_active_set(tiny_models):
    model = tiny_models["tiny-llava-1.5"]["sdpa"]
    prepared = model.prepare(make_image(4), "Is there a circle?")
    seq = model.assemble(prepared, model.encode(prepared))
    schedule = random_schedule(seq.n_tokens, seq.visual, model.card.layers, torch.Generator().manual_seed(1), keep=0.3)
    last = torch.tensor([seq.n_tokens - 1])
    recorder = Recorder(schedule, last)
    model.engine.prefill(seq, recorder)
    for layer, seen in enumerate(recorder.seen):
        expected = torch.arange(seq.n_tokens) if layer == 0 else schedule.layers[layer - 1].kv_set(seq.n_tokens)
        assert torch.equal(seen["active"], expected)
        assert seen["rows"].shape[-1] == expected.numel()  # scores over the active keys only
