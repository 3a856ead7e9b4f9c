"""The `stmodels` command line and the main-job example, end to end on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stmodels.cli import main
from stmodels.data import CHDLFolder
from stmodels.models import create_model
from stmodels.train import load_checkpoint, load_run, read_csv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["data", "make-chdl", "--out", str(root / "chdl"), "--sequences", "4", "--test-sequences", "2",
                 "--frames", "9", "--size", "16"]) == 0
    assert main(["train", "--model", "diffuma_tiny", "--data", f"chdl:{root / 'chdl'}", "--epochs", "2",
                 "--batch-size", "4", "--out", str(root / "run"), "--quiet", "--set", "lambda_diff=0.5"]) == 0
    return root


def test_make_chdl_writes_a_folder_the_loader_reads(trained_run):
    data = CHDLFolder(trained_run / "chdl", "train", in_frames=4, out_frames=4)
    assert len(data.sequences) == 4 and data.frame_shape == (1, 16, 16) and len(data) == 4 * 2
    assert json.loads((trained_run / "chdl" / "synthetic_chdl.json").read_text())["splits"] == {"train": 4, "test": 2}


def test_train_writes_a_run_that_load_run_rebuilds(trained_run):
    run = trained_run / "run"
    rows = read_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and "val_ssim" in rows[0]
    model, config = load_run(run)
    assert config["model"] == "diffuma_tiny" and model.config.lambda_diff == 0.5
    assert config["data"]["kind"] == "chdl" and not model.training


def test_eval_prints_and_saves_the_metric_table(trained_run, capsys):
    run = trained_run / "run"
    assert main(["eval", "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((run / "eval.json").read_text())
    assert "diffuma_tiny" in printed and f"{saved['mse']:.3f}" in printed
    best = load_checkpoint(run / "checkpoints" / "best.pt")  # the Trainer's own evaluation, batch 4
    assert saved["mse"] == pytest.approx(best["metrics"]["mse"], rel=1e-9)
    assert best["val_mse"] == pytest.approx(min(r["val_mse"] for r in read_csv(run / "metrics.csv")), rel=1e-7)
    assert main(["eval", "--run", str(run), "--sampler", "ddim", "--steps", "2"]) == 0
    ddim = json.loads((run / "eval_ddim2.json").read_text())
    assert ddim["steps"] == 2 and ddim["mse"] != saved["mse"]


def test_predict_on_sequences_without_ground_truth(trained_run, tmp_path):
    # Exactly T_in = 4 frames per sequence: nothing to compare against, only the future to predict.
    mine = tmp_path / "mine"
    rng = np.random.default_rng(0)
    (mine / "lane_b").mkdir(parents=True)
    np.save(mine / "lane_a.npy", rng.random((4, 24, 24)).astype(np.float32))
    from stmodels.data._io import encode_png

    for step in range(6):  # more than T_in frames: the last 4 are the context
        (mine / "lane_b" / f"frame_{step}.png").write_bytes(encode_png(rng.integers(0, 256, (16, 16), np.uint8)))
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(trained_run / "run"), "--input", str(mine), "--output", str(out)]) == 0
    for name in ("lane_a", "lane_b"):
        frames = sorted((out / name).glob("pred_*.png"))
        assert [f.name for f in frames] == [f"pred_{i:04d}.png" for i in range(4)]
        assert (out / f"{name}.gif").stat().st_size > 0
    # The same numbers as calling the model on the last four frames.
    from stmodels.data._io import read_image

    model, _ = load_run(trained_run / "run")
    context = torch.stack([torch.from_numpy(read_image(mine / "lane_b" / f"frame_{s}.png") / 255.0).float()
                           for s in range(2, 6)])[None]
    with torch.no_grad():
        expected = model(context)[0].clamp(0, 1)
    written = read_image(out / "lane_b" / "pred_0000.png") / 255.0
    np.testing.assert_allclose(written, expected[0].numpy(), atol=0.5 / 255 + 1e-6)
    # One sequence folder given directly works too.
    assert main(["predict", "--run", str(trained_run / "run"), "--input", str(mine / "lane_b"),
                 "--output", str(tmp_path / "single")]) == 0
    assert len(list((tmp_path / "single" / "lane_b").glob("pred_*.png"))) == 4


def test_bad_input_gets_one_clear_line_and_exit_code_2(trained_run, tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path / "nowhere")]) == 2
    assert "config.json: not found" in capsys.readouterr().err
    assert main(["train", "--model", "diffuma_tiny", "--data", f"chdl:{tmp_path / 'missing'}", "--out",
                 str(tmp_path / "r")]) == 2
    assert "split folder 'train' not found" in capsys.readouterr().err
    assert main(["train", "--model", "no_such_model", "--out", str(tmp_path / "r")]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    (tmp_path / "short").mkdir()
    np.save(tmp_path / "short" / "tiny.npy", np.zeros((2, 16, 16), np.float32))
    assert main(["predict", "--run", str(trained_run / "run"), "--input", str(tmp_path / "short"),
                 "--output", str(tmp_path / "p")]) == 2
    assert "tiny.npy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "make-chdl"])  # --out is required: argparse exits


def test_console_script_info_runs():
    result = subprocess.run([sys.executable, "-m", "stmodels.cli", "info"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "reference" in result.stdout


def test_copy_last_frame_repeats_the_last_input():
    model = create_model("copy_last", in_shape=(3, 1, 8, 8), out_frames=5)
    X = torch.rand(2, 3, 1, 8, 8)
    Y = model(X)
    assert Y.shape == (2, 5, 1, 8, 8) and all(torch.equal(Y[:, t], X[:, -1]) for t in range(5))
    with pytest.raises(ValueError, match="`X` must have shape"):
        model(torch.rand(2, 4, 1, 8, 8))


@pytest.mark.slow
def test_main_job_example_runs_end_to_end_on_a_tiny_budget(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, str(REPO / "examples" / "diffuma_chdl.py"), "--steps", "2", "--size", "16",
               "--val-sequences", "4", "--out", str(out), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("results.md", "results.csv", "results.json", "strip_diffuma.png", "strip_mamba_only.png",
                 "strip_copy_last.png", "strip_warp_last.png", "diffuma.gif", "loss_curves.png"):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["model"] for r in rows] == ["DIFFUMA", "Mamba-only (diffusion off)", "copy last frame",
                                          "warp last frame (block matching)"]
    assert [r["train_steps"] for r in rows] == [2, 2, 0, 0]
    assert "copy last frame" in result.stdout and "SSIM" in result.stdout
    # Run again: both runs are complete, so nothing trains and the table is the same.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((out / "results.json").read_text())["results"]
    assert [r["mse"] for r in rerun] == [r["mse"] for r in rows]


@pytest.mark.slow
def test_custom_predictor_example_composes_blocks_and_trains():
    result = subprocess.run([sys.executable, str(REPO / "examples" / "custom_predictor.py"), "--steps", "3"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("StreamingDiffusionPredictor") and lines[1].startswith("copy last frame")
