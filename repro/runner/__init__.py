"""Sweeps: YAML specs expand into cells (spec), cells are evaluated by an executor (executors)
and written to a content-addressed store (store); sweep ties them together with resume."""
