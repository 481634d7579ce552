"""Encode each image once: content-addressed, memory-bounded caches of what an image turns into.

A sweep runs the same documents through many methods and budgets; neither the processor's output
nor the vision tower's depends on any of them. A loaded `Model` holds two caches (so the model is
part of every key by construction):
- `preparations`: the processor's output (`Prepared`: prompt, input ids, pixel values), keyed by a
  digest of the images' pixels and the question;
- `encodings`: the tower's output (`VisualTokens`), keyed by a digest of exactly what the tower
  reads: the processor's image-side tensors (pixel values, image sizes / grids; dtype, shape and
  bytes), which captures the image content and every processor option that changes them, plus
  the adapter's own extras (e.g. InternVL's tiles per image). A hit returns the stored encoding,
  vision signals included, so [CLS] attention, keys and pre-projector features computed for one
  method serve the next one too.

Exactness: the stored tensors are the ones a fresh call would produce (the processor and the tower
are deterministic for a fixed input, thread count and device), and nothing modifies them in place
(methods `select` or `replace`; a hit hands out a shell with its own containers), so results are
bit-identical with and without the caches (tests/test_encode_cache.py). Memory: least-recently-used
entries are dropped once the entries' tensors (for encodings also the tower's hidden states the
signals read, and computed signals) exceed `capacity_bytes`; 0 disables caching. The latency
protocol bypasses both (`cached=False`): it times the processor and the tower on every repeat.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Iterable, TypeVar

import torch
from PIL import Image
from torch import Tensor

from repro.models.adapter import Prepared, VisualTokens

Entry = TypeVar("Entry", VisualTokens, Prepared)
DEFAULT_CAPACITY_BYTES = 1 << 30  # per cache and loaded model; tinyworld-llava needs about 0.7 MB an image


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


def digest_images(images: Iterable[Image.Image], *extra: Any) -> str:
    """sha256 over the images' pixels (mode, size, bytes) and any extra values (their repr)."""
    h = hashlib.sha256()
    for image in images:
        h.update(f"{image.mode}|{image.size}|".encode())
        h.update(image.tobytes())
    for value in extra:
        h.update(repr(value).encode())
    return h.hexdigest()


def nbytes(entry: VisualTokens | Prepared) -> int:
    """Bytes of the distinct storages an entry keeps alive (an encoding's signals' hidden states included)."""
    parts = (entry.inputs,) if isinstance(entry, Prepared) else (entry.features, entry.meta, entry.signals)
    seen: dict[int, int] = {}
    for t in (t for part in parts for t in _tensors(part)):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _shell(entry: VisualTokens | Prepared) -> VisualTokens | Prepared:
    """The entry with its own containers around the shared tensors: callers may rebind its fields
    without touching the stored one."""
    if isinstance(entry, Prepared):
        return replace(entry, inputs=dict(entry.inputs), images=list(entry.images))
    return replace(entry, meta=dict(entry.meta))


class EncodingCache:
    """LRU map from a content key to an entry (`VisualTokens` or `Prepared`), bounded by the bytes
    its entries hold."""

    def __init__(self, capacity_bytes: int = DEFAULT_CAPACITY_BYTES):
        self.capacity_bytes = int(capacity_bytes)
        self._entries: OrderedDict[str, VisualTokens | Prepared] = OrderedDict()
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

    def get(self, key: str | None, compute: Callable[[], Entry]) -> Entry:
        """The entry under `key`, computed (and stored) on a miss; `key=None` never caches."""
        if key is None or not self.enabled:
            return compute()
        self._remeasure(self._last)
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            self._entries.move_to_end(key)
        else:
            self.misses += 1
            entry = compute()
            self._entries[key] = entry
            self._sizes[key] = 0
            self._remeasure(key)
        self._last = key
        self._shrink(keep=key)
        return _shell(entry)

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
