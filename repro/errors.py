"""Errors a user can cause. Each message names the fix; the CLI prints it without a traceback."""


class ReproError(Exception):
    """A user-facing error: bad name, bad input, infeasible budget, missing weights or data."""
