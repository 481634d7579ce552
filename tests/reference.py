"""An independent masking reference for operation-pruned execution.

It runs the HF decoder layers over the whole sequence, as the unpruned model does, and emulates a
schedule by masking: keys outside a layer's key/value set are masked out, and the attention (MLP)
residual of tokens outside the attention (MLP) set is discarded. Decode steps recompute the whole
sequence with the generated tokens appended (no cache). It shares no code with the engine.
"""

from __future__ import annotations

import torch

from repro.engine import Schedule, Sequence


def _member(idx, n):
    out = torch.zeros(n, dtype=torch.bool)
    out[torch.arange(n) if idx is None else idx] = True
    return out


@torch.inference_mode()
def masked_logits(model, seq: Sequence, schedule: Schedule, generated: list[int]) -> torch.Tensor:
    """Next-token logits after the prefill and after each generated token: (len(generated)+1, vocab)."""
    lm = model.hf.get_decoder()
    head = model.hf.get_output_embeddings()
    n, steps = seq.n_tokens, len(generated)
    extra = lm.embed_tokens(torch.tensor(generated, dtype=torch.long)) if steps else seq.embeds[:0]
    h = torch.cat([seq.embeds, extra])
    total = n + steps
    start = int(seq.positions.max()) + 1
    out = torch.zeros(steps + 1, head.out_features)
    for layer_idx, layer in enumerate(lm.layers):
        ops = schedule.layers[layer_idx]
        attend = torch.cat([_member(ops.attention, n), torch.ones(steps, dtype=torch.bool)])
        kv = attend | torch.cat([_member(ops.kv_only if ops.kv_only is not None else torch.empty(0, dtype=torch.long), n),
                                 torch.zeros(steps, dtype=torch.bool)])
        mlp = torch.cat([_member(ops.mlp, n), torch.ones(steps, dtype=torch.bool)])
        if schedule.renumber:
            n_kv = int(kv[:n].sum())
            pos = torch.cat([torch.cumsum(kv[:n].long(), 0) - 1, n_kv + torch.arange(steps)])
        else:  # decoding continues from the largest original position, on every M-RoPE row alike
            new = (start + torch.arange(steps)).expand(*seq.positions.shape[:-1], steps)
            pos = torch.cat([seq.positions, new], dim=-1)
        cos_sin = lm.rotary_emb(h[None], pos[None] if pos.dim() == 1 else pos[:, None])
        allowed = kv[None, :] & (torch.arange(total)[None, :] <= torch.arange(total)[:, None])
        allowed |= torch.eye(total, dtype=torch.bool)  # rows of non-attending tokens are discarded
        mask = torch.zeros(total, total).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
        attn_out, _ = layer.self_attn(hidden_states=layer.input_layernorm(h)[None], position_embeddings=cos_sin,
                                      attention_mask=mask)
        h = h + torch.where(attend[:, None], attn_out[0], 0.0)
        h = h + torch.where(mlp[:, None], layer.mlp(layer.post_attention_layernorm(h)), 0.0)
    logits = head(lm.norm(h[n - 1:])).float()
    out[:] = logits
    return out
