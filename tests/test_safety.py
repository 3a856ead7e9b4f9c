"""Regression tests of issue 14's findings: nothing the user owns is lost, files follow the umask,
damaged files are detected, config fields are validated. Each test failed on the code before it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stmodels.data import make_chdl_folder
from stmodels.models import create_model, from_pretrained
from stmodels.train import CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _tiny_chdl(out, **kwargs):
    return make_chdl_folder(out, frames=3, size=8, splits={"train": 1, "test": 1}, **kwargs)


# -- finding 1: make-chdl --overwrite deleted any folder ------------------------------------------------


def test_overwrite_replaces_a_generated_dataset(tmp_path):
    out = _tiny_chdl(tmp_path / "chdl")
    _tiny_chdl(out, seed=3, overwrite=True)
    assert json.loads((out / "synthetic_chdl.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chdl"]  # nothing left aside


def test_overwrite_refuses_a_folder_the_user_owns(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(ValueError, match="mine: has no readable synthetic_chdl.json marker"):
        _tiny_chdl(mine, overwrite=True)
    assert (mine / "thesis.txt").read_text() == "years of work"
    # A generated dataset with a user's file added to it is refused too, and kept whole.
    data = _tiny_chdl(tmp_path / "data")
    (data / "train" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt: not part of the generated dataset"):
        _tiny_chdl(data, overwrite=True)
    assert (data / "train" / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mine"]


def test_overwrite_refuses_the_working_directory(tmp_path, monkeypatch):
    data = _tiny_chdl(tmp_path / "data")
    monkeypatch.chdir(data)
    with pytest.raises(ValueError, match="working directory"):
        _tiny_chdl(".", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no `..old.*` folder left behind


# -- finding 4: every written file was mode 0600 ----------------------------------------------------------


def test_written_files_follow_the_umask(tmp_path):
    from stmodels._fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o027)
        assert stat.S_IMODE(atomic_write_text(tmp_path / "b.txt", "x").stat().st_mode) == 0o640
        os.umask(0o022)
        model = create_model("copy_last", in_shape=(2, 1, 8, 8), out_frames=1)
        saved = model.save_pretrained(tmp_path / "model")
        assert {stat.S_IMODE(p.stat().st_mode) for p in saved.iterdir()} == {0o644}
    finally:
        os.umask(old)


# -- finding 11: stale temporary files of a killed write --------------------------------------------------


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    from stmodels._fileio import atomic_write_bytes

    script = ("import os, sys, signal\nsys.path.insert(0, sys.argv[2])\n"
              "from stmodels._fileio import atomic_write\n"
              "def write(stream):\n    stream.write(b'half'); stream.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
              "atomic_write(sys.argv[1], write)\n")
    target = tmp_path / "checkpoints" / "best.pt"
    result = subprocess.run([sys.executable, "-c", script, str(target), str(REPO)], capture_output=True)
    assert result.returncode == -9
    assert len(list(target.parent.glob(".best.pt.*.tmp"))) == 1
    live = target.parent / f".best.pt.{os.getpid()}.live.tmp"  # a concurrent writer of this process
    live.write_bytes(b"")
    atomic_write_bytes(target, b"whole")
    assert sorted(p.name for p in target.parent.iterdir()) == [live.name, "best.pt"]


# -- finding 9: no integrity check ------------------------------------------------------------------------


def _flip_a_byte(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_bit_flipped_checkpoint_is_refused_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.arange(4096, dtype=torch.float32)}})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(4096, dtype=torch.float32))
    _flip_a_byte(path)
    with pytest.raises(CheckpointError, match="last.pt: (checksum mismatch|unreadable)"):
        load_checkpoint(path)


def test_a_bit_flipped_saved_model_is_refused_naming_the_file(tmp_path):
    model = create_model("convlstm", in_shape=(2, 1, 8, 8), out_frames=1, num_hidden=(4,), patch_size=2)
    directory = model.save_pretrained(tmp_path / "model")
    weights = directory / "model.safetensors"
    _flip_a_byte(weights, at=0.9)
    with pytest.raises(ValueError, match="model.safetensors: checksum mismatch"):
        from_pretrained(directory)


# -- finding 8: from_pretrained filled missing fields from class defaults ---------------------------------


def test_from_pretrained_fills_missing_fields_from_the_saved_preset(tmp_path):
    model = create_model("diffuma_tiny")
    directory = model.save_pretrained(tmp_path / "model")
    meta = json.loads((directory / "config.json").read_text())
    for name in ("t_star", "diffusion_steps", "ddim_start_step"):
        del meta["config"][name]
    (directory / "config.json").write_text(json.dumps(meta))
    loaded = from_pretrained(directory)
    assert loaded.config == model.config  # the preset's 5 / 100 / 40, not the class's 20 / 1000 / 200


# -- finding 6 (model configs): every field validated at construction ------------------------------------


@pytest.mark.parametrize("name, field, value", [
    ("diffuma_tiny", "hidden_channels", -1), ("diffuma_tiny", "mlp_ratio", float("nan")),
    ("diffuma_tiny", "in_shape", (4, 1, 16)), ("diffuma_tiny", "t_star", 2.5),
    ("diffuma_tiny", "share_directions", "yes"), ("simvp", "hid_T", 3.5), ("convlstm", "layer_norm", 1),
    ("convlstm", "num_hidden", ()), ("copy_last", "in_shape", (4, 1, 16, 0)), ("copy_last", "out_frames", "4"),
])
def test_model_config_fields_are_validated_at_construction(name, field, value):
    with pytest.raises(ValueError, match=f"`{field}"):
        create_model(name, **{field: value})


def test_every_preset_still_constructs():
    from stmodels.models import list_models, model_config

    for name in list_models():
        assert model_config(name).to_dict()


# -- finding 5: images read wrongly without an error ------------------------------------------------------


def test_palette_tiffs_are_expanded_through_their_palette(tmp_path):
    import numpy as np
    import tifffile

    from stmodels.data._io import probe_image, read_image

    indices = np.array([[0, 1], [2, 1]], np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = (65535, 0, 0)  # red
    colormap[:, 2] = (0, 0, 65535)  # blue
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, indices, photometric="palette", colormap=colormap)
    assert probe_image(path).channels == 3
    image = read_image(path)
    assert image.shape == (3, 2, 2) and image.dtype == np.uint16
    assert image[:, 0, 1].tolist() == [65535, 0, 0] and image[:, 1, 0].tolist() == [0, 0, 65535]


def test_cmyk_tiffs_are_refused_naming_the_file(tmp_path):
    import numpy as np
    import tifffile

    from stmodels.data import CHDLFormatError
    from stmodels.data._io import probe_image, read_image

    path = tmp_path / "cmyk.tif"
    tifffile.imwrite(path, np.zeros((2, 2, 4), np.uint8), photometric="separated")
    for reader in (probe_image, read_image):
        with pytest.raises(CHDLFormatError, match="cmyk.tif: CMYK"):
            reader(path)


def _frames_folder(root, count=4, size=8):
    import numpy as np

    from stmodels.data._io import encode_png

    sequence = root / "train" / "s"
    sequence.mkdir(parents=True)
    for i in range(count):
        (sequence / f"f_{i}.png").write_bytes(encode_png(np.full((size, size), 10 * i, np.uint8)))
    return sequence


def test_a_dangling_symlink_frame_is_an_error_naming_it(tmp_path):
    from stmodels.data import CHDLFolder, CHDLFormatError

    sequence = _frames_folder(tmp_path)
    (sequence / "f_7.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(CHDLFormatError, match="f_7.png: a dangling symlink"):
        CHDLFolder(tmp_path, "train", 2, 2)


def test_a_symlink_loop_is_an_error_naming_it(tmp_path):
    from stmodels.data import CHDLFolder, CHDLFormatError

    sequence = _frames_folder(tmp_path)
    (sequence / "f_9.png").symlink_to(sequence / "f_9.png")
    with pytest.raises(CHDLFormatError, match="f_9.png: .*symlink"):
        CHDLFolder(tmp_path, "train", 2, 2)


def test_a_huge_png_header_is_refused_before_allocating(tmp_path):
    import struct
    import zlib

    from stmodels.data import CHDLFolder, CHDLFormatError

    sequence = _frames_folder(tmp_path)
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (sequence / "f_2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(CHDLFormatError, match="f_2.png: image of 60000x60000 pixels exceeds the limit"):
        CHDLFolder(tmp_path, "train", 2, 2)


# -- finding 6: the dataset manifest was trusted ----------------------------------------------------------


def _manifest(root):
    return root / "train" / ".stmodels_manifest.json"


def test_a_manifest_with_raised_frame_counts_is_rebuilt(tmp_path):
    from stmodels.data import CHDLFolder

    _frames_folder(tmp_path)
    CHDLFolder(tmp_path, "train", 2, 2)
    manifest = json.loads(_manifest(tmp_path).read_text())
    manifest["sequences"][0]["num_frames"] = 8
    _manifest(tmp_path).write_text(json.dumps(manifest))
    data = CHDLFolder(tmp_path, "train", 2, 2)
    assert len(data) == 1 and not torch.isnan(torch.cat(data[0])).any()


@pytest.mark.parametrize("damage", ["list", "null", "string count", "files not a list", "sequences not a list"])
def test_a_malformed_manifest_is_rebuilt(tmp_path, damage):
    from stmodels.data import CHDLFolder

    _frames_folder(tmp_path)
    CHDLFolder(tmp_path, "train", 2, 2)
    manifest = json.loads(_manifest(tmp_path).read_text())
    record = manifest["sequences"][0]
    if damage == "list":
        manifest = []
    elif damage == "null":
        manifest = None
    elif damage == "string count":
        record["num_frames"] = "8"
    elif damage == "files not a list":
        record["num_frames"] = None
    else:
        manifest["sequences"] = "x"
    _manifest(tmp_path).write_text(json.dumps(manifest))
    data = CHDLFolder(tmp_path, "train", 2, 2)
    assert data.manifest["s"]["num_frames"] == 4 and len(data) == 1
    assert json.loads(_manifest(tmp_path).read_text())["sequences"][0]["num_frames"] == 4


def test_an_npy_replaced_after_opening_is_an_error(tmp_path):
    import numpy as np

    from stmodels.data import CHDLFolder, CHDLFormatError

    (tmp_path / "train").mkdir()
    path = tmp_path / "train" / "a.npy"
    np.save(path, np.zeros((4, 8, 8), np.float32))
    data = CHDLFolder(tmp_path, "train", 2, 2)
    np.save(path, np.zeros((4, 6, 6), np.float32))
    with pytest.raises(CHDLFormatError, match="a.npy: the file changed since the dataset was opened"):
        data[0]
    # And a manifest edited to match a changed header is caught when the dataset is opened again.
    reopened = CHDLFolder(tmp_path, "train", 2, 2)
    assert reopened.frame_shape == (1, 6, 6)
