"""Packed prefill and greedy decode: several samples in one pass, equal to batch size 1.

Every sample keeps what it has at batch size 1: its own planner (and probes over its own hidden
states), positions (RoPE or M-RoPE), per-layer token sets and KV cache, so every method runs
unchanged, in-LLM decisions included. Per layer the samples' active tokens are concatenated
with no padding: the input norm, the q/k/v projections, the output projection and the MLP run
as single matmuls over the pack; attention runs per sample (causal within its own tokens,
through the engine's own backends), which is the block-diagonal causal mask of a varlen
kernel. Greedy decoding feeds one token per unfinished sample; a finished sample leaves the pack.

Equality with `Engine` is up to matmul blocking (logits within 1e-5 in fp32; tests/test_packed.py).
Not supported here: `resume`/`capture` (DOP's search scores one sample at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence as Seq

import torch
from torch import Tensor

from repro.engine.core import Engine, KVCache, LayerRecord, PrefillOutput, Sequence, _on_device, _pruned, _record
from repro.engine.probes import Probe, ProbeCost
from repro.engine.schedule import Planner, Schedule


@dataclass
class _Slot:
    """One sample of the pack: where its tokens sit and what it has computed so far."""

    seq: Sequence
    planner: Planner
    offset: int
    renumber: bool
    rope: tuple[Tensor, Tensor]
    active: Tensor
    cache: KVCache
    records: list[LayerRecord] = field(default_factory=list)
    cost: ProbeCost = field(default_factory=ProbeCost)

    @property
    def n(self) -> int:
        return self.seq.n_tokens


class PackedEngine:
    """Runs several samples through one model's decoder together (see module doc)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.decoder = engine.decoder

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(self, seqs: Seq[Sequence], planners: Seq[Planner | None]) -> list[PrefillOutput]:
        dec = self.decoder
        if len(seqs) != len(planners) or not seqs:
            raise ValueError("give one planner (or None) per sequence, and at least one sequence")
        if any(getattr(p, "merge_after", None) is not None for p in planners):
            raise ValueError("a planner that merges tokens between layers runs in Engine.prefill, one sample at a time")
        h = torch.cat([s.embeds for s in seqs]).clone()
        slots, offset = [], 0
        for seq, planner in zip(seqs, planners):
            planner = planner or Schedule.full(dec.n_layers)
            renumber = getattr(planner, "renumber", False)
            if renumber and seq.positions.dim() != 1:
                raise ValueError("renumbering is defined for 1-D positions only (not M-RoPE)")
            active = torch.arange(seq.n_tokens, device=h.device)
            slots.append(_Slot(seq, planner, offset, renumber, dec.rope_tables(seq.positions, h), active,
                               KVCache(mrope=seq.positions.dim() == 2)))
            offset += seq.n_tokens
        for layer_idx in range(dec.n_layers):
            plans = [self._plan(layer_idx, h, slot) for slot in slots]
            self._attention(layer_idx, h, slots, plans)
            self._mlp(layer_idx, h, slots, plans)
            for slot, (ops, kv, _) in zip(slots, plans):
                slot.records.append(_record(ops, slot.n, slot.seq.visual, kv if _pruned(ops) else None))
                slot.cache.next_position.append(Engine._next_position(slot.seq, kv, slot.renumber))
                slot.active = kv
        last = torch.tensor([s.offset + s.n - 1 for s in slots], device=h.device)
        logits = dec.logits(h[last])
        return [PrefillOutput(logits[i], s.cache, s.records, s.cost.flops) for i, s in enumerate(slots)]

    def _plan(self, layer_idx: int, h: Tensor, slot: _Slot) -> tuple:
        """The sample's planner decides this layer from a probe over its own hidden states."""
        seq, device = slot.seq, h.device
        hidden = h[slot.offset: slot.offset + slot.n]
        probe = Probe(self.decoder, layer_idx, hidden, Engine._positions(seq, slot.active, slot.renumber),
                      slot.active, seq.visual, slot.cost)
        ops = _on_device(slot.planner.layer_ops(layer_idx, probe), device)
        ops.validate(slot.n, seq.non_visual(), layer_idx)
        return ops, ops.kv_set(slot.n).to(device), ops.attention_set(slot.n).to(device)

    def _attention(self, layer_idx: int, h: Tensor, slots: list[_Slot], plans: list[tuple]) -> None:
        dec = self.decoder
        layer = dec.layers[layer_idx]
        kv_rows = torch.cat([kv + s.offset for s, (_, kv, _) in zip(slots, plans)])
        q_rows = torch.cat([q + s.offset for s, (_, _, q) in zip(slots, plans)])
        # where each sample's queries sit among the pack's key/value rows
        sel, kv_start = [], 0
        for _, kv, q in plans:
            sel.append(torch.searchsorted(kv, q) + kv_start)
            kv_start += kv.numel()
        sel = torch.cat(sel)
        x_kv = layer.input_layernorm(h[kv_rows])
        q, k, v = dec.qkv(layer_idx, x_kv[sel], x_kv)
        rope_k = [self._rope_k(s, kv, h) for s, (_, kv, _) in zip(slots, plans)]
        rope_k = (torch.cat([r[0] for r in rope_k], 1), torch.cat([r[1] for r in rope_k], 1))
        q, k = dec.rotate(layer_idx, q, k, (rope_k[0][:, sel], rope_k[1][:, sel]), rope_k)
        outs, q_start, kv_start = [], 0, 0
        for slot, (_, kv, q_idx) in zip(slots, plans):
            nq, nk = q_idx.numel(), kv.numel()
            ks, vs = k[:, :, kv_start: kv_start + nk], v[:, :, kv_start: kv_start + nk]
            slot.cache.keys.append(ks)
            slot.cache.values.append(vs)
            if nq:
                same = nq == nk
                outs.append(self.engine._attend(layer_idx, q[:, :, q_start: q_start + nq], ks, vs,
                                                None if same else q_idx, None if same else kv))
            q_start, kv_start = q_start + nq, kv_start + nk
        if outs:
            h.index_add_(0, q_rows, dec.attention(layer_idx).o_proj(torch.cat(outs)))

    def _rope_k(self, slot: _Slot, kv: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        if slot.renumber:
            return self.decoder.rope_tables(torch.arange(kv.numel(), device=h.device), h)
        return slot.rope[0][:, kv], slot.rope[1][:, kv]

    def _mlp(self, layer_idx: int, h: Tensor, slots: list[_Slot], plans: list[tuple]) -> None:
        layer = self.decoder.layers[layer_idx]
        rows = torch.cat([ops.mlp_set(s.n).to(h.device) + s.offset for s, (ops, _, _) in zip(slots, plans)])
        if rows.numel():
            h.index_add_(0, rows, layer.mlp(layer.post_attention_layernorm(h[rows])))

    # ------------------------------------------------------------------- decode
    @torch.inference_mode()
    def decode_step(self, tokens: Seq[int], caches: Seq[KVCache], steps: Seq[int]) -> Tensor:
        """One generated token per sample through every layer; (samples, vocab) next-token logits."""
        dec = self.decoder
        device = caches[0].keys[0].device
        h = dec.embed_tokens(torch.tensor(list(tokens), device=device))
        for layer_idx, layer in enumerate(dec.layers):
            pos = torch.tensor([int(c.next_position[layer_idx]) + s for c, s in zip(caches, steps)], device=device)
            pos = torch.stack([pos] * 3) if caches[0].mrope else pos
            x = layer.input_layernorm(h)
            q, k, v = dec.qkv(layer_idx, x, x)
            q, k = dec.rotate(layer_idx, q, k, dec.rope_tables(pos, h), None)
            outs = []
            for b, cache in enumerate(caches):
                k_all, v_all = cache.append(layer_idx, k[:, :, b: b + 1], v[:, :, b: b + 1])
                outs.append(self.engine._attend(layer_idx, q[:, :, b: b + 1], k_all, v_all, None, None))
            h = h + dec.attention(layer_idx).o_proj(torch.cat(outs))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return dec.logits(h)

    def greedy(self, prefills: Seq[PrefillOutput], max_new_tokens: int, eos_ids: set[int],
               stops: Seq[Callable[[list[int]], bool] | None] | None = None) -> list[list[int]]:
        """Greedy token ids of every sample (EOS excluded), each stopping as `Engine.greedy` does."""
        stops = list(stops) if stops is not None else [None] * len(prefills)
        tokens: list[list[int]] = [[] for _ in prefills]
        logits = {b: p.logits for b, p in enumerate(prefills)}
        alive = list(range(len(prefills))) if max_new_tokens > 0 else []
        while alive:
            feed = []
            for b in alive:
                token = int(logits[b].argmax())
                if token in eos_ids:
                    continue
                tokens[b].append(token)
                if (stops[b] is not None and stops[b](tokens[b])) or len(tokens[b]) >= max_new_tokens:
                    continue
                feed.append((b, token))
            if not feed:
                break
            out = self.decode_step([t for _, t in feed], [prefills[b].cache for b, _ in feed],
                                   [len(tokens[b]) - 1 for b, _ in feed])
            logits = {b: out[i] for i, (b, _) in enumerate(feed)}
            alive = [b for b, _ in feed]
        return tokens
