"""DiT blocks and the DIFFUMA spatial-path denoiser over frame sequences.

Reference: Peebles & Xie, "Scalable Diffusion Models with Transformers" (DiT, 2023), Sec. 3.2
(adaLN-Zero blocks, final layer, initialisation); DIFFUMA (Xie et al., arXiv 2507.06738, 2025) for
the context-conditioned denoiser of the spatial path. The paper does not publish its sizes; every
size here is a configurable default.

Every modulation goes through :func:`stmodels.ops.adaln_modulate` with the block's ``backend``.
Tokens are ``(batch, T, P, hidden)``: ``T`` frames of ``P`` patches each (row-major patch order).
Conditioning is either global, ``(batch, hidden)``, or per token, ``(batch, T, P, hidden)``; the form
is read from the rank of ``c``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stmodels.nn.embeddings import PatchEmbed, TimestepEmbedder, get_2d_sincos_pos_embed, unpatchify
from stmodels.ops import adaln_modulate
from stmodels.nn._common import check_backend_name

__all__ = ["DiTAttention", "DiTBlock", "DiTFinalLayer", "DiTDenoiser", "ATTENTION_MODES", "CONDITIONING_MODES"]

#: ``"spatial"``: attention within each frame; ``"spacetime"``: over all frames' tokens together.
ATTENTION_MODES = ("spatial", "spacetime")
#: ``"token"``: one conditioning vector per token; ``"global"``: one per sample.
CONDITIONING_MODES = ("token", "global")

# DiT's LayerNorm epsilon for the modulated norms.
_NORM_EPS = 1e-6


def _check_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: `{name}` must be one of {choices}, got {value!r}")


def _modulation_to_tokens(modulation: torch.Tensor, tokens: int, owner: str) -> tuple[torch.Tensor, bool]:
    """Bring SiLU+Linear(c) to ``(batch, 6H)`` (global) or ``(batch, S, 6H)`` (per token)."""
    if modulation.dim() == 2:
        return modulation, False
    if modulation.dim() == 4 and modulation.shape[1] * modulation.shape[2] == tokens:
        return modulation.reshape(modulation.shape[0], tokens, modulation.shape[-1]), True
    raise ValueError(
        f"{owner}: conditioning `c` must be (batch, hidden) or (batch, T, P, hidden) matching x, "
        f"got modulation of shape {tuple(modulation.shape)} for {tokens} tokens"
    )


def _check_tokens_and_condition(owner: str, x: torch.Tensor, c: torch.Tensor, hidden: int) -> None:
    if x.dim() != 4 or x.shape[-1] != hidden:
        raise ValueError(f"{owner}: `x` must have shape (batch, T, P, {hidden}), got {tuple(x.shape)}")
    global_shape = (x.shape[0], hidden)
    if tuple(c.shape) != global_shape and tuple(c.shape) != tuple(x.shape):
        raise ValueError(
            f"{owner}: `c` must have shape (batch, hidden) = {global_shape} or (batch, T, P, hidden) = "
            f"{tuple(x.shape)}, got {tuple(c.shape)}"
        )


class DiTAttention(nn.Module):
    """Multi-head self-attention over the tokens of each frame or of the whole sequence.

    Args:
        hidden: token size, divisible by ``heads``.
        heads: number of attention heads.
        attention: ``"spatial"`` (sequences of the ``P`` tokens of one frame, ``batch * T`` of them)
            or ``"spacetime"`` (one sequence of ``T * P`` tokens per sample).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        attention: str = "spatial",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_choice("DiTAttention", "attention", attention, ATTENTION_MODES)
        if heads < 1 or hidden % heads:
            raise ValueError(f"DiTAttention: `hidden`={hidden} must be divisible by `heads`={heads}")
        self.hidden = hidden
        self.heads = heads
        self.attention = attention
        self.qkv = nn.Linear(hidden, 3 * hidden, device=device, dtype=dtype)
        self.proj = nn.Linear(hidden, hidden, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend.

        Args:
            x: (batch, T, P, hidden).

        Returns:
            (batch, T, P, hidden).
        """
        batch, frames, patches, hidden = x.shape
        if self.attention == "spatial":
            sequences = x.reshape(batch * frames, patches, hidden)
        else:
            sequences = x.reshape(batch, frames * patches, hidden)
        qkv = rearrange(self.qkv(sequences), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out = rearrange(out, "n h l d -> n l (h d)")
        return self.proj(out).reshape(batch, frames, patches, hidden)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, heads={self.heads}, attention={self.attention!r}"


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero: ``x + gate * Attn(mod(x))`` then ``x + gate * MLP(mod(x))``.

    ``mod(x) = adaln_modulate(x, shift, scale)`` (LayerNorm without affine, eps 1e-6, then
    ``* (1 + scale) + shift``); ``shift, scale, gate`` for both sub-layers come from
    ``SiLU -> Linear(hidden, 6 * hidden)`` of the conditioning. That Linear is zero-initialised here,
    so a freshly built block is exactly the identity (gates are 0).

    Args:
        hidden: token size, divisible by ``heads``.
        heads: number of attention heads.
        mlp_ratio: MLP width as a multiple of ``hidden``.
        attention: ``"spatial"`` (within each frame) or ``"spacetime"`` (over all frames).
        backend: backend of :func:`~stmodels.ops.adaln_modulate`; None follows the global default
            (:func:`stmodels.ops.use_backend`, ``STMODELS_BACKEND``, else ``"auto"``).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        mlp_ratio: float = 4.0,
        attention: str = "spatial",
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.hidden = hidden
        self.heads = heads
        self.mlp_ratio = mlp_ratio
        self.attention = attention
        self.backend = check_backend_name(backend, type(self).__name__)
        self.attn = DiTAttention(hidden, heads, attention, **factory)
        mlp_hidden = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_hidden, **factory),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden, **factory),
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DiT: xavier-uniform Linear weights, zero biases; zero modulation so the block starts as identity.
        for layer in (self.attn.qkv, self.attn.proj, self.mlp[0], self.mlp[2]):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (batch, T, P, hidden) tokens of ``T`` frames with ``P`` patches each.
            c: conditioning, (batch, hidden) (global) or (batch, T, P, hidden) (per token).

        Returns:
            (batch, T, P, hidden). Gradients flow to x, c and every parameter.
        """
        _check_tokens_and_condition("DiTBlock", x, c, self.hidden)
        batch, frames, patches, hidden = x.shape
        tokens = frames * patches
        modulation, per_token = _modulation_to_tokens(self.modulation(c), tokens, "DiTBlock")
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
        if not per_token:
            # Per-sample gates broadcast over the S tokens; adaln_modulate broadcasts shift/scale itself.
            gate_attn, gate_mlp = gate_attn[:, None, :], gate_mlp[:, None, :]

        h = x.reshape(batch, tokens, hidden)
        normed = adaln_modulate(h, shift_attn, scale_attn, eps=_NORM_EPS, backend=self.backend)
        h = h + gate_attn * self.attn(normed.reshape(x.shape)).reshape(batch, tokens, hidden)
        normed = adaln_modulate(h, shift_mlp, scale_mlp, eps=_NORM_EPS, backend=self.backend)
        h = h + gate_mlp * self.mlp(normed)
        return h.reshape(x.shape)

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden}, heads={self.heads}, mlp_ratio={self.mlp_ratio}, "
            f"attention={self.attention!r}, backend={self.backend!r}"
        )


class DiTFinalLayer(nn.Module):
    """DiT's final layer: ``Linear(adaln_modulate(x, shift, scale))`` back to patch pixels.

    ``shift, scale`` come from ``SiLU -> Linear(hidden, 2 * hidden)`` of the conditioning. Both
    Linears are zero-initialised (DiT), so a fresh denoiser predicts exactly 0, unless
    ``init_std > 0`` draws the output Linear's weights from ``N(0, init_std^2)``: a fresh denoiser
    then predicts small values and every input (the context among them) gets gradient from the first
    step, which DiT's exact zero denies it until the output layer has moved.

    Args:
        hidden: token size.
        out_features: pixels per patch, ``p * p * C``.
        init_std: standard deviation of the output Linear's initial weights (0: zeros, as DiT).
        backend: backend of :func:`~stmodels.ops.adaln_modulate` (None: the global default).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        hidden: int,
        out_features: int,
        backend: str | None = None,
        init_std: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.hidden = hidden
        self.out_features = out_features
        self.init_std = float(init_std)
        self.backend = check_backend_name(backend, type(self).__name__)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, **factory))
        self.linear = nn.Linear(hidden, out_features, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.modulation[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.init_std > 0:
            nn.init.normal_(self.linear.weight, std=self.init_std)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Project tokens to patch pixels.

        Args:
            x: (batch, T, P, hidden).
            c: (batch, hidden) or (batch, T, P, hidden).

        Returns:
            (batch, T, P, out_features).
        """
        _check_tokens_and_condition("DiTFinalLayer", x, c, self.hidden)
        batch, frames, patches, hidden = x.shape
        tokens = frames * patches
        modulation, _ = _modulation_to_tokens(self.modulation(c), tokens, "DiTFinalLayer")
        shift, scale = modulation.chunk(2, dim=-1)
        normed = adaln_modulate(x.reshape(batch, tokens, hidden), shift, scale, eps=_NORM_EPS, backend=self.backend)
        return self.linear(normed).reshape(batch, frames, patches, self.out_features)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, out_features={self.out_features}, backend={self.backend!r}"


class DiTDenoiser(nn.Module):
    """Context-conditioned DiT over a sequence of frames (DIFFUMA's spatial path).

    Each frame is cut into ``p x p`` patches (:class:`~stmodels.nn.embeddings.PatchEmbed`), plus a
    fixed 2-D sin-cos position embedding and a learned per-frame embedding; with ``cond_channels > 0``
    conditioning images (e.g. the last observed frame) are concatenated to the frames' channels before
    the patch embedding, and with ``context_tokens=True`` the context, resized to the patch grid, is
    projected (``Linear(context_channels, hidden)``, not zero-initialised) and added to the tokens, so
    both reach the network with a live gradient from the first step, besides the zero-initialised
    AdaLN path below; ``depth``
    :class:`DiTBlock` s; a :class:`DiTFinalLayer` and unpatchify. The conditioning is
    ``TimestepEmbedder(t)`` plus the projected context:

    * ``"global"``: context averaged over (T, H', W'), ``Linear(context_channels, hidden)``:
      ``(batch, hidden)``.
    * ``"token"``: context resized per frame to the patch grid ``(H/p, W/p)`` by bilinear
      interpolation (antialiased when shrinking, so every context pixel contributes) and projected
      per token by ``Linear(context_channels, hidden)``: ``(batch, T, P, hidden)``, plus the timestep
      embedding broadcast over the tokens.

    Args:
        frame_shape: ``(C, H, W)`` of a frame; H and W divisible by ``patch_size``.
        frames: number of frames ``T`` (size of the learned frame embedding).
        context_channels: channels of the context features.
        context_size: ``(H', W')`` of the context features.
        patch_size: side ``p`` of the patches.
        hidden: token size, divisible by ``heads`` and by 4 (2-D sin-cos embedding).
        depth: number of DiT blocks.
        heads: attention heads.
        mlp_ratio: MLP width as a multiple of ``hidden``.
        attention: ``"spatial"`` (within each frame) or ``"spacetime"`` (over all frames).
        conditioning: ``"token"`` or ``"global"``.
        cond_channels: channels of the conditioning images concatenated to ``x`` (0: none).
        context_tokens: also add the projected context to the tokens (see above).
        final_init_std: initial weight scale of the final layer's output Linear (0: zeros, DiT's
            choice; see :class:`DiTFinalLayer`).
        backend: backend of every :func:`~stmodels.ops.adaln_modulate` call (None: the global default).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        frame_shape: tuple[int, int, int],
        frames: int,
        context_channels: int,
        context_size: tuple[int, int],
        patch_size: int = 2,
        hidden: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        attention: str = "spatial",
        conditioning: str = "token",
        cond_channels: int = 0,
        context_tokens: bool = False,
        final_init_std: float = 0.0,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_choice("DiTDenoiser", "attention", attention, ATTENTION_MODES)
        _check_choice("DiTDenoiser", "conditioning", conditioning, CONDITIONING_MODES)
        channels, height, width = (int(v) for v in frame_shape)
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(
                f"DiTDenoiser: frame size {height} x {width} must be divisible by patch_size={patch_size}"
            )
        if hidden % 4:
            raise ValueError(f"DiTDenoiser: `hidden` must be divisible by 4 (2-D sin-cos embedding), got {hidden}")
        if heads < 1 or hidden % heads:
            raise ValueError(f"DiTDenoiser: `hidden`={hidden} must be divisible by `heads`={heads}")
        if cond_channels < 0:
            raise ValueError(f"DiTDenoiser: `cond_channels` must be >= 0, got {cond_channels}")
        if frames < 1 or depth < 0 or context_channels < 1:
            raise ValueError(
                f"DiTDenoiser: need frames >= 1, depth >= 0, context_channels >= 1; got {frames}, {depth}, "
                f"{context_channels}"
            )
        factory = {"device": device, "dtype": dtype}
        self.frame_shape = (channels, height, width)
        self.frames = frames
        self.context_channels = context_channels
        self.context_size = (int(context_size[0]), int(context_size[1]))
        self.patch_size = patch_size
        self.hidden = hidden
        self.depth = depth
        self.heads = heads
        self.mlp_ratio = mlp_ratio
        self.attention = attention
        self.conditioning = conditioning
        self.cond_channels = int(cond_channels)
        self.context_tokens = bool(context_tokens)
        self.backend = check_backend_name(backend, type(self).__name__)
        self.grid = (height // patch_size, width // patch_size)

        self.patch_embed = PatchEmbed(channels + self.cond_channels, hidden, patch_size, **factory)
        # Fixed, derived from the config: not saved with the weights.
        self.register_buffer(
            "pos_embed",
            get_2d_sincos_pos_embed(hidden, *self.grid).to(device=device, dtype=dtype or torch.get_default_dtype()),
            persistent=False,
        )
        self.frame_embed = nn.Parameter(torch.empty(frames, hidden, **factory))
        self.t_embedder = TimestepEmbedder(hidden, **factory)
        self.context_proj = nn.Linear(context_channels, hidden, **factory)
        self.context_embed = nn.Linear(context_channels, hidden, **factory) if self.context_tokens else None
        self.blocks = nn.ModuleList(
            DiTBlock(hidden, heads, mlp_ratio, attention, backend, **factory) for _ in range(depth)
        )
        self.final_layer = DiTFinalLayer(hidden, patch_size * patch_size * channels, backend,
                                         init_std=final_init_std, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the denoiser's own layers; the blocks and final layer initialise themselves."""
        nn.init.normal_(self.frame_embed, std=0.02)
        for linear in (self.context_proj, self.context_embed):
            if linear is not None:
                nn.init.xavier_uniform_(linear.weight)
                nn.init.zeros_(linear.bias)

    def set_backend(self, backend: str | None) -> None:
        """Use ``backend`` for every :func:`~stmodels.ops.adaln_modulate` call of this denoiser."""
        backend = check_backend_name(backend, type(self).__name__)
        for module in self.modules():
            if isinstance(module, (DiTDenoiser, DiTBlock, DiTFinalLayer)):
                module.backend = backend

    def _steps(self, t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            return torch.full((batch,), float(t), device=device)
        if t.dim() == 0:
            return t.to(device).expand(batch)
        if tuple(t.shape) != (batch,):
            raise ValueError(f"DiTDenoiser: `t` must have shape (batch,) = ({batch},), got {tuple(t.shape)}")
        return t.to(device)

    def _check_context(self, context: torch.Tensor) -> None:
        expected = (self.frames, self.context_channels, *self.context_size)
        if context.dim() != 5 or tuple(context.shape[1:]) != expected:
            raise ValueError(
                f"DiTDenoiser: `context` must have shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(context.shape)}"
            )

    def _context_per_token(self, context: torch.Tensor) -> torch.Tensor:
        """(batch, T, C_ctx, H', W') -> (batch, T, P, C_ctx): resized per frame to the patch grid."""
        batch = context.shape[0]
        maps = context.reshape(batch * self.frames, self.context_channels, *self.context_size)
        if self.context_size != self.grid:
            shrinking = self.grid[0] < self.context_size[0] or self.grid[1] < self.context_size[1]
            maps = F.interpolate(maps, size=self.grid, mode="bilinear", align_corners=False, antialias=shrinking)
        return rearrange(maps, "(b t) c h w -> b t (h w) c", b=batch)

    def embed_conditioning(self, t: torch.Tensor | int | float, context: torch.Tensor,
                           per_token: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning ``c`` given to every block.

        Args:
            t: (batch,) integer or float diffusion steps (a scalar is broadcast).
            context: (batch, T, context_channels, H', W').
            per_token: the context already resized to the patch grid, (batch, T, P, context_channels),
                if the caller has it.

        Returns:
            (batch, hidden) for ``conditioning="global"``, (batch, T, P, hidden) for ``"token"``.
        """
        self._check_context(context)
        batch = context.shape[0]
        dtype = self.context_proj.weight.dtype
        t_emb = self.t_embedder(self._steps(t, batch, context.device))
        context = context.to(dtype)
        if self.conditioning == "global":
            return t_emb + self.context_proj(context.mean(dim=(1, 3, 4)))
        if per_token is None:
            per_token = self._context_per_token(context)
        return self.context_proj(per_token) + t_emb[:, None, None, :]

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float, context: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the diffusion target (noise, v, x0 or residual, as trained) for noisy frames.

        Args:
            x: (batch, T, C, H, W) noisy frames.
            t: (batch,) integer or float diffusion steps (a scalar is broadcast).
            context: (batch, T, context_channels, H', W') conditioning features.
            cond: (batch, T, cond_channels, H, W) conditioning images concatenated to ``x``'s channels
                (required when ``cond_channels > 0``, else must be None).

        Returns:
            (batch, T, C, H, W) in the parameters' dtype. Gradients flow to x, context and parameters.
        """
        expected = (self.frames, *self.frame_shape)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"DiTDenoiser: `x` must have shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"DiTDenoiser: `context` batch {context.shape[0]} differs from `x` batch {x.shape[0]}"
            )
        dtype = self.patch_embed.proj.weight.dtype
        if self.cond_channels:
            expected_cond = (x.shape[0], self.frames, self.cond_channels, *self.frame_shape[1:])
            if cond is None or tuple(cond.shape) != expected_cond:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"DiTDenoiser: `cond` must have shape {expected_cond}, got {got}")
            x = torch.cat([x.to(dtype), cond.to(dtype)], dim=2)
        elif cond is not None:
            raise ValueError("DiTDenoiser: `cond` given but the denoiser was built with cond_channels=0")
        self._check_context(context)
        per_token = None
        if self.context_tokens or self.conditioning == "token":
            per_token = self._context_per_token(context.to(self.context_proj.weight.dtype))
        c = self.embed_conditioning(t, context, per_token)
        tokens = self.patch_embed(x.to(dtype))
        tokens = tokens + self.pos_embed + self.frame_embed[:, None, :]
        if self.context_embed is not None:
            tokens = tokens + self.context_embed(per_token)
        for block in self.blocks:
            tokens = block(tokens, c)
        patches = self.final_layer(tokens, c)
        return unpatchify(patches, self.patch_size, self.frame_shape[0], *self.grid)

    def extra_repr(self) -> str:
        return (
            f"frame_shape={self.frame_shape}, frames={self.frames}, context_channels={self.context_channels}, "
            f"context_size={self.context_size}, patch_size={self.patch_size}, hidden={self.hidden}, "
            f"depth={self.depth}, heads={self.heads}, mlp_ratio={self.mlp_ratio}, attention={self.attention!r}, "
            f"conditioning={self.conditioning!r}, cond_channels={self.cond_channels}, "
            f"context_tokens={self.context_tokens}, backend={self.backend!r}"
        )
