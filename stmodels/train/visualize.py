"""Pictures for looking at a video-prediction model: strips of frames, animated GIFs, loss curves.

Frames are one sample of shape ``(T, C, H, W)`` (frames, channels 1 or 3, height, width), floats in
[0, 1], as ``torch.Tensor`` (any device, any float dtype) or ``numpy.ndarray``. Grey frames are
shown as RGB. Every file is written atomically (temporary file + rename), so a training run killed
mid-write never leaves a torn picture behind.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stmodels._fileio import atomic_write_bytes
from stmodels.data._io import encode_png

__all__ = ["labelled_strip", "plot_loss_curves", "prediction_strip", "save_gif", "save_sequence_gif", "save_strip"]

#: Pictures written for people are upscaled (nearest neighbour) to at least this many pixels wide.
MIN_WIDTH = 512
_ROW_LABELS = ("inputs", "truth", "prediction", "|error|")

# White: the data sets we target (Moving MNIST, KTH, ...) are mostly dark, so white gaps separate
# frames clearly, and white cannot be mistaken for an error-row pixel (the ramp never reaches it).
BACKGROUND = 255
_CONTEXT_BAR = (128, 128, 128)  # GIF separator / progress colour while showing the inputs
_PREDICTION_BAR = (255, 0, 0)  # ... and while showing predicted steps


def _as_frames(value: Any, name: str, caller: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{caller}: `{name}` must hold floats in [0, 1], got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


def _check_sample(inputs: Any, targets: Any, prediction: Any, caller: str):
    inputs = _as_frames(inputs, "inputs", caller)
    targets = _as_frames(targets, "targets", caller)
    prediction = _as_frames(prediction, "prediction", caller)
    shape = inputs.shape
    if inputs.ndim != 4 or shape[1] not in (1, 3) or min(shape) < 1:
        hint = " (pass one sample, e.g. `inputs[0]`)" if inputs.ndim == 5 else ""
        raise ValueError(f"{caller}: `inputs` must have shape (T_in, C, H, W) with C 1 or 3, got {shape}{hint}")
    if targets.ndim != 4 or targets.shape[1:] != shape[1:] or targets.shape[0] < 1:
        raise ValueError(
            f"{caller}: `targets` must have shape (T_out, C, H, W) with (C, H, W) = {shape[1:]} as "
            f"`inputs`, got {targets.shape}"
        )
    if prediction.shape != targets.shape:
        raise ValueError(
            f"{caller}: `prediction` must have shape (T_out, C, H, W) matching `targets` "
            f"{targets.shape}, got {prediction.shape}"
        )
    return inputs, targets, prediction


def _to_uint8_rgb(frames: np.ndarray) -> np.ndarray:
    """``(T, C, H, W)`` floats -> ``(T, H, W, 3)`` uint8; NaN shows as 0, values are clipped to [0, 1]."""
    frames = np.clip(np.nan_to_num(frames, nan=0.0), 0.0, 1.0)
    frames = np.floor(frames * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.repeat(frames, 3, axis=3) if frames.shape[3] == 1 else frames


def _error_rgb(prediction: np.ndarray, truth: np.ndarray, gain: float) -> np.ndarray:
    """``(T, C, H, W)`` pair -> ``(T, H, W, 3)`` uint8 black -> red -> yellow ramp of the error."""
    # The raw prediction, not the clipped one: an overshoot is an error worth seeing. The worst
    # channel counts, so an error in one colour is not diluted by the others; NaN is the worst.
    error = np.abs(prediction.astype(np.float64) - truth).max(axis=1)
    level = np.clip(np.nan_to_num(error * gain, nan=1.0, posinf=1.0), 0.0, 1.0)
    # Blue stays 0 and red >= green, so an error pixel can never look like a grey frame pixel.
    ramp = np.stack([np.clip(2 * level, 0, 1), np.clip(2 * level - 1, 0, 1), np.zeros_like(level)], axis=-1)
    return np.floor(ramp * 255.0 + 0.5).astype(np.uint8)


def _frame_indices(count: int, max_frames: int | None) -> np.ndarray:
    if max_frames is None or max_frames >= count:
        return np.arange(count)
    # Round half up rather than numpy's half-to-even, which could map two positions to one frame.
    return np.floor(np.linspace(0, count - 1, max_frames) + 0.5).astype(int)


def prediction_strip(
    inputs: Any,
    targets: Any,
    prediction: Any,
    *,
    max_frames: int | None = None,
    gap: int = 2,
    error_gain: float = 4.0,
) -> np.ndarray:
    """Lay out one sample as a grid: inputs, ground truth, prediction and error, one row each.

    Row 1 holds the ``T_in`` input frames, rows 2 and 3 the ``T_out`` true and predicted frames (the
    prediction clipped to [0, 1]), row 4 ``|prediction - targets|`` (worst channel) times
    ``error_gain``, clipped to [0, 1] and coloured black (exact) -> red -> yellow (>= 1 / error_gain
    off). Frames are left-aligned and separated by ``gap`` pixels of white (255); shorter rows are
    padded with white on the right. The image is ``4 H + 3 gap`` high and ``n W + (n - 1) gap``
    wide, ``n = max(T_in, T_out)`` (each capped at ``max_frames``).

    Args:
        inputs: ``(T_in, C, H, W)`` context frames, C in (1, 3).
        targets: ``(T_out, C, H, W)`` true future frames.
        prediction: ``(T_out, C, H, W)`` predicted future frames.
        max_frames: At most this many columns per row: frames are picked evenly, first and last
            kept (one column shows the first frame). ``None`` shows every frame.
        gap: Pixels of white between frames and between rows.
        error_gain: Factor on the absolute error before clipping, so small errors are visible.

    Returns:
        ``(H_img, W_img, 3)`` uint8 RGB image.
    """
    return _strip(inputs, targets, prediction, max_frames, gap, error_gain, "prediction_strip")


def _strip(inputs, targets, prediction, max_frames, gap, error_gain, caller: str) -> np.ndarray:
    # ``caller`` names the public function in error messages.
    inputs, targets, prediction = _check_sample(inputs, targets, prediction, caller)
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"{caller}: `max_frames` must be None or an int >= 1, got {max_frames!r}")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise ValueError(f"{caller}: `gap` must be an int >= 0, got {gap!r}")
    if not (isinstance(error_gain, (int, float)) and math.isfinite(error_gain) and error_gain > 0):
        raise ValueError(f"{caller}: `error_gain` must be a finite number > 0, got {error_gain!r}")

    inputs = inputs[_frame_indices(len(inputs), max_frames)]
    keep = _frame_indices(len(targets), max_frames)
    targets, prediction = targets[keep], prediction[keep]
    rows = [
        _to_uint8_rgb(inputs),
        _to_uint8_rgb(targets),
        _to_uint8_rgb(prediction),
        _error_rgb(prediction, targets, float(error_gain)),
    ]
    height, width = inputs.shape[2:]
    columns = max(len(inputs), len(targets))
    image = np.full((4 * height + 3 * gap, columns * width + (columns - 1) * gap, 3), BACKGROUND, np.uint8)
    for r, row in enumerate(rows):
        top = r * (height + gap)
        for c, frame in enumerate(row):
            left = c * (width + gap)
            image[top : top + height, left : left + width] = frame
    return image


def _auto_scale(width: int, min_width: int) -> int:
    return max(1, math.ceil(min_width / max(1, width)))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def labelled_strip(
    inputs: Any,
    targets: Any,
    prediction: Any,
    *,
    max_frames: int | None = None,
    gap: int = 2,
    error_gain: float = 4.0,
    min_width: int = MIN_WIDTH,
) -> np.ndarray:
    """:func:`prediction_strip` for people: upscaled, with row labels and the error colour bar.

    The grid is upscaled by the smallest integer factor (nearest neighbour) that makes it at least
    ``min_width`` pixels wide; a white column on the left names the rows (inputs, truth,
    prediction, ``|error|``) and a bar below maps the error colours to values (0 to ``1 / error_gain``
    and beyond).

    Args:
        inputs, targets, prediction, max_frames, gap, error_gain: as in :func:`prediction_strip`.
        min_width: the smallest width of the upscaled grid, in pixels.

    Returns:
        ``(H_img, W_img, 3)`` uint8 RGB image.
    """
    return _labelled(inputs, targets, prediction, max_frames, gap, error_gain, min_width, "labelled_strip")


def _labelled(inputs, targets, prediction, max_frames, gap, error_gain, min_width, caller: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    grid = _strip(inputs, targets, prediction, max_frames, gap, error_gain, caller)
    if isinstance(min_width, bool) or not isinstance(min_width, int) or min_width < 1:
        raise ValueError(f"{caller}: `min_width` must be an int >= 1, got {min_width!r}")
    scale = _auto_scale(grid.shape[1], min_width)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    frame_height = (grid.shape[0] - 3 * gap * scale) // 4
    font = _font(14)
    label_width, bar_area, bar_height = 96, 40, 12
    image = Image.new("RGB", (label_width + grid.shape[1], grid.shape[0] + bar_area), (BACKGROUND,) * 3)
    image.paste(Image.fromarray(grid, "RGB"), (label_width, 0))
    draw = ImageDraw.Draw(image)
    for row, label in enumerate(_ROW_LABELS):
        centre = row * (frame_height + gap * scale) + frame_height // 2
        draw.text((6, centre), label, fill=(0, 0, 0), font=font, anchor="lm")
    # The colour bar: the error ramp of _error_rgb from 0 to 1 / error_gain (and everything above).
    bar_width = min(256, grid.shape[1])
    levels = np.linspace(0.0, 1.0, bar_width)
    ramp = np.stack([np.clip(2 * levels, 0, 1), np.clip(2 * levels - 1, 0, 1), np.zeros_like(levels)], axis=-1)
    bar = np.repeat(np.floor(ramp * 255.0 + 0.5).astype(np.uint8)[None], bar_height, axis=0)
    top = grid.shape[0] + 6
    image.paste(Image.fromarray(bar, "RGB"), (label_width, top))
    middle = top + bar_height // 2
    draw.text((6, middle), "error scale", fill=(0, 0, 0), font=font, anchor="lm")
    draw.text((label_width, top + bar_height + 2), "0", fill=(0, 0, 0), font=font, anchor="lt")
    draw.text((label_width + bar_width, top + bar_height + 2), f">= {1.0 / float(error_gain):.3g}", fill=(0, 0, 0),
              font=font, anchor="rt")
    return np.asarray(image)


def save_strip(
    path: os.PathLike | str,
    inputs: Any,
    targets: Any,
    prediction: Any,
    *,
    max_frames: int | None = None,
    gap: int = 2,
    error_gain: float = 4.0,
    labelled: bool = True,
    min_width: int = MIN_WIDTH,
) -> Path:
    """Write the sample's strip to ``path`` as a PNG, atomically.

    Args:
        path: Destination file; missing parent folders are created.
        inputs: ``(T_in, C, H, W)`` context frames.
        targets: ``(T_out, C, H, W)`` true future frames.
        prediction: ``(T_out, C, H, W)`` predicted future frames.
        max_frames: See :func:`prediction_strip`.
        gap: See :func:`prediction_strip`.
        error_gain: See :func:`prediction_strip`.
        labelled: True: :func:`labelled_strip` (upscaled, row labels, colour bar); False: the bare
            :func:`prediction_strip` grid at its own size.
        min_width: See :func:`labelled_strip`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if labelled:
        image = _labelled(inputs, targets, prediction, max_frames, gap, error_gain, min_width, "save_strip")
    else:
        image = _strip(inputs, targets, prediction, max_frames, gap, error_gain, "save_strip")
    return atomic_write_bytes(path, encode_png(image))


def save_gif(
    path: os.PathLike | str,
    inputs: Any,
    targets: Any,
    prediction: Any,
    *,
    fps: float = 4,
    scale: int | None = None,
) -> Path:
    """Write an animated GIF (looping forever) that walks through the sample in time, atomically.

    Each of the ``T_in + T_out`` GIF frames shows two panels side by side, truth on the left and
    what the model sees or says on the right, split by a one-pixel bar: for each input step the
    input frame twice, then for each predicted step the true frame and the prediction (clipped to
    [0, 1]). The bar and a progress line along the bottom (one pixel high, filled in proportion to
    the step) are grey during the inputs and red during the prediction. The progress line also keeps
    consecutive GIF frames distinct, which Pillow would otherwise merge. Everything is then upscaled
    ``scale`` times, nearest neighbour: the GIF is ``(H + 1) scale`` high and ``(2 W + 1) scale``
    wide. GIF colours are quantised to a 256-colour palette per frame.

    Args:
        path: Destination file; missing parent folders are created.
        inputs: ``(T_in, C, H, W)`` context frames, C in (1, 3).
        targets: ``(T_out, C, H, W)`` true future frames.
        prediction: ``(T_out, C, H, W)`` predicted future frames.
        fps: Frames per second, in (0, 100] (GIF delays are counted in 10 ms).
        scale: Integer upscaling factor, >= 1; None: the smallest that makes the GIF at least
            :data:`MIN_WIDTH` (512) pixels wide.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from PIL import Image

    inputs, targets, prediction = _check_sample(inputs, targets, prediction, "save_gif")
    if scale is None:
        scale = _auto_scale(2 * inputs.shape[3] + 1, MIN_WIDTH)
    if not (isinstance(fps, (int, float)) and 0 < fps <= 100):
        raise ValueError(f"save_gif: `fps` must be a number in (0, 100], got {fps!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"save_gif: `scale` must be an int >= 1, got {scale!r}")

    height, width = inputs.shape[2:]
    context = _to_uint8_rgb(inputs)
    pairs = [(frame, frame, _CONTEXT_BAR) for frame in context]
    pairs += [(t, p, _PREDICTION_BAR) for t, p in zip(_to_uint8_rgb(targets), _to_uint8_rgb(prediction))]
    canvas_width = 2 * width + 1
    images = []
    for step, (left, right, colour) in enumerate(pairs):
        canvas = np.zeros((height + 1, canvas_width, 3), np.uint8)
        canvas[:height, :width] = left
        canvas[:height, width] = colour
        canvas[:height, width + 1 :] = right
        canvas[height, : round((step + 1) * canvas_width / len(pairs))] = colour
        canvas = np.repeat(np.repeat(canvas, scale, axis=0), scale, axis=1)
        images.append(Image.fromarray(canvas, "RGB"))

    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )
    return atomic_write_bytes(path, buffer.getvalue())


def save_sequence_gif(path: os.PathLike | str, inputs: Any, prediction: Any, *, fps: float = 4,
                      scale: int | None = None) -> Path:
    """Write an animated GIF of the context frames followed by predicted frames (no ground truth).

    For predictions on a user's sequences, where no future frames exist: one panel walks through
    the ``T_in`` inputs, then the ``T_out`` predicted frames (clipped to [0, 1]). A progress line
    along the bottom is grey during the inputs and red during the prediction; the GIF is
    ``(H + 1) scale`` high and ``W scale`` wide.

    Args:
        path: Destination file; missing parent folders are created.
        inputs: ``(T_in, C, H, W)`` context frames, C in (1, 3).
        prediction: ``(T_out, C, H, W)`` predicted frames, same (C, H, W).
        fps, scale: as in :func:`save_gif` (None: at least :data:`MIN_WIDTH` pixels wide).
    """
    from PIL import Image

    inputs, _, prediction = _check_sample(inputs, prediction, prediction, "save_sequence_gif")
    if scale is None:
        scale = _auto_scale(inputs.shape[3], MIN_WIDTH)
    if not (isinstance(fps, (int, float)) and 0 < fps <= 100):
        raise ValueError(f"save_sequence_gif: `fps` must be a number in (0, 100], got {fps!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"save_sequence_gif: `scale` must be an int >= 1, got {scale!r}")
    height, width = inputs.shape[2:]
    frames = [(f, _CONTEXT_BAR) for f in _to_uint8_rgb(inputs)]
    frames += [(f, _PREDICTION_BAR) for f in _to_uint8_rgb(prediction)]
    images = []
    for step, (frame, colour) in enumerate(frames):
        canvas = np.zeros((height + 1, width, 3), np.uint8)
        canvas[:height] = frame
        canvas[height, : max(1, round((step + 1) * width / len(frames)))] = colour
        canvas = np.repeat(np.repeat(canvas, scale, axis=0), scale, axis=1)
        images.append(Image.fromarray(canvas, "RGB"))
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return atomic_write_bytes(path, buffer.getvalue())


def _curve_points(name: str, value: Any) -> tuple[np.ndarray, np.ndarray]:
    message = (
        f"plot_loss_curves: `curves[{name!r}]` must be a sequence of (x, y) pairs, two equal-length "
        f"sequences (xs, ys), or a sequence of y values"
    )
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{message}; could not read it as numbers: {error}") from None
    if array.ndim == 1:
        return np.arange(len(array), dtype=np.float64), array
    # A (2, 2) array is ambiguous; reading it as two pairs matches the usual logging format.
    if array.ndim == 2 and array.shape[1] == 2:
        return array[:, 0], array[:, 1]
    if array.ndim == 2 and array.shape[0] == 2:
        return array[0], array[1]
    raise ValueError(f"{message}, got an array of shape {array.shape}")


def plot_loss_curves(
    path: os.PathLike | str,
    curves: Mapping[str, Sequence],
    *,
    title: str = "training loss",
    xlabel: str = "step",
    ylabel: str = "loss",
    log_y: bool = True,
) -> Path:
    """Draw one line per named curve, with a legend, and write the plot to ``path`` as an 800x500 PNG.

    Points whose x or y is not finite (NaN, inf: a diverged step) are skipped. With ``log_y`` the
    y axis is logarithmic, unless some plotted y is <= 0, in which case it falls back to linear.

    Args:
        path: Destination file, written atomically; missing parent folders are created.
        curves: Name -> ``N`` points, given as ``(N, 2)`` (x, y) pairs, as ``(xs, ys)`` two
            sequences of length ``N``, or as ``N`` y values (x = 0 .. N - 1).
        title: Plot title.
        xlabel: x axis label.
        ylabel: y axis label.
        log_y: Logarithmic y axis.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    try:
        # Figure + FigureCanvasAgg never touch pyplot's global state or the session's backend.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plot_loss_curves needs matplotlib: pip install stmodels[viz]") from error

    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"plot_loss_curves: `curves` must be a non-empty dict name -> points, got {curves!r}")
    points = {}
    for name, value in curves.items():
        x, y = _curve_points(str(name), value)
        finite = np.isfinite(x) & np.isfinite(y)
        points[str(name)] = (x[finite], y[finite])
    if not any(len(x) for x, _ in points.values()):
        raise ValueError("plot_loss_curves: `curves` holds no point with finite x and y")

    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, (x, y) in points.items():
        axes.plot(x, y, label=name, marker="o" if len(x) == 1 else None)
    if log_y and all((y > 0).all() for _, y in points.values()):
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())
