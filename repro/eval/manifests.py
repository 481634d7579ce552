"""The entry point lmms-eval reads (group `lmms_eval.models`, declared in pyproject.toml).

lmms-eval 0.7.3 resolves `--model NAME` only through its manifest registry, which it fills from
this entry-point group; the legacy `@register_model` decorator alone is not consulted.
"""

from __future__ import annotations

MODEL_ID = "repro"
CLASS_PATH = "repro.eval.lmms_model.ReproLMM"


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]


def register(overwrite: bool = True) -> None:
    """Register in-process (for an environment where the package was not pip-installed)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    for m in manifests():
        MODEL_REGISTRY_V2.register_manifest(m, overwrite=overwrite)
