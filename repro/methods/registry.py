"""The method registry: `repro.method(name, budget=None, **options)`.

A method module registers its class with `@register(...)`, declaring its stage, its native budget
knob and its reference; the registry is filled when `repro.methods` is imported, like
lm-evaluation-harness's task registry, and is read-only afterwards.
"""

from __future__ import annotations

import inspect
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
        return spec.cls(budget=as_budget(budget), **options)
    except (TypeError, ValueError) as err:
        raise ReproError(f"bad options for method {name!r}: {err}") from None
