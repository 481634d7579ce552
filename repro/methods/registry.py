"""The method registry: `repro.method(name, budget=None, **options)`.

A method module registers its class with `@register(...)`, declaring its stage, its native budget
knob and its reference; the registry is filled when `repro.methods` is imported, like
lm-evaluation-harness's task registry, and is read-only afterwards.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from repro.budget import as_budget
from repro.errors import ReproError
from repro.methods.base import Method

STAGES = ("none", "pre-llm", "in-llm", "pre-llm+in-llm")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method. Its constructor's defaults are the faithful settings (the official
    implementation's behaviour); `variants` documents the options that switch to harness variants."""

    name: str
    cls: type[Method]
    stage: str
    knob: str  # what `tokens:N` means for this method
    reference: str  # paper and official repository
    variants: Mapping[str, str] = field(default_factory=dict)

    @property
    def requires(self) -> tuple[str, ...]:
        """Inputs beyond the model's own weights (e.g. "text_tower"), for planning and staging."""
        return tuple(getattr(self.cls, "requires", ()))

    def faithful_options(self) -> dict[str, object]:
        """The constructor's keyword defaults: the official implementation's settings."""
        params = inspect.signature(self.cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, *, stage: str, knob: str, reference: str,
             variants: Mapping[str, str] | None = None) -> Callable[[type[Method]], type[Method]]:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")

    def add(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = MethodSpec(name, cls, stage, knob, reference, dict(variants or {}))
        return cls

    return add


def specs() -> list[MethodSpec]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def method_spec(name: str) -> MethodSpec | None:
    """The registered spec of `name` (None for the unpruned model or an unknown name)."""
    return _REGISTRY.get(name)


def method(name: str, budget=None, **options) -> Method:
    """Build a registered method with a budget (`tokens:N`, `ratio:R`, `tflops:X`) and options."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ReproError(f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    try:
        budget = as_budget(budget)
    except ReproError as err:
        raise ReproError(f"method {name!r}: budget {budget!r}: {err}") from None
    bad = option_problems(spec, options)
    if bad:
        raise ReproError(f"bad options for method {name!r}: {'; '.join(bad)}")
    try:
        return spec.cls(budget=budget, **options)
    except (TypeError, ValueError) as err:
        raise ReproError(f"bad options for method {name!r}: {err}") from None


def option_problems(spec: MethodSpec, options: Mapping[str, object]) -> list[str]:
    """Unknown options and values of the wrong type (by the constructor's annotations), so that
    `k="two"` is refused here instead of failing, or silently meaning something else, later."""
    accepted = spec.faithful_options()
    out = [f"unknown option {k!r} (accepted: {', '.join(accepted) or 'none'})" for k in options if k not in accepted]
    try:
        hints = typing.get_type_hints(spec.cls.__init__)
    except (NameError, TypeError):  # annotations that do not resolve: the constructor checks
        return out
    for key, value in options.items():
        hint = hints.get(key)
        if key in accepted and hint is not None and not _accepts(hint, value):
            out.append(f"{key}={value!r} ({type(value).__name__}): {key} takes {_type_name(hint)}")
    return out


def _accepts(hint: object, value: object) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    if origin in (tuple, list):  # YAML and JSON give lists where a constructor annotates a tuple
        return isinstance(value, (tuple, list))
    return isinstance(value, origin) if isinstance(origin, type) else True


def _type_name(hint: object) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", dict: "a mapping",
             type(None): "None"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
