"""Fitting a method on calibration data: the hook's contract and its typed, versioned artifacts.

Some methods fit something on a few calibration samples before they run (DOP searches a policy;
FitPrune fits a per-layer recipe). Such a method implements two classmethods of `Method`:

- `fit_config(options, fit) -> config`: `options` are the method's options of a sweep entry,
  `fit` the entry's `search:` keys minus the calibration keys (`calibration`, `samples`). It
  returns a frozen dataclass holding everything that changes the fit's result, and raises a
  ReproError on bad input, before any compute.
- `fit(model, samples, config, *, source, budgets, progress) -> FitArtifact`: the fit itself on
  `samples` (`repro.calibration.Sample`s drawn from `source`); `budgets` are the budgets the
  sweep will ask for (a fit may precompute per-budget choices; it must not depend on them).

and accepts `artifact=` (a path or the artifact) as a constructor option. The runner
(`runner/artifacts.py`) calls `fit` once per (model, config, calibration source, count), stores
the artifact under a name that hashes those, and passes `artifact=PATH` to every cell of the entry.

An artifact is a frozen dataclass deriving from `FitArtifact` with a `schema` name and a
`version`; `to_dict` / `from_dict` convert it to JSON types and back through its type hints (nested
dataclasses, tuples, dicts, optionals), so a stale file is refused by version, not misread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from repro.errors import ReproError

A = TypeVar("A", bound="FitArtifact")


@dataclass(frozen=True)
class Calibration:
    """Where a fit's samples came from: the source, the sample ids, and the evaluation documents
    that must be excluded because the fit saw them (`task/doc_id`; empty when disjoint by split)."""

    source: str
    samples: tuple[str, ...]
    excluded: tuple[str, ...] = ()


class FitArtifact:
    """Base of typed fit artifacts (frozen dataclasses). Subclasses set `schema` and `version`."""

    schema: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def to_dict(self) -> dict:
        return {"schema": self.schema, "version": self.version, **_plain(self)}

    @classmethod
    def from_dict(cls: type[A], data: dict, where: str = "artifact") -> A:
        if not isinstance(data, dict) or data.get("schema") != cls.schema:
            found = data.get("schema", data.get("format")) if isinstance(data, dict) else type(data).__name__
            raise ReproError(f"{where} is not a {cls.schema} artifact (schema {found!r})")
        if data.get("version") != cls.version:
            raise ReproError(f"{where} has {cls.schema} version {data.get('version')!r}, this code reads version "
                             f"{cls.version}; rerun the fit (the runner refits on its own when the store's copy is stale)")
        try:
            return _build(cls, {k: v for k, v in data.items() if k not in ("schema", "version", "store_sha256")})
        except (KeyError, TypeError, ValueError) as err:
            raise ReproError(f"{where} is a damaged {cls.schema} artifact ({err}); rerun the fit") from None

    @property
    def sha256(self) -> str:
        """Content address: the sha256 of the canonical JSON of the artifact."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls: type[A], path: Path | str) -> A:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ReproError(f"no {cls.schema} artifact at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReproError(f"{path} is corrupt ({err}); rerun the fit") from None
        return cls.from_dict(data, str(path))


def as_artifact(cls: type[A], artifact: A | Path | str) -> A:
    """An artifact given as itself or as a path to its JSON file."""
    if isinstance(artifact, cls):
        return artifact
    if isinstance(artifact, (str, Path)):
        return cls.load(artifact)
    raise ReproError(f"artifact must be a {cls.__name__} or a path, got {type(artifact).__name__}")


def config_dict(config: Any) -> dict:
    """A fit config as plain JSON types (the identity the runner hashes)."""
    return _plain(config) if dataclasses.is_dataclass(config) else dict(config)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def _build(tp: Any, value: Any) -> Any:
    """`value` (JSON types) as an instance of the type hint `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _build(next(a for a in args if a is not type(None)), value)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - fields
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)} for {tp.__name__}")
        return tp(**{k: _build(hints[k], v) for k, v in value.items()})
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in value)
        if len(args) != len(value):
            raise ValueError(f"expected {len(args)} items, got {len(value)}")
        return tuple(_build(a, v) for a, v in zip(args, value))
    if origin is list:
        return [_build(args[0], v) for v in value]
    if origin is dict:
        return {k: _build(args[1], v) for k, v in value.items()} if args else dict(value)
    if tp is float:
        return float(value)
    if tp is int:
        if isinstance(value, float) and value != int(value):
            raise ValueError(f"expected an integer, got {value}")
        return int(value)
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ValueError(f"expected {tp.__name__}, got {value!r}")
        return value
    return value  # Any, dict without parameters
