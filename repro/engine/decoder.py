"""A thin, read-only view of an HF decoder stack: the pieces the engine runs one by one.

The engine never patches transformers classes. It calls each layer's own submodules (norms,
projections, MLP), the model's own rotary embedding, the modeling file's own RoPE function and
transformers' registered attention functions, so a full schedule computes what the model does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


@dataclass
class Decoder:
    """Embedding, decoder layers, final norm, rotary embedding and LM head of one model."""

    embed_tokens: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    rotary_emb: nn.Module
    lm_head: nn.Module

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> "Decoder":
        lm = hf_model.get_decoder()
        return cls(lm.embed_tokens, lm.layers, lm.norm, lm.rotary_emb, hf_model.get_output_embeddings())

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attn

    def rope_tables(self, positions: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin for the given positions: (N,) for 1-D RoPE or (3, N) for M-RoPE."""
        pos = positions[None] if positions.dim() == 1 else positions[:, None]
        return self.rotary_emb(like, pos)

    def apply_rope(self, layer: int) -> Callable[..., tuple[Tensor, Tensor]]:
        """The modeling file's own `apply_rotary_pos_emb` for this layer's attention class."""
        return sys.modules[type(self.attention(layer)).__module__].apply_rotary_pos_emb

    def attention_function(self, layer: int, backend: str) -> Callable[..., tuple[Tensor, Tensor | None]]:
        eager = sys.modules[type(self.attention(layer)).__module__].eager_attention_forward
        return ALL_ATTENTION_FUNCTIONS.get_interface(backend, eager)

    def qkv(self, layer: int, x_q: Tensor, x_kv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project normed states to (1, heads, n, head_dim) query and key/value tensors."""
        attn = self.attention(layer)
        d = attn.head_dim
        q = attn.q_proj(x_q).view(1, x_q.shape[0], -1, d).transpose(1, 2)
        k = attn.k_proj(x_kv).view(1, x_kv.shape[0], -1, d).transpose(1, 2)
        v = attn.v_proj(x_kv).view(1, x_kv.shape[0], -1, d).transpose(1, 2)
        return q, k, v

    def rotate(self, layer: int, q: Tensor, k: Tensor, rope_q: tuple[Tensor, Tensor],
               rope_k: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """Apply RoPE; `rope_k=None` means keys share the queries' positions."""
        apply = self.apply_rope(layer)
        if rope_k is None:
            return apply(q, k, *rope_q)
        q, _ = apply(q, q[:, :1], *rope_q) if q.shape[2] else (q, None)
        _, k = apply(k[:, :1], k, *rope_k)
        return q, k

    def logits(self, hidden_last: Tensor) -> Tensor:
        return self.lm_head(self.norm(hidden_last)).float()


def causal_mask(q_index: Tensor, k_index: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask letting each query see keys at or before it in sequence order."""
    allowed = k_index[None, :] <= q_index[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=q_index.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]
