"""Hypothesis fuzz of the CHDL loader and of the command line (issue 14): random trees of valid
and invalid files, random arguments. Every outcome is success or one line naming the problem
(exit status 2 on the CLI), never a traceback, and nothing changes outside the output folder."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stmodels.cli import main
from stmodels.data import CHDLFolder
from stmodels.data._io import encode_png


def _png(size: int) -> bytes:
    return encode_png(np.full((size, size), 7, np.uint8))


_FILES = {
    "png": lambda p, size: p.write_bytes(_png(size)),
    "png_other_size": lambda p, size: p.write_bytes(_png(size + 2)),
    "png_truncated": lambda p, size: p.write_bytes(_png(size)[:45]),
    "png_garbage": lambda p, size: p.write_bytes(b"not an image at all"),
    "empty_tif": lambda p, size: p.write_bytes(b""),
    "jpeg_garbage": lambda p, size: p.write_bytes(b"\xff\xd8\xff\xe0 truncated"),
    "text": lambda p, size: p.write_text("notes"),
    "dangling": lambda p, size: p.symlink_to(p.parent / "missing-target.png"),
    "loop": lambda p, size: p.symlink_to(p),
}
_SUFFIXES = {"png": ".png", "png_other_size": ".png", "png_truncated": ".png", "png_garbage": ".png",
             "empty_tif": ".tif", "jpeg_garbage": ".jpg", "text": ".txt", "dangling": ".png", "loop": ".png"}
_NPY = {
    "npy": lambda p, size: np.save(p, np.zeros((3, size, size), np.uint8)),
    "npy_float_bad": lambda p, size: np.save(p, np.full((3, size, size), 2.0, np.float32)),
    "npy_4d": lambda p, size: np.save(p, np.zeros((3, 1, size, size), np.uint16)),
    "npy_garbage": lambda p, size: p.write_bytes(b"\x93NUMPY garbage"),
    "npy_object": lambda p, size: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
    "npy_1d": lambda p, size: np.save(p, np.zeros(5, np.uint8)),
}

_sequence = st.one_of(
    st.lists(st.sampled_from(sorted(_FILES)), min_size=0, max_size=5).map(lambda files: ("frames", files)),
    st.sampled_from(sorted(_NPY)).map(lambda kind: ("npy", kind)),
)
_EXPECTED = (ValueError, FileNotFoundError)  # CHDLFormatError is a ValueError


def _assert_one_line_naming(exc: BaseException, root: Path) -> None:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    assert str(root) in text, text


@settings(max_examples=40)
@given(sequences=st.lists(_sequence, min_size=0, max_size=3), size=st.integers(8, 10),
       window=st.tuples(st.integers(1, 3), st.integers(0, 2)), manifest=st.sampled_from(["none", "junk", "list"]))
def test_chdl_loader_fuzz(sequences, size, window, manifest):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        split = root / "train"
        split.mkdir()
        if manifest != "none":
            (split / ".stmodels_manifest.json").write_text("{oops" if manifest == "junk" else "[1, 2]")
        for index, (kind, content) in enumerate(sequences):
            if kind == "npy":
                _NPY[content](split / f"seq_{index}.npy", size)
                continue
            folder = split / f"seq_{index}"
            folder.mkdir()
            for frame, file_kind in enumerate(content):
                _FILES[file_kind](folder / f"f_{frame}{_SUFFIXES[file_kind]}", size)
        try:
            data = CHDLFolder(root, "train", *window)
            for item in range(len(data)):
                inputs, targets = data[item]
                assert inputs.shape[0] == window[0] and targets.shape[0] == window[1]
                assert np.isfinite(inputs.numpy()).all() and 0 <= inputs.min() <= inputs.max() <= 1
        except _EXPECTED as exc:
            _assert_one_line_naming(exc, root)


def _snapshot(folder: Path, skip: Path) -> dict[str, tuple]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for name in filenames:
            path = Path(dirpath) / name
            if path == skip or path.name.startswith(".stmodels_manifest"):
                continue
            found[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns)
    return found


def _run_cli(argv: list[str]) -> tuple[int, str]:
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse: usage line + one error line, status 2
            code = exit_info.code
            assert code == 2, (argv, stderr.getvalue())
            return code, stderr.getvalue()
    if code != 0:
        lines = stderr.getvalue().strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0], (argv, stderr.getvalue())
    return code, stderr.getvalue()


_numbers = st.sampled_from(["0", "1", "2", "-1", "3", "nan", "inf", "1e9", "x", "0.5", ""])


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_fuzz")
    (root / "user" / "precious").mkdir(parents=True)
    (root / "user" / "precious" / "thesis.txt").write_text("mine")
    assert main(["data", "make-chdl", "--out", str(root / "data"), "--sequences", "2", "--test-sequences", "1",
                 "--frames", "3", "--size", "8"]) == 0
    return root


@settings(max_examples=25)
@given(options=st.lists(st.tuples(st.sampled_from(["--sequences", "--test-sequences", "--frames", "--size",
                                                   "--channels", "--bit-depth", "--seed"]), _numbers), max_size=4),
       target=st.sampled_from(["new", "user", "user/precious", "data", "."]), overwrite=st.booleans())
def test_make_chdl_arguments_fuzz(cli_root, options, target, overwrite):
    out = cli_root / "new" if target == "new" else cli_root / target
    argv = ["data", "make-chdl", "--out", str(out) if target != "." else "."]
    for name, value in options:
        argv += [name, value]
    if overwrite:
        argv.append("--overwrite")
    before = _snapshot(cli_root, skip=cli_root / ("new" if target == "new" else "data"))
    previous = os.getcwd()
    os.chdir(cli_root / "user")
    try:
        if target == ".":
            before = _snapshot(cli_root, skip=cli_root / "data")
        _run_cli(argv)
    finally:
        os.chdir(previous)
    after = _snapshot(cli_root, skip=cli_root / ("new" if target == "new" else "data"))
    assert after == before
    assert (cli_root / "user" / "precious" / "thesis.txt").read_text() == "mine"
    if target == "new" and out.exists():
        import shutil

        shutil.rmtree(out)


@settings(max_examples=12)
@given(options=st.lists(st.tuples(st.sampled_from(["--epochs", "--max-steps", "--batch-size", "--lr",
                                                   "--weight-decay", "--grad-clip", "--ema", "--seed", "--workers",
                                                   "--in-frames", "--out-frames", "--stride", "--eval-samples",
                                                   "--warmup-steps", "--checkpoint-every"]), _numbers), max_size=3),
       extra=st.sampled_from([[], ["--set", "foo"], ["--set", "filter_size=2"], ["--set", "num_hidden=[0]"],
                              ["--resume"], ["--data", "chdl:/nonexistent"], ["--data", "bogus"],
                              ["--schedule", "onecycle"], ["--precision", "fp16"], ["--model", "nope"]]))
def test_train_arguments_fuzz(cli_root, options, extra):
    out = cli_root / "run"
    argv = ["train", "--model", "convlstm", "--set", "in_shape=[2,1,8,8]", "--set", "out_frames=1",
            "--set", "num_hidden=[2]", "--set", "patch_size=2", "--set", "filter_size=3", "--size", "8",
            "--in-frames", "2", "--out-frames", "1", "--train-sequences", "2", "--val-sequences", "1",
            "--epochs", "1", "--batch-size", "2", "--quiet", "--device", "cpu", "--data", f"chdl:{cli_root / 'data'}",
            "--eval-samples", "1",
            "--out", str(out)]
    for name, value in options:
        argv += [name, value]
    argv += extra
    before = _snapshot(cli_root, skip=out)
    _run_cli(argv)
    assert _snapshot(cli_root, skip=out) == before
    if out.exists():
        import shutil

        shutil.rmtree(out)
