"""repro: a reference harness for compute-efficient multimodal LLMs (DOP and its baselines).

Public API: `repro.load(...)` -> Model; `model.generate(images, question, method=...)` -> Result.
"""

from repro.errors import ReproError

__version__ = "0.1.0"


def load(name_or_path: str, **kwargs):
    """Load a model for the engine; see `repro.models.loading.load`."""
    from repro.models.loading import load as _load

    return _load(name_or_path, **kwargs)


def method(name: str, budget=None, **options):
    """Build a registered method; see `repro.methods.registry.method` and `python -m repro methods`."""
    from repro.methods import method as _method

    return _method(name, budget, **options)


__all__ = ["ReproError", "load", "method", "__version__"]
