"""Tests for stmodels.train.visualize: strip layout and pixels, PNG / GIF / plot files, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stmodels.train.visualize import plot_loss_curves, prediction_strip, save_gif, save_strip

H, W = 8, 6


def _frames(t, c, seed, levels=None):
    rng = np.random.default_rng(seed)
    if levels is None:
        return rng.random((t, c, H, W), dtype=np.float32)
    # Few distinct values, so a GIF's palette holds them exactly.
    return rng.choice(np.asarray(levels, np.float32), size=(t, c, H, W))


def _cell(image, row, col, gap=2):
    top, left = row * (H + gap), col * (W + gap)
    return image[top : top + H, left : left + W]


def _as_rgb255(frame):
    """(C, H, W) floats -> (H, W, 3) uint8, the way the strip should show them."""
    rgb = np.floor(np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb


def _no_temporaries(folder):
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("t_in", "t_out", "gap"), [(4, 4, 2), (3, 5, 1), (6, 2, 0)])
def test_strip_shape_and_rows(channels, t_in, t_out, gap):
    inputs, targets = _frames(t_in, channels, 0), _frames(t_out, channels, 1)
    prediction = targets + 0.3
    image = prediction_strip(inputs, targets, prediction, gap=gap)
    columns = max(t_in, t_out)
    assert image.dtype == np.uint8
    assert image.shape == (4 * H + 3 * gap, columns * W + (columns - 1) * gap, 3)
    for t in range(t_in):
        np.testing.assert_array_equal(_cell(image, 0, t, gap), _as_rgb255(inputs[t]))
    for t in range(t_out):
        np.testing.assert_array_equal(_cell(image, 1, t, gap), _as_rgb255(targets[t]))
        # Predictions are clipped before display.
        np.testing.assert_array_equal(_cell(image, 2, t, gap), _as_rgb255(prediction[t]))
    # The shorter rows are padded with the white background on the right.
    if t_in < t_out:
        assert (image[:H, t_in * (W + gap) :] == 255).all()
    if t_out < t_in:
        assert (image[H + gap :, t_out * (W + gap) :] == 255).all()
    if gap:
        assert (image[H : H + gap] == 255).all()
        assert (image[:, W : W + gap] == 255).all()


def test_truth_pixels_known_values():
    targets = np.zeros((2, 1, H, W), np.float32)
    targets[1, 0, :2, :2] = 0.5  # 127.5 rounds half up to 128
    targets[1, 0, 0, 0] = 0.2  # 51
    image = prediction_strip(np.zeros((2, 1, H, W), np.float32), targets, targets, gap=3)
    block = image[H + 3 : H + 5, W + 3 : W + 5]
    assert block[0, 0].tolist() == [51, 51, 51]
    assert block[0, 1].tolist() == block[1, 0].tolist() == block[1, 1].tolist() == [128, 128, 128]


def test_error_row_black_where_exact_coloured_where_wrong():
    targets = _frames(3, 1, 2)
    prediction = targets.copy()
    prediction[1, 0, 2:4, 1:3] += 0.2  # 0.2 * gain 4 = 0.8 -> well into the ramp
    image = prediction_strip(_frames(3, 1, 3), targets, prediction, error_gain=4.0)
    error = image[3 * (H + 2) :, :]
    assert (_cell(error, 0, 0) == 0).all() and (_cell(error, 0, 2) == 0).all()
    wrong = _cell(error, 0, 1)
    assert (wrong[2:4, 1:3] == [255, 153, 0]).all()  # level 0.8 -> red 1, green 0.6, blue 0
    mask = np.zeros((H, W), bool)
    mask[2:4, 1:3] = True
    assert (wrong[~mask] == 0).all()


def test_error_row_uses_raw_prediction_and_nan():
    targets = np.full((2, 1, H, W), 1.0, np.float32)
    prediction = targets.copy()
    prediction[0] = 1.5  # displayed as 1.0 (clipped), but still an error
    prediction[1, 0, 0, 0] = np.nan
    image = prediction_strip(targets, targets, prediction, error_gain=2.0)  # 0.5 off -> level 1
    assert (_cell(image, 2, 0) == 255).all()
    error = image[3 * (H + 2) :]
    assert _cell(error, 0, 0)[0, 0].tolist() == [255, 255, 0]
    assert _cell(error, 0, 1)[0, 0].tolist() == [255, 255, 0]
    assert _cell(error, 0, 1)[0, 1].tolist() == [0, 0, 0]


def test_accepts_torch_tensors():
    inputs, targets = _frames(3, 3, 4), _frames(2, 3, 5)
    from_numpy = prediction_strip(inputs, targets, targets)
    from_torch = prediction_strip(
        torch.from_numpy(inputs).double(), torch.from_numpy(targets).requires_grad_(), torch.from_numpy(targets)
    )
    np.testing.assert_array_equal(from_numpy, from_torch)


def test_max_frames_keeps_first_and_last():
    inputs = np.stack([np.full((1, H, W), t / 10, np.float32) for t in range(10)])
    targets = np.stack([np.full((1, H, W), t / 5, np.float32) for t in range(5)])
    image = prediction_strip(inputs, targets, targets, max_frames=3, gap=2)
    assert image.shape == (4 * H + 6, 3 * W + 4, 3)
    assert [int(_cell(image, 0, c)[0, 0, 0]) for c in range(3)] == [round(v * 255) for v in (0.0, 0.5, 0.9)]
    assert [int(_cell(image, 1, c)[0, 0, 0]) for c in range(3)] == [0, 102, 204]  # frames 0, 2, 4
    assert prediction_strip(inputs, targets, targets, max_frames=50).shape == (4 * H + 6, 10 * W + 18, 3)


@pytest.mark.parametrize(
    ("inputs", "targets", "prediction", "needle"),
    [
        ((4, 2, H, W), (4, 2, H, W), (4, 2, H, W), "`inputs` must have shape (T_in, C, H, W)"),
        ((2, 4, 1, H, W), (4, 1, H, W), (4, 1, H, W), "pass one sample"),
        ((4, 1, H, W), (4, 1, H, W + 1), (4, 1, H, W + 1), "`targets` must have shape (T_out, C, H, W)"),
        ((4, 1, H, W), (0, 1, H, W), (0, 1, H, W), "`targets`"),
        ((4, 1, H, W), (10, 1, H, W), (9, 1, H, W), f"matching `targets` (10, 1, {H}, {W}), got (9, 1, {H}, {W})"),
    ],
)
def test_bad_shapes_name_the_argument(inputs, targets, prediction, needle):
    args = [np.zeros(s, np.float32) for s in (inputs, targets, prediction)]
    with pytest.raises(ValueError, match="prediction_strip") as info:
        prediction_strip(*args)
    assert needle in str(info.value)


def test_bad_options_and_dtypes(tmp_path):
    good = np.zeros((2, 1, H, W), np.float32)
    with pytest.raises(ValueError, match="`inputs` must hold floats"):
        prediction_strip(np.zeros((2, 1, H, W), np.uint8), good, good)
    with pytest.raises(ValueError, match="`max_frames`"):
        prediction_strip(good, good, good, max_frames=0)
    with pytest.raises(ValueError, match="`gap`"):
        prediction_strip(good, good, good, gap=-1)
    with pytest.raises(ValueError, match="`error_gain`"):
        prediction_strip(good, good, good, error_gain=0.0)
    with pytest.raises(ValueError, match=r"^save_strip: `prediction`"):
        save_strip(tmp_path / "x.png", good, good, good[:1])
    with pytest.raises(ValueError, match="save_gif: `scale`"):
        save_gif(tmp_path / "x.gif", good, good, good, scale=0)
    with pytest.raises(ValueError, match="save_gif: `fps`"):
        save_gif(tmp_path / "x.gif", good, good, good, fps=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("channels", [1, 3])
def test_save_strip_round_trip(tmp_path, channels):
    inputs, targets = _frames(3, channels, 6), _frames(4, channels, 7)
    prediction = _frames(4, channels, 8)
    path = save_strip(tmp_path / "sub" / "strip.png", inputs, targets, prediction, gap=1, labelled=False)
    assert path == tmp_path / "sub" / "strip.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        pixels = np.asarray(png.convert("RGB"))
    np.testing.assert_array_equal(pixels, prediction_strip(inputs, targets, prediction, gap=1))
    _no_temporaries(path.parent)


@pytest.mark.parametrize("channels", [1, 3])
def test_save_gif_frames(tmp_path, channels):
    t_in, t_out, scale = 3, 5, 3
    inputs = _frames(t_in, channels, 9, levels=(0.0, 1.0))
    targets = _frames(t_out, channels, 10, levels=(0.0, 1.0))
    prediction = _frames(t_out, channels, 11, levels=(0.0, 1.0))
    path = save_gif(tmp_path / "anim.gif", inputs, targets, prediction, fps=4, scale=scale)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == t_in + t_out
        assert gif.size == ((2 * W + 1) * scale, (H + 1) * scale)
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 250
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB")))
    for k, frame in enumerate(frames):
        rows = frame[: H * scale : scale]
        left, right = rows[:, : W * scale : scale], rows[:, (W + 1) * scale :: scale]
        truth, shown = (inputs[k], inputs[k]) if k < t_in else (targets[k - t_in], prediction[k - t_in])
        np.testing.assert_array_equal(left, _as_rgb255(truth))
        np.testing.assert_array_equal(right, _as_rgb255(shown))
        bar = frame[0, W * scale].tolist()
        assert bar == ([128, 128, 128] if k < t_in else [255, 0, 0])
    _no_temporaries(tmp_path)


def test_plot_loss_curves(tmp_path):
    pairs = [(0, 1.0), (1, 0.5), (2, 0.3), (3, 0.2)]
    path = plot_loss_curves(tmp_path / "plots" / "loss.png", {"train": pairs, "val": ([0, 3], [0.9, 0.4])})
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (800, 500)
        pixels = np.asarray(png.convert("RGB"))
    colours = {tuple(p) for p in pixels.reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # matplotlib's first two line colours
    _no_temporaries(path.parent)

    # Two sequences give the same picture as pairs, and a non-finite point is skipped, not drawn.
    as_columns = plot_loss_curves(tmp_path / "b.png", {"train": ([0, 1, 2, 3], [1.0, 0.5, 0.3, 0.2])})
    with_nan = plot_loss_curves(tmp_path / "c.png", {"train": [*pairs[:2], (1.5, float("nan")), *pairs[2:]]})
    as_pairs = plot_loss_curves(tmp_path / "d.png", {"train": pairs})
    with Image.open(as_pairs) as reference:
        expected = np.asarray(reference.convert("RGB"))
    for other in (as_columns, with_nan):
        with Image.open(other) as png:
            np.testing.assert_array_equal(np.asarray(png.convert("RGB")), expected)


def test_plot_loss_curves_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="`curves` must be a non-empty dict"):
        plot_loss_curves(tmp_path / "x.png", {})
    with pytest.raises(ValueError, match=r"`curves\['a'\]`"):
        plot_loss_curves(tmp_path / "x.png", {"a": [(0, 1, 2), (1, 2, 3), (2, 3, 4)]})
    with pytest.raises(ValueError, match="no point with finite"):
        plot_loss_curves(tmp_path / "x.png", {"a": [(0, float("nan"))]})
    assert list(tmp_path.iterdir()) == []


def test_save_gif_keeps_identical_steps_apart(tmp_path):
    # Pillow merges identical consecutive GIF frames; the progress line must keep them distinct.
    still = np.zeros((4, 1, H, W), np.float32)
    path = save_gif(tmp_path / "still.gif", still, still[:2], still[:2], scale=1)
    with Image.open(path) as gif:
        assert gif.n_frames == 6
        gif.seek(5)
        assert (np.asarray(gif.convert("RGB"))[H] == [255, 0, 0]).all()  # full progress line, red


def test_saved_pictures_are_large_labelled_and_show_the_error_scale(tmp_path):
    from stmodels.train.visualize import labelled_strip

    inputs, targets, prediction = _frames(4, 1, 1), _frames(4, 1, 2), _frames(4, 1, 3)  # 32x32-like tiny frames
    grid = prediction_strip(inputs, targets, prediction)
    image = labelled_strip(inputs, targets, prediction)
    scale = -(-512 // grid.shape[1])
    assert image.shape[1] >= 512 and image.shape[0] > 4 * H * scale
    framed = image[: grid.shape[0] * scale, -grid.shape[1] * scale:]
    np.testing.assert_array_equal(framed[::scale, ::scale], grid)  # the grid, upscaled nearest-neighbour
    labels = image[: grid.shape[0] * scale, : image.shape[1] - grid.shape[1] * scale]
    assert (labels < 128).any()  # dark text on the white label column
    bar_row = image[grid.shape[0] * scale + 10, image.shape[1] - grid.shape[1] * scale:]
    assert bar_row[0].tolist() == [0, 0, 0] and bar_row[200].tolist()[2] == 0 and bar_row[200][0] == 255
    path = save_strip(tmp_path / "s.png", inputs, targets, prediction)
    with Image.open(path) as png:
        assert png.size == (image.shape[1], image.shape[0])
    gif = save_gif(tmp_path / "a.gif", inputs, targets, prediction)
    with Image.open(gif) as animation:
        assert animation.size[0] >= 512
