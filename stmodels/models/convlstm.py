"""ConvLSTM: a stack of convolutional LSTM cells rolled out one frame at a time.

Shi et al., "Convolutional LSTM Network: A Machine Learning Approach for Precipitation Nowcasting",
NeurIPS 2015, configured as OpenSTL's ``ConvLSTM_Model`` (Tan et al., "OpenSTL: A Comprehensive
Benchmark of Spatio-Temporal Predictive Learning", NeurIPS 2023 Datasets and Benchmarks)::

    x_t      = patch(frame_t)                                 # (C*p*p, H/p, W/p), space-to-depth
    h^1, c^1 = cell_1(x_t, h^1, c^1);  h^l, c^l = cell_l(h^{l-1}, h^l, c^l)
    x_{t+1}  = unpatch(conv1x1(h^L))                          # the predicted next frame

    gates    = conv_x(x) + conv_h(h)                           # each a filter_size conv, no bias
    i, f, g, o = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    c'       = f * c + i * g;   h' = o * tanh(c')

The rollout takes ``T_in + T_out - 1`` steps: step ``t < T_in`` reads the true frame ``t``; later steps
read the model's own previous prediction (closed loop), so ``model(X)`` needs no future frames.
The loss is OpenSTL's: the MSE of all ``T_in + T_out - 1`` next-frame predictions.

Differences from OpenSTL, all deliberate:

* OpenSTL trains with scheduled sampling: the input of a future step is the true frame with
  probability ``eta``, annealed from 1 to 0 over the first 50k iterations. Here
  ``scheduled_sampling=False`` by default (training is closed loop, exactly as inference), so the
  shared Trainer needs no schedule. ``scheduled_sampling=True`` feeds the true frame with the fixed
  probability ``teacher_forcing`` per (sample, step) in ``compute_loss`` in training mode, drawn from
  the ``generator`` passed to it; a callback may anneal ``model.config.teacher_forcing``.
* Space-to-depth uses ``F.pixel_unshuffle``, whose channel order is ``(C, p, p)`` where OpenSTL's
  ``reshape_patch`` gives ``(p, p, C)``: the same model up to a permutation of the first and last
  convolutions' channels.
* The cell's stride is fixed to 1 (OpenSTL's only working value: a larger one breaks the recurrence).
* OpenSTL's cell also builds ``conv_o`` and a 1x1 ``conv_last`` that its forward never uses: 3.4M
  dead parameters at the preset's sizes (15.1M counted with them, 11.7M here); they are left out. Like OpenSTL's forward, no forget-gate bias is added (its
  ``_forget_bias = 1.0`` is defined but unused).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from stmodels.models.registry import ModelConfig, PretrainedMixin, register_model

__all__ = ["ConvLSTMConfig", "ConvLSTMCell", "ConvLSTM"]


@dataclasses.dataclass
class ConvLSTMConfig(ModelConfig):
    """Every size and switch of :class:`ConvLSTM` (JSON-serialisable; see ``create_model``).

    Shapes: ``in_shape = (T_in, C, H, W)``, ``out_frames = T_out``; H and W divisible by ``patch_size``.
    ``num_hidden``: the channels of each stacked cell (its length is the number of layers).
    ``scheduled_sampling`` / ``teacher_forcing``: see the module docstring (off by default).
    """

    in_shape: tuple[int, int, int, int] = (10, 1, 64, 64)
    out_frames: int = 10
    patch_size: int = 4
    num_hidden: tuple[int, ...] = (128, 128, 128, 128)
    filter_size: int = 5
    layer_norm: bool = False
    scheduled_sampling: bool = False
    teacher_forcing: float = 0.5

    def __post_init__(self):
        name = type(self).__name__
        if len(tuple(self.in_shape)) != 4 or min(tuple(self.in_shape)) < 1:
            raise ValueError(f"{name}: `in_shape` must be (T_in, C, H, W) of positive sizes, got {self.in_shape}")
        self.in_shape = tuple(int(v) for v in self.in_shape)
        self.num_hidden = tuple(int(v) for v in self.num_hidden)
        if self.out_frames < 1:
            raise ValueError(f"{name}: `out_frames` must be >= 1, got {self.out_frames}")
        if self.patch_size < 1:
            raise ValueError(f"{name}: `patch_size` must be >= 1, got {self.patch_size}")
        _, _, height, width = self.in_shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"{name}: `patch_size` {self.patch_size} must divide H and W of in_shape {self.in_shape}")
        if not self.num_hidden or min(self.num_hidden) < 1:
            raise ValueError(f"{name}: `num_hidden` must be a non-empty tuple of positive widths, "
                             f"got {self.num_hidden}")
        if self.filter_size < 1 or self.filter_size % 2 == 0:
            # An even kernel with "same" padding would shift the hidden state by half a pixel per step.
            raise ValueError(f"{name}: `filter_size` must be odd and positive, got {self.filter_size}")
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError(f"{name}: `teacher_forcing` must be a probability in [0, 1], got {self.teacher_forcing}")


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell, as OpenSTL's ``ConvLSTMCell`` (bias-free gate convolutions).

    Args:
        in_channels: channels of the input ``x``.
        hidden: channels of ``h`` and ``c``.
        size: ``(H, W)`` of the state, needed only by the optional layer norm.
        filter_size: kernel size of both gate convolutions (odd; "same" padding).
        layer_norm: normalise each gate pre-activation over ``(4 * hidden, H, W)``.
        device, dtype: factory arguments of the parameters.

    Shapes:
        x: (batch, in_channels, H, W); h, c: (batch, hidden, H, W) -> (h', c') of the same shapes.
    """

    def __init__(self, in_channels: int, hidden: int, size: tuple[int, int], filter_size: int = 5,
                 layer_norm: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.hidden = hidden
        padding = filter_size // 2
        self.conv_x = nn.Conv2d(in_channels, 4 * hidden, filter_size, padding=padding, bias=False, **factory)
        self.conv_h = nn.Conv2d(hidden, 4 * hidden, filter_size, padding=padding, bias=False, **factory)
        shape = [4 * hidden, *size]
        self.norm_x = nn.LayerNorm(shape, **factory) if layer_norm else nn.Identity()
        self.norm_h = nn.LayerNorm(shape, **factory) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.norm_x(self.conv_x(x)) + self.norm_h(self.conv_h(h))
        i, f, g, o = torch.split(gates, self.hidden, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(PretrainedMixin, nn.Module):
    """The ConvLSTM predictor. ``model(X)`` -> ``Y_hat``; ``model.compute_loss(X, Y)`` -> losses.

    Args:
        config: a :class:`ConvLSTMConfig` (see ``create_model("convlstm", ...)``).
        device, dtype: factory arguments of the parameters.

    Shapes:
        X: (batch, T_in, C, H, W) frames in [0, 1]; Y and Y_hat: (batch, T_out, C, H, W).
    """

    def __init__(self, config: ConvLSTMConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = dict(device=device, dtype=dtype)
        _, channels, height, width = config.in_shape
        p = config.patch_size
        self.frame_channels = channels * p * p
        size = (height // p, width // p)
        widths = (self.frame_channels,) + config.num_hidden
        self.cells = nn.ModuleList(
            ConvLSTMCell(widths[i], widths[i + 1], size, config.filter_size, config.layer_norm, **factory)
            for i in range(len(config.num_hidden))
        )
        self.conv_last = nn.Conv2d(config.num_hidden[-1], self.frame_channels, 1, bias=False, **factory)

    def _rollout(self, X: torch.Tensor, Y: torch.Tensor | None = None,
                 use_truth: torch.Tensor | None = None) -> torch.Tensor:
        """All ``T_in + T_out - 1`` next-frame predictions, (batch, T_in + T_out - 1, C, H, W).

        ``use_truth: (batch, T_out - 1)`` bool (with ``Y``): where True, future step ``T_in + k``
        reads the true frame ``Y[:, k]`` instead of the previous prediction (teacher forcing).
        """
        T_in = self.config.in_shape[0]
        steps = T_in + self.config.out_frames - 1
        p = self.config.patch_size
        batch = X.shape[0]
        _, _, height, width = self.config.in_shape
        observed = F.pixel_unshuffle(X.flatten(0, 1), p).unflatten(0, (batch, T_in))
        truth = None
        if use_truth is not None:
            truth = F.pixel_unshuffle(Y.flatten(0, 1), p).unflatten(0, (batch, Y.shape[1]))
            use_truth = use_truth.to(X.dtype)[:, :, None, None, None]
        zeros = observed.new_zeros(batch, 1, height // p, width // p)
        h = [zeros.expand(-1, n, -1, -1) for n in self.config.num_hidden]
        c = list(h)
        predictions = []
        x_gen = None
        for t in range(steps):
            if t < T_in:
                net = observed[:, t]
            elif truth is None:
                net = x_gen
            else:
                mask = use_truth[:, t - T_in]
                net = mask * truth[:, t - T_in] + (1 - mask) * x_gen
            h[0], c[0] = self.cells[0](net, h[0], c[0])
            for layer in range(1, len(self.cells)):
                h[layer], c[layer] = self.cells[layer](h[layer - 1], h[layer], c[layer])
            x_gen = self.conv_last(h[-1])
            predictions.append(x_gen)
        frames = torch.stack(predictions, dim=1)
        return F.pixel_shuffle(frames.flatten(0, 1), p).unflatten(0, (batch, steps))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Predict ``T_out`` future frames by the closed-loop rollout.

        Args:
            X: (batch, T_in, C, H, W) observed frames.

        Returns:
            Y_hat: (batch, T_out, C, H, W).
        """
        self._check_input(X, "X", self.config.in_shape[0])
        return self._rollout(X)[:, -self.config.out_frames:]

    def _teacher_mask(self, X: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        cfg = self.config
        if not (self.training and cfg.scheduled_sampling and cfg.out_frames > 1):
            return None
        shape = (X.shape[0], cfg.out_frames - 1)
        source = generator.device if generator is not None else X.device
        draws = torch.rand(shape, generator=generator, device=source)
        return (draws < cfg.teacher_forcing).to(X.device)

    def compute_loss(self, X: torch.Tensor, Y: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Training losses, OpenSTL's convention.

        Args:
            X: (batch, T_in, C, H, W) observed frames.
            Y: (batch, T_out, C, H, W) ground-truth future frames.
            generator: random source of the teacher-forcing draws (used only with
                ``scheduled_sampling=True`` in training mode).

        Returns:
            dict with scalar tensors ``loss`` (MSE of all ``T_in + T_out - 1`` next-frame
            predictions against ``X[:, 1:]`` and ``Y``), ``recon`` (MSE of the ``T_out`` future
            frames, detached), ``diff`` (0) and ``prediction``, the detached future frames
            (batch, T_out, C, H, W).
        """
        self._check_input(X, "X", self.config.in_shape[0])
        self._check_input(Y, "Y", self.config.out_frames)
        frames = self._rollout(X, Y, self._teacher_mask(X, generator))
        loss = F.mse_loss(frames, torch.cat([X[:, 1:], Y], dim=1))
        prediction = frames[:, -self.config.out_frames:]
        recon = F.mse_loss(prediction.detach(), Y)
        return {"loss": loss, "recon": recon, "diff": loss.new_zeros(()), "prediction": prediction.detach()}

    def extra_repr(self) -> str:
        c = self.config
        return (f"in_shape={c.in_shape}, out_frames={c.out_frames}, patch_size={c.patch_size}, "
                f"num_hidden={c.num_hidden}, scheduled_sampling={c.scheduled_sampling}")


# OpenSTL's Moving MNIST configuration (configs/mmnist/ConvLSTM.py); narrower budgets override
# ``num_hidden``, e.g. ``create_model("convlstm", num_hidden=(64, 64))``.
register_model("convlstm", ConvLSTMConfig(), ConvLSTM, description="ConvLSTM (Shi et al. 2015), OpenSTL sizes")
