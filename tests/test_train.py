"""The Trainer: determinism, exact resume after a kill, crash-safe checkpoints, DDP on gloo, EMA,
schedules, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from stmodels.data import SyntheticCHDL
from stmodels.metrics import compute_metrics
from stmodels.models import create_model
from stmodels.train import (
    CheckpointError,
    ShardedBatchSampler,
    TrainConfig,
    Trainer,
    evaluate,
    load_checkpoint,
    read_csv,
)
from stmodels.train import checkpoint as checkpoint_module
from stmodels.train.trainer import WarmupCosine

REPO = Path(__file__).resolve().parents[1]


def tiny_data(train_sequences=16):
    common = dict(frames=8, size=16, in_frames=4, out_frames=4)
    return SyntheticCHDL(train_sequences, **common), SyntheticCHDL(4, split="test", **common)


def tiny_trainer(out_dir=None, model_overrides=None, **config):
    torch.manual_seed(0)
    model = create_model("diffuma_tiny", **(model_overrides or {}))
    train, val = tiny_data()
    defaults = dict(epochs=2, batch_size=4, lr=3e-3, log_every=1, quiet=True, device="cpu", pictures=False)
    return Trainer(model, train, val, TrainConfig(**{**defaults, **config}), out_dir)


def test_same_seed_gives_the_same_losses_and_a_different_seed_does_not():
    first = tiny_trainer(seed=1).fit()
    second = tiny_trainer(seed=1).fit()
    other = tiny_trainer(seed=2).fit()
    assert [r["train_loss"] for r in first] == [r["train_loss"] for r in second]
    assert [r["train_loss"] for r in first] != [r["train_loss"] for r in other]


def test_run_folder_holds_config_logs_checkpoints_model_and_pictures(tmp_path):
    trainer = tiny_trainer(tmp_path / "run", pictures=True, ema_decay=0.9)
    history = trainer.fit()
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "diffuma_tiny" and config["train"]["ema_decay"] == 0.9
    rows = read_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["val_mse"] == pytest.approx(history[-1]["val_mse"])
    assert len(read_csv(run / "steps.csv")) == trainer.total_steps == 8
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["val_mse"] == min(r["val_mse"] for r in history)
    for epoch in (1, 2):
        assert (run / "pictures" / f"epoch_{epoch:04d}.png").stat().st_size > 0
        assert (run / "pictures" / f"epoch_{epoch:04d}.gif").stat().st_size > 0
    from stmodels.models import from_pretrained

    exported = from_pretrained(run / "model")
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, best["model"][name]), name
    assert not list(run.rglob("*.tmp"))


_KILL_SCRIPT = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
from test_train import tiny_trainer
torch.set_num_threads(1)
out, mode = sys.argv[1], sys.argv[2]

class KillAt:
    def on_step_end(self, trainer):
        if trainer.step == 6:
            os.kill(os.getpid(), signal.SIGKILL)

trainer = tiny_trainer(out, epochs=3, checkpoint_every=3, ema_decay=0.8)
if mode == "kill":
    trainer.callbacks.append(KillAt())
trainer.fit(resume="auto")
torch.save({{"model": trainer.model.state_dict(), "ema": trainer.ema.module.state_dict(),
            "optimizer": trainer.optimizer.state_dict()}}, os.path.join(out, "final.pt"))
"""


def _run(script_path, *args, expect=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(script_path), *map(str, args)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_run_killed_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(REPO / "tests")))
    _run(script, tmp_path / "straight", "straight")
    _run(script, tmp_path / "killed", "kill", expect=-9)  # SIGKILL right after the step-6 checkpoint
    state = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 2)  # mid-epoch 2 of 3
    assert not (tmp_path / "killed" / "final.pt").exists()
    _run(script, tmp_path / "killed", "resume")
    straight = torch.load(tmp_path / "straight" / "final.pt")
    resumed = torch.load(tmp_path / "killed" / "final.pt")
    _assert_same_tensors(straight, resumed)
    rows = [read_csv(tmp_path / run / "metrics.csv") for run in ("straight", "killed")]
    assert rows[0] == [{**r, "epoch_seconds": rows[0][i]["epoch_seconds"],
                        "samples_per_second": rows[0][i]["samples_per_second"],
                        "val_ms_per_sample": rows[0][i]["val_ms_per_sample"]} for i, r in enumerate(rows[1])]


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path / "run", epochs=1)
    trainer.fit()
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    before = load_checkpoint(path)

    def torn_save(obj, stream):
        stream.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", torn_save)
    trainer.step += 100
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    monkeypatch.undo()
    after = load_checkpoint(path)
    assert after["step"] == before["step"] == 4
    _assert_same_tensors(before["model"], after["model"])
    assert not list(path.parent.glob("*.tmp")) and not list(path.parent.glob(".*"))


def test_truncated_or_foreign_checkpoints_get_errors_naming_the_file(tmp_path):
    trainer = tiny_trainer(tmp_path / "run", epochs=1)
    trainer.fit()
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: unreadable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a stmodels checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        tiny_trainer(tmp_path / "fresh").fit(resume=True)


_DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_train import tiny_trainer
torch.set_num_threads(1)
out = sys.argv[1]
trainer = tiny_trainer(out, model_overrides={{"diffusion": "off"}}, batch_size=8, epochs=2)
trainer.fit()
rank = int(os.environ.get("RANK", "0"))
torch.save(trainer.model.state_dict(), os.path.join(out, f"weights_rank{{rank}}.pt"))
trainer.context.shutdown()
"""


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(REPO / "tests")))
    _run(script, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single = torch.load(tmp_path / "single" / "weights_rank0.pt")
    ranks = [torch.load(tmp_path / "ddp" / f"weights_rank{r}.pt") for r in (0, 1)]
    for name, expected in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(ranks[0][name], expected, rtol=1e-4, atol=1e-5, msg=name)
    # Only rank 0 logs: one row per epoch, no duplicates.
    assert [r["epoch"] for r in read_csv(tmp_path / "ddp" / "metrics.csv")] == [1, 2]


def test_sharded_batches_cover_the_single_process_batches_and_resume_skips_consumed_ones():
    single = ShardedBatchSampler(20, 8, seed=3)
    shards = [ShardedBatchSampler(20, 8, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for sampler in (single, *shards):
        sampler.set_epoch(5)
    for whole, part0, part1 in zip(single, *shards, strict=True):
        assert whole == part0 + part1 and len(part0) == 4
    assert len(list(single)) == 2  # drop_last: 20 // 8
    first_epoch = list(single)
    single.set_epoch(6)
    assert list(single) != first_epoch
    single.set_epoch(5, start_batch=1)
    assert list(single) == first_epoch[1:]
    with pytest.raises(ValueError, match="multiple of the world size"):
        ShardedBatchSampler(20, 7, world_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ShardedBatchSampler(5, 8)


def test_warmup_cosine_rises_then_decays_to_the_floor():
    schedule = WarmupCosine(total=100, warmup=10, floor=0.1)
    values = [schedule(step) for step in range(101)]
    assert values[0] < values[5] < values[9] <= 1.0
    assert values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[100] == pytest.approx(0.1)
    constant = WarmupCosine(total=100, warmup=0, floor=0.1, cosine=False)
    assert {constant(s) for s in range(100)} == {1.0}


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant"])
def test_every_schedule_trains_and_ends_where_it_should(schedule):
    trainer = tiny_trainer(schedule=schedule, lr=1e-3, warmup_steps=2)
    trainer.fit()
    last_lr = trainer.scheduler.get_last_lr()[0]
    if schedule == "constant":
        assert last_lr == pytest.approx(1e-3)
    else:
        assert last_lr < 1e-4


def test_ema_is_what_evaluation_uses_and_lags_the_weights():
    trainer = tiny_trainer(ema_decay=0.5)
    trainer.fit()
    assert trainer.eval_model is trainer.ema.module
    weights = dict(trainer.model.named_parameters())
    averaged = dict(trainer.ema.module.named_parameters())
    assert any(not torch.equal(weights[n], averaged[n]) for n in weights)
    result = evaluate(trainer.ema.module, trainer.val_set)
    assert trainer.history[-1]["val_mse"] == pytest.approx(result.metrics["mse"], rel=1e-12)


def test_bf16_autocast_trains_on_the_cpu():
    trainer = tiny_trainer(precision="bf16", epochs=1)
    history = trainer.fit()
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_evaluate_matches_compute_metrics_and_only_models_with_a_sampler_take_one():
    torch.manual_seed(0)
    model = create_model("diffuma_tiny").eval()
    _, val = tiny_data()
    result = evaluate(model, val, batch_size=3)
    inputs = torch.stack([val[i][0] for i in range(len(val))])
    targets = torch.stack([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        expected = compute_metrics(model(inputs), targets)
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-5), name
    assert result.samples == 4 and result.metrics["ms_per_sample"] > 0
    torch.testing.assert_close(result.example[1], targets[0])
    ddim = evaluate(model, val, sampler="ddim", ddim_steps=3, seed=1)
    assert ddim.metrics["mse"] == evaluate(model, val, sampler="ddim", ddim_steps=3, seed=1).metrics["mse"]
    assert ddim.metrics["mse"] != result.metrics["mse"]

    class NoSampler(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="NoSampler has no sampler"):
        evaluate(NoSampler(), val, sampler="ddim")


def test_bad_configurations_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="`schedule`"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="`batch_size`"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="`ema_decay`"):
        TrainConfig(ema_decay=1.5)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        tiny_trainer(precision="fp16")
    with pytest.raises(TypeError, match="no compute_loss"):
        Trainer(torch.nn.Linear(2, 2), tiny_data()[0])


def test_max_steps_caps_training_inside_an_epoch():
    trainer = tiny_trainer(max_steps=3, epochs=5)
    history = trainer.fit()
    assert trainer.step == 3 and len(history) == 1 and history[0]["step"] == 3


def test_tensorboard_gets_the_scalars_when_installed(tmp_path, monkeypatch):
    import types

    recorded = []

    class FakeWriter:
        def __init__(self, log_dir):
            recorded.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            recorded.append((tag, value, step))

        def close(self):
            recorded.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    trainer = tiny_trainer(tmp_path / "run", epochs=1)
    trainer.fit()
    assert recorded[0] == ("dir", str(tmp_path / "run" / "tensorboard")) and recorded[-1] == ("closed",)
    tags = {entry[0] for entry in recorded[1:-1]}
    assert {"train/loss", "train/recon", "train/lr", "epoch/val_mse", "epoch/val_ssim"} <= tags
    assert [e[2] for e in recorded if e[0] == "train/loss"] == [1, 2, 3, 4]


def test_without_a_terminal_each_epoch_prints_one_line_unless_quiet(capsys):
    tiny_trainer(quiet=False).fit()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1", "2"] and "val_mse" in lines[0]
    tiny_trainer(quiet=True).fit()
    assert capsys.readouterr().out == ""


def test_a_non_finite_loss_stops_training_before_a_checkpoint_is_written(tmp_path):
    class Diverging(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x[:, :1] * self.weight

        def compute_loss(self, X, Y, generator=None):
            loss = (self.weight * float("nan")).sum()
            return {"loss": loss, "recon": loss.detach(), "diff": loss.new_zeros(())}

    train, _ = tiny_data()
    trainer = Trainer(Diverging(), train, None, TrainConfig(epochs=1, batch_size=4, log_every=2, quiet=True,
                                                             device="cpu"), tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"non-finite loss .*\(step 2, epoch 1\)"):
        trainer.fit()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
