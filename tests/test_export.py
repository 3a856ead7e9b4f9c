"""Deployment: torch.export programs and AOTInductor packages equal the eager model."""

from __future__ import annotations

import pytest
import torch

from stmodels.cli import main
from stmodels.export import aoti_path_for, export_model, load_aoti, load_exported
from stmodels.models import create_model


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model("diffuma_tiny").eval()  # whatever create_model builds for this name


def _inputs(model, batch=2):
    return torch.rand(batch, *model.config.in_shape, generator=torch.Generator().manual_seed(1))


def test_exported_program_equals_eager(tiny_model, tmp_path):
    X = _inputs(tiny_model)
    paths = export_model(tiny_model, X, tmp_path / "tiny.pt2", aoti=False)
    assert paths == {"exported": tmp_path / "tiny.pt2"} and paths["exported"].is_file()
    with torch.no_grad():
        expected = tiny_model(X)
        got = load_exported(paths["exported"]).module()(X)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(tiny_model, X, tmp_path / "tiny.pt2", aoti=False)
    assert tiny_model.training is False


def test_export_command_writes_a_runs_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "diffuma_tiny", "--train-sequences", "2", "--val-sequences", "1", "--size", "16",
                 "--epochs", "1", "--batch-size", "2", "--quiet", "--out", str(run)]) == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "deploy" / "m.pt2"), "--no-aoti",
                 "--batch-size", "3"]) == 0
    assert f"exported: {tmp_path / 'deploy' / 'm.pt2'}" in capsys.readouterr().out
    from stmodels.train import load_run

    model, _ = load_run(run)
    X = _inputs(model, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "deploy" / "m.pt2").module()(X), model(X),
                                   rtol=1e-5, atol=1e-6)
    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x.pt2")]) == 2


def test_aoti_package_sits_beside_the_program():
    assert aoti_path_for("out/model.pt2").as_posix() == "out/model.aoti.pt2"
    assert aoti_path_for("model").as_posix() == "model.aoti.pt2"


@pytest.mark.slow
def test_aoti_package_equals_eager(tiny_model, tmp_path):
    X = _inputs(tiny_model)
    paths = export_model(tiny_model, X, tmp_path / "tiny.pt2", aoti=True)
    assert paths["aoti"] == tmp_path / "tiny.aoti.pt2" and paths["aoti"].is_file()
    with torch.no_grad():
        torch.testing.assert_close(load_aoti(paths["aoti"])(X), tiny_model(X), rtol=1e-5, atol=1e-5)


def test_the_backend_at_export_time_decides_the_traced_kernels(tiny_model):
    from stmodels.ops import use_backend

    X = _inputs(tiny_model, batch=1)
    with use_backend("reference"):
        program = torch.export.export(tiny_model, (X,), strict=False)
    assert not [n for n in program.graph.nodes if "stmodels" in str(n.target)]  # plain PyTorch, no extension
