"""DOP's search options and its search artifact, a typed `FitArtifact` (methods/fitting.py).

The artifact holds the model, the options, the calibration record, the calibration set's mean
shape, each single-parameter curve (sampled points, mean divergences), the chosen policy of each
requested budget and the search's cost (shared/docs/DOP.md, "Additive approximation and search").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from repro.errors import ReproError
from repro.methods.dop.policy import MHA_SEMANTICS, Policy
from repro.methods.fitting import Calibration, FitArtifact
from repro.methods.registry import method as build_method

DEFAULT_REDUCER = "vispruner"  # the paper's reducer on LLaVA-NeXT and InternVL3
KL_DIRECTIONS = ("forward", "reverse")
INTERPOLATIONS = ("linear", "pchip")
GROUPS = ("single", "reducer")


def default_depth_step(n_layers: int) -> int:
    """Layers between sampled depths when not given: L/8 rounded down, at least 1 (4 on a
    32-layer model, every layer on the 4-layer tiny ones, whose curves 0 and 4 alone misread)."""
    return max(1, n_layers // 8)


@dataclass(frozen=True)
class SearchOptions:
    """Every option that changes a search's result (recorded in, and checked against, the artifact).
    `depth_step=None` means `default_depth_step(L)`; the artifact records the step used."""

    reducer: str = DEFAULT_REDUCER
    reducer_options: dict = field(default_factory=dict)
    mha_semantics: str = "drop"
    kl_direction: str = "forward"
    kl_tokens: int = 1
    interpolation: str = "linear"
    groups: str = "single"
    depth_step: int | None = None
    visual_points: int = 8
    prefix_cache: bool = True  # resume depth sweeps from the reference's hidden states (speed only)

    def check(self) -> None:
        if self.mha_semantics not in MHA_SEMANTICS:
            raise ReproError(f"mha_semantics must be one of {MHA_SEMANTICS}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise ReproError(f"kl_direction must be one of {KL_DIRECTIONS}")
        if self.interpolation not in INTERPOLATIONS:
            raise ReproError(f"interpolation must be one of {INTERPOLATIONS}")
        if self.groups not in GROUPS:
            raise ReproError(f"groups must be one of {GROUPS}")
        if self.kl_tokens < 1 or (self.depth_step is not None and self.depth_step < 1) or self.visual_points < 2:
            raise ReproError("need kl_tokens >= 1, depth_step >= 1 and visual_points >= 2")

    def resolved(self, n_layers: int) -> "SearchOptions":
        """These options with the depth step a model of `n_layers` layers gets."""
        step = self.depth_step if self.depth_step is not None else default_depth_step(n_layers)
        return replace(self, depth_step=step)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def group_names(self) -> list[str]:
        """The visual groups a policy has depths for: ["visual"], or the reducer's token groups."""
        if self.groups == "single":
            return ["visual"]
        names = list(build_method(self.reducer, "tokens:1", **self.reducer_options).token_groups)
        if not names:
            raise ReproError(f"reducer {self.reducer!r} defines no token groups; use groups='single' "
                             "(or a reducer with groups, e.g. vispruner: important, diverse)")
        return names


@dataclass(frozen=True)
class Curve:
    """A single-parameter curve: sampled parameter values and the mean divergence at each."""

    points: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class GroupTokens:
    """Per-group form: mean tokens per reducer group (layout tokens in group 0) at sampled n_v."""

    points: tuple[int, ...]
    counts: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Shape:
    """The calibration set's mean sequence shape, which the FLOPs of every policy are counted on."""

    n_visual_max: int
    n_other: float
    n_layout: float
    group_tokens: GroupTokens | None = None


@dataclass(frozen=True)
class Choice:
    """The policy chosen for one budget, its predicted divergence and FLOPs on the mean shape."""

    budget: str
    policy: Policy
    predicted_divergence: float
    tflops: float
    ratio: float


@dataclass(frozen=True)
class SearchArtifact(FitArtifact):
    schema: ClassVar[str] = "repro-dop-search"
    version: ClassVar[int] = 2

    model: str
    layers: int
    options: SearchOptions
    groups: tuple[str, ...]
    calibration: Calibration
    shape: Shape
    curves: dict[str, Curve]
    reference_divergence: float
    forward_passes: int
    layer_passes: int
    seconds: float
    budgets: tuple[Choice, ...] = ()

    @property
    def grouped(self) -> bool:
        """Whether policies have depths per reducer group (`groups="reducer"`)."""
        return self.options.groups == "reducer"

    def choice(self, budget: str) -> Choice | None:
        return next((c for c in self.budgets if c.budget == budget), None)
