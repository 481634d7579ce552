"""Operation-pruned prefill and cached greedy decode over an HF decoder stack (batch size 1).

Per layer the engine gathers the tokens of each operation, runs the layer's own projections,
attention and MLP on them only, and scatters the results back into the residual stream; every
other token keeps its state. Pruned compute is skipped, never masked. Attention over a subset
keeps causal order by sequence position and uses each token's original RoPE position (or its
rank among the layer's tokens when the schedule asks to renumber).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator

import torch
from torch import Tensor

from repro.engine.decoder import Decoder, causal_mask
from repro.engine.probes import Probe, ProbeCost
from repro.engine.schedule import LayerOps, Merge, Planner, Schedule

_CAUSAL_BACKENDS = ("sdpa", "flash_attention_2", "flash_attention_3")


@dataclass
class Sequence:
    """An assembled prefill sequence: what the decoder reads, plus where the visual tokens are."""

    embeds: Tensor  # (N, d) input embeddings in the model's dtype
    positions: Tensor  # (N,) original positions, or (3, N) M-RoPE positions
    visual: Tensor  # sorted sequence indices of the visual tokens
    input_ids: Tensor  # (N,) token ids (placeholder id at visual tokens)
    visual_groups: Tensor | None = None  # the reducer's group of each visual token, in `visual` order

    @property
    def n_tokens(self) -> int:
        return self.embeds.shape[0]

    def non_visual(self) -> Tensor:
        keep = torch.ones(self.n_tokens, dtype=torch.bool, device=self.visual.device)
        keep[self.visual] = False
        return keep.nonzero().flatten()


@dataclass(frozen=True)
class LayerRecord:
    """Tokens that each operation of one layer actually processed."""

    queries: int
    keys: int
    mlp: int
    visual_queries: int
    visual_keys: int
    visual_mlp: int


@dataclass
class KVCache:
    """Per-layer keys/values of the tokens each layer attended over, in sequence order."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    next_position: list[Tensor] = field(default_factory=list)  # per layer, position of the next token
    mrope: bool = False  # positions have three rows (Qwen2.5-VL)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
        self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]


@dataclass
class PrefillOutput:
    logits: Tensor  # (vocab,) float32 next-token logits at the end of prefill
    cache: KVCache | None  # None after a resumed prefill (the skipped layers cached nothing)
    records: list[LayerRecord]
    probe_flops: int = 0  # scoring overhead of in-LLM decisions (not part of the prefill budget)
    captured: dict[int, Tensor] = field(default_factory=dict)  # layer -> hidden states entering it


@dataclass(frozen=True)
class Prefix:
    """Hidden states entering `layer` in an earlier prefill of the same sequence whose layers
    before `layer` processed every token. A schedule that changes only layers ≥ `layer` can
    resume there instead of recomputing the shared prefix (DOP's search does this)."""

    layer: int
    hidden: Tensor


class Engine:
    """Runs one model's decoder under a schedule or planner; holds no per-sample state."""

    def __init__(self, decoder: Decoder, backend: str = "sdpa"):
        self.decoder = decoder
        self.backend = backend

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(self, seq: Sequence, planner: Planner | None = None, *, renumber: bool = False,
                resume: Prefix | None = None, capture: Collection[int] = ()) -> PrefillOutput:
        """Run the prefill; `capture` keeps the hidden states entering the given layers, `resume`
        starts from a captured prefix (no KV cache then: the result is for scoring, not decoding)."""
        dec = self.decoder
        n = seq.n_tokens
        device = seq.embeds.device
        planner = planner or Schedule.full(dec.n_layers)
        renumber = renumber or getattr(planner, "renumber", False)
        if renumber and seq.positions.dim() != 1:
            raise ValueError("renumbering is defined for 1-D positions only (not M-RoPE)")
        required = seq.non_visual()
        start = resume.layer if resume is not None else 0
        if start and not (isinstance(planner, Schedule) and all(not _pruned(ops) and ops.mlp is None
                                                               for ops in planner.layers[:start])):
            raise ValueError(f"resuming at layer {start} needs a static schedule that is full before it")
        h = (resume.hidden if resume is not None else seq.embeds).clone()
        full_rope = dec.rope_tables(seq.positions, h)
        active = torch.arange(n, device=device)
        cache = KVCache(mrope=seq.positions.dim() == 2)
        records = [_record(LayerOps(), n, seq.visual, None)] * start
        captured: dict[int, Tensor] = {}
        cost = ProbeCost()
        for layer_idx in range(start, dec.n_layers):
            if layer_idx in capture:
                captured[layer_idx] = h.clone()
            probe = Probe(dec, layer_idx, h, self._positions(seq, active, renumber), active, seq.visual, cost)
            ops = _on_device(planner.layer_ops(layer_idx, probe), device)
            ops.validate(n, required, layer_idx)
            kv = ops.kv_set(n).to(device) if _pruned(ops) else None
            k, v = self._attention(layer_idx, h, ops, kv, seq, full_rope, renumber)
            cache.keys.append(k)
            cache.values.append(v)
            kv_all = kv if kv is not None else torch.arange(n, device=device)
            cache.next_position.append(self._next_position(seq, kv_all, renumber))
            self._mlp(layer_idx, h, ops.mlp)
            records.append(_record(ops, n, seq.visual, kv))
            active = kv_all
            merge_after = getattr(planner, "merge_after", None)
            if merge_after is not None and layer_idx + 1 < dec.n_layers:
                nxt = Probe(dec, layer_idx + 1, h, self._positions(seq, active, renumber), active, seq.visual, cost)
                merge = merge_after(layer_idx, nxt)
                if merge is not None:
                    seq, h, active = _insert(seq, h, active, merge)
                    n, required = seq.n_tokens, seq.non_visual()
                    full_rope = dec.rope_tables(seq.positions, h)
        logits = dec.logits(h[-1:])[0]
        return PrefillOutput(logits, None if start else cache, records, cost.flops, captured)

    def _attention(self, layer_idx: int, h: Tensor, ops: LayerOps, kv: Tensor | None, seq: Sequence,
                   full_rope: tuple[Tensor, Tensor], renumber: bool) -> tuple[Tensor, Tensor]:
        dec = self.decoder
        layer = dec.layers[layer_idx]
        if kv is None:  # every token: the unpruned layer, no gather/scatter
            x = layer.input_layernorm(h)
            q, k, v = dec.qkv(layer_idx, x, x)
            q, k = dec.rotate(layer_idx, q, k, full_rope, None)
            out = self._attend(layer_idx, q, k, v, None, None)
            h += dec.attention(layer_idx).o_proj(out)
            return k, v
        q_idx = ops.attention_set(h.shape[0]).to(h.device)
        x_kv = layer.input_layernorm(h[kv])
        same = q_idx.numel() == kv.numel()
        x_q = x_kv if same else x_kv[torch.searchsorted(kv, q_idx)]
        q, k, v = dec.qkv(layer_idx, x_q, x_kv)
        if renumber:
            rope_k = dec.rope_tables(torch.arange(kv.numel(), device=h.device), h)
        else:
            rope_k = (full_rope[0][:, kv], full_rope[1][:, kv])
        if same:
            q, k = dec.rotate(layer_idx, q, k, rope_k, None)
        else:
            sel = torch.searchsorted(kv, q_idx)
            q, k = dec.rotate(layer_idx, q, k, (rope_k[0][:, sel], rope_k[1][:, sel]), rope_k)
        if q_idx.numel():
            out = self._attend(layer_idx, q, k, v, None if same else q_idx, None if same else kv)
            h.index_add_(0, q_idx, dec.attention(layer_idx).o_proj(out))
        return k, v

    def _attend(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor, q_idx: Tensor | None,
                k_idx: Tensor | None) -> Tensor:
        """Causal attention; indices given only when queries are a strict subset of the keys."""
        backend = self.backend
        mask = None
        if q.shape[2] > 1 and (q_idx is not None or backend not in _CAUSAL_BACKENDS):
            if q_idx is None:
                q_idx = k_idx = torch.arange(k.shape[2], device=q.device)
            mask = causal_mask(q_idx, k_idx, q.dtype)
            if backend.startswith("flash"):
                backend = "sdpa"  # flash kernels take no arbitrary masks
        attn = self.decoder.attention(layer_idx)
        fn = self.decoder.attention_function(layer_idx, backend)
        out, _ = fn(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
        return out.reshape(q.shape[2], -1)

    def _mlp(self, layer_idx: int, h: Tensor, idx: Tensor | None) -> None:
        layer = self.decoder.layers[layer_idx]
        if idx is None:
            h += layer.mlp(layer.post_attention_layernorm(h))
        elif idx.numel():
            h.index_add_(0, idx, layer.mlp(layer.post_attention_layernorm(h[idx])))

    @staticmethod
    def _positions(seq: Sequence, active: Tensor, renumber: bool) -> Tensor:
        if not renumber:
            return seq.positions
        pos = torch.zeros(seq.n_tokens, dtype=torch.long, device=active.device)
        pos[active] = torch.arange(active.numel(), device=active.device)
        return pos

    @staticmethod
    def _next_position(seq: Sequence, kv: Tensor, renumber: bool) -> Tensor:
        if renumber:
            return torch.tensor(kv.numel(), device=kv.device)
        return seq.positions.max() + 1

    # ------------------------------------------------------------------- decode
    @torch.inference_mode()
    def decode_step(self, token: int, cache: KVCache, step: int) -> Tensor:
        """Run one generated token through every layer; returns its next-token logits."""
        dec = self.decoder
        device = cache.keys[0].device
        h = dec.embed_tokens(torch.tensor([token], device=device))
        tables: dict[int, tuple[Tensor, Tensor]] = {}
        for layer_idx, layer in enumerate(dec.layers):
            pos = int(cache.next_position[layer_idx]) + step
            if pos not in tables:
                positions = torch.tensor([pos], device=device)
                positions = positions.expand(3, 1) if cache.mrope else positions
                tables[pos] = dec.rope_tables(positions, h)
            x = layer.input_layernorm(h)
            q, k, v = dec.qkv(layer_idx, x, x)
            q, k = dec.rotate(layer_idx, q, k, tables[pos], None)
            k_all, v_all = cache.append(layer_idx, k, v)
            h = h + dec.attention(layer_idx).o_proj(self._attend(layer_idx, q, k_all, v_all, None, None))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return dec.logits(h)[0]

    def greedy(self, prefill: PrefillOutput, max_new_tokens: int, eos_ids: set[int],
               stop: Callable[[list[int]], bool] | None = None) -> Iterator[int]:
        """Yield greedily decoded token ids until EOS, `stop(tokens)` or the token limit."""
        tokens: list[int] = []
        logits = prefill.logits
        for step in range(max_new_tokens):
            token = int(logits.argmax())
            if token in eos_ids:
                return
            tokens.append(token)
            yield token
            if stop is not None and stop(tokens):
                return
            if step + 1 < max_new_tokens:
                logits = self.decode_step(token, prefill.cache, step)


def _insert(seq: Sequence, h: Tensor, active: Tensor, merge: Merge) -> tuple[Sequence, Tensor, Tensor]:
    """The sequence, residual stream and active set with `merge`'s tokens inserted at `merge.at`."""
    at, c = merge.at, merge.size
    if not 0 < at < seq.n_tokens:
        raise ValueError(f"merge position {at} outside (0, {seq.n_tokens}): the last token must stay last")
    if merge.positions.shape[-1] != c or merge.positions.dim() != seq.positions.dim():
        raise ValueError("merged tokens need one position each, in the sequence's position format")
    device = h.device
    states = merge.states.to(device=device, dtype=h.dtype)
    new = merge.new_indices(device)
    placeholder = seq.input_ids[seq.visual[:1]].expand(c) if seq.visual.numel() else seq.input_ids.new_full((c,), -1)
    merged = Sequence(
        embeds=torch.cat([seq.embeds[:at], states.to(seq.embeds.dtype), seq.embeds[at:]]),
        positions=torch.cat([seq.positions[..., :at], merge.positions.to(device=device, dtype=seq.positions.dtype),
                             seq.positions[..., at:]], dim=-1),
        visual=torch.sort(torch.cat([merge.remap(seq.visual), new])).values,
        input_ids=torch.cat([seq.input_ids[:at], placeholder, seq.input_ids[at:]]),
    )
    h = torch.cat([h[:at], states, h[at:]])
    return merged, h, torch.sort(torch.cat([merge.remap(active), new])).values


def _pruned(ops: LayerOps) -> bool:
    return ops.attention is not None or (ops.kv_only is not None and ops.kv_only.numel() > 0)


def _on_device(ops: LayerOps, device: torch.device) -> LayerOps:
    move = lambda t: None if t is None else t.to(device=device, dtype=torch.int64)  # noqa: E731
    return LayerOps(move(ops.attention), move(ops.mlp), move(ops.kv_only))


def _record(ops: LayerOps, n: int, visual: Tensor, kv: Tensor | None) -> LayerRecord:
    def count(idx: Tensor | None) -> tuple[int, int]:
        if idx is None:
            return n, visual.numel()
        return idx.numel(), int(torch.isin(visual, idx).sum())

    q, vq = count(ops.attention)
    k, vk = count(kv)
    m, vm = count(ops.mlp)
    return LayerRecord(q, k, m, vq, vk, vm)
