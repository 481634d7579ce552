"""Methods: the interface, the registry (`method(name, budget, **options)`) and the methods."""

from repro.methods import random_keep  # noqa: F401  (registers "random")
from repro.methods.base import Method, ScheduleMethod, top_indices, visual_tokens_for_budget
from repro.methods.registry import MethodSpec, method, register, specs

import baselines  # noqa: E402,F401  (registers the baselines)

__all__ = ["Method", "MethodSpec", "ScheduleMethod", "method", "register", "specs", "top_indices",
           "visual_tokens_for_budget"]
