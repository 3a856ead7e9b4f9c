"""stmodels.metrics against scikit-image and numpy, frame by frame, and OpenSTL's conventions.

The references here loop over frames with scikit-image's ``structural_similarity`` /
``peak_signal_noise_ratio`` and plain numpy, so they share no code with the vectorised torch
implementation under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stmodels import metrics as M
from stmodels.metrics import MetricAccumulator, compute_metrics, mae, mse, psnr, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")

# float64 end to end on both sides: differences are rounding only (seen: <= 1e-15).
TOL = 1e-12


# ----------------------------------------------------------------------------------------------------
# References (numpy / scikit-image, one frame at a time)
# ----------------------------------------------------------------------------------------------------


def frames(x):
    n, t = x.shape[:2]
    return [x[i, j] for i in range(n) for j in range(t)]


def ref_ssim(pred, true, data_range):
    values = [
        skimage_metrics.structural_similarity(
            np.clip(p, 0, 1).transpose(1, 2, 0), y.transpose(1, 2, 0), channel_axis=-1, data_range=data_range
        )
        for p, y in zip(frames(pred), frames(true))
    ]
    return float(np.mean(values))


def ref_psnr(pred, true):
    with np.errstate(divide="ignore"):  # skimage divides by a zero MSE for an exact frame -> inf
        values = [
            skimage_metrics.peak_signal_noise_ratio(y, np.clip(p, 0, 1), data_range=1.0)
            for p, y in zip(frames(pred), frames(true))
        ]
    return float(np.mean(values))


def ref_error(pred, true, reduction, power):
    err = np.abs(pred - true) ** power
    if reduction == "sum":
        return float(err.sum(axis=(2, 3, 4)).mean())
    return float(err.mean())


def openstl_metric(pred, true, ssim_data_range):
    """OpenSTL's ``metric()`` conventions (openstl/core/metrics.py), restated with numpy.

    Their SSIM call had no ``data_range`` (old scikit-image then took R = 2 for floats); current
    scikit-image insists on one, so it is passed explicitly. Frames go in as OpenSTL passed them,
    ``swapaxes(0, 2)``, i.e. (W, H, C).
    """
    res = {
        "mse": np.mean((pred - true) ** 2, axis=(0, 1)).sum(),
        "mae": np.mean(np.abs(pred - true), axis=(0, 1)).sum(),
    }
    pred = np.minimum(np.maximum(pred, 0), 1)
    ssim_sum = psnr_sum = 0.0
    for p, y in zip(frames(pred), frames(true)):
        ssim_sum += skimage_metrics.structural_similarity(
            p.swapaxes(0, 2), y.swapaxes(0, 2), channel_axis=-1, data_range=ssim_data_range
        )
        frame_mse = np.mean((p - y) ** 2)
        psnr_sum += float("inf") if frame_mse == 0 else 20.0 * np.log10(1.0 / np.sqrt(frame_mse))
    count = pred.shape[0] * pred.shape[1]
    res["ssim"] = ssim_sum / count
    res["psnr"] = psnr_sum / count
    return res


def random_pair(shape, seed, spill=0.2):
    """``true`` in [0, 1]; ``pred`` spilling ``spill`` beyond both ends so clipping matters."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.0, 1.0, shape)
    pred = np.clip(true + rng.normal(0.0, 0.25, shape), -spill, 1.0 + spill)
    return pred, true


def assert_metrics_close(got, want, tol=TOL):
    assert set(got) == {"mse", "mae", "ssim", "psnr"}
    for key in got:
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], rel=tol, abs=tol), key


# ----------------------------------------------------------------------------------------------------
# Against scikit-image / numpy
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
@pytest.mark.parametrize("data_range", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_skimage_and_numpy(channels, data_range, reduction):
    pred, true = random_pair((2, 3, channels, 9, 14), seed=channels)
    assert pred.min() < 0 and pred.max() > 1  # clipping is exercised
    want = {
        "mse": ref_error(pred, true, reduction, 2),
        "mae": ref_error(pred, true, reduction, 1),
        "ssim": ref_ssim(pred, true, data_range),
        "psnr": ref_psnr(pred, true),
    }
    got = compute_metrics(torch.from_numpy(pred), torch.from_numpy(true), data_range=data_range, reduction=reduction)
    assert_metrics_close(got, want)
    alone = {
        "mse": mse(pred, true, reduction=reduction),
        "mae": mae(pred, true, reduction=reduction),
        "ssim": ssim(pred, true, data_range=data_range),
        "psnr": psnr(pred, true),
    }
    assert_metrics_close(alone, got)


@settings(max_examples=25)
@given(
    n=st.integers(1, 2),
    t=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(7, 12),
    w=st.integers(7, 12),
    data_range=st.sampled_from([0.5, 1.0, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_shapes_against_skimage(n, t, c, h, w, data_range, seed):
    pred, true = random_pair((n, t, c, h, w), seed)
    assert ssim(pred, true, data_range=data_range) == pytest.approx(ref_ssim(pred, true, data_range), rel=TOL, abs=TOL)
    assert psnr(pred, true) == pytest.approx(ref_psnr(pred, true), rel=TOL, abs=TOL)
    assert mse(pred, true) == pytest.approx(ref_error(pred, true, "sum", 2), rel=TOL)
    assert mae(pred, true, reduction="mean") == pytest.approx(ref_error(pred, true, "mean", 1), rel=TOL)


@pytest.mark.parametrize("channels", [1, 3])
def test_reproduces_openstl_with_data_range_2(channels):
    pred, true = random_pair((3, 2, channels, 8, 11), seed=10 + channels)
    assert_metrics_close(compute_metrics(pred, true, data_range=2.0), openstl_metric(pred, true, ssim_data_range=2.0))
    # R = 2 changes SSIM only, and does change it.
    one, two = compute_metrics(pred, true), compute_metrics(pred, true, data_range=2.0)
    assert {k: one[k] for k in ("mse", "mae", "psnr")} == {k: two[k] for k in ("mse", "mae", "psnr")}
    assert abs(one["ssim"] - two["ssim"]) > 1e-3


def test_ssim_constant_frames_and_7x7():
    # Constant frames: variances are 0 and SSIM is driven by C1, C2 alone; 7x7 leaves one window.
    pred = np.full((1, 2, 2, 7, 7), 0.25)
    true = np.full((1, 2, 2, 7, 7), 0.75)
    assert ssim(pred, true) == pytest.approx(ref_ssim(pred, true, 1.0), rel=TOL)
    pred, true = random_pair((1, 1, 1, 7, 7), seed=3)
    assert ssim(pred, true) == pytest.approx(ref_ssim(pred, true, 1.0), rel=TOL, abs=TOL)


def test_mse_mae_reductions_and_no_clipping():
    pred, true = random_pair((2, 2, 3, 7, 9), seed=5)
    for fn, power in ((mse, 2), (mae, 1)):
        total, mean = fn(pred, true, reduction="sum"), fn(pred, true, reduction="mean")
        assert total == pytest.approx(ref_error(pred, true, "sum", power), rel=TOL)
        assert mean == pytest.approx(ref_error(pred, true, "mean", power), rel=TOL)
        assert total == pytest.approx(mean * 3 * 7 * 9, rel=TOL)
        # OpenSTL computes MSE/MAE before clipping: clipping the prediction must change them here.
        assert fn(np.clip(pred, 0, 1), true) != pytest.approx(total, rel=1e-6)
    # ... while SSIM and PSNR already see the clipped prediction.
    assert ssim(np.clip(pred, 0, 1), true) == ssim(pred, true)
    assert psnr(np.clip(pred, 0, 1), true) == psnr(pred, true)


def test_truth_is_not_clipped():
    pred, true = random_pair((1, 2, 1, 8, 8), seed=6)
    true = true * 1.4 - 0.2  # spills outside [0, 1]
    assert ssim(pred, true) == pytest.approx(ref_ssim(pred, true, 1.0), rel=TOL, abs=TOL)
    assert psnr(pred, true) == pytest.approx(ref_psnr(pred, true), rel=TOL)


# ----------------------------------------------------------------------------------------------------
# Identical inputs: SSIM 1, PSNR +inf (OpenSTL and scikit-image), errors 0
# ----------------------------------------------------------------------------------------------------


def test_identical_inputs():
    _, true = random_pair((2, 3, 3, 8, 10), seed=7)
    got = compute_metrics(true, true.copy())
    assert got["mse"] == 0.0 and got["mae"] == 0.0
    assert got["ssim"] == pytest.approx(1.0, abs=1e-15)
    assert got["psnr"] == math.inf
    assert ref_psnr(true, true) == math.inf  # the convention scikit-image has too


def test_one_exact_frame_makes_psnr_inf():
    pred, true = random_pair((1, 3, 1, 8, 8), seed=8)
    assert math.isfinite(psnr(pred, true))
    pred[0, 1] = true[0, 1]
    assert psnr(pred, true) == math.inf
    assert psnr(pred, true) == ref_psnr(pred, true)


# ----------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_streaming_uneven_batches_equals_one_shot(reduction, data_range):
    pred, true = random_pair((7, 3, 2, 9, 8), seed=9)
    whole = compute_metrics(pred, true, data_range=data_range, reduction=reduction)
    acc = MetricAccumulator(data_range=data_range, reduction=reduction)
    start = 0
    for size in (1, 4, 0, 2):  # uneven, including an empty batch
        acc.update(torch.from_numpy(pred[start : start + size]), true[start : start + size])
        start += size
    assert acc.num_frames == 21
    assert_metrics_close(acc.compute(), whole, tol=TOL)
    # A mean of batch means would be off here (batch sizes differ), so this is a real check.
    acc.reset()
    with pytest.raises(RuntimeError, match="before any frame"):
        acc.compute()
    acc.update(pred, true)
    assert_metrics_close(acc.compute(), whole, tol=TOL)


def test_chunked_equals_unchunked(monkeypatch):
    pred, true = random_pair((3, 4, 2, 8, 9), seed=11)
    whole = compute_metrics(pred, true)
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 2 * 2 * 8 * 9 + 1)  # two frames per chunk, last one short
    assert_metrics_close(compute_metrics(pred, true), whole, tol=TOL)


def test_failed_update_leaves_state_unchanged():
    pred, true = random_pair((2, 2, 1, 8, 8), seed=12)
    acc = MetricAccumulator()
    acc.update(pred, true)
    before = acc.compute()
    with pytest.raises(ValueError):
        acc.update(pred, true[:, :1])
    with pytest.raises(ValueError):
        acc.update(pred[..., :6, :], true[..., :6, :])
    assert acc.compute() == before and acc.num_frames == 4


# ----------------------------------------------------------------------------------------------------
# Input types
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_are_computed_in_float64(dtype):
    pred, true = random_pair((2, 2, 1, 8, 8), seed=13)
    p, t = torch.from_numpy(pred).to(dtype), torch.from_numpy(true).to(dtype)
    # Upcasting is exact, so a low-precision input gives the float64 result of its own values.
    assert compute_metrics(p, t) == compute_metrics(p.double(), t.double())


def test_numpy_torch_and_mixed_inputs_agree():
    pred, true = random_pair((2, 2, 3, 8, 8), seed=14)
    ref = compute_metrics(pred, true)
    assert compute_metrics(torch.from_numpy(pred), torch.from_numpy(true)) == ref
    assert compute_metrics(pred, torch.from_numpy(true)) == ref
    assert compute_metrics(pred.astype(np.float32), true) == compute_metrics(
        pred.astype(np.float32).astype(np.float64), true
    )
    # Non-contiguous and negatively strided inputs.
    flipped = compute_metrics(pred[..., ::-1], true[..., ::-1])
    assert flipped["mse"] == pytest.approx(ref["mse"], rel=TOL)
    assert flipped["ssim"] == pytest.approx(ref["ssim"], rel=TOL)


def test_no_autograd_and_float_outputs():
    pred = torch.rand(1, 2, 1, 8, 8, requires_grad=True)
    out = compute_metrics(pred, torch.rand(1, 2, 1, 8, 8))
    assert all(type(v) is float for v in out.values())


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------

GOOD = torch.rand(1, 2, 1, 8, 8)

ERROR_CASES = [
    ("rank", lambda: compute_metrics(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)), ValueError,
     r"`pred` must have shape \(N, T, C, H, W\), got \(2, 1, 8, 8\)"),
    ("true rank", lambda: mse(GOOD, GOOD[0]), ValueError, r"`true` must have shape \(N, T, C, H, W\)"),
    ("shapes", lambda: compute_metrics(GOOD, torch.rand(1, 3, 1, 8, 8)), ValueError,
     r"same shape .* got pred \(1, 2, 1, 8, 8\) and true \(1, 3, 1, 8, 8\)"),
    ("int tensor", lambda: ssim(GOOD, torch.ones(1, 2, 1, 8, 8, dtype=torch.int64)), TypeError,
     r"`true` must have a floating dtype, got torch.int64"),
    ("uint8 numpy", lambda: psnr(np.zeros((1, 2, 1, 8, 8), np.uint8), GOOD), TypeError,
     r"`pred` must have a floating dtype, got numpy uint8"),
    ("bool", lambda: mae(GOOD > 0.5, GOOD), TypeError, r"`pred` must have a floating dtype, got torch.bool"),
    ("complex", lambda: mse(GOOD.to(torch.complex64), GOOD), TypeError, r"`pred` must be real"),
    ("list", lambda: mse([[1.0]], GOOD), TypeError, r"`pred` must be a torch.Tensor or numpy.ndarray, got list"),
    ("small frame", lambda: compute_metrics(torch.rand(1, 2, 1, 6, 9), torch.rand(1, 2, 1, 6, 9)), ValueError,
     r"at least 7x7 .* got H=6, W=9"),
    ("small frame ssim", lambda: ssim(torch.rand(1, 1, 3, 9, 5), torch.rand(1, 1, 3, 9, 5)), ValueError,
     r"at least 7x7"),
    ("no frames", lambda: compute_metrics(torch.rand(0, 2, 1, 8, 8), torch.rand(0, 2, 1, 8, 8)), ValueError,
     r"no frames"),
    ("empty frames", lambda: mse(torch.rand(1, 2, 0, 8, 8), torch.rand(1, 2, 0, 8, 8)), ValueError,
     r"non-empty frames"),
    ("reduction", lambda: mse(GOOD, GOOD, reduction="avg"), ValueError, r"`reduction` must be one of"),
    ("data_range", lambda: ssim(GOOD, GOOD, data_range=0.0), ValueError, r"`data_range` must be finite and > 0"),
    ("data_range type", lambda: MetricAccumulator(data_range="1"), TypeError, r"`data_range` must be a number"),
    ("devices", lambda: mse(GOOD, GOOD.to("meta")), ValueError, r"`pred` is on cpu but `true` is on meta"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_small_frames_fine_for_mse_mae_psnr():
    pred, true = random_pair((1, 2, 1, 3, 4), seed=15)
    assert mse(pred, true) == pytest.approx(ref_error(pred, true, "sum", 2), rel=TOL)
    assert mae(pred, true) == pytest.approx(ref_error(pred, true, "sum", 1), rel=TOL)
    assert psnr(pred, true) == pytest.approx(ref_psnr(pred, true), rel=TOL)
