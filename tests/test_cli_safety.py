"""Regression tests of issue 14's run-safety and CLI-error findings (each failed before its fix):
runs are never overwritten, resume refuses changed options, numbers are validated, and every
expected failure is one line with exit status 2."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from stmodels.cli import main

LEARNING = ["--model", "convlstm", "--set", "in_shape=[2,1,8,8]", "--set", "out_frames=1", "--set", "num_hidden=[4]",
            "--set", "patch_size=2", "--set", "filter_size=3", "--in-frames", "2", "--out-frames", "1", "--size", "8",
            "--train-sequences", "4", "--val-sequences", "1", "--batch-size", "2", "--quiet", "--device", "cpu"]
TINY = [*LEARNING, "--epochs", "1"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *LEARNING, "--epochs", "2", "--out", str(run)]) == 0
    return run


# -- finding 2: train into an existing run overwrote it ------------------------------------------------------


def test_train_into_an_existing_run_is_refused_and_keeps_it(learned_run, capsys):
    before = {p: p.read_bytes() for p in learned_run.rglob("*") if p.is_file()}
    changed = [*LEARNING, "--set", "num_hidden=[8]", "--epochs", "2"]
    assert main(["train", *changed, "--out", str(learned_run)]) == 2
    assert "already holds a run" in _error_line(capsys)
    assert {p: p.read_bytes() for p in learned_run.rglob("*") if p.is_file()} == before
    assert main(["eval", "--run", str(learned_run), "--device", "cpu"]) == 0


def test_overwrite_moves_the_old_run_aside(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    old_config = (run / "config.json").read_text()
    assert main(["train", *TINY, "--seed", "3", "--out", str(run), "--overwrite"]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "config.json").read_text() == old_config
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 3


# -- finding 3: resume accepted changed options and misrecorded them ---------------------------------------


@pytest.mark.parametrize("changed, shown", [
    (["--lr", "0.5"], "lr: 0.001 -> 0.5"), (["--seed", "5"], "seed: 0 -> 5"),
    (["--batch-size", "4"], "batch_size: 2 -> 4"), (["--epochs", "3"], "total_steps"),
    (["--max-steps", "3"], "total_steps"), (["--set", "filter_size=5"], "model filter_size: 3 -> 5"),
    (["--data-seed", "1"], "data seed: 0 -> 1"),
])
def test_resume_with_changed_options_is_refused_listing_them(learned_run, capsys, changed, shown):
    config_before = (learned_run / "config.json").read_text()
    options = [*LEARNING, "--epochs", "2"]
    for i, item in enumerate(changed[::2]):  # replace an option given in LEARNING, or add it
        if item in options and item != "--set":
            del options[options.index(item):options.index(item) + 2]
    assert main(["train", *options, *changed, "--out", str(learned_run), "--resume"]) == 2
    assert shown in _error_line(capsys)
    assert (learned_run / "config.json").read_text() == config_before


def test_resume_with_the_same_options_continues(learned_run):
    assert main(["train", *LEARNING, "--epochs", "2", "--out", str(learned_run), "--resume"]) == 0


# -- finding 7: numbers not validated; zero replaced by the default ----------------------------------------


@pytest.mark.parametrize("argv", [
    ["train", "--grad-clip", "-1"], ["train", "--weight-decay", "-1"], ["train", "--lr", "nan"],
    ["train", "--in-frames", "0"], ["train", "--out-frames", "0"], ["train", "--size", "0"],
    ["train", "--ema", "1.5"], ["eval", "--run", "R", "--steps", "0"], ["predict", "--run", "R", "--input", "I",
                                                                          "--output", "O", "--batch-size", "-1"],
    ["predict", "--run", "R", "--input", "I", "--output", "O", "--batch-size", "0"],
])
def test_bad_numbers_are_refused_by_the_parser(argv, capsys):
    if argv[0] == "train":
        argv = [*argv, "--out", "nowhere"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error: argument --" in capsys.readouterr().err


def test_zero_test_sequences_is_a_value_not_the_default(tmp_path, capsys):
    assert main(["data", "make-chdl", "--out", str(tmp_path / "d"), "--sequences", "2", "--test-sequences", "0",
                 "--frames", "3", "--size", "8"]) == 2
    assert "at least one sequence" in _error_line(capsys)
    assert not (tmp_path / "d").exists()


def test_eval_split_on_generated_data_is_refused(learned_run, capsys):
    assert main(["eval", "--run", str(learned_run), "--split", "bogus", "--device", "cpu"]) == 2
    assert "--split 'bogus'" in _error_line(capsys)


def test_config_objects_validate_numbers():
    from stmodels.data import DataSpec
    from stmodels.train import TrainConfig

    for bad in (dict(grad_clip=-1.0), dict(weight_decay=-1.0), dict(weight_decay=float("nan")),
                dict(lr=float("inf")), dict(betas=(0.9, 1.5)), dict(seed=-1)):
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
            TrainConfig(**bad)
    for bad in (dict(in_frames=0), dict(stride=0), dict(size=0), dict(channels=2), dict(train_sequences=0),
                dict(in_frames="4")):
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
            DataSpec(**bad)


# -- finding 10: tracebacks where a one-line error is promised ---------------------------------------------


def test_set_without_equals_exits_2(tmp_path, capsys):
    assert main(["train", "--set", "foo", "--out", str(tmp_path / "r")]) == 2
    assert "--set expects KEY=VALUE" in _error_line(capsys)


def test_cuda_device_on_a_cpu_torch_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["train", *TINY, "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "sees no CUDA device" in _error_line(capsys)


def test_unwritable_out_fails_before_any_work(learned_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", *TINY, "--out", str(blocker / "run")]) == 2
    assert "cannot create the folder" in _error_line(capsys)
    assert main(["predict", "--run", str(learned_run), "--input", str(tmp_path), "--output", str(blocker / "o"),
                 "--device", "cpu"]) == 2
    assert str(blocker) in _error_line(capsys)


@pytest.mark.parametrize("content, shown", [
    (b"{not json", "not valid JSON"), (b"null", "expected a JSON object"), (b"\xff\xfe{}", "not UTF-8"),
])
def test_a_damaged_run_config_is_one_line_naming_the_file(learned_run, tmp_path, capsys, content, shown):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(learned_run, copy)
    (copy / "config.json").write_bytes(content)
    assert main(["eval", "--run", str(copy), "--device", "cpu"]) == 2
    line = _error_line(capsys)
    assert shown in line and "config.json" in line


def test_a_run_without_data_spec_asks_for_data(learned_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(learned_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["data"] = None  # what Trainer(...) without data_spec= writes (the README's snippet)
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["eval", "--run", str(copy), "--device", "cpu"]) == 2
    assert "no data spec" in _error_line(capsys)


def test_a_checkpoint_missing_the_optimizer_is_one_line(learned_run, tmp_path, capsys):
    import shutil

    from stmodels.train import load_checkpoint, save_checkpoint

    copy = tmp_path / "copy"
    shutil.copytree(learned_run, copy)
    last = copy / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["optimizer"], state["format"]
    save_checkpoint(last, state)
    assert main(["train", *LEARNING, "--epochs", "2", "--out", str(copy), "--resume"]) == 2
    assert "last.pt: checkpoint lacks 'optimizer'" in _error_line(capsys)


def test_disk_full_while_checkpointing_names_the_disk(tmp_path, monkeypatch, capsys):
    import errno
    import os

    import stmodels._fileio as fileio

    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, stream):
            self.stream = stream

        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):
            return self.stream.fileno()

        def close(self):
            self.stream.close()
            super().close()

    def fdopen(handle, mode="r", *args, **kwargs):
        stream = real_fdopen(handle, mode, *args, **kwargs)
        return FullDisk(stream) if "w" in mode else stream

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)
    assert main(["train", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "no space left on the device" in _error_line(capsys)


def test_dataloader_worker_errors_are_unwrapped(tmp_path, capsys):
    data = tmp_path / "d"
    assert main(["data", "make-chdl", "--out", str(data), "--sequences", "2", "--test-sequences", "1",
                 "--frames", "3", "--size", "8"]) == 0
    capsys.readouterr()
    frame = data / "train" / "seq_00001" / "frame_0001.png"
    frame.write_bytes(frame.read_bytes()[:60])  # header intact, pixels truncated: found when read
    argv = ["train", *TINY, "--data", f"chdl:{data}", "--workers", "1", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "frame_0001.png: unreadable or truncated image" in line and "DataLoader" not in line
    with pytest.raises(ValueError):
        main(["--debug", *argv[:-1], str(tmp_path / "r2")])


def test_predict_on_an_ascii_terminal_does_not_fail_after_writing(learned_run, tmp_path, monkeypatch):
    import numpy as np

    mine = tmp_path / "mine"
    mine.mkdir()
    np.save(mine / "lané.npy", np.zeros((2, 8, 8), np.float32))
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    assert main(["predict", "--run", str(learned_run), "--input", str(mine), "--output", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    ascii_out.flush()
    assert b"lan\\xe9" in ascii_out.buffer.getvalue()
