"""The Method interface (and, later, the registry of methods and DOP)."""

from repro.methods.base import Method, ScheduleMethod

__all__ = ["Method", "ScheduleMethod"]
