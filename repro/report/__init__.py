"""Tables (Markdown, LaTeX, CSV) and figures regenerated from measured records."""
