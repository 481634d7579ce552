"""Methods: the interface, the registry (`method(name, budget, **options)`) and the methods."""

from repro.methods import random_keep, uniform  # noqa: F401  (register "random" and "uniform")
from repro.methods.base import Method, ScheduleMethod, top_indices, visual_tokens_for_budget
from repro.methods.registry import MethodSpec, method, register, specs

import baselines  # noqa: E402,F401  (registers the baselines)
from repro.methods import dop  # noqa: E402,F401  (registers "dop")

__all__ = ["Method", "MethodSpec", "ScheduleMethod", "method", "register", "specs", "top_indices",
           "visual_tokens_for_budget"]
