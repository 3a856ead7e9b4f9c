"""Bidirectional (and causal) Mamba layer over token sequences, built on the fused selective scan.

References: the Mamba block (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", 2023, Sec. 3.4 and its reference ``mamba_simple.Mamba``: in_proj, causal depthwise conv,
x_proj, dt_proj, S4D-real ``A``, gate ``silu(z)``, out_proj) and its bidirectional form from Vision
Mamba (Zhu et al., "Vision Mamba", 2024, Algorithm 1: a second, backward branch with its own conv,
x_proj, dt_proj, ``A`` and ``D``). DIFFUMA (Xie et al., 2025) stacks such layers in its temporal path.

Unlike Vision Mamba, the backward branch never flips the sequence: its depthwise conv is anti-causal
(padding on the right) and both directions run in one :func:`stmodels.ops.bi_selective_scan` call,
which scans direction 1 from the last step to the first in the original time order.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from stmodels.ops import bi_selective_scan, selective_scan
from stmodels.nn._common import check_backend_name

__all__ = ["BiMambaLayer"]

DIRECTIONS = ("bidirectional", "causal")


def _positive_int(where: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{where}: `{name}` must be a positive int, got {value!r}")
    return int(value)


class BiMambaLayer(nn.Module):
    """Pre-norm residual Mamba layer, bidirectional (Vision Mamba style) or causal.

    ``out = x + out_proj(scan(conv(in_proj(LayerNorm(x)))) * silu(z))``, where for
    ``direction="bidirectional"`` the scan is the sum of a forward scan (causal conv, left padding) and
    a backward scan (anti-causal conv, right padding), each with its own conv, x_proj, dt_proj, ``A``,
    ``D`` and dt bias, or one shared set with ``share_directions=True``. Both directions run in one
    :func:`~stmodels.ops.bi_selective_scan` call and are fused by the shared gate ``silu(z)`` ("gated
    fusion"). ``direction="causal"`` keeps only the forward branch (one
    :func:`~stmodels.ops.selective_scan` call), so output ``t`` depends on inputs ``0..t`` only, which
    streaming prediction needs.

    Parameters (``S`` = number of parameter sets: 2 for per-direction, 1 when shared or causal;
    ``d_inner = expand * d_model``, ``R = dt_rank``, ``N = d_state``):

    * ``norm``: LayerNorm(d_model); ``in_proj``: Linear(d_model, 2 * d_inner, bias=False);
      ``out_proj``: Linear(d_inner, d_model, bias=False), as in Mamba.
    * ``conv_weight``: (S, d_inner, d_conv) and ``conv_bias``: (S, d_inner), depthwise. Tap ``k``
      of the forward conv reads ``x[t - (d_conv - 1) + k]``; tap ``k`` of the backward conv reads
      ``x[t + k]``. (Vision Mamba's flipped branch is the same map with the taps reversed.)
    * ``x_proj_weight``: (S, R + 2N, d_inner) giving (dt, B, C); ``dt_proj_weight``: (S, d_inner, R);
      ``dt_bias``: (S, d_inner), initialised so ``softplus(dt_bias)`` is log-uniform in
      ``[dt_min, dt_max]`` (Mamba's ``dt_init="random"``); it enters the scan as ``delta_bias``.
    * ``A_log``: (S, d_inner, N), S4D-real init ``log(1..N)`` per channel, ``A = -exp(A_log)``;
      ``D``: (S, d_inner), ones. These three are kept in float32 (float64 when the layer is built
      in float64) and cast to float32 for the scan whatever the activations' dtype, as Mamba does.

    Args:
        d_model: token features.
        d_state: SSM state size ``N`` per channel.
        d_conv: width of the depthwise convolution along the sequence.
        expand: ``d_inner = expand * d_model``.
        dt_rank: rank of the dt projection; ``"auto"`` is ``ceil(d_model / 16)``.
        direction: ``"bidirectional"`` (default) or ``"causal"``.
        share_directions: one parameter set for both directions (bidirectional only); the two
            directions still differ in conv padding side and scan order.
        dt_min, dt_max: range of the initial step sizes ``softplus(dt_bias)``.
        dt_init_floor: lower clamp of the initial step sizes (Mamba's 1e-4).
        backend: scan backend (``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"``, ``"triton"``), or
            None to follow :func:`stmodels.ops.use_backend` / ``STMODELS_BACKEND`` at call time.
        device, dtype: factory arguments of the parameters.

    Shape:
        x: (batch, L, d_model) -> (batch, L, d_model), in the dtype of ``x``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        direction: str = "bidirectional",
        share_directions: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        backend: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        where = type(self).__name__
        self.d_model = _positive_int(where, "d_model", d_model)
        self.d_state = _positive_int(where, "d_state", d_state)
        self.d_conv = _positive_int(where, "d_conv", d_conv)
        self.expand = _positive_int(where, "expand", expand)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        self.dt_rank = _positive_int(where, "dt_rank", dt_rank)
        if direction not in DIRECTIONS:
            raise ValueError(f"{where}: `direction` must be one of {DIRECTIONS}, got {direction!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"{where}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.direction = direction
        self.share_directions = bool(share_directions)
        self.backend = check_backend_name(backend, where)
        self.dt_min, self.dt_max, self.dt_init_floor = float(dt_min), float(dt_max), float(dt_init_floor)
        self.d_inner = self.expand * self.d_model
        self.num_directions = 2 if direction == "bidirectional" else 1
        self.num_param_sets = 1 if (direction == "causal" or self.share_directions) else 2

        factory = {"device": device, "dtype": dtype}
        # The scan takes A, D and delta_bias in float32; keeping them there (as Mamba keeps A_log)
        # avoids rounding log(1..N) and the dt bias through a half-precision parameter dtype.
        scan_factory = {"device": device, "dtype": torch.float64 if dtype == torch.float64 else torch.float32}
        S, d_inner = self.num_param_sets, self.d_inner
        self.norm = nn.LayerNorm(d_model, **factory)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False, **factory)
        self.conv_weight = nn.Parameter(torch.empty(S, d_inner, d_conv, **factory))
        self.conv_bias = nn.Parameter(torch.empty(S, d_inner, **factory))
        self.x_proj_weight = nn.Parameter(torch.empty(S, self.dt_rank + 2 * d_state, d_inner, **factory))
        self.dt_proj_weight = nn.Parameter(torch.empty(S, d_inner, self.dt_rank, **factory))
        self.dt_bias = nn.Parameter(torch.empty(S, d_inner, **scan_factory))
        self.A_log = nn.Parameter(torch.empty(S, d_inner, d_state, **scan_factory))
        self.D = nn.Parameter(torch.empty(S, d_inner, **scan_factory))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False, **factory)
        # Mamba's convention: optimiser helpers skip weight decay on these.
        self.dt_bias._no_weight_decay = True
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation (``mamba_simple.Mamba.__init__`` with ``dt_init="random"``)."""
        self.norm.reset_parameters()
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()
        # nn.Conv1d's and nn.Linear's defaults for a depthwise conv (fan_in = d_conv) and x_proj.
        conv_bound = 1.0 / math.sqrt(self.d_conv)
        self.conv_weight.uniform_(-conv_bound, conv_bound)
        self.conv_bias.uniform_(-conv_bound, conv_bound)
        x_bound = 1.0 / math.sqrt(self.d_inner)
        self.x_proj_weight.uniform_(-x_bound, x_bound)
        dt_std = self.dt_rank**-0.5
        self.dt_proj_weight.uniform_(-dt_std, dt_std)
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(
            torch.rand(self.dt_bias.shape, dtype=torch.float64, device=self.dt_bias.device)
            * (log_max - log_min) + log_min
        ).clamp(min=self.dt_init_floor)
        # Inverse of softplus, so that softplus(dt_bias) == dt at initialisation.
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        arange = torch.arange(1, self.d_state + 1, dtype=torch.float64, device=self.A_log.device)
        self.A_log.copy_(torch.log(arange).expand_as(self.A_log))
        self.D.fill_(1.0)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, direction={self.direction!r}, "
            f"share_directions={self.share_directions}, backend={self.backend!r}"
        )

    def _per_direction(self, param: torch.Tensor) -> torch.Tensor:
        """(S, ...) parameter -> (num_directions, ...); a shared set is viewed once per direction."""
        return param.expand(self.num_directions, *param.shape[1:])

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise conv of every direction, in one grouped conv call.

        Args:
            x: (batch, d_inner, L).

        Returns:
            (num_directions, batch, d_inner, L): causal conv (left padding) for direction 0,
            anti-causal conv (right padding) for direction 1.
        """
        batch, d_inner, length = x.shape
        pad = self.d_conv - 1
        padded = [F.pad(x, (pad, 0))]
        if self.num_directions == 2:
            padded.append(F.pad(x, (0, pad)))
        channels = self.num_directions * d_inner
        weight = self._per_direction(self.conv_weight).reshape(channels, 1, self.d_conv)
        bias = self._per_direction(self.conv_bias).reshape(channels)
        out = F.conv1d(torch.cat(padded, dim=1), weight, bias, groups=channels)
        return out.view(batch, self.num_directions, d_inner, length).transpose(0, 1)

    def _scan_param(self, param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A scan parameter in the form the op takes: no leading axis when one set serves everything."""
        param = param.to(dtype)
        return param[0] if self.num_param_sets == 1 else param

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Args:
            x: (batch, L, d_model) tokens, L >= 1.

        Returns:
            (batch, L, d_model): ``x`` plus the layer's update, in ``x``'s dtype.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (batch, L, d_model={self.d_model}) with "
                f"batch, L >= 1, got {tuple(x.shape)}"
            )
        batch, length, _ = x.shape
        xz = self.in_proj(self.norm(x)).transpose(1, 2)  # (batch, 2 * d_inner, L)
        x_in, z = xz.chunk(2, dim=1)
        u = F.silu(self._conv(x_in))  # (dirs, batch, d_inner, L)
        x_dbl = torch.einsum("sed,sbdl->sbel", self._per_direction(self.x_proj_weight), u)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("sdr,sbrl->sbdl", self._per_direction(self.dt_proj_weight), dt)

        scan_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        A = -torch.exp(self._scan_param(self.A_log, scan_dtype))
        D = self._scan_param(self.D, scan_dtype)
        delta_bias = self._scan_param(self.dt_bias, scan_dtype)
        if self.num_directions == 2:
            # u, delta, B, C always differ per direction (padding side), even with shared weights.
            y = bi_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                                  backend=self.backend)
        else:
            y = selective_scan(u[0], delta[0], A, B[0], C[0], D, z, delta_bias, delta_softplus=True,
                               backend=self.backend)
        return x + self.out_proj(y.transpose(1, 2))
