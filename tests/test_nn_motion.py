"""Motion-compensated prediction: ``warp_frames``, ``MotionWarp`` and ``MambaEncoder(motion="warp")``.

The warp is pinned down on integer shifts (where bilinear sampling is exact), its gradient into the
flow is checked to be live, the block matching is checked to recover known sub-pixel velocities,
and the encoder's warp is checked to start from that estimate and to learn a constant translation
better than the plain residual.
"""

from __future__ import annotations

import pytest
import torch

from stmodels.nn.encoder import MambaEncoder
from stmodels.nn.motion import MotionWarp, estimate_velocity, warp_frames


def test_zero_flow_is_the_identity():
    frames = torch.rand(3, 2, 6, 7)
    assert torch.allclose(warp_frames(frames, torch.zeros(3, 2, 6, 7)), frames, atol=1e-6)


@pytest.mark.parametrize("dy,dx", [(0, -1), (2, 0), (-1, 3)])
def test_integer_flow_shifts_exactly_with_border_fill(dy, dx):
    frames = torch.rand(2, 1, 8, 9)
    flow = torch.empty(2, 2, 8, 9)
    flow[:, 0], flow[:, 1] = dy, dx
    out = warp_frames(frames, flow)
    rows = (torch.arange(8) + dy).clamp(0, 7)
    cols = (torch.arange(9) + dx).clamp(0, 8)
    assert torch.allclose(out, frames[:, :, rows][:, :, :, cols], atol=1e-5)


def test_half_pixel_flow_averages_neighbours():
    frames = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5).contiguous()
    flow = torch.zeros(1, 2, 3, 5)
    flow[:, 1] = 0.5
    assert torch.allclose(warp_frames(frames, flow)[0, 0, 1, :4], torch.tensor([0.5, 1.5, 2.5, 3.5]))


def test_gradient_reaches_the_flow_from_zero():
    frames = torch.rand(1, 1, 8, 8)
    flow = torch.zeros(1, 2, 8, 8, requires_grad=True)
    warp_frames(frames, flow).square().sum().backward()
    assert flow.grad.abs().sum() > 0


def test_warp_bad_shapes():
    with pytest.raises(ValueError, match="warp_frames"):
        warp_frames(torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="MotionWarp"):
        MotionWarp()(torch.rand(1, 1, 4, 4), torch.zeros(1, 3, 1, 4, 4))


def test_motion_warp_scales_the_velocity_by_the_frame_offset():
    last = torch.rand(2, 1, 8, 8)
    velocity = torch.zeros(2, 3, 2, 8, 8)
    velocity[:, :, 1] = -1.0  # one pixel to the right per frame
    carried, flow = MotionWarp()(last, velocity)
    assert carried.shape == (2, 3, 1, 8, 8)
    assert torch.equal(flow[:, :, 1, 0, 0], torch.tensor([[-1.0, -2.0, -3.0]] * 2))
    for k in range(3):
        assert torch.allclose(carried[:, k, :, :, k + 1:], last[:, :, :, : 8 - (k + 1)], atol=1e-5)


def encoder(motion: str, **changes) -> MambaEncoder:
    return MambaEncoder((3, 1, 8, 8), 2, hidden_channels=8, num_downsamples=1, depth=1, d_state=4,
                        translator_dim=16, mlp_ratio=2.0, motion=motion, backend="reference", **changes)


def load_fewer_readout_channels(source: MambaEncoder, target: MambaEncoder, channels: int) -> None:
    """``target`` takes ``source``'s weights with only the first ``channels`` readout channels."""
    state = source.state_dict()
    for name in ("spatial_decoder.readout.weight", "spatial_decoder.readout.bias"):
        state[name] = state[name][:channels]
    target.load_state_dict(state)


def test_warp_encoder_starts_from_the_block_matching_estimate():
    """At initialisation the correction is zero: the carried frame is the last one warped along the
    estimate, and Y_mamba is a plain residual on top of it (a model with the same weights minus the
    velocity channels and ``motion="none"`` gives the same residual)."""
    torch.manual_seed(0)
    warped = encoder("warp")
    plain = encoder("none")
    load_fewer_readout_channels(warped, plain, 1)
    x = torch.rand(2, 3, 1, 8, 8)
    y_warp, context_warp, carried = warped(x, return_carried=True)
    y_plain, context_plain, repeated = plain(x, return_carried=True)
    expected, _ = MotionWarp()(x[:, -1], -estimate_velocity(x, 2, 15).unsqueeze(1).expand(-1, 2, -1, -1, -1))
    assert torch.allclose(carried, expected, atol=1e-6)
    assert torch.allclose(repeated, x[:, -1:].expand(-1, 2, -1, -1, -1))
    assert torch.allclose(y_warp - carried, y_plain - repeated, atol=1e-6)
    assert torch.allclose(context_warp, context_plain)


@pytest.mark.parametrize("velocity", [(0.0, 1.0), (-1.0, 0.0), (0.5, -1.5), (1.25, 0.75)])
def test_block_matching_recovers_a_steady_translation(velocity):
    """Smooth texture sampled at a known sub-pixel velocity: the estimate is within 0.1 px."""
    generator = torch.Generator().manual_seed(0)
    texture = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 64, 64, generator=generator), 5, 1, 2)
    frames = []
    for t in range(6):  # content at frame t is the texture moved by t * velocity
        flow = torch.empty(1, 2, 64, 64)
        flow[:, 0], flow[:, 1] = -velocity[0] * t, -velocity[1] * t
        frames.append(warp_frames(texture, flow)[:, :, 16:48, 16:48])
    estimate = estimate_velocity(torch.stack(frames, 1), radius=2, window=31)[0, :, 8:24, 8:24]
    assert torch.allclose(estimate.mean((1, 2)), torch.tensor(velocity), atol=0.1), estimate.mean((1, 2))


def test_warp_last_baseline_extrapolates_a_steady_translation():
    """The parameter-free baseline: frames moving one pixel right per frame are extrapolated to within
    a tenth of copy-last's error away from the left border (where new content enters)."""
    from stmodels.models import create_model

    generator = torch.Generator().manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 24, 40, generator=generator), 3, 1, 1)
    frames = torch.stack([base[..., 16 - t: 40 - t] for t in range(7)], dim=1)  # (2, 7, 1, 24, 24)
    model = create_model("warp_last", in_shape=(4, 1, 24, 24), out_frames=3, motion_radius=2, motion_window=15)
    prediction = model(frames[:, :4])
    assert prediction.shape == (2, 3, 1, 24, 24)
    for k in range(3):  # output frame k has moved k + 1 pixels past the last input
        inner = (..., slice(4, 20), slice(k + 5, 20))
        warp_error = (prediction[:, k][inner] - frames[:, 4 + k][inner]).square().mean()
        copy_error = (frames[:, 3][inner] - frames[:, 4 + k][inner]).square().mean()
        assert warp_error < 0.1 * copy_error, (k, warp_error, copy_error)
    with pytest.raises(ValueError, match="motion_window"):
        create_model("warp_last", in_shape=(4, 1, 24, 24), out_frames=3, motion_window=8)


def test_block_matching_bad_input():
    with pytest.raises(ValueError, match="estimate_velocity"):
        estimate_velocity(torch.rand(1, 1, 1, 8, 8))


def test_warp_encoder_gradient_reaches_the_velocity_readout_at_step_0():
    torch.manual_seed(0)
    model = encoder("warp")
    x, y = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 2, 1, 8, 8)
    (model(x)[0] - y).square().mean().backward()
    assert model.spatial_decoder.readout.weight.grad[1:].abs().sum() > 0


def test_warp_encoder_rejects_a_direct_prediction():
    with pytest.raises(ValueError, match="residual=True"):
        MambaEncoder((3, 1, 8, 8), 2, motion="warp", residual=False)
    with pytest.raises(ValueError, match="motion"):
        MambaEncoder((3, 1, 8, 8), 2, motion="flow")
    with pytest.raises(ValueError, match="motion_window"):
        MambaEncoder((3, 1, 8, 8), 2, motion="warp", motion_window=4)


def _translating(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images moving one pixel right per frame: (batch, 5, 1, 8, 8) -> 3 in, 2 out."""
    base = torch.nn.functional.avg_pool2d(torch.rand(batch, 1, 8, 24, generator=generator), 3, 1, 1)
    frames = torch.stack([base[..., 8 - t: 16 - t] for t in range(5)], dim=1)
    return frames[:, :3], frames[:, 3:]


@pytest.mark.slow
def test_warp_encoder_learns_a_translation_better_than_the_plain_residual():
    """A small learning test: 150 Adam steps on translating texture; the warp beats no warp."""
    losses = {}
    for motion in ("none", "warp"):
        torch.manual_seed(0)
        model = encoder(motion)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(150):
            x, y = _translating(8, generator)
            loss = (model(x)[0] - y).square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        x, y = _translating(32, torch.Generator().manual_seed(1))
        with torch.no_grad():
            losses[motion] = (model(x)[0] - y).square().mean().item()
    assert losses["warp"] < 0.7 * losses["none"], losses


def test_motion_gate_starts_open_and_can_remove_the_carried_frame():
    """The gate's readout channel is zero-initialised: at the start the gated encoder equals the
    ungated one with the same weights; a very negative gate logit removes the carried frame from
    Y_mamba (Y_mamba = the decoder's residual alone); the gate trains (non-zero gradient)."""
    torch.manual_seed(0)
    gated = encoder("warp", motion_gate=True)
    plain = encoder("warp")
    readout = gated.spatial_decoder.readout.weight
    assert readout.shape[0] == 4 and torch.count_nonzero(readout[1:]) == 0  # image; velocity (2), gate: zero
    load_fewer_readout_channels(gated, plain, 3)
    x = torch.rand(2, 3, 1, 8, 8)
    y_gated, _, carried_gated = gated(x, return_carried=True)
    y_plain, _, carried_plain = plain(x, return_carried=True)
    assert torch.allclose(y_gated, y_plain, atol=1e-6)
    assert torch.allclose(carried_gated, carried_plain, atol=1e-6)

    y_gated.square().mean().backward()
    assert gated.spatial_decoder.readout.weight.grad[3].abs().sum() > 0

    with torch.no_grad():
        gated.spatial_decoder.readout.bias[3] = -60.0
        y_closed, _, carried_closed = gated(x, return_carried=True)
        residual = y_plain - carried_plain
    assert carried_closed.abs().max() < 1e-6
    assert torch.allclose(y_closed, residual, atol=1e-5)


def test_motion_gate_needs_the_residual_prediction():
    with pytest.raises(ValueError, match="motion_gate"):
        MambaEncoder((3, 1, 8, 8), 2, motion_gate=True, residual=False)
