"""The baselines ConvLSTM and SimVP (gSTA): shapes, losses, learning, save/load, validation, Trainer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from stmodels.data import SyntheticCHDL
from stmodels.models import ConvLSTM, SimVP, create_model, from_pretrained, list_models, model_config
from stmodels.train import TrainConfig, Trainer

# Tiny sizes: every test below runs in about a second on two CPU cores.
TINY = {
    "convlstm": dict(in_shape=(4, 1, 16, 16), out_frames=4, num_hidden=(16, 16), filter_size=3),
    "simvp": dict(in_shape=(4, 1, 16, 16), out_frames=4, hid_S=8, hid_T=32, N_S=2, N_T=2),
}
CLASSES = {"convlstm": ConvLSTM, "simvp": SimVP}
MODELS = sorted(TINY)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine idle-spinning OpenMP
    threads slow these tests a hundredfold; restore the setting for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(name, **overrides):
    torch.manual_seed(0)
    return create_model(name, **{**TINY[name], **overrides})


def _frames(batch, frames, channels, height, width, seed=0):
    return torch.rand(batch, frames, channels, height, width, generator=torch.Generator().manual_seed(seed))


def _moving_squares():
    """A learnable batch: a bright square that moves one pixel per frame; 4 frames in, 4 out."""
    X = torch.zeros(4, 8, 1, 16, 16)
    for b in range(4):
        for t in range(8):
            x0 = 2 + b + t
            X[b, t, 0, 4 + b:8 + b, x0:x0 + 4] = 1.0
    return X[:, :4], X[:, 4:]


def test_presets_are_registered_with_openstl_sizes():
    assert {"convlstm", "simvp"} <= set(list_models())
    convlstm = model_config("convlstm")
    assert convlstm.num_hidden == (128, 128, 128, 128) and convlstm.patch_size == 4
    assert convlstm.filter_size == 5 and not convlstm.layer_norm and not convlstm.scheduled_sampling
    simvp = model_config("simvp")
    assert (simvp.hid_S, simvp.hid_T, simvp.N_S, simvp.N_T) == (64, 512, 4, 8)
    # a list override (as from JSON or a CLI) becomes the tuple the dataclass declares
    assert model_config("convlstm", num_hidden=[64, 64]).num_hidden == (64, 64)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_shape,out_frames", [((4, 1, 16, 16), 6), ((6, 1, 16, 16), 3), ((3, 3, 16, 24), 2),
                                                 ((2, 1, 8, 16), 1)])
def test_output_shapes(name, in_shape, out_frames):
    model = _tiny(name, in_shape=in_shape, out_frames=out_frames)
    X = _frames(2, *in_shape)
    Y = _frames(2, out_frames, *in_shape[1:], seed=1)
    assert model(X).shape == Y.shape
    losses = model.compute_loss(X, Y)
    assert set(losses) == {"loss", "recon", "diff", "prediction"}
    assert losses["loss"].dim() == 0 and losses["prediction"].shape == Y.shape
    assert float(losses["diff"]) == 0 and not losses["prediction"].requires_grad


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("train_mode", [False, True])
def test_recon_is_the_mse_of_the_prediction_and_the_loss_has_gradients(name, train_mode):
    # 4 -> 6 frames: ConvLSTM's closed loop runs on its own predictions for 5 steps.
    model = _tiny(name, in_shape=(4, 1, 16, 16), out_frames=6).train(train_mode)
    X, Y = _frames(3, 4, 1, 16, 16), _frames(3, 6, 1, 16, 16, seed=1)
    losses = model.compute_loss(X, Y)
    with torch.no_grad():
        expected = F.mse_loss(model(X), Y)
    torch.testing.assert_close(losses["recon"], expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(F.mse_loss(losses["prediction"], Y), expected, rtol=1e-6, atol=0)
    losses["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0


def test_convlstm_loss_covers_every_next_frame_prediction():
    model = _tiny("convlstm", in_shape=(4, 1, 16, 16), out_frames=3).eval()
    X, Y = _frames(2, 4, 1, 16, 16), _frames(2, 3, 1, 16, 16, seed=1)
    with torch.no_grad():
        frames = model._rollout(X)
        losses = model.compute_loss(X, Y)
    assert frames.shape == (2, 4 + 3 - 1, 1, 16, 16)
    torch.testing.assert_close(losses["loss"], F.mse_loss(frames, torch.cat([X[:, 1:], Y], dim=1)))
    torch.testing.assert_close(losses["recon"], F.mse_loss(frames[:, -3:], Y))


def test_simvp_skip_comes_from_the_matching_frame_or_the_last_frame():
    def frame_dependence(out_frames):
        """(output frame, input frame) pairs that a perturbation reaches through the skip alone."""
        model = _tiny("simvp", in_shape=(3, 1, 16, 16), out_frames=out_frames).eval()
        model._translate = lambda z: torch.zeros(z.shape[0], out_frames * 8, *z.shape[-2:])
        X = _frames(2, 3, 1, 16, 16)
        with torch.no_grad():
            base = model(X)
            pairs = set()
            for t in range(3):
                perturbed = X.clone()
                perturbed[:, t] += 0.5
                changed = (model(perturbed) - base).abs().amax(dim=(0, 2, 3, 4)) > 0
                pairs |= {(int(o), t) for o in torch.nonzero(changed).flatten()}
        return pairs

    # T_in == T_out: exactly OpenSTL, output frame t takes the skip of input frame t.
    assert frame_dependence(3) == {(0, 0), (1, 1), (2, 2)}
    # T_in != T_out: every output frame takes the last input frame's skip.
    assert frame_dependence(5) == {(o, 2) for o in range(5)}
    longer = _tiny("simvp", in_shape=(3, 1, 16, 16), out_frames=5)
    assert longer.expansion.out_channels == 5 * 8 and longer.translator[0].norm1.num_features == 3 * 8


def test_convlstm_teacher_forcing_is_seeded_and_off_by_default():
    X, Y = _frames(2, 4, 1, 16, 16), _frames(2, 4, 1, 16, 16, seed=1)
    closed = _tiny("convlstm")
    reference = closed.compute_loss(X, Y, generator=torch.Generator().manual_seed(0))["loss"]
    forced = _tiny("convlstm", scheduled_sampling=True, teacher_forcing=1.0)
    assert torch.equal(forced.eval().compute_loss(X, Y)["loss"], reference), "eval mode is always closed loop"
    forced.train()
    always = forced.compute_loss(X, Y, generator=torch.Generator().manual_seed(0))["loss"]
    assert not torch.allclose(always, reference)
    half = _tiny("convlstm", scheduled_sampling=True, teacher_forcing=0.5)
    draws = [half.compute_loss(X, Y, generator=torch.Generator().manual_seed(s))["loss"].detach()
             for s in (3, 3, 4, 5, 6)]
    assert torch.equal(draws[0], draws[1])
    assert len({float(d) for d in draws}) > 2, "different seeds must draw different masks"
    never = _tiny("convlstm", scheduled_sampling=True, teacher_forcing=0.0)
    assert torch.equal(never.compute_loss(X, Y, generator=torch.Generator().manual_seed(0))["loss"], reference)


@pytest.mark.parametrize("name", MODELS)
def test_tiny_model_learns_a_fixed_batch(name):
    model = _tiny(name)
    inputs, targets = _moving_squares()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        losses = model.compute_loss(inputs, targets)
        optimiser.zero_grad()
        losses["loss"].backward()
        optimiser.step()
        first = float(losses["loss"].detach()) if first is None else first
    last = float(losses["recon"])
    # Twice as good as the first step and as any constant frame (the best constant is ~0.059).
    assert last < 0.5 * first and last < 0.5 * float(targets.pow(2).mean()), f"{first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("name", MODELS)
def test_save_pretrained_round_trip_is_exact(name, tmp_path):
    model = _tiny(name, in_shape=(3, 3, 16, 24), out_frames=2)
    X = _frames(2, 3, 3, 16, 24)
    model.compute_loss(X, _frames(2, 2, 3, 16, 24, seed=1))  # moves SimVP's BatchNorm running stats
    model.eval()
    model.save_pretrained(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["model"] == name and meta["config"]["in_shape"] == [3, 3, 16, 24]
    loaded = from_pretrained(tmp_path / "run").eval()
    assert isinstance(loaded, CLASSES[name]) and loaded.config == model.config
    for (key, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), key
    with torch.no_grad():
        assert torch.equal(model(X), loaded(X))


@pytest.mark.parametrize("name,overrides,field", [
    ("convlstm", dict(num_hidden=()), "num_hidden"),
    ("convlstm", dict(num_hidden=(16, 0)), "num_hidden"),
    ("convlstm", dict(patch_size=3), "patch_size"),
    ("convlstm", dict(filter_size=4), "filter_size"),
    ("convlstm", dict(teacher_forcing=1.5), "teacher_forcing"),
    ("convlstm", dict(out_frames=0), "out_frames"),
    ("convlstm", dict(in_shape=(4, 16, 16)), "in_shape"),
    ("simvp", dict(hid_S=7), "hid_S"),
    ("simvp", dict(N_T=1), "N_T"),
    ("simvp", dict(N_S=0), "N_S"),
    ("simvp", dict(N_S=10), "N_S"),  # 16 is not divisible by 2**5
    ("simvp", dict(drop_path=1.0), "drop_path"),
    ("simvp", dict(out_frames=0), "out_frames"),
])
def test_config_validation_names_the_field(name, overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        _tiny(name, **overrides)


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_shape_is_named(name):
    model = _tiny(name)
    with pytest.raises(ValueError, match=r"`X` must have shape \(batch, 4, 1, 16, 16\)"):
        model(torch.rand(2, 3, 1, 16, 16))
    with pytest.raises(ValueError, match=r"`X` must have shape \(batch, 4, 1, 16, 16\)"):
        model(torch.rand(4, 1, 16, 16))
    with pytest.raises(ValueError, match=r"`Y` must have shape \(batch, 4, 1, 16, 16\)"):
        model.compute_loss(torch.rand(2, 4, 1, 16, 16), torch.rand(2, 5, 1, 16, 16))
    with pytest.raises(ValueError, match="unknown config fields"):
        _tiny(name, depth_of_everything=3)


@pytest.mark.parametrize("name", MODELS)
def test_trainer_runs_an_epoch(name):
    model = _tiny(name)
    data = SyntheticCHDL(8, frames=8, size=16, in_frames=4, out_frames=4)
    val = SyntheticCHDL(4, frames=8, size=16, in_frames=4, out_frames=4, split="test")
    config = TrainConfig(epochs=1, batch_size=4, quiet=True, device="cpu", pictures=False)
    history = Trainer(model, data, val, config).fit()
    assert len(history) == 1 and history[0]["step"] == 2
    assert all(torch.isfinite(torch.tensor(history[0][key])) for key in ("train_loss", "val_mse"))
