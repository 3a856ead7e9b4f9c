"""DIFFUMA assembly, presets, registry and save/load."""

from __future__ import annotations

import json

import pytest
import torch

from stmodels.models import DIFFUMA, create_model, from_pretrained, list_models, model_config

TINY = "diffuma_tiny"


def _randomise_zero_init(model: torch.nn.Module, seed: int = 0) -> None:
    """AdaLN-Zero makes a fresh denoiser output zeros; give every parameter a value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if torch.count_nonzero(parameter) == 0:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def _frames(batch, frames, channels, height, width, seed=0):
    return torch.rand(batch, frames, channels, height, width, generator=torch.Generator().manual_seed(seed))


def test_presets_are_registered():
    assert {"diffuma_tiny", "diffuma_small", "diffuma_base"} <= set(list_models())
    assert model_config("diffuma_base").dit_depth == 12


@pytest.mark.parametrize("in_shape,out_frames", [((4, 1, 16, 16), 4), ((3, 2, 16, 24), 5), ((6, 1, 8, 32), 2)])
@pytest.mark.parametrize("scan", ["latent", "spacetime", "time"])
def test_output_shapes(in_shape, out_frames, scan):
    model = create_model(TINY, in_shape=in_shape, out_frames=out_frames, scan=scan)
    X = _frames(2, *in_shape)
    Y = _frames(2, out_frames, *in_shape[1:], seed=1)
    assert model(X).shape == Y.shape
    losses = model.compute_loss(X, Y)
    assert set(losses) == {"loss", "recon", "diff", "prediction"}
    assert losses["loss"].dim() == 0 and losses["prediction"].shape == Y.shape


def test_bad_input_shape_is_named():
    model = create_model(TINY)
    with pytest.raises(ValueError, match=r"`X` must have shape \(batch, 4, 1, 16, 16\)"):
        model(torch.rand(2, 3, 1, 16, 16))
    with pytest.raises(ValueError, match="`diffusion` must be one of"):
        create_model(TINY, diffusion="maybe")
    with pytest.raises(ValueError, match="unknown config fields"):
        create_model(TINY, depth_of_everything=3)


def test_diffusion_loss_alone_trains_the_temporal_path():
    model = create_model(TINY)
    _randomise_zero_init(model)
    X, Y = _frames(2, 4, 1, 16, 16), _frames(2, 4, 1, 16, 16, seed=1)
    y_mamba, context = model.mamba_encoder(X)
    model.head.diffusion_loss(Y, context, generator=torch.Generator().manual_seed(0), cond=model._observed(X),
                              reference=y_mamba).backward()
    encoder_grads = [p.grad for p in model.mamba_encoder.parameters() if p.grad is not None]
    assert encoder_grads and sum(float(g.abs().sum()) for g in encoder_grads) > 0
    # the Mamba layers themselves, not only the convolutions, receive gradient
    assert any(float(p.grad.abs().sum()) > 0 for n, p in model.mamba_encoder.named_parameters()
               if "mamba." in n and p.grad is not None)


def test_context_and_observed_frame_get_gradient_at_step_0():
    """A freshly built DIFFUMA: its denoiser's first gradient already reaches the context and the
    observed frame (patch-embedding path and a small non-zero output layer), where the first version
    (AdaLN-Zero conditioning only, zero output layer) gave the context exactly zero."""
    torch.manual_seed(0)
    X, Y = _frames(2, 4, 1, 16, 16), _frames(2, 4, 1, 16, 16, seed=1)

    def first_step_grads(model):
        y_mamba, context = model.mamba_encoder(X)
        context = context.detach().requires_grad_(True)
        cond = model._observed(X)
        cond = None if cond is None else cond.clone().requires_grad_(True)
        delta = model.head.single_pass(y_mamba.detach(), context, cond=cond)
        torch.nn.functional.mse_loss(y_mamba.detach() + delta, Y).backward()
        return context.grad, None if cond is None else cond.grad, delta

    context_grad, cond_grad, delta = first_step_grads(create_model(TINY))
    assert context_grad.abs().sum() > 0 and cond_grad.abs().sum() > 0
    assert 0 < delta.abs().max() < 0.05  # a small first correction
    old_context_grad, _, old_delta = first_step_grads(
        create_model(TINY, context_tokens=False, observed_input=False, final_init_std=0.0))
    assert torch.count_nonzero(old_context_grad) == 0 and torch.count_nonzero(old_delta) == 0


def test_training_runs_the_denoiser_once_per_step():
    model = create_model(TINY)
    calls = []
    model.head.denoiser.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    X, Y = _frames(3, 4, 1, 16, 16), _frames(3, 4, 1, 16, 16, seed=1)
    model.compute_loss(X, Y)
    assert calls == [6]  # single pass and diffusion loss stacked along the batch
    calls.clear()
    without_diffusion_loss = create_model(TINY, lambda_diff=0.0)
    without_diffusion_loss.head.denoiser.register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0]))
    without_diffusion_loss.compute_loss(X, Y)
    assert calls == [3]


def test_ablation_switches():
    X, Y = _frames(2, 4, 1, 16, 16), _frames(2, 4, 1, 16, 16, seed=1)
    mamba_only = create_model(TINY, diffusion="off")
    assert mamba_only.head is None
    losses = mamba_only.compute_loss(X, Y)
    assert float(losses["diff"]) == 0 and torch.equal(losses["loss"], losses["recon"])
    randomised = create_model(TINY, context="random")
    _randomise_zero_init(randomised)
    torch.manual_seed(0)
    first = randomised(X)
    torch.manual_seed(1)
    assert not torch.equal(first, randomised(X)), "random conditioning must change with the noise"


def test_ddim_is_deterministic_for_a_seed():
    model = create_model(TINY, sampler="ddim", ddim_steps=5)
    _randomise_zero_init(model)
    X = _frames(2, 4, 1, 16, 16)
    with torch.no_grad():
        a = model(X, generator=torch.Generator().manual_seed(3))
        b = model(X, generator=torch.Generator().manual_seed(3))
        c = model(X, generator=torch.Generator().manual_seed(4))
        noise = model(X, sampler="ddim", ddim_steps=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert noise.shape == a.shape


def test_save_pretrained_round_trip_is_exact(tmp_path):
    model = create_model(TINY, in_shape=(3, 1, 16, 24), out_frames=2)
    _randomise_zero_init(model)
    model.save_pretrained(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["model"] == TINY and meta["config"]["in_shape"] == [3, 1, 16, 24]
    loaded = from_pretrained(tmp_path / "run")
    assert isinstance(loaded, DIFFUMA) and loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    X = _frames(2, 3, 1, 16, 24)
    assert torch.equal(model(X), loaded(X))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "run" / "model.safetensors").unlink()
        from_pretrained(tmp_path / "run")


@pytest.mark.needs_ext
def test_reference_and_cpu_backends_agree_on_the_whole_model():
    X, Y = _frames(2, 4, 1, 16, 16), _frames(2, 4, 1, 16, 16, seed=1)
    results = {}
    for backend in ("reference", "cpu"):
        torch.manual_seed(0)
        model = create_model(TINY, backend=backend)
        _randomise_zero_init(model)
        losses = model.compute_loss(X, Y, generator=torch.Generator().manual_seed(0))
        losses["loss"].backward()
        results[backend] = (losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (ref_losses, ref_grads), (cpu_losses, cpu_grads) = results["reference"], results["cpu"]
    torch.testing.assert_close(cpu_losses["prediction"], ref_losses["prediction"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cpu_losses["loss"], ref_losses["loss"], rtol=1e-4, atol=1e-6)
    assert ref_grads.keys() == cpu_grads.keys()
    for name, grad in ref_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(cpu_grads[name] / scale, grad / scale, rtol=1e-4, atol=1e-5, msg=name)


def test_tiny_model_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = create_model(TINY)
    # A learnable batch: a bright square that moves one pixel per frame.
    X = torch.zeros(4, 8, 1, 16, 16)
    for b in range(4):
        for t in range(8):
            x0 = 2 + b + t
            X[b, t, 0, 4 + b:8 + b, x0:x0 + 4] = 1.0
    inputs, targets = X[:, :4], X[:, 4:]
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    first = None
    for _ in range(100):
        losses = model.compute_loss(inputs, targets, generator=generator)
        optimiser.zero_grad()
        losses["loss"].backward()
        optimiser.step()
        first = float(losses["recon"]) if first is None else first
    assert float(losses["recon"]) * 5 <= first, f"recon {first:.4f} -> {float(losses['recon']):.4f}"


def test_torch_compile_runs_a_training_step():
    torch._dynamo.reset()
    model = create_model(TINY)
    X, Y = _frames(2, 4, 1, 16, 16), _frames(2, 4, 1, 16, 16, seed=1)
    compiled = torch.compile(model.compute_loss, backend="aot_eager")
    losses = compiled(X, Y)
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
