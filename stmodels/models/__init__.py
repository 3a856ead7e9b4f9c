"""Assemblies and the model registry: ``create_model(name, **overrides)``, ``from_pretrained(dir)``."""

from stmodels.models.convlstm import ConvLSTM, ConvLSTMConfig
from stmodels.models.copy_last import CopyLastFrame, CopyLastFrameConfig, WarpLastFrame, WarpLastFrameConfig
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
from stmodels.models.simvp import SimVP, SimVPConfig

__all__ = [
    "ConvLSTM",
    "ConvLSTMConfig",
    "CopyLastFrame",
    "CopyLastFrameConfig",
    "DIFFUMA",
    "DIFFUMAConfig",
    "ModelConfig",
    "PretrainedMixin",
    "SimVP",
    "SimVPConfig",
    "WarpLastFrame",
    "WarpLastFrameConfig",
    "create_model",
    "from_pretrained",
    "list_models",
    "model_config",
    "register_model",
]
