"""Assemblies and the model registry: ``create_model(name, **overrides)``, ``from_pretrained(dir)``."""

from stmodels.models.copy_last import CopyLastFrame, CopyLastFrameConfig
from stmodels.models.diffuma import DIFFUMA, DIFFUMAConfig
from stmodels.models.registry import (
    ModelConfig,
    PretrainedMixin,
    create_model,
    from_pretrained,
    list_models,
    model_config,
    register_model,
)

__all__ = [
    "CopyLastFrame",
    "CopyLastFrameConfig",
    "DIFFUMA",
    "DIFFUMAConfig",
    "ModelConfig",
    "PretrainedMixin",
    "create_model",
    "from_pretrained",
    "list_models",
    "model_config",
    "register_model",
]
