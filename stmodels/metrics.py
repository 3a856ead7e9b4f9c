"""Frame-quality metrics for video prediction: MSE, MAE, SSIM and PSNR, OpenSTL-compatible by default.

Every function takes ``pred`` and ``true`` of shape ``(N, T, C, H, W)`` (samples, frames, channels,
height, width) with values in [0, 1], as ``torch.Tensor`` or ``numpy.ndarray`` of any floating dtype,
and returns python floats. All arithmetic is float64, whatever the input dtype, so the numbers do
not depend on whether a model ran in fp32 or bf16. Nothing here takes part in autograd.

Conventions (those of OpenSTL's ``openstl/core/metrics.py``, so numbers can be put next to its
published tables):

* **MSE / MAE**, ``reduction="sum"`` (default): the squared (absolute) error is *summed* over the
  ``C*H*W`` values of a frame, then averaged over the ``N*T`` frames, as OpenSTL's
  ``np.mean((pred - true)**2, axis=(0, 1)).sum()``. ``reduction="mean"`` gives the per-value mean
  (OpenSTL's ``spatial_norm=True``). Predictions are *not* clipped for these two.
* **Clipping**: before SSIM and PSNR the prediction (not the truth) is clipped to [0, 1].
* **PSNR**: per frame ``10 * log10(1 / mse_frame)`` (peak 1, ``mse_frame`` the mean over the
  ``C*H*W`` values), averaged over the ``N*T`` frames. A frame predicted exactly has ``mse_frame = 0``
  and PSNR ``+inf``, as both OpenSTL's ``PSNR`` and scikit-image's ``peak_signal_noise_ratio`` give,
  so the mean is ``+inf`` as soon as one frame is exact. We keep that rather than a cap (some code
  bases return 100 dB): a cap would make the number depend on an arbitrary constant and would no
  longer match OpenSTL.
* **SSIM**: per frame, equal to ``skimage.metrics.structural_similarity(pred_frame, true_frame,
  channel_axis=-1, data_range=data_range)`` on ``(H, W, C)`` frames with scikit-image's defaults: a
  7x7 uniform window, ``K1 = 0.01``, ``K2 = 0.03``, sample covariances (``49 / 48`` correction), the
  SSIM map averaged over the region 3 pixels away from every border, then over channels. Averaged
  over the ``N*T`` frames. ``data_range`` only sets SSIM's constants ``C1 = (K1 R)^2`` and
  ``C2 = (K2 R)^2``; it is 1.0 by default (the range of the data). ``data_range=2.0`` reproduces
  OpenSTL's published SSIM: it called ``structural_similarity`` on float32 frames without
  ``data_range`` and scikit-image of that time took the float range as [-1, 1], i.e. R = 2. Clipping
  and the PSNR peak stay at 1 either way, as in OpenSTL, so ``compute_metrics(..., data_range=2.0)``
  gives all four of OpenSTL's numbers. (OpenSTL passed ``(W, H, C)`` frames; SSIM with a square
  window is the same on the transposed frame.)

SSIM is computed for all frames at once with separable box filters over the valid region (no loop
over frames); to bound memory, frames go through in chunks of about ``_CHUNK_ELEMENTS`` values.

:class:`MetricAccumulator` keeps sums and counts, not means, so feeding a data set batch by batch
(batches of any sizes) gives the same numbers as one call on the whole set.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["METRIC_NAMES", "compute_metrics", "mse", "mae", "ssim", "psnr", "MetricAccumulator"]

METRIC_NAMES = ("mse", "mae", "ssim", "psnr")

_REDUCTIONS = ("sum", "mean")
_SSIM_WIN = 7  # scikit-image's default window for uniform weights
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
# Frames are processed in chunks of about this many values: float64 SSIM keeps ~10 maps of the
# chunk alive, so 2**22 values bound the working set near 350 MB whatever the data set size.
_CHUNK_ELEMENTS = 2**22

Array = Any  # torch.Tensor | numpy.ndarray; kept loose so numpy stays an input, not a type constraint


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------


def _as_tensor(name: str, x: Array, device: torch.device | None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"`{name}` must have a floating dtype, got numpy {x.dtype}")
        # from_numpy refuses negative strides (e.g. x[:, ::-1]); a contiguous copy is cheap next to SSIM.
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t if device is None else t.to(device)
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"`{name}` must be real, got complex {x.dtype}")
        if not x.is_floating_point():
            raise TypeError(f"`{name}` must have a floating dtype, got {x.dtype}")
        return x.detach()
    raise TypeError(f"`{name}` must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_pair(pred: Array, true: Array, *, for_ssim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and return ``pred, true`` as tensors on one device (numpy goes to the tensor's device)."""
    device = None
    for x in (pred, true):
        if isinstance(x, torch.Tensor):
            device = x.device
            break
    p = _as_tensor("pred", pred, device)
    t = _as_tensor("true", true, device)
    for name, x in (("pred", p), ("true", t)):
        if x.dim() != 5:
            raise ValueError(f"`{name}` must have shape (N, T, C, H, W), got {tuple(x.shape)}")
    if p.shape != t.shape:
        raise ValueError(
            "`pred` and `true` must have the same shape (N, T, C, H, W), "
            f"got pred {tuple(p.shape)} and true {tuple(t.shape)}"
        )
    if p.device != t.device:
        raise ValueError(f"`pred` is on {p.device} but `true` is on {t.device}; put both on one device")
    _, _, c, h, w = p.shape
    if min(c, h, w) < 1:
        raise ValueError(f"`pred` and `true` must have non-empty frames (C, H, W >= 1), got {tuple(p.shape)}")
    if for_ssim and (h < _SSIM_WIN or w < _SSIM_WIN):
        raise ValueError(
            f"SSIM needs frames of at least {_SSIM_WIN}x{_SSIM_WIN} pixels (its {_SSIM_WIN}x{_SSIM_WIN} window, "
            f"as in scikit-image), got H={h}, W={w} from shape (N, T, C, H, W) = {tuple(p.shape)}"
        )
    return p, t


def _check_options(data_range: float, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}")
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)):
        raise TypeError(f"`data_range` must be a number, got {type(data_range).__name__}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"`data_range` must be finite and > 0, got {data_range}")


def _require_frames(p: torch.Tensor) -> None:
    if p.shape[0] * p.shape[1] == 0:
        raise ValueError(f"no frames to average over: `pred` has shape {tuple(p.shape)}")


# ----------------------------------------------------------------------------------------------------
# Per-frame statistics on float64 chunks x, y: (frames, C, H, W)
# ----------------------------------------------------------------------------------------------------


def _box_mean_valid(maps: torch.Tensor) -> torch.Tensor:
    """Mean over every 7x7 window lying fully inside the frame: (B, H, W) -> (B, H-6, W-6).

    This is exactly scikit-image's ``uniform_filter`` output cropped by ``pad = (win - 1) // 2``:
    the windows centred in the cropped region never reach the border, so the filter's boundary mode
    does not matter. Separable (rows, then columns) like ``uniform_filter``, which also keeps the
    cost at 14 instead of 49 operations per pixel.
    """
    maps = maps.unsqueeze(1)
    maps = F.avg_pool2d(maps, kernel_size=(1, _SSIM_WIN), stride=1)
    maps = F.avg_pool2d(maps, kernel_size=(_SSIM_WIN, 1), stride=1)
    return maps.squeeze(1)


def _ssim_frames(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM of each frame: x, y (frames, C, H, W) float64, x already clipped -> (frames,) float64.

    Follows ``skimage.metrics.structural_similarity`` (Wang et al. 2004, eq. 13, with scikit-image's
    uniform window and sample covariance) term by term, in its order of operations.
    """
    f, c, h, w = x.shape
    n_window = _SSIM_WIN * _SSIM_WIN
    cov_norm = n_window / (n_window - 1)
    # One pooling call over all five maps of all channels of all frames.
    stacked = torch.stack([x, y, x * x, y * y, x * y], dim=0).reshape(5 * f * c, h, w)
    ux, uy, uxx, uyy, uxy = _box_mean_valid(stacked).reshape(5, f, c, h - _SSIM_WIN + 1, w - _SSIM_WIN + 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    a1 = 2 * ux * uy + c1
    a2 = 2 * vxy + c2
    b1 = ux**2 + uy**2 + c1
    b2 = vx + vy + c2
    s = (a1 * a2) / (b1 * b2)
    # scikit-image averages each channel's map, then the channel means.
    return s.mean(dim=(-2, -1)).mean(dim=-1)


def _psnr_frames(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR (peak 1) of each frame: x (clipped), y (frames, C, H, W) float64 -> (frames,); +inf if equal."""
    frame_mse = (x - y).square().mean(dim=(1, 2, 3))
    # 1 / 0 = inf and log10(inf) = inf: an exact frame gives +inf without a warning or a special case.
    return 10.0 * torch.log10(1.0 / frame_mse)


def _frame_sums(p: torch.Tensor, t: torch.Tensor, names: tuple[str, ...], data_range: float) -> dict[str, float]:
    """Sum over all N*T frames of each per-frame statistic in ``names``.

    ``sq`` / ``abs``: summed squared / absolute error of the frame (unclipped prediction);
    ``ssim`` / ``psnr``: the frame's SSIM / PSNR (clipped prediction).
    """
    n, tt, c, h, w = p.shape
    p = p.reshape(n * tt, c, h, w)
    t = t.reshape(n * tt, c, h, w)
    totals = {name: torch.zeros((), dtype=torch.float64, device=p.device) for name in names}
    step = max(1, _CHUNK_ELEMENTS // (c * h * w))
    with torch.no_grad():
        for start in range(0, n * tt, step):
            x = p[start : start + step].to(torch.float64)
            y = t[start : start + step].to(torch.float64)
            if "sq" in names:
                totals["sq"] += (x - y).square().sum()
            if "abs" in names:
                totals["abs"] += (x - y).abs().sum()
            if "ssim" in names or "psnr" in names:
                x = x.clamp(0.0, 1.0)
                if "ssim" in names:
                    totals["ssim"] += _ssim_frames(x, y, data_range).sum()
                if "psnr" in names:
                    totals["psnr"] += _psnr_frames(x, y).sum()
    return {name: value.item() for name, value in totals.items()}


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


class MetricAccumulator:
    """Streaming MSE, MAE, SSIM and PSNR over a data set fed in batches.

    Keeps float64 sums over frames and counts of frames and values, so the result does not depend on
    how the data set is split into batches (no mean of batch means), and equals
    :func:`compute_metrics` on the concatenation up to float64 rounding.

    Args:
        data_range: SSIM's ``R`` (see the module notes): 1.0, or 2.0 for OpenSTL's published SSIM.
        reduction: ``"sum"`` (OpenSTL: per-frame sum over ``C*H*W``, mean over frames) or ``"mean"``
            (per-value mean) for MSE and MAE.

    Example::

        acc = MetricAccumulator()
        for inputs, target in loader:
            acc.update(model(inputs), target)   # (N, T, C, H, W) each
        print(acc.compute())                    # {"mse": ..., "mae": ..., "ssim": ..., "psnr": ...}
    """

    def __init__(self, data_range: float = 1.0, reduction: str = "sum") -> None:
        _check_options(data_range, reduction)
        self.data_range = float(data_range)
        self.reduction = reduction
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._sums = {"sq": 0.0, "abs": 0.0, "ssim": 0.0, "psnr": 0.0}
        self._num_frames = 0
        self._num_values = 0

    @property
    def num_frames(self) -> int:
        """Number of (sample, frame) pairs accumulated so far."""
        return self._num_frames

    def update(self, pred: Array, true: Array) -> None:
        """Add a batch.

        Args:
            pred: (N, T, C, H, W) predictions, floating, values in [0, 1] (clipped for SSIM/PSNR).
            true: (N, T, C, H, W) ground truth, same shape (and device, if both are tensors).
                ``H`` and ``W`` must be at least 7 (SSIM window). Batches may differ in ``N``.
        """
        p, t = _check_pair(pred, true, for_ssim=True)
        # Compute everything before touching the state, so a failing batch leaves it unchanged.
        sums = _frame_sums(p, t, ("sq", "abs", "ssim", "psnr"), self.data_range)
        for name, value in sums.items():
            self._sums[name] += value
        self._num_frames += p.shape[0] * p.shape[1]
        self._num_values += p.numel()

    def compute(self) -> dict[str, float]:
        """Return ``{"mse", "mae", "ssim", "psnr"}`` over everything accumulated since the last reset.

        Raises:
            RuntimeError: if no frame has been accumulated.
        """
        if self._num_frames == 0:
            raise RuntimeError("MetricAccumulator.compute() called before any frame was accumulated")
        error_count = self._num_frames if self.reduction == "sum" else self._num_values
        return {
            "mse": self._sums["sq"] / error_count,
            "mae": self._sums["abs"] / error_count,
            "ssim": self._sums["ssim"] / self._num_frames,
            "psnr": self._sums["psnr"] / self._num_frames,
        }

    def __repr__(self) -> str:
        return (
            f"MetricAccumulator(data_range={self.data_range}, reduction={self.reduction!r}, "
            f"num_frames={self._num_frames})"
        )


def compute_metrics(
    pred: Array, true: Array, data_range: float = 1.0, reduction: str = "sum"
) -> dict[str, float]:
    """MSE, MAE, SSIM and PSNR of a whole set of predicted videos, with OpenSTL's conventions.

    Args:
        pred: (N, T, C, H, W) predictions, torch or numpy, any floating dtype, values in [0, 1].
            Clipped to [0, 1] for SSIM and PSNR only.
        true: (N, T, C, H, W) ground truth, same shape. ``H`` and ``W`` must be at least 7.
        data_range: SSIM's ``R``; 1.0 by default, 2.0 to reproduce OpenSTL's published SSIM
            (MSE, MAE and PSNR do not depend on it).
        reduction: ``"sum"`` (per-frame sum over ``C*H*W``, mean over frames; OpenSTL) or ``"mean"``
            (per-value mean) for MSE and MAE.

    Returns:
        ``{"mse": float, "mae": float, "ssim": float, "psnr": float}``, computed in float64. ``psnr``
        is ``inf`` if any frame is predicted exactly (see the module notes).

    Raises:
        TypeError: non-floating or non-array inputs.
        ValueError: wrong rank, mismatched shapes or devices, frames smaller than 7x7, no frames,
            a bad ``data_range`` or ``reduction``.
    """
    acc = MetricAccumulator(data_range=data_range, reduction=reduction)
    p, t = _check_pair(pred, true, for_ssim=True)
    _require_frames(p)
    acc.update(p, t)
    return acc.compute()


def _error_metric(pred: Array, true: Array, reduction: str, stat: str) -> float:
    _check_options(1.0, reduction)
    p, t = _check_pair(pred, true, for_ssim=False)
    _require_frames(p)
    total = _frame_sums(p, t, (stat,), 1.0)[stat]
    return total / (p.shape[0] * p.shape[1] if reduction == "sum" else p.numel())


def mse(pred: Array, true: Array, reduction: str = "sum") -> float:
    """Mean squared error over (N, T, C, H, W) videos, OpenSTL's convention by default.

    Args:
        pred, true: (N, T, C, H, W), torch or numpy, floating; the prediction is not clipped.
        reduction: ``"sum"``: squared error summed over each frame's ``C*H*W`` values, averaged over
            the ``N*T`` frames (OpenSTL's ``MSE``). ``"mean"``: averaged over all values.

    Returns:
        A python float (float64 arithmetic).
    """
    return _error_metric(pred, true, reduction, "sq")


def mae(pred: Array, true: Array, reduction: str = "sum") -> float:
    """Mean absolute error over (N, T, C, H, W) videos; reductions as in :func:`mse`.

    Args:
        pred, true: (N, T, C, H, W), torch or numpy, floating; the prediction is not clipped.
        reduction: ``"sum"`` (per-frame sum, mean over frames; OpenSTL's ``MAE``) or ``"mean"``.

    Returns:
        A python float (float64 arithmetic).
    """
    return _error_metric(pred, true, reduction, "abs")


def ssim(pred: Array, true: Array, data_range: float = 1.0) -> float:
    """Mean over frames of scikit-image's SSIM (7x7 uniform window, channels averaged).

    Args:
        pred: (N, T, C, H, W), torch or numpy, floating; clipped to [0, 1] first.
        true: (N, T, C, H, W), same shape; ``H`` and ``W`` at least 7.
        data_range: SSIM's ``R`` in ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``; 2.0 reproduces OpenSTL.

    Returns:
        A python float: the mean over the ``N*T`` frames of
        ``structural_similarity(pred_frame, true_frame, channel_axis=-1, data_range=data_range)``
        with frames as (H, W, C), computed in float64.
    """
    _check_options(data_range, "sum")
    p, t = _check_pair(pred, true, for_ssim=True)
    _require_frames(p)
    return _frame_sums(p, t, ("ssim",), float(data_range))["ssim"] / (p.shape[0] * p.shape[1])


def psnr(pred: Array, true: Array) -> float:
    """Mean over frames of the per-frame PSNR with peak 1, OpenSTL's convention.

    Args:
        pred: (N, T, C, H, W), torch or numpy, floating; clipped to [0, 1] first.
        true: (N, T, C, H, W), same shape.

    Returns:
        A python float: the mean over the ``N*T`` frames of ``10 * log10(1 / mse_frame)`` in dB,
        ``mse_frame`` being the frame's mean squared error over ``C*H*W`` values. A frame predicted
        exactly has PSNR ``+inf`` (as OpenSTL and scikit-image), so then the mean is ``inf``.
    """
    p, t = _check_pair(pred, true, for_ssim=False)
    _require_frames(p)
    return _frame_sums(p, t, ("psnr",), 1.0)["psnr"] / (p.shape[0] * p.shape[1])
