"""Scoring primitives for methods that decide inside the LLM.

A Probe is bound to one decoder layer, before that layer runs: it sees the layer's input hidden
states and the tokens active so far, and computes what the layer's own projections would see.
Nothing depends on the attention backend returning weights, so probes work under sdpa and flash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from repro.engine.decoder import Decoder, causal_mask


@dataclass
class ProbeCost:
    """Multiply-adds spent on scoring (×2 = FLOPs), reported apart from the prefill budget."""

    flops: int = 0


@dataclass
class Probe:
    decoder: Decoder
    layer: int
    hidden_states: Tensor  # (N, d): input of `layer` for every token (frozen states included)
    positions: Tensor  # (N,) or (3, N) positions used by RoPE at this layer
    active: Tensor  # sorted indices of the tokens that provided keys/values at the previous layer
    visual: Tensor  # sorted sequence indices of the visual tokens
    cost: ProbeCost = field(default_factory=ProbeCost)

    @property
    def n_tokens(self) -> int:
        return self.hidden_states.shape[0]

    def hidden(self) -> Tensor:
        """Input hidden states of the active tokens, (n_active, d)."""
        return self.hidden_states[self.active]

    def normed_hidden(self) -> Tensor:
        """The active tokens after this layer's input norm: what its projections read."""
        return self.decoder.layers[self.layer].input_layernorm(self.hidden())

    def keys(self) -> Tensor:
        """Post-RoPE keys of the active tokens, (kv_heads, n_active, head_dim)."""
        _, k = self._qk(self.active[-1:], self.active)
        return k[0]

    def attention_rows(self, queries: Tensor, keys: Tensor | None = None, reduce: str | None = "mean") -> Tensor:
        """softmax(q·kᵀ·scale + causal mask) for the given query rows over `keys` (default: active).

        Returns (heads, n_queries, n_keys) for `reduce=None`, else the mean or max over heads,
        (n_queries, n_keys). GQA-aware: each query head reads its key/value head. Memory is
        O(heads × rows × keys).
        """
        keys = self.active if keys is None else keys
        q, k = self._qk(queries, keys)
        attn = self.decoder.attention(self.layer)
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling
        self.cost.flops += 2 * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
        scores = scores + causal_mask(queries, keys, torch.float32)
        probs = scores.softmax(dim=-1)[0]
        if reduce is None:
            return probs
        if reduce == "mean":
            return probs.mean(0)
        if reduce == "max":
            return probs.amax(0)
        raise ValueError(f"reduce must be 'mean', 'max' or None, not {reduce!r}")

    def rope_pattern(self, queries: Tensor, keys: Tensor) -> Tensor:
        """RoPE's own logit pattern at these tokens' positions: all-ones queries and keys rotated
        and multiplied, (R_m·1)·(R_n·1)/√d_h, (n_queries, n_keys). SparseVLM v2.0 divides the
        attention by it ("gravity correction")."""
        d = self.decoder.attention(self.layer).head_dim
        x = self.hidden_states
        ones_q, ones_k = x.new_ones(1, 1, queries.numel(), d), x.new_ones(1, 1, keys.numel(), d)
        rope_q = self.decoder.rope_tables(self._pos(queries), x)
        rope_k = self.decoder.rope_tables(self._pos(keys), x)
        q, k = self.decoder.rotate(self.layer, ones_q, ones_k, rope_q, rope_k)
        self.cost.flops += 2 * queries.numel() * keys.numel() * d
        return (q.float() @ k.float().transpose(-1, -2))[0, 0] / math.sqrt(d)

    def _qk(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        layer = self.decoder.layers[self.layer]
        x = self.hidden_states
        x_q = layer.input_layernorm(x[queries])
        x_k = layer.input_layernorm(x[keys])
        q, k, _ = self.decoder.qkv(self.layer, x_q, x_k)
        d = x.shape[-1]
        self.cost.flops += 2 * d * (queries.numel() * q.shape[1] * q.shape[3] + 2 * keys.numel() * k.shape[1] * k.shape[3])
        rope_q = self.decoder.rope_tables(self._pos(queries), x)
        rope_k = self.decoder.rope_tables(self._pos(keys), x)
        return self.decoder.rotate(self.layer, q, k, rope_q, rope_k)

    def _pos(self, idx: Tensor) -> Tensor:
        return self.positions[..., idx]
