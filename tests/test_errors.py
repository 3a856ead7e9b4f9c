"""Every bad-input case of docs/ops.rst gives a clear error naming the argument."""

from __future__ import annotations

import pytest
import torch

from stmodels.ops import (
    BackendNotSupportedError,
    adaln_modulate,
    bi_selective_scan,
    selective_scan,
    use_backend,
)

BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.needs_ext)]


def scan_inputs(batch=2, dim=4, length=5, N=3):
    return dict(
        u=torch.randn(batch, dim, length),
        delta=torch.rand(batch, dim, length),
        A=-torch.rand(dim, N),
        B=torch.randn(batch, N, length),
        C=torch.randn(batch, N, length),
    )


def with_(**changes):
    inputs = scan_inputs()
    inputs.update(changes)
    return inputs


SCAN_CASES = [
    ("u rank", with_(u=torch.randn(4, 5)), ValueError, "`u` must have shape (batch, dim, L)"),
    ("delta shape", with_(delta=torch.rand(2, 4, 6)), ValueError, "`delta` must have shape (batch, dim, L)"),
    ("delta dtype", with_(delta=torch.rand(2, 4, 5, dtype=torch.float64)), TypeError, "`delta` must have dtype float32"),
    ("A dim mismatch", with_(A=-torch.rand(5, 3)), ValueError, "`A` must have shape (dim, N) = (4, 3)"),
    ("A rank", with_(A=-torch.rand(4)), ValueError, "`A` must have shape (dim, N)"),
    ("complex A", with_(A=torch.randn(4, 3, dtype=torch.complex64)), TypeError, "complex `A`"),
    ("integer u", with_(u=torch.ones(2, 4, 5, dtype=torch.int64)), TypeError, "`u` must have dtype"),
    ("integer A", with_(A=torch.ones(4, 3, dtype=torch.int32)), TypeError, "`A` must have dtype float32"),
    ("B batch", with_(B=torch.randn(3, 3, 5)), ValueError, "`B` must have shape (batch, N, L) = (2, 3, 5)"),
    ("B N", with_(B=torch.randn(2, 4, 5)), ValueError, "`B` must have shape (batch, N, L) = (2, 3, 5)"),
    ("C L", with_(C=torch.randn(2, 3, 7)), ValueError, "`C` must have shape (batch, N, L) = (2, 3, 5)"),
    ("groups", with_(B=torch.randn(2, 3, 3, 5)), ValueError, "G=3 of `B` must divide dim=4"),
    ("group mismatch", with_(B=torch.randn(2, 2, 3, 5)), ValueError, "same number of groups, got G=2 for B and G=1 for C"),
    ("B rank", with_(B=torch.randn(5)), ValueError, "`B` must have shape"),
    ("B constant shape", with_(B=torch.randn(4, 2)), ValueError, "`B` must have shape (dim, N)"),
    ("D shape", with_(D=torch.randn(5)), ValueError, "`D` must have shape (dim,) = (4,)"),
    ("delta_bias dtype", with_(delta_bias=torch.randn(4, dtype=torch.float16)), TypeError, "`delta_bias` must have dtype float32"),
    ("z shape", with_(z=torch.randn(2, 4, 4)), ValueError, "`z` must have shape (batch, dim, L)"),
    ("z dtype", with_(z=torch.randn(2, 4, 5, dtype=torch.float16)), TypeError, "`z` must have dtype float32"),
    ("initial_state", with_(initial_state=torch.randn(2, 4, 2)), ValueError, "`initial_state` must have shape (batch, dim, N) = (2, 4, 3)"),
    ("empty L", with_(u=torch.randn(2, 4, 0), delta=torch.rand(2, 4, 0)), ValueError, "non-empty"),
    ("not a tensor", with_(u=[[1.0]]), TypeError, "`u` must be a torch.Tensor, got list"),
    ("missing", with_(C=None), TypeError, "`C` is required"),
    ("devices", with_(B=torch.randn(2, 3, 5, device="meta")), ValueError, "`B` is on meta"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case,inputs,error,message", SCAN_CASES, ids=[c[0] for c in SCAN_CASES])
def test_selective_scan_bad_input(backend, case, inputs, error, message):
    with pytest.raises(error) as caught:
        selective_scan(**inputs, backend=backend)
    assert message in str(caught.value), str(caught.value)


def test_bi_scan_rejects_bad_direction_axis():
    x = scan_inputs()
    with pytest.raises(ValueError, match=r"`u` must have shape \(batch, dim, L\) or \(2, batch, dim, L\)"):
        bi_selective_scan(torch.randn(3, 2, 4, 5), x["delta"], x["A"], x["B"], x["C"])
    with pytest.raises(ValueError, match="`initial_state` is only supported by the unidirectional"):
        from stmodels.ops.selective_scan.checks import canonical_scan_args

        canonical_scan_args("bi_selective_scan", **x, initial_state=torch.zeros(2, 4, 3), bidirectional=True)


ADALN_CASES = [
    ("x rank", dict(x=torch.randn(4, 8)), ValueError, "`x` must have shape (batch, S, H)"),
    ("shift H", dict(shift=torch.randn(2, 7)), ValueError, "`shift` must have shape (batch, H) = (2, 8)"),
    ("scale S", dict(scale=torch.randn(2, 4, 8), shift=torch.randn(2, 3, 8)), ValueError, "`scale` must have shape (batch, S, H) = (2, 3, 8)"),
    ("forms differ", dict(scale=torch.randn(2, 3, 8)), ValueError, "same form"),
    ("weight", dict(weight=torch.randn(7)), ValueError, "`weight` must have shape (H,) = (8,)"),
    ("integer x", dict(x=torch.ones(2, 3, 8, dtype=torch.int32)), TypeError, "`x` must have dtype"),
    ("complex shift", dict(shift=torch.randn(2, 8, dtype=torch.complex64)), TypeError, "`shift` must have dtype"),
    ("eps", dict(eps=0.0), ValueError, "`eps` must be a positive finite float"),
    ("devices", dict(bias=torch.randn(8, device="meta")), ValueError, "`bias` is on meta"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case,changes,error,message", ADALN_CASES, ids=[c[0] for c in ADALN_CASES])
def test_adaln_bad_input(backend, case, changes, error, message):
    inputs = dict(x=torch.randn(2, 3, 8), shift=torch.randn(2, 8), scale=torch.randn(2, 8))
    inputs.update(changes)
    with pytest.raises(error) as caught:
        adaln_modulate(**inputs, backend=backend)
    assert message in str(caught.value), str(caught.value)


def test_explicit_backend_lists_every_reason():
    x = scan_inputs()
    with pytest.raises(BackendNotSupportedError) as caught:
        selective_scan(**{k: v.double() for k, v in x.items()}, backend="cuda")
    message = str(caught.value)
    assert "backend 'cuda' cannot run" in message
    assert "`cuda` runs on cuda tensors, but `u` is on cpu" in message
    assert "supports u of dtype float32, float16, bfloat16, got torch.float64" in message


def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendNotSupportedError, match="TRITON_INTERPRET=1"):
        adaln_modulate(torch.randn(1, 2, 4), torch.randn(1, 4), torch.randn(1, 4), backend="triton")


def test_unknown_backend_names_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'fast'; expected one of auto, reference, cpu"):
        selective_scan(**scan_inputs(), backend="fast")
    with pytest.raises(ValueError, match="unknown backend"):
        with use_backend("nope"):
            pass
    monkeypatch.setenv("STMODELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="environment variable STMODELS_BACKEND: unknown backend 'bogus'"):
        selective_scan(**scan_inputs())


def test_cuda_scan_state_size_limit_matches_the_kernel():
    # The Python reason must agree with the CUDA source's own check, so auto falls back cleanly.
    import re
    from pathlib import Path

    from stmodels.ops.selective_scan.compiled import CUDA_MAX_STATE_SIZE

    csrc = Path(__file__).resolve().parents[1] / "csrc" / "selective_scan"
    source = (csrc / "selective_scan_cuda_common.cuh").read_text()
    assert re.search(r"constexpr int kMaxN = (\d+);", source).group(1) == str(CUDA_MAX_STATE_SIZE)


def _small_scan(device="cpu"):
    def make(*shape):
        return torch.randn(*shape, device=device)

    return make(2, 4, 5), make(2, 4, 5), -make(4, 3).abs(), make(2, 3, 5), make(2, 3, 5)


def test_meta_tensors_get_the_device_error():
    """Meta inputs reach backend selection (no autocast failure) and are told about the device."""
    with pytest.raises(BackendNotSupportedError, match=r"`u` is on meta"):
        selective_scan(*_small_scan("meta"))
    with pytest.raises(BackendNotSupportedError, match=r"(?s)^bi_selective_scan: .*`u` is on meta"):
        bi_selective_scan(*_small_scan("meta"))


def test_bi_selective_scan_errors_name_bi_selective_scan():
    with pytest.raises(BackendNotSupportedError, match=r"^bi_selective_scan: backend 'cuda'"):
        bi_selective_scan(*_small_scan(), backend="cuda")
    with pytest.raises(ValueError, match=r"^bi_selective_scan: unknown backend"):
        bi_selective_scan(*_small_scan(), backend="bogus")


@pytest.mark.parametrize("value", [1, "yes", None])
def test_return_last_state_must_be_a_bool(value):
    with pytest.raises(TypeError, match=r"selective_scan: `return_last_state` must be a bool"):
        selective_scan(*_small_scan(), return_last_state=value)


def test_delta_softplus_defaults_are_the_documented_ones():
    """selective_scan keeps mamba_ssm's default (False); bi_selective_scan defaults to True, as documented."""
    import inspect

    assert inspect.signature(selective_scan).parameters["delta_softplus"].default is False
    assert inspect.signature(bi_selective_scan).parameters["delta_softplus"].default is True
    args = _small_scan()
    torch.testing.assert_close(bi_selective_scan(*args), bi_selective_scan(*args, delta_softplus=True))
