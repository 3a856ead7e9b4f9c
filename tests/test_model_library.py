"""Model-library conventions: the backend is a runtime choice, eval-mode loading, pretrained=, list_models,
`stmodels models`, `train --config`, and the CLI refusing what cannot work."""

from __future__ import annotations

import json

import pytest
import torch

from stmodels.cli import main
from stmodels.models import create_model, from_pretrained, list_models
from stmodels.ops import _backend, use_backend


def _raising_kernel(*args, **kwargs):
    raise AssertionError("the cpu kernel ran, but the model was asked to run on reference")


def test_a_model_saved_with_backend_cpu_loads_and_runs_on_reference(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = create_model("diffuma_tiny", backend="cpu")
    assert model.config.backend == "cpu"
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "backend" not in saved["config"]  # a runtime choice, not a property of the weights
    X = torch.rand(2, *model.config.in_shape)
    with torch.no_grad():
        expected = model.eval()(X)
    for op in ("selective_scan", "adaln_modulate"):
        if "cpu" in _backend._KERNELS.get(op, {}):
            kernel, extra = _backend._KERNELS[op]["cpu"]
            monkeypatch.setitem(_backend._KERNELS[op], "cpu", (_raising_kernel, extra))
    loaded = from_pretrained(tmp_path / "m", backend="reference")
    assert not loaded.training and loaded.config.backend == "reference"
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, rtol=1e-4, atol=1e-5)
    default = from_pretrained(tmp_path / "m")  # no backend saved: follows use_backend / STMODELS_BACKEND
    assert default.config.backend is None
    with use_backend("reference"), torch.no_grad():
        torch.testing.assert_close(default(X), expected, rtol=1e-4, atol=1e-5)
    monkeypatch.setenv("STMODELS_BACKEND", "reference")
    with torch.no_grad():
        torch.testing.assert_close(default(X), expected, rtol=1e-4, atol=1e-5)


def test_an_older_config_with_a_backend_loads_with_it_ignored(tmp_path):
    model = create_model("diffuma_tiny")
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["backend"] = "cuda"  # what older versions wrote for a GPU-trained model
    path.write_text(json.dumps(meta))
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config.backend is None
    with torch.no_grad():
        loaded(torch.rand(1, *loaded.config.in_shape))  # runs on this CPU machine


def test_create_model_pretrained(tmp_path):
    with pytest.raises(ValueError, match="no downloadable weights"):
        create_model("diffuma_tiny", pretrained=True)
    torch.manual_seed(1)
    model = create_model("diffuma_tiny")
    model.save_pretrained(tmp_path / "run" / "model")
    for where in (tmp_path / "run" / "model", tmp_path / "run"):
        loaded = create_model("diffuma_tiny", pretrained=where, backend="reference")
        assert not loaded.training and loaded.config.backend == "reference"
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="holds a 'diffuma_tiny' model, not 'copy_last'"):
        create_model("copy_last", pretrained=tmp_path / "run")
    assert isinstance(create_model("diffuma_tiny", pretrained=False), torch.nn.Module)


def test_models_command_lists_every_registered_model(capsys):
    assert main(["models"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == list_models()
    assert {"diffuma_tiny", "diffuma_small", "copy_last", "simvp", "convlstm"} <= set(list_models())


def test_copy_last_refuses_to_train(tmp_path, capsys):
    assert main(["train", "--model", "copy_last", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "copy_last: the model has no trainable parameters, so there is nothing to train" in err
    assert not (tmp_path / "run").exists()


def test_unknown_backend_option_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--model", "diffuma_tiny", "--out", str(tmp_path / "r"), "--backend", "gpu"]) == 2
    assert "--backend: unknown backend 'gpu'" in capsys.readouterr().err


TINY = ["--model", "diffuma_tiny", "--train-sequences", "4", "--val-sequences", "2", "--size", "16",
        "--batch-size", "2", "--quiet"]


def test_train_config_file_and_a_run_config_reused_as_config(tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    config = {"model": "diffuma_tiny", "model_config": {"lambda_diff": 0.25, "backend": "cuda"},
              "train": {"epochs": 1, "batch_size": 2, "lr": 0.002, "log_every": 1, "quiet": True},
              "data": {"kind": "chdl-synthetic", "train_sequences": 4, "val_sequences": 2, "size": 16,
                       "in_frames": 4, "out_frames": 4}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "a"), "--lr", "0.003",
                 "--backend", "reference"]) == 0
    run = json.loads((tmp_path / "a" / "config.json").read_text())
    assert run["model"] == "diffuma_tiny" and run["model_config"]["lambda_diff"] == 0.25
    assert "backend" not in run["model_config"]
    assert run["train"]["lr"] == 0.003 and run["train"]["log_every"] == 1 and run["train"]["epochs"] == 1
    assert run["data"]["train_sequences"] == 4 and run["data"]["size"] == 16
    # the run's own config.json, reused as --config, reproduces the run's settings
    assert main(["train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    for key in ("model", "model_config", "train", "data"):
        assert again[key] == run[key], key
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"epoch": 1}}))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "unknown train fields ['epoch']" in capsys.readouterr().err


def test_rgb_folder_trains_in_rgb_and_a_channel_mismatch_is_named(tmp_path, capsys):
    assert main(["data", "make-chdl", "--out", str(tmp_path / "rgb"), "--sequences", "2", "--test-sequences", "1",
                 "--frames", "8", "--size", "16", "--channels", "3"]) == 0
    common = ["--model", "diffuma_tiny", "--data", f"chdl:{tmp_path / 'rgb'}", "--epochs", "1", "--batch-size", "2",
              "--quiet"]
    assert main(["train", *common, "--out", str(tmp_path / "run")]) == 0
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run["model_config"]["in_shape"][1] == 3
    assert main(["train", *common, "--out", str(tmp_path / "grey"), "--set", "in_shape=[4,1,16,16]"]) == 2
    assert "the frames have 3 channel(s), but in_shape=[4, 1, 16, 16] asks for 1" in capsys.readouterr().err


def test_in_a_terminal_the_epoch_summary_stays_after_the_bars(monkeypatch, capsys):
    import sys

    from stmodels.data import SyntheticCHDL
    from stmodels.train import TrainConfig, Trainer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars on, as in a terminal
    common = dict(frames=8, size=16, in_frames=4, out_frames=4)
    torch.manual_seed(0)
    trainer = Trainer(create_model("diffuma_tiny"), SyntheticCHDL(8, **common), SyntheticCHDL(2, split="test", **common),
                      TrainConfig(epochs=2, batch_size=4, device="cpu", pictures=False), None)
    trainer.fit()
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1", "2"] and all("val_mse" in line for line in lines)
