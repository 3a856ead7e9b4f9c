"""Composable ``nn.Module`` blocks for spatio-temporal predictors.

Temporal path: :class:`BiMambaLayer`, :class:`MambaEncoder` (with :class:`SpatialEncoder` /
:class:`SpatialDecoder`). Spatial path: :class:`DiTBlock`, :class:`DiTDenoiser`,
:class:`ResidualDiffusionHead` with its :class:`NoiseSchedule`. Every block takes ``backend=`` and
passes it to the ops it calls.
"""

from stmodels.nn.diffusion import NoiseSchedule, ResidualDiffusionHead, ddim_timesteps
from stmodels.nn.dit import DiTAttention, DiTBlock, DiTDenoiser, DiTFinalLayer
from stmodels.nn.embeddings import (
    PatchEmbed,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    patchify,
    timestep_embedding,
    unpatchify,
)
from stmodels.nn.encoder import MambaEncoder, SpatialDecoder, SpatialEncoder
from stmodels.nn.mamba import BiMambaLayer

__all__ = [
    "BiMambaLayer",
    "MambaEncoder",
    "SpatialEncoder",
    "SpatialDecoder",
    "DiTAttention",
    "DiTBlock",
    "DiTFinalLayer",
    "DiTDenoiser",
    "NoiseSchedule",
    "ResidualDiffusionHead",
    "ddim_timesteps",
    "PatchEmbed",
    "TimestepEmbedder",
    "get_2d_sincos_pos_embed",
    "patchify",
    "unpatchify",
    "timestep_embedding",
]
