"""Temporal-path blocks: BiMambaLayer, SpatialEncoder / SpatialDecoder and MambaEncoder.

Tiny shapes and ``backend="reference"`` unless a test compares against the compiled ``cpu`` backend
(marked ``needs_ext``). The layer is checked against an explicit Vision-Mamba two-call formulation
with flips, written here from the paper, so the no-flip anti-causal conv and the per-direction /
shared parameter routing are pinned down, not just shapes.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stmodels.nn.encoder import MambaEncoder, SpatialDecoder, SpatialEncoder
from stmodels.nn.mamba import BiMambaLayer
from stmodels.ops import BackendNotSupportedError, selective_scan, use_backend

LAYER_CONFIGS = [
    pytest.param({"direction": "bidirectional", "share_directions": False}, id="bi"),
    pytest.param({"direction": "bidirectional", "share_directions": True}, id="bi-shared"),
    pytest.param({"direction": "causal"}, id="causal"),
]


def small_layer(backend="reference", **kwargs) -> BiMambaLayer:
    kwargs = {"d_state": 4, **kwargs}
    return BiMambaLayer(8, backend=backend, **kwargs)


def small_encoder(backend="reference", in_shape=(3, 2, 8, 12), out_frames=5, **kwargs) -> MambaEncoder:
    kwargs = {"hidden_channels": 8, "depth": 2, "d_state": 4, **kwargs}
    return MambaEncoder(in_shape, out_frames, backend=backend, **kwargs)


def vim_two_call(layer: BiMambaLayer, x: torch.Tensor) -> torch.Tensor:
    """Vision Mamba's form: each direction a causal conv + forward scan, the backward one on flipped
    inputs (with the conv taps reversed, see BiMambaLayer's docstring), flipped back and summed."""
    xz = layer.in_proj(layer.norm(x)).transpose(1, 2)
    x_in, z = xz.chunk(2, dim=1)
    flips = (False, True) if layer.direction == "bidirectional" else (False,)
    total = 0
    for k, flip in enumerate(flips):
        p = 0 if layer.num_param_sets == 1 else k
        seq = x_in.flip(-1) if flip else x_in
        weight = layer.conv_weight[p].flip(-1) if flip else layer.conv_weight[p]
        u = F.silu(F.conv1d(F.pad(seq, (layer.d_conv - 1, 0)), weight[:, None], layer.conv_bias[p],
                            groups=layer.d_inner))
        x_dbl = torch.einsum("ed,bdl->bel", layer.x_proj_weight[p], u)
        dt, B, C = torch.split(x_dbl, [layer.dt_rank, layer.d_state, layer.d_state], dim=1)
        delta = torch.einsum("dr,brl->bdl", layer.dt_proj_weight[p], dt)
        y = selective_scan(u, delta, -torch.exp(layer.A_log[p]), B, C, layer.D[p], None, layer.dt_bias[p],
                           delta_softplus=True, backend="reference")
        total = total + (y.flip(-1) if flip else y)
    return x + layer.out_proj((total * F.silu(z)).transpose(1, 2))


def assert_every_parameter_gets_gradient(module: torch.nn.Module) -> None:
    """Run in float64, where rounding noise (~1e-14) cannot pass for the gradient of a parameter whose
    true gradient is zero (e.g. a bias cancelled by a following norm)."""
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().max() > 1e-9, f"{name} has a (numerically) zero gradient"


def assert_grads_close(actual: dict, expected: dict) -> None:
    """Every gradient equal to the reference's, rtol=1e-4 and atol=1e-5 after dividing both by the
    reference's max |value|. Parameter gradients here span ~1e-4 (dt_proj) to ~1e2 (conv weights
    summed over every pixel): a fixed atol of 1e-5 would accept anything for the small ones and sit
    below float32 resolution of the large ones' sums."""
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        scale = grad.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(actual[name] / scale, grad / scale, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def outputs_and_grads(module: torch.nn.Module, x: torch.Tensor):
    """Forward + backward of a fixed random projection of every output; returns outputs and grads."""
    x = x.clone().requires_grad_(True)
    outputs = module(x)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    generator = torch.Generator().manual_seed(1)
    loss = sum((out * torch.randn(out.shape, generator=generator, dtype=out.dtype)).sum() for out in outputs)
    loss.backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads["input"] = x.grad
    return [out.detach() for out in outputs], grads


# --------------------------------------------------------------------------------------- BiMambaLayer


@pytest.mark.parametrize("config", LAYER_CONFIGS)
@pytest.mark.parametrize("length", [1, 7])
def test_layer_output_shape(config, length):
    layer = small_layer(**config)
    x = torch.randn(3, length, 8)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_layer_matches_vision_mamba_two_call_form(config):
    layer = small_layer(**config)
    x = torch.randn(2, 9, 8)
    torch.testing.assert_close(layer(x), vim_two_call(layer, x), rtol=1e-5, atol=1e-6)


def test_layer_initialisation():
    layer = small_layer(d_state=5, dt_min=0.002, dt_max=0.05)
    assert layer.num_param_sets == 2 and layer.dt_rank == math.ceil(8 / 16)
    assert layer.A_log.shape == (2, 16, 5) and layer.A_log.dtype == torch.float32
    expected_A_log = torch.log(torch.arange(1, 6, dtype=torch.float32)).expand(2, 16, 5)
    torch.testing.assert_close(layer.A_log.detach(), expected_A_log)
    assert torch.equal(layer.D.detach(), torch.ones(2, 16))
    dt = F.softplus(layer.dt_bias.detach().double())
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert dt.std() > 0  # drawn, not constant
    shared = small_layer(share_directions=True)
    assert shared.num_param_sets == 1 and shared.x_proj_weight.shape == (1, 1 + 2 * 4, 16)


@pytest.mark.parametrize("t", [0, 3, 8])
def test_causal_layer_does_not_look_ahead(t):
    layer = small_layer(direction="causal")
    x = torch.randn(2, 10, 8)
    perturbed = x.clone()
    perturbed[:, t + 1:] += torch.randn_like(perturbed[:, t + 1:])
    with torch.no_grad():
        out, out_perturbed = layer(x), layer(perturbed)
    assert torch.equal(out[:, : t + 1], out_perturbed[:, : t + 1])
    assert not torch.allclose(out[:, t + 1:], out_perturbed[:, t + 1:])


@pytest.mark.parametrize("share_directions", [False, True])
def test_bidirectional_layer_looks_ahead(share_directions):
    layer = small_layer(share_directions=share_directions)
    x = torch.randn(2, 10, 8)
    perturbed = x.clone()
    perturbed[:, 6:] += torch.randn_like(perturbed[:, 6:])
    with torch.no_grad():
        changed = (layer(x) - layer(perturbed))[:, :6].abs().amax(dim=(0, 2))
    assert (changed > 0).all(), changed  # every earlier step sees the future through the backward scan


@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_layer_gradients_reach_every_parameter(config):
    layer = small_layer(dtype=torch.float64, **config)
    outputs_and_grads(layer, torch.randn(2, 6, 8, dtype=torch.float64))
    assert_every_parameter_gets_gradient(layer)


def test_layer_float64():
    layer = small_layer(dtype=torch.float64)
    assert layer.A_log.dtype == torch.float64 and layer.in_proj.weight.dtype == torch.float64
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    out = layer(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, vim_two_call(layer, x))


def test_layer_repr_and_backend_routing():
    layer = small_layer(backend=None)
    text = repr(layer)
    assert "backend=None" in text and "d_model=8" in text and "d_state=4" in text
    x = torch.randn(1, 4, 8)
    with use_backend("cuda"), pytest.raises(BackendNotSupportedError):
        layer(x)  # None follows the global default
    layer.backend = "reference"
    with use_backend("cuda"):
        layer(x)  # an explicit backend wins over the global default
    layer.backend = "cuda"
    with pytest.raises(BackendNotSupportedError):
        layer(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"direction": "forward"}, "direction"),
        ({"backend": "gpu"}, "unknown backend"),
        ({"dt_rank": "big"}, "dt_rank"),
        ({"d_state": 0}, "d_state"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
    ],
)
def test_layer_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_layer(**kwargs)


@pytest.mark.parametrize("shape", [(2, 5, 7), (5, 8), (2, 0, 8)])
def test_layer_bad_input_shape(shape):
    with pytest.raises(ValueError, match=re.escape("(batch, L, d_model=8)") + ".*" + re.escape(str(shape))):
        small_layer()(torch.randn(shape))


@pytest.mark.needs_ext
@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_layer_cpu_backend_matches_reference(config):
    reference = small_layer(**config)
    compiled = copy.deepcopy(reference)
    compiled.backend = "cpu"
    x = torch.randn(3, 11, 8)
    out_ref, grads_ref = outputs_and_grads(reference, x)
    out_cpu, grads_cpu = outputs_and_grads(compiled, x)
    torch.testing.assert_close(out_cpu, out_ref, rtol=1e-4, atol=1e-5)
    assert_grads_close(grads_cpu, grads_ref)


@pytest.mark.needs_ext
@settings(max_examples=12)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 9),
    d_model=st.integers(1, 12),
    d_state=st.integers(1, 6),
    d_conv=st.integers(1, 4),
    config=st.sampled_from([("bidirectional", False), ("bidirectional", True), ("causal", False)]),
)
def test_layer_cpu_backend_matches_reference_hypothesis(batch, length, d_model, d_state, d_conv, config):
    torch.manual_seed(batch * 1000 + length * 100 + d_model)
    direction, share = config
    reference = BiMambaLayer(d_model, d_state=d_state, d_conv=d_conv, direction=direction,
                             share_directions=share, backend="reference")
    compiled = copy.deepcopy(reference)
    compiled.backend = "cpu"
    x = torch.randn(batch, length, d_model)
    out_ref, grads_ref = outputs_and_grads(reference, x)
    out_cpu, grads_cpu = outputs_and_grads(compiled, x)
    torch.testing.assert_close(out_cpu, out_ref, rtol=1e-4, atol=1e-5)
    assert_grads_close(grads_cpu, grads_ref)


# ---------------------------------------------------------------------- SpatialEncoder / SpatialDecoder


@pytest.mark.parametrize("levels", [0, 1, 2])
def test_spatial_encoder_decoder_shapes(levels):
    encoder = SpatialEncoder(3, 6, num_downsamples=levels, num_groups=4)
    decoder = SpatialDecoder(6, 3, num_upsamples=levels, num_groups=4)
    x = torch.randn(5, 3, 8, 12)
    features, skip = encoder(x)
    assert features.shape == (5, 6, 8 // 2**levels, 12 // 2**levels)
    assert skip.shape == (5, 6, 8, 12)
    assert decoder(features, skip).shape == x.shape
    assert encoder.blocks[0].norm.num_groups == 3  # largest divisor of 6 not above 4


def test_spatial_decoder_uses_the_skip():
    decoder = SpatialDecoder(4, 1, num_upsamples=1)
    features, skip = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 6, 6)
    assert not torch.allclose(decoder(features, skip), decoder(features, torch.zeros_like(skip)))


def test_spatial_blocks_bad_shapes():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*2=4.*\(2, 3, 6, 8\)"):
        SpatialEncoder(3, 4)(torch.randn(2, 3, 6, 8))
    with pytest.raises(ValueError, match=r"C=3"):
        SpatialEncoder(3, 4)(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"skip of shape \(2, 4, 8, 8\)"):
        SpatialDecoder(4, 3)(torch.randn(2, 4, 2, 2), torch.randn(2, 4, 4, 4))


# --------------------------------------------------------------------------------------- MambaEncoder


@pytest.mark.parametrize(
    "in_shape, out_frames, kwargs",
    [
        pytest.param((3, 2, 8, 12), 5, {}, id="latent-Tin<Tout-nonsquare"),
        pytest.param((4, 1, 12, 8), 2, {"share_directions": True}, id="latent-Tin>Tout-shared"),
        pytest.param((3, 2, 8, 12), 5, {"scan": "spacetime"}, id="spacetime-Tin<Tout-nonsquare"),
        pytest.param((4, 1, 12, 8), 2, {"scan": "time"}, id="time-Tin>Tout-nonsquare"),
        pytest.param((3, 2, 8, 8), 3, {"scan": "spacetime", "direction": "causal"}, id="spacetime-causal"),
        pytest.param((3, 2, 8, 8), 2, {"scan": "time", "share_directions": True}, id="time-shared"),
        pytest.param((2, 3, 6, 10), 4, {"num_downsamples": 1}, id="one-level"),
    ],
)
def test_encoder_output_shapes(in_shape, out_frames, kwargs):
    encoder = small_encoder(in_shape=in_shape, out_frames=out_frames, **kwargs)
    frames, channels, height, width = in_shape
    x = torch.rand(2, *in_shape)
    y_mamba, context = encoder(x)
    factor = 2 ** kwargs.get("num_downsamples", 2)
    assert y_mamba.shape == (2, out_frames, channels, height, width)
    assert context.shape == (2, out_frames, 8, height // factor, width // factor)
    assert torch.isfinite(y_mamba).all() and torch.isfinite(context).all()


def test_encoder_accepts_other_frame_sizes():
    encoder = small_encoder(in_shape=(3, 2, 8, 8), out_frames=2)
    y_mamba, context = encoder(torch.rand(1, 3, 2, 4, 12))
    assert y_mamba.shape == (1, 2, 2, 4, 12) and context.shape == (1, 2, 8, 1, 3)


def test_encoder_residual_is_on_the_last_input_frame():
    residual = small_encoder(residual=True)
    direct = small_encoder(residual=False)
    direct.load_state_dict(residual.state_dict())
    x = torch.rand(2, 3, 2, 8, 12)
    y_residual, context_residual = residual(x)
    y_direct, context_direct = direct(x)
    torch.testing.assert_close(y_residual - y_direct, x[:, -1:].expand_as(y_direct))
    assert torch.equal(context_residual, context_direct)


def test_latent_translator_output_frames_depend_on_the_input_frames():
    """Each output frame is an input-dependent mix of the input frames (not a fixed Linear(T_in, T_out)):
    the Jacobian of an output frame with respect to the input frames changes with the input."""
    torch.manual_seed(0)
    encoder = small_encoder(dtype=torch.float64)
    features = torch.randn(1, 3, 8, 2, 3, dtype=torch.float64)

    def first_output_frame(f):
        return encoder.translator(f)[:, 0]

    jacobian_a = torch.autograd.functional.jacobian(first_output_frame, features)
    jacobian_b = torch.autograd.functional.jacobian(first_output_frame, 3 * features + 1)
    per_input_frame = jacobian_a.abs().sum(dim=(0, 1, 2, 3, 4, 6, 7, 8))
    assert (per_input_frame > 0).all()  # every input frame reaches output frame 0
    assert not torch.allclose(jacobian_a, jacobian_b)  # and how much depends on the input


def test_latent_translator_alternates_scan_order():
    encoder = small_encoder(depth=3)
    assert [block.column_major for block in encoder.translator.blocks] == [False, True, False]
    # Block 1 scans column by column: the same as the Mamba layer on column-major tokens, and not
    # the same as on row-major ones.
    block = encoder.translator.blocks[1]
    tokens = torch.randn(1, 6, encoder.translator_dim)
    with torch.no_grad():
        by_column = block.mamba(tokens.reshape(1, 2, 3, -1).transpose(1, 2).reshape(1, 6, -1))
        by_column = by_column.reshape(1, 3, 2, -1).transpose(1, 2).reshape(1, 6, -1)
        expected = block.ffn(by_column, (2, 3))
        by_row = block.ffn(block.mamba(tokens), (2, 3))
        actual = block(tokens, (2, 3))
    torch.testing.assert_close(actual, expected)
    assert not torch.allclose(actual, by_row)


def test_encoder_time_scan_mixes_only_within_a_location():
    """scan="time": the Mamba layers see one location's T_in tokens; their output at another location
    is unchanged when this location's features change (checked on the layers' token view)."""
    encoder = small_encoder(scan="time")
    features = torch.randn(2, 3, 8, 2, 3)
    assert not hasattr(small_encoder(), "readout")  # the latent translator has its own projections
    perturbed = features.clone()
    perturbed[:, :, :, 0, 0] += 1.0
    with torch.no_grad():
        mixed, mixed_perturbed = encoder._mix(features), encoder._mix(perturbed)
    changed = (mixed - mixed_perturbed).abs().amax(dim=(0, 1, 2))
    assert changed[0, 0] > 0 and torch.equal(changed.flatten()[1:], torch.zeros(5))
    spacetime = small_encoder(scan="spacetime")
    with torch.no_grad():
        changed = (spacetime._mix(features) - spacetime._mix(perturbed)).abs().amax(dim=(0, 1, 2))
    assert changed.flatten()[1:].max() > 0  # one sequence per sample: locations do mix


@pytest.mark.parametrize("scan", ["latent", "spacetime", "time"])
def test_encoder_gradients_reach_every_parameter(scan):
    encoder = small_encoder(scan=scan, dtype=torch.float64)
    outputs_and_grads(encoder, torch.rand(2, 3, 2, 8, 12, dtype=torch.float64))
    assert_every_parameter_gets_gradient(encoder)


def test_encoder_backend_reaches_every_scan():
    encoder = small_encoder(backend="cuda")
    assert len(encoder.mamba_layers) == 2
    assert all(layer.backend == "cuda" for layer in encoder.mamba_layers)
    assert "backend='cuda'" in repr(encoder)
    x = torch.rand(1, 3, 2, 8, 12)
    with pytest.raises(BackendNotSupportedError):
        encoder(x)
    encoder.backend = "reference"
    assert all(layer.backend == "reference" for layer in encoder.mamba_layers)
    with use_backend("cuda"):
        encoder(x)
    encoder.backend = None
    with use_backend("cuda"), pytest.raises(BackendNotSupportedError):
        encoder(x)
    with pytest.raises(ValueError, match="unknown backend"):
        encoder.backend = "gpu"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_shape": (3, 2, 10, 8)}, r"divisible by 2\*\*2=4.*\(3, 2, 10, 8\)"),
        ({"in_shape": (3, 2, 8)}, r"\(T_in, C, H, W\)"),
        ({"scan": "space"}, "scan"),
        ({"direction": "backward"}, "direction"),
        ({"out_frames": 0}, "out_frames"),
        ({"backend": "gpu"}, "unknown backend"),
    ],
)
def test_encoder_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_encoder(**kwargs)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 4, 2, 8, 12), r"T_in=3.*\(2, 4, 2, 8, 12\)"),
        ((2, 3, 1, 8, 12), r"C=2.*\(2, 3, 1, 8, 12\)"),
        ((3, 2, 8, 12), r"\(3, 2, 8, 12\)"),
        ((2, 3, 2, 8, 10), r"divisible.*\(2, 3, 2, 8, 10\)"),
    ],
)
def test_encoder_bad_input_shape(shape, match):
    with pytest.raises(ValueError, match=match):
        small_encoder()(torch.rand(shape))


@pytest.mark.needs_ext
@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"scan": "latent"}, id="latent"),
        pytest.param({"scan": "latent", "direction": "causal"}, id="latent-causal"),
        pytest.param({"scan": "spacetime"}, id="spacetime"),
        pytest.param({"scan": "time", "share_directions": True}, id="time-shared"),
        pytest.param({"scan": "time", "direction": "causal"}, id="time-causal"),
    ],
)
def test_encoder_cpu_backend_matches_reference(kwargs):
    reference = small_encoder(**kwargs)
    compiled = copy.deepcopy(reference)
    compiled.backend = "cpu"
    x = torch.rand(2, 3, 2, 8, 12)
    outs_ref, grads_ref = outputs_and_grads(reference, x)
    outs_cpu, grads_cpu = outputs_and_grads(compiled, x)
    for out_cpu, out_ref in zip(outs_cpu, outs_ref):
        torch.testing.assert_close(out_cpu, out_ref, rtol=1e-4, atol=1e-5)
    assert_grads_close(grads_cpu, grads_ref)


def test_scan_under_autocast_takes_the_autocast_dtype_for_activations():
    # Inside autocast some producers give float32 and matmuls bfloat16; the front door casts u,
    # delta, z (and low-precision B, C) to bfloat16, keeping float32 parameters, exactly as if the
    # caller had cast them.
    from stmodels.ops import bi_selective_scan

    torch.manual_seed(0)
    batch, dim, length, N = 2, 8, 6, 4
    u = torch.randn(batch, dim, length)
    delta = torch.randn(batch, dim, length).bfloat16()
    A = -torch.rand(dim, N)
    B = torch.randn(batch, N, length)
    C = torch.randn(batch, N, length).bfloat16()
    z = torch.randn(batch, dim, length)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = bi_selective_scan(u, delta, A, B, C, z=z, backend="reference")
    outside = bi_selective_scan(u.bfloat16(), delta, A, B, C, z=z.bfloat16(), backend="reference")
    assert inside.dtype == torch.bfloat16 and torch.equal(inside, outside)
    with pytest.raises(TypeError, match="`delta` must have dtype float32"):
        bi_selective_scan(u, delta, A, B, C, z=z, backend="reference")  # no autocast: no silent cast


def test_layer_trains_under_bf16_autocast():
    torch.manual_seed(0)
    layer = BiMambaLayer(16, d_state=4)
    x = torch.randn(2, 12, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
