"""DiT blocks, the DiT denoiser, noise schedules and the residual diffusion head (stmodels.nn)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from stmodels.nn.diffusion import NoiseSchedule, ResidualDiffusionHead, ddim_timesteps
from stmodels.nn.dit import DiTBlock, DiTDenoiser, DiTFinalLayer
from stmodels.nn.embeddings import (
    PatchEmbed,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    patchify,
    timestep_embedding,
    unpatchify,
)

ATTENTIONS = ["spatial", "spacetime"]
CONDITIONINGS = ["token", "global"]
PREDICTIONS = ["epsilon", "v", "x0", "residual"]

# A tiny non-square configuration: T=3 frames of 2 x 8 x 12 pixels, patch 2 -> a 4 x 6 grid.
FRAME = (2, 8, 12)
FRAMES = 3
CONTEXT_CHANNELS = 5
CONTEXT_SIZE = (2, 3)


def _denoiser(conditioning="token", attention="spatial", backend="reference", **overrides) -> DiTDenoiser:
    config = dict(patch_size=2, hidden=16, depth=2, heads=2, mlp_ratio=2.0)
    config.update(overrides)
    return DiTDenoiser(
        FRAME, FRAMES, CONTEXT_CHANNELS, CONTEXT_SIZE, attention=attention, conditioning=conditioning,
        backend=backend, **config,
    )


def _inputs(batch=2, generator_seed=1):
    gen = torch.Generator().manual_seed(generator_seed)
    x = torch.randn(batch, FRAMES, *FRAME, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    context = torch.randn(batch, FRAMES, CONTEXT_CHANNELS, *CONTEXT_SIZE, generator=gen)
    return x, t, context


def _randomise_zero_init(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Give the AdaLN-Zero layers random weights so that every path of the network is exercised."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for sub in module.modules():
            layers = []
            if isinstance(sub, DiTBlock):
                layers = [sub.modulation[1]]
            elif isinstance(sub, DiTFinalLayer):
                layers = [sub.modulation[1], sub.linear]
            for layer in layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * std)
    return module


# ----------------------------------------------------------------------------------------------
# Embeddings


def test_timestep_embedding_matches_formula():
    t = torch.tensor([0, 3, 999])
    emb = timestep_embedding(t, 7, max_period=100.0)
    assert emb.shape == (3, 7) and emb.dtype == torch.float32
    half = 3
    for i, step in enumerate(t.tolist()):
        for k in range(half):
            freq = math.exp(-math.log(100.0) * k / half)
            assert emb[i, k].item() == pytest.approx(math.cos(step * freq), abs=1e-4)
            assert emb[i, half + k].item() == pytest.approx(math.sin(step * freq), abs=1e-4)
        assert emb[i, -1].item() == 0.0
    assert TimestepEmbedder(8, frequency_dim=6)(t).shape == (3, 8)


def test_2d_sincos_pos_embed_non_square():
    grid_h, grid_w, hidden = 3, 5, 8
    emb = get_2d_sincos_pos_embed(hidden, grid_h, grid_w)
    assert emb.shape == (grid_h * grid_w, hidden) and emb.dtype == torch.float32
    rows = emb[:, : hidden // 2].reshape(grid_h, grid_w, -1)
    cols = emb[:, hidden // 2 :].reshape(grid_h, grid_w, -1)
    # Row features depend on the patch row only, column features on the patch column only.
    assert torch.equal(rows, rows[:, :1].expand_as(rows))
    assert torch.equal(cols, cols[:1].expand_as(cols))
    assert torch.unique(emb, dim=0).shape[0] == grid_h * grid_w
    assert_close(emb[grid_w + 2, hidden // 2], torch.tensor(math.sin(2.0)))
    with pytest.raises(ValueError, match="divisible by 4"):
        get_2d_sincos_pos_embed(6, 2, 2)


def test_patch_embed_is_linear_on_patchify_layout():
    embed = PatchEmbed(3, 10, 2)
    x = torch.randn(2, 3, 3, 4, 6)
    tokens = embed(x)
    assert tokens.shape == (2, 3, 6, 10)
    weight = embed.proj.weight.permute(0, 2, 3, 1).reshape(10, -1)  # (hidden, p * p * C) in (p, q, c) order
    assert_close(tokens, patchify(x, 2) @ weight.T + embed.proj.bias, rtol=1e-5, atol=1e-5)
    assert torch.equal(unpatchify(patchify(x, 2), 2, 3, 2, 3), x)
    with pytest.raises(ValueError, match="not divisible"):
        embed(torch.randn(1, 1, 3, 5, 6))


# ----------------------------------------------------------------------------------------------
# DiTBlock and DiTDenoiser


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_fresh_block_is_identity(attention, conditioning):
    block = DiTBlock(16, 4, attention=attention, backend="reference")
    x = torch.randn(2, 3, 5, 16)
    c = torch.randn(2, 16) if conditioning == "global" else torch.randn(2, 3, 5, 16)
    assert torch.equal(block(x, c), x)
    assert "backend='reference'" in repr(block)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_denoiser_shapes_and_zero_init(attention, conditioning):
    denoiser = _denoiser(conditioning, attention)
    x, t, context = _inputs()
    out = denoiser(x, t, context)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))
    _randomise_zero_init(denoiser)
    out = denoiser(x, t.float() + 0.5, context)
    assert out.shape == x.shape and out.abs().max() > 0 and torch.isfinite(out).all()
    assert f"conditioning='{conditioning}'" in repr(denoiser)


def _naive_block(block: DiTBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """DiT's adaLN-Zero block written out in float64 with an explicit softmax attention."""
    x, c = x.double(), c.double()
    batch, frames, patches, hidden = x.shape
    params = {name: p.detach().double() for name, p in block.named_parameters()}

    def linear(inp, name):
        return inp @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    mod = linear(torch.nn.functional.silu(c), "modulation.1")
    if mod.dim() == 2:
        mod = mod[:, None, None, :]
    shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)

    def modulate(inp, shift, scale):
        mean = inp.mean(-1, keepdim=True)
        var = ((inp - mean) ** 2).mean(-1, keepdim=True)
        return (inp - mean) / torch.sqrt(var + 1e-6) * (1 + scale) + shift

    def attend(inp):
        seqs = inp.reshape(batch * frames, patches, hidden) if block.attention == "spatial" else (
            inp.reshape(batch, frames * patches, hidden))
        q, k, v = linear(seqs, "attn.qkv").chunk(3, dim=-1)
        heads, dim = block.heads, hidden // block.heads
        q, k, v = (z.reshape(z.shape[0], z.shape[1], heads, dim).transpose(1, 2) for z in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(seqs.shape)
        return linear(out, "attn.proj").reshape(x.shape)

    def mlp(inp):
        return linear(torch.nn.functional.gelu(linear(inp, "mlp.0"), approximate="tanh"), "mlp.2")

    x = x + gate1 * attend(modulate(x, shift1, scale1))
    return x + gate2 * mlp(modulate(x, shift2, scale2))


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_block_matches_naive_dit_block(attention, conditioning):
    block = _randomise_zero_init(DiTBlock(12, 3, mlp_ratio=1.5, attention=attention, backend="reference"))
    x = torch.randn(2, 3, 4, 12)
    c = torch.randn(2, 12) if conditioning == "global" else torch.randn(2, 3, 4, 12)
    assert_close(block(x, c).double(), _naive_block(block, x, c), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_token_conditioning_equal_per_token_matches_global(attention):
    block = _randomise_zero_init(DiTBlock(16, 2, attention=attention, backend="reference"))
    final = _randomise_zero_init(DiTFinalLayer(16, 8, backend="reference"))
    x = torch.randn(2, 3, 5, 16)
    c = torch.randn(2, 16)
    c_tokens = c[:, None, None, :].expand(2, 3, 5, 16)
    assert_close(block(x, c_tokens), block(x, c), rtol=1e-5, atol=1e-6)
    assert_close(final(x, c_tokens), final(x, c), rtol=1e-5, atol=1e-6)
    # Per-token conditioning acts token by token: changing frame 1's leaves frame 0 of a spatial block alone.
    c_varied = c_tokens.clone()
    c_varied[:, 1] += 1.0
    changed = block(x, c_varied)
    assert not torch.allclose(changed[:, 1], block(x, c)[:, 1])
    if attention == "spatial":
        assert_close(changed[:, 0], block(x, c_tokens.clone())[:, 0], rtol=0, atol=1e-6)


def test_denoiser_conditioning_shapes():
    x, t, context = _inputs()
    token = _denoiser("token").embed_conditioning(t, context)
    assert token.shape == (2, FRAMES, 4 * 6, 16)
    assert _denoiser("global").embed_conditioning(t, context).shape == (2, 16)
    # A context at the patch-grid size is used as is; a larger one is shrunk.
    same = DiTDenoiser(FRAME, FRAMES, 4, (4, 6), hidden=16, depth=1, heads=2)
    assert same.embed_conditioning(t, torch.randn(2, FRAMES, 4, 4, 6)).shape == (2, FRAMES, 24, 16)
    big = DiTDenoiser(FRAME, FRAMES, 4, (8, 12), hidden=16, depth=1, heads=2)
    assert big.embed_conditioning(3, torch.randn(2, FRAMES, 4, 8, 12)).shape == (2, FRAMES, 24, 16)


def test_denoiser_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        DiTDenoiser((1, 9, 12), 2, 4, (3, 3), patch_size=2, hidden=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="conditioning"):
        _denoiser("pooled")
    denoiser = _denoiser()
    x, t, context = _inputs()
    with pytest.raises(ValueError, match="context"):
        denoiser(x, t, context[:, :, :, :1])
    with pytest.raises(ValueError, match="`x`"):
        denoiser(x[:, :2], t, context)


def _frame_leakage(module_call, x):
    """Max change of frames 0 and 2 and of frame 1 when only frame 1 of ``x`` is perturbed."""
    base = module_call(x)
    moved = x.clone()
    moved[:, 1] += torch.randn_like(moved[:, 1])
    after = module_call(moved)
    others = (after[:, [0, 2]] - base[:, [0, 2]]).abs().max().item()
    own = (after[:, 1] - base[:, 1]).abs().max().item()
    return others, own


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_spatial_attention_keeps_frames_apart(conditioning):
    x = torch.randn(2, 3, 6, 16)
    c = torch.randn(2, 16) if conditioning == "global" else torch.randn(2, 3, 6, 16)
    for attention, leaks in (("spatial", False), ("spacetime", True)):
        block = _randomise_zero_init(DiTBlock(16, 2, attention=attention, backend="reference"))
        others, own = _frame_leakage(lambda inp: block(inp, c), x)
        assert own > 1e-3
        assert (others > 1e-3) if leaks else (others < 1e-6), (attention, others)

    _, t, context = _inputs()
    for attention, leaks in (("spatial", False), ("spacetime", True)):
        denoiser = _randomise_zero_init(_denoiser(conditioning, attention))
        others, own = _frame_leakage(lambda inp: denoiser(inp, t, context), _inputs()[0])
        assert own > 1e-4
        assert (others > 1e-4) if leaks else (others < 1e-6), (attention, others)


def _outputs_and_grads(module, inputs):
    inputs = [i.detach().clone().requires_grad_(i.is_floating_point()) for i in inputs]
    module.zero_grad()
    out = module(*inputs)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    grads.update({f"input{i}": t.grad for i, t in enumerate(inputs) if t.grad is not None})
    return out.detach(), grads


def _check_backends_match(reference_module, inputs):
    compiled_module = copy.deepcopy(reference_module)
    for sub in compiled_module.modules():
        if hasattr(sub, "backend"):
            sub.backend = "cpu"
    assert "backend='cpu'" in repr(compiled_module)
    out_ref, grads_ref = _outputs_and_grads(reference_module, inputs)
    out_cpu, grads_cpu = _outputs_and_grads(compiled_module, inputs)
    assert_close(out_cpu, out_ref, rtol=1e-4, atol=1e-5)
    assert grads_ref.keys() == grads_cpu.keys()
    for name, grad in grads_ref.items():
        assert_close(grads_cpu[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.needs_ext
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_block_cpu_backend_matches_reference(attention, conditioning):
    block = _randomise_zero_init(DiTBlock(16, 2, attention=attention, backend="reference"))
    x = torch.randn(2, 3, 5, 16)
    c = torch.randn(2, 16) if conditioning == "global" else torch.randn(2, 3, 5, 16)
    _check_backends_match(block, [x, c])


@pytest.mark.needs_ext
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_denoiser_cpu_backend_matches_reference(conditioning):
    denoiser = _randomise_zero_init(_denoiser(conditioning, "spacetime"))
    denoiser.set_backend("reference")
    _check_backends_match(denoiser, list(_inputs()))


# ----------------------------------------------------------------------------------------------
# Schedules and prediction types


def test_linear_schedule_endpoints():
    schedule = NoiseSchedule(1000, "linear", 1e-4, 0.02)
    assert schedule.betas.dtype == torch.float32 and schedule.betas.shape == (1000,)
    assert schedule.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert schedule.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    abar = schedule.alphas_cumprod.double()
    assert (abar[1:] < abar[:-1]).all()
    assert abar[0].item() == pytest.approx(1 - 1e-4, rel=1e-6)
    assert_close(schedule.sqrt_alphas_cumprod**2 + schedule.sqrt_one_minus_alphas_cumprod**2, torch.ones(1000))
    assert len(schedule.state_dict()) == 0  # derived from the arguments, not saved


def test_cosine_schedule_monotone_in_unit_interval():
    schedule = NoiseSchedule(1000, "cosine")
    abar = schedule.alphas_cumprod.double()
    assert (abar > 0).all() and (abar <= 1).all()
    assert (abar[1:] < abar[:-1]).all()
    assert (schedule.betas <= 0.999).all()
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(10, "quadratic")


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_prediction_conversions_are_inverse(prediction, kind):
    schedule = NoiseSchedule(1000, kind, dtype=torch.float64)
    x0 = torch.randn(4, 2, 1, 3, 3, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 17, 500, 999])
    x_t = schedule.q_sample(x0, t, noise)
    target = schedule.prediction_target(x0, noise, t, prediction)
    assert_close(schedule.predict_x0(x_t, t, target, prediction), x0)
    assert_close(schedule.predict_eps(x_t, t, target, prediction), noise)


# ----------------------------------------------------------------------------------------------
# ResidualDiffusionHead


class _Oracle(nn.Module):
    """Returns the exact target of ``prediction`` for samples built from a known ``x0``."""

    def __init__(self, schedule: NoiseSchedule, x0: torch.Tensor, prediction: str) -> None:
        super().__init__()
        self.schedule = schedule
        self.x0 = x0
        self.prediction = prediction
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def calls(self) -> int:
        return len(self.seen)

    def forward(self, x_t, t, context):
        self.seen.append((t.clone(), x_t.clone()))
        signal, sigma = self.schedule.coefficients(t, x_t)
        eps = (x_t - signal * self.x0) / sigma
        return self.schedule.prediction_target(self.x0, eps, t, self.prediction)


def _oracle_head(prediction, x0, **kwargs):
    head = ResidualDiffusionHead(nn.Identity(), prediction=prediction, **kwargs).to(torch.float64)
    head.denoiser = _Oracle(head.schedule, x0, prediction)
    return head


def test_diffusion_loss_trains_context():
    head = ResidualDiffusionHead(_randomise_zero_init(_denoiser("token")))
    y, _, context = _inputs()
    context.requires_grad_(True)
    loss = head.diffusion_loss(y, context, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert context.grad.abs().sum() > 0
    again = head.diffusion_loss(y, context, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss.detach(), again.detach())


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_single_pass_with_oracle_recovers_x0(prediction):
    x0 = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64)
    head = _oracle_head(prediction, x0, t_star=20)
    y_mamba = x0 + 0.1 * torch.randn_like(x0)
    dx = head.single_pass(y_mamba, context=None)
    assert head.denoiser.calls == 1
    assert_close(y_mamba + dx, x0)
    assert_close(head(y_mamba, None), dx)


class _Constant(nn.Module):
    """Outputs ``value`` everywhere, and counts its calls."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.batches: list[int] = []

    def forward(self, x_t, t, context, cond=None):
        self.batches.append(x_t.shape[0])
        return torch.full_like(x_t, self.value)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_residual_single_pass_has_unit_gain(value):
    head = ResidualDiffusionHead(_Constant(value), prediction="residual", t_star=20).to(torch.float64)
    y_mamba = torch.rand(2, 3, 1, 4, 4, dtype=torch.float64)
    dx = head.single_pass(y_mamba, context=None)
    assert torch.equal(dx, torch.full_like(y_mamba, value))  # zero output: dX = 0; unit output: unit correction


def test_residual_target_is_the_correction_of_the_rescaled_sample():
    schedule = NoiseSchedule(1000).to(torch.float64)
    x0 = torch.rand(3, 2, 1, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 30, 900])
    x_t = schedule.q_sample(x0, t, noise)
    signal, _ = schedule.coefficients(t, x0)
    target = schedule.prediction_target(x0, noise, t, "residual")
    assert_close(target, x0 - x_t / signal)
    assert_close(schedule.predict_x0(x_t, t, target, "residual"), x0)
    assert_close(schedule.predict_eps(x_t, t, target, "residual"), noise)


def test_steps_for_noise_ratio_inverts_the_schedule():
    schedule = NoiseSchedule(1000).to(torch.float64)
    ratio = schedule.sqrt_one_minus_alphas_cumprod / schedule.sqrt_alphas_cumprod
    steps = torch.tensor([0, 36, 55, 999])
    assert torch.equal(schedule.steps_for_noise_ratio(ratio[steps]), steps)
    assert torch.equal(schedule.steps_for_noise_ratio(torch.tensor([0.0, 1e9])), torch.tensor([0, 999]))


def test_matched_noise_levels_follow_the_reference_error():
    head = ResidualDiffusionHead(_Constant(0.0), prediction="residual", noise_levels="matched", noise_spread=2.0)
    y = torch.rand(64, 2, 1, 4, 4)
    errors = torch.linspace(0.02, 0.3, 64)
    reference = y + errors[:, None, None, None, None] * torch.randn(1).sign()  # RMS error = errors
    t = head._draw_steps(y, reference, torch.Generator().manual_seed(0))
    ratio = (head.schedule.sqrt_one_minus_alphas_cumprod / head.schedule.sqrt_alphas_cumprod)[t]
    assert ((ratio >= errors / 2 * 0.97) & (ratio <= errors * 2 * 1.03)).all()
    with pytest.raises(ValueError, match="needs the `reference`"):
        head.diffusion_loss(y, None)
    with pytest.raises(ValueError, match="noise_levels"):
        ResidualDiffusionHead(_Constant(0.0), noise_levels="wide")


@pytest.mark.parametrize("prediction", ["residual", "epsilon"])
def test_training_pass_equals_single_pass_and_diffusion_loss_in_one_call(prediction):
    torch.manual_seed(0)
    denoiser = _randomise_zero_init(_denoiser("token"))
    head = ResidualDiffusionHead(denoiser, prediction=prediction, noise_levels="matched", t_star=10)
    y, _, context = _inputs()
    y_mamba = y + 0.1 * torch.randn_like(y)
    calls = []
    denoiser.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    delta, diff = head.training_pass(y_mamba, y, context, generator=torch.Generator().manual_seed(1))
    assert calls == [2 * y.shape[0]]
    assert_close(delta, head.single_pass(y_mamba, context), rtol=1e-5, atol=1e-6)
    separate = head.diffusion_loss(y, context, generator=torch.Generator().manual_seed(1), reference=y_mamba)
    assert_close(diff, separate, rtol=1e-5, atol=1e-7)


def test_single_pass_of_fresh_denoiser_is_small():
    head = ResidualDiffusionHead(_denoiser("global"), t_star=5)
    y, _, context = _inputs()
    abar = head.schedule.alphas_cumprod[5].item()
    assert_close(head.single_pass(y, context), y * (1 / math.sqrt(abar) - 1))


def test_ddim_timesteps():
    assert ddim_timesteps(999, 1) == [999]
    assert ddim_timesteps(20, 50) == list(range(20, -1, -1))
    steps = ddim_timesteps(999, 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    assert all(a > b for a, b in zip(steps, steps[1:]))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_is_seeded(eta):
    head = ResidualDiffusionHead(_randomise_zero_init(_denoiser("token")))
    y, _, context = _inputs()

    def run(seed, **kwargs):
        return head.ddim_sample(context, steps=3, eta=eta, generator=torch.Generator().manual_seed(seed), **kwargs)

    for kwargs in ({"shape": y.shape}, {"init": y, "start_step": 100}):
        first, second, other = run(0, **kwargs), run(0, **kwargs), run(1, **kwargs)
        assert first.shape == y.shape and not first.requires_grad
        assert torch.equal(first, second)
        assert (first - other).abs().max() > 1e-3


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_oracle_reconstructs_x0(prediction, eta):
    x0 = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64)
    head = _oracle_head(prediction, x0, t_star=30)
    gen = torch.Generator().manual_seed(0)
    from_noise = head.ddim_sample(None, shape=x0.shape, steps=10, eta=eta, generator=gen)
    assert head.denoiser.calls == 10
    assert from_noise.dtype == torch.float64
    assert_close(from_noise, x0)
    refined = head.ddim_sample(None, steps=5, init=x0 + 0.2 * torch.randn_like(x0), eta=eta, generator=gen)
    assert_close(refined, x0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_deterministic_ddim_stays_on_the_noise_of_its_start(prediction):
    # With exact predictions and eta=0, every DDIM update lands on q_sample(x0, t_next, eps_start).
    x0 = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64)
    head = _oracle_head(prediction, x0)
    head.ddim_sample(None, shape=x0.shape, steps=6, start_step=400, generator=torch.Generator().manual_seed(3))
    (t_start, x_start), *later = head.denoiser.seen
    assert t_start.tolist() == [400, 400] and len(later) == 5
    signal, sigma = head.schedule.coefficients(t_start, x0)
    eps_start = (x_start - signal * x0) / sigma
    for t, x_t in later:
        assert_close(x_t, head.schedule.q_sample(x0, t, eps_start))


def test_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="t_star"):
        ResidualDiffusionHead(nn.Identity(), num_steps=10, t_star=10)
    with pytest.raises(ValueError, match="prediction"):
        ResidualDiffusionHead(nn.Identity(), prediction="score")
    head = ResidualDiffusionHead(nn.Identity())
    with pytest.raises(ValueError, match="shape"):
        head.ddim_sample(torch.zeros(1))


def test_unknown_backend_fails_at_construction():
    from stmodels.nn import DiTBlock as Block

    with pytest.raises(ValueError, match="DiTBlock: unknown backend 'fast'"):
        Block(8, 2, backend="fast")


def test_denoiser_conditioning_images_and_context_tokens():
    denoiser = _randomise_zero_init(_denoiser("global", cond_channels=2, context_tokens=True))
    x, t, context = _inputs()
    cond = torch.randn(x.shape[0], FRAMES, 2, *FRAME[1:])
    out = denoiser(x, t, context, cond=cond)
    assert out.shape == x.shape
    assert not torch.allclose(out, denoiser(x, t, context, cond=torch.zeros_like(cond)))
    # global AdaLN conditioning pools the context; the token path still sees where things are
    shifted = context.roll(1, dims=-1)
    assert not torch.allclose(out, denoiser(x, t, shifted, cond=cond))
    with pytest.raises(ValueError, match="`cond` must have shape"):
        denoiser(x, t, context)
    with pytest.raises(ValueError, match="cond_channels=0"):
        _denoiser()(x, t, context, cond=cond)
    with pytest.raises(ValueError, match="cond_channels"):
        _denoiser(cond_channels=-1)
