"""Which tokens each operation of each decoder layer processes.

A schedule is data: for every layer l, the tokens that take part in attention (`attention`:
each issues a query and provides a key/value), the tokens that only provide keys/values
(`kv_only`, the query-skip semantics) and the tokens that pass through the MLP (`mlp`). A token
outside a set keeps its hidden state through that sub-layer. `None` means "every token"; the
engine then runs the layer without any gather or scatter, exactly like the unpruned model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from repro.engine.probes import Probe


@dataclass(frozen=True)
class LayerOps:
    """The token sets of one decoder layer (sorted, unique int64 indices into the sequence)."""

    attention: Tensor | None = None
    mlp: Tensor | None = None
    kv_only: Tensor | None = None

    def attention_set(self, n_tokens: int) -> Tensor:
        return _resolve(self.attention, n_tokens)

    def mlp_set(self, n_tokens: int) -> Tensor:
        return _resolve(self.mlp, n_tokens)

    def kv_set(self, n_tokens: int) -> Tensor:
        """Tokens whose keys/values this layer computes and caches: attention ∪ kv_only."""
        if self.kv_only is None or self.kv_only.numel() == 0:
            return self.attention_set(n_tokens)
        return torch.unique(torch.cat([self.attention_set(n_tokens), self.kv_only]))

    def validate(self, n_tokens: int, required: Tensor, layer: int) -> None:
        """Raise ValueError for malformed index sets or a schedule that would cut the output path.

        Indices must be in range, sorted and unique; every `required` (non-visual) token must
        provide keys/values, and the last token must attend and pass through the MLP.
        """
        for name in ("attention", "mlp", "kv_only"):
            idx = getattr(self, name)
            if idx is None:
                continue
            where = f"layer {layer} {name}"
            if idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{where}: expected a 1-D integer tensor, got {tuple(idx.shape)} {idx.dtype}")
            if idx.numel() and (idx.min() < 0 or idx.max() >= n_tokens):
                raise ValueError(f"{where}: indices out of range [0, {n_tokens})")
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise ValueError(f"{where}: indices must be sorted and unique")
        if self.kv_only is not None and self.attention is not None and self.kv_only.numel():
            if torch.isin(self.kv_only, self.attention).any():
                raise ValueError(f"layer {layer} kv_only: overlaps the attention set")
        if self.kv_only is not None and self.attention is None and self.kv_only.numel():
            raise ValueError(f"layer {layer} kv_only: every token already attends")
        if self.attention is not None:
            kv = self.attention if self.kv_only is None else torch.cat([self.attention, self.kv_only])
            if not bool(torch.isin(required, kv).all()):
                raise ValueError(f"layer {layer}: every non-visual token must provide keys/values")
        last = torch.tensor([n_tokens - 1], device=required.device)
        for name in ("attention", "mlp"):
            idx = getattr(self, name)
            if idx is not None and not bool(torch.isin(last, idx).all()):
                raise ValueError(f"layer {layer} {name}: the last token (the answer's source) must be kept")


def _resolve(idx: Tensor | None, n_tokens: int) -> Tensor:
    return torch.arange(n_tokens) if idx is None else idx


class Planner(Protocol):
    """Decides each layer's token sets, possibly from probes of the running prefill.

    A planner may also define `merge_after(layer, probe) -> Merge | None`: called after `layer`
    ran, with a probe bound to the next layer (its hidden states are `layer`'s output); a Merge
    it returns is inserted by the engine before the next layer (SparseVLM's recycled tokens).
    """

    def layer_ops(self, layer: int, probe: "Probe") -> LayerOps: ...


@dataclass(frozen=True)
class Merge:
    """New tokens a planner adds to the sequence between two layers: merged visual tokens.

    `states` (c, d) become rows `at .. at+c-1` of the residual stream; every token from `at` on
    moves c places right (`remap`). The new tokens count as visual, have no cache in the layers
    before, and take `positions` ((c,) or (3, c)) for RoPE when positions are not renumbered.
    Only the engine applies it; index sets of later layers are in the new numbering.
    """

    at: int
    states: Tensor
    positions: Tensor

    @property
    def size(self) -> int:
        return self.states.shape[0]

    def remap(self, idx: Tensor) -> Tensor:
        """Old sequence indices -> indices after the insertion."""
        return idx + self.size * (idx >= self.at).to(idx.dtype)

    def new_indices(self, device=None) -> Tensor:
        return torch.arange(self.at, self.at + self.size, device=device)


@dataclass(frozen=True)
class Schedule:
    """A static plan: one LayerOps per decoder layer (also a Planner that ignores probes)."""

    layers: tuple[LayerOps, ...]
    renumber: bool = False
    name: str = field(default="schedule", compare=False)

    @classmethod
    def full(cls, n_layers: int) -> "Schedule":
        return cls(tuple(LayerOps() for _ in range(n_layers)), name="full")

    def layer_ops(self, layer: int, probe: "Probe") -> LayerOps:
        return self.layers[layer]

    def validate(self, n_tokens: int, required: Tensor) -> None:
        for layer, ops in enumerate(self.layers):
            ops.validate(n_tokens, required, layer)

    def without_dead_ops(self, n_tokens: int) -> "Schedule":
        """Drop operations whose result can never reach the output.

        A token's state after layer l is read again only if the token attends or provides
        keys/values at a later layer (the decode steps read those caches too), or if it is the
        last token (its state gives the first answer token). Its MLP at l and its query at l
        are dead otherwise; a dead query becomes key/value-only, because other tokens still
        read its key and value at l.
        """
        alive = torch.zeros(n_tokens, dtype=torch.bool)
        alive[n_tokens - 1] = True
        out: list[LayerOps] = []
        for ops in reversed(self.layers):
            attn = ops.attention_set(n_tokens)
            kv = ops.kv_set(n_tokens)
            mlp = ops.mlp_set(n_tokens)
            live_attn = attn[alive[attn]]
            out.append(LayerOps(
                attention=live_attn,
                mlp=mlp[alive[mlp]],
                kv_only=kv[~torch.isin(kv, live_attn)],
            ))
            alive[kv] = True
        return Schedule(tuple(reversed(out)), renumber=self.renumber, name=f"{self.name}+dead-ops-skipped")


def visual_schedule(
    n_tokens: int,
    visual: Tensor,
    attention_keep: list[Tensor | None],
    mlp_keep: list[Tensor | None],
    kv_only_keep: list[Tensor | None] | None = None,
    *,
    renumber: bool = False,
    name: str = "schedule",
) -> Schedule:
    """Build a schedule from per-layer subsets of the visual tokens; every other token is kept.

    `visual` holds the sequence indices of the visual tokens; each `*_keep[l]` holds sequence
    indices of the visual tokens kept by that operation (None = all of them).
    """
    others = torch.ones(n_tokens, dtype=torch.bool)
    others[visual] = False
    other_idx = others.nonzero().flatten()

    def with_others(keep: Tensor | None) -> Tensor | None:
        if keep is None:
            return None
        return torch.sort(torch.cat([other_idx, keep.to(torch.int64)])).values

    kv_only_keep = kv_only_keep or [None] * len(attention_keep)
    layers = tuple(
        LayerOps(
            attention=with_others(a),
            mlp=with_others(m),
            kv_only=None if k is None else torch.sort(k.to(torch.int64)).values,
        )
        for a, m, k in zip(attention_keep, mlp_keep, kv_only_keep, strict=True)
    )
    return Schedule(layers, renumber=renumber, name=name)


def random_schedule(
    n_tokens: int,
    visual: Tensor,
    n_layers: int,
    generator: torch.Generator,
    *,
    keep: float = 0.5,
    kv_only: bool = False,
    renumber: bool = False,
) -> Schedule:
    """A random schedule over the visual tokens (tests, FLOPs cross-checks and benchmarks).

    Each layer keeps a random subset (about `keep` of the visual tokens) for attention and an
    independent one for the MLP; with `kv_only`, some of the other visual tokens provide keys and
    values without issuing queries.
    """
    visual = visual.cpu()

    def subset() -> Tensor:
        return visual[torch.rand(visual.numel(), generator=generator) < keep]

    attention = [subset() for _ in range(n_layers)]
    mlp = [subset() for _ in range(n_layers)]
    extra = None
    if kv_only:
        extra = [v[torch.rand(v.numel(), generator=generator) < 0.5]
                 for v in (visual[~torch.isin(visual, a)] for a in attention)]
    return visual_schedule(n_tokens, visual, attention, mlp, extra, renumber=renumber, name="random")
