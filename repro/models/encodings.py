"""Encode each image once: a content-addressed, memory-bounded cache of visual encodings.

A sweep runs the same documents through many methods and budgets; the vision tower's output does
not depend on any of them. The cache belongs to one loaded `Model` (so the model is part of the
key by construction) and is keyed by a digest of exactly what the tower reads: the processor's
image-side tensors (pixel values, image sizes / grids; dtype, shape and bytes), which captures the
image content and every processor option that changes them, plus the adapter's own extras (e.g.
InternVL's tiles per image). A hit returns the stored `VisualTokens`, vision signals included, so
[CLS] attention, keys and pre-projector features computed for one method serve the next one too.

Exactness: the stored tensors are the ones a fresh encode would produce (the tower is
deterministic for a fixed input, thread count and device), and methods never modify encodings in
place (they `select` or `replace`), so results are bit-identical with and without the cache
(tests/test_encode_cache.py). Memory: least-recently-used entries are dropped once the entries'
tensors (features, metadata, the tower's hidden states the signals read, computed signals) exceed
`capacity_bytes`; 0 disables caching.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from repro.models.adapter import VisualTokens

DEFAULT_CAPACITY_BYTES = 1 << 30  # per loaded model; tinyworld-llava needs about 0.7 MB an image


def digest_tensors(items: Iterable[tuple[str, Tensor]], *extra: Any) -> str:
    """sha256 over named tensors (dtype, shape, bytes) and any extra values (their repr)."""
    h = hashlib.sha256()
    for name, t in items:
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for value in extra:
        h.update(repr(value).encode())
    return h.hexdigest()


def _tensors(obj: Any, depth: int = 0) -> Iterable[Tensor]:
    """Tensors held by `obj` (a tensor, a container, or an object's attributes; modules skipped)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, depth + 1)
    elif depth == 0 and hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        for v in vars(obj).values():
            yield from _tensors(v, depth + 1)


def nbytes(visual: VisualTokens) -> int:
    """Bytes of the distinct storages an encoding keeps alive (signals' hidden states included)."""
    seen: dict[int, int] = {}
    for t in [*_tensors(visual.features), *_tensors(visual.meta), *_tensors(visual.signals)]:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class EncodingCache:
    """LRU map from an encoding key to `VisualTokens`, bounded by the bytes its entries hold."""

    def __init__(self, capacity_bytes: int = DEFAULT_CAPACITY_BYTES):
        self.capacity_bytes = int(capacity_bytes)
        self._entries: OrderedDict[str, VisualTokens] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._total = 0
        self._last: str | None = None  # signals are computed after `get` returns: re-measure it next time
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def nbytes(self) -> int:
        """Bytes the entries hold now (signals computed since insertion included)."""
        return sum(nbytes(v) for v in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
        self._sizes.clear()
        self._total, self._last = 0, None

    def get(self, key: str | None, compute: Callable[[], VisualTokens]) -> VisualTokens:
        """The encoding under `key`, computed (and stored) on a miss; `key=None` never caches."""
        if key is None or not self.enabled:
            return compute()
        self._remeasure(self._last)
        visual = self._entries.get(key)
        if visual is not None:
            self.hits += 1
            self._entries.move_to_end(key)
        else:
            self.misses += 1
            visual = compute()
            self._entries[key] = visual
            self._sizes[key] = 0
            self._remeasure(key)
        self._last = key
        self._shrink(keep=key)
        # A fresh shell each time: callers may rebind its fields without touching the stored one.
        return replace(visual, meta=dict(visual.meta))

    def _remeasure(self, key: str | None) -> None:
        if key in self._entries:
            size = nbytes(self._entries[key])
            self._total += size - self._sizes[key]
            self._sizes[key] = size

    def _shrink(self, keep: str) -> None:
        """Drop least recently used entries until within capacity (the entry just used stays)."""
        while self._total > self.capacity_bytes and len(self._entries) > 1:
            key = next(iter(self._entries))
            if key == keep:
                break
            del self._entries[key]
            self._total -= self._sizes.pop(key)
        if self._total > self.capacity_bytes:  # one entry larger than the whole budget
            self._entries.pop(keep)
            self._total -= self._sizes.pop(keep)
            self._last = None
