"""lmms-eval integration: the `repro` model class, its entry point, the harness driver and the
paper task set.

    lmms-eval --model repro --model_args model=tinyworld-llava,method=random,options='{"keep":0.25}' \\
        --tasks tinyworld --include_path <data_dir>/tasks
    repro.eval.evaluate("model=tinyworld-llava", ["tinyworld"], data_dir=..., limit=10)

See `lmms_model.ReproLMM` for the accepted `model_args`, `run.evaluate` for the driver (it calls
`simple_evaluate`, which raises, unlike the CLI), and `tasks` for the thirteen paper tasks.
"""

from __future__ import annotations

from .run import evaluate

__all__ = ["evaluate"]
