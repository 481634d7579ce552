"""Errors a user can cause. Each message names the fix; the CLI prints it without a traceback."""


class ReproError(Exception):
    """A user-facing error: bad name, bad input, infeasible budget, missing weights or data."""


class InfeasibleBudget(ReproError):
    """A budget below the cheapest setting of a method on one sample (a long prompt, a late layer).
    Evaluation records such a sample as infeasible and goes on; a direct call still fails."""
