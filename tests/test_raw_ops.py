"""Direct calls of the raw ``torch.ops.stmodels.*`` ops with bad arguments.

The front doors validate user input first, so the C++ checks (csrc/<op>/<op>_checks.h, shared by the
CPU and CUDA entry points) only guard direct calls; these tests make every one of them run. Each bad
argument must raise an error that names it, on the CPU kernels, on meta tensors (the fake kernels,
which validate through the Python checks) and, where a GPU is present, on the CUDA kernels (which
also reject inputs on another device).
"""

from __future__ import annotations

import re

import pytest
import torch

from tests._backends import backend_params

pytestmark = pytest.mark.needs_ext

B_, D_, L_, N_ = 2, 4, 5, 3  # batch, dim, L, N
S_, H_ = 3, 8  # adaln tokens, hidden

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("meta", id="meta"),
           *[pytest.param("cuda", marks=p.marks, id="cuda") for p in backend_params("cuda")]]


def _scan_fwd_args(bidirectional=False):
    f = torch.float32
    return {
        "u": torch.randn(B_, D_, L_), "delta": torch.rand(B_, D_, L_), "A": -torch.rand(D_, N_),
        "B": torch.randn(B_, 1, N_, L_), "C": torch.randn(B_, 1, N_, L_), "D": torch.ones(D_, dtype=f),
        "z": torch.randn(B_, D_, L_), "delta_bias": torch.zeros(D_),
        "initial_state": None if bidirectional else torch.zeros(B_, D_, N_),
        "delta_softplus": True, "reverse": False, "bidirectional": bidirectional,
    }


# (argument, replacement builder from the valid args, name the error must contain)
SCAN_BAD = {
    "u_dtype": ("u", lambda a: a["u"].double(), "u"),
    "u_int": ("u", lambda a: a["u"].to(torch.int32), "u"),
    "u_rank": ("u", lambda a: a["u"][0], "u"),
    "delta_shape": ("delta", lambda a: a["delta"][..., :-1], "delta"),
    "delta_dtype": ("delta", lambda a: a["delta"].half(), "delta"),
    "A_shape": ("A", lambda a: a["A"][:-1], "A"),
    "A_dtype": ("A", lambda a: a["A"].half(), "A"),
    "B_length": ("B", lambda a: a["B"][..., :-1], "B"),
    "B_dtype": ("B", lambda a: a["B"].to(torch.int64), "B"),
    "B_rank": ("B", lambda a: a["B"][0, 0, 0], "B"),
    "C_state": ("C", lambda a: a["C"][:, :, :-1], "C"),
    "C_groups": ("C", lambda a: torch.randn(B_, 3, N_, L_), "C"),  # 3 groups do not divide dim 4
    "D_shape": ("D", lambda a: torch.ones(D_ + 1), "D"),
    "D_dtype": ("D", lambda a: a["D"].half(), "D"),
    "z_shape": ("z", lambda a: a["z"][:1], "z"),
    "z_dtype": ("z", lambda a: a["z"].half(), "z"),
    "delta_bias_shape": ("delta_bias", lambda a: torch.zeros(D_, 1), "delta_bias"),
    "initial_state_shape": ("initial_state", lambda a: torch.zeros(B_, D_, N_ + 1), "initial_state"),
    "initial_state_dtype": ("initial_state", lambda a: torch.zeros(B_, D_, N_, dtype=torch.float16),
                            "initial_state"),
}


def _on(device, value):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _expect_named(call, name):
    with pytest.raises((RuntimeError, ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", message), f"{name!r} not named in: {message}"


def _call_scan_fwd(args, device):
    values = [_on(device, v) for v in args.values()]
    return torch.ops.stmodels.selective_scan_fwd(*values)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(SCAN_BAD))
@pytest.mark.parametrize("op", ["fwd", "bwd"])
def test_selective_scan_names_the_bad_argument(op, case, device):
    args = _scan_fwd_args()
    name, make, expected = SCAN_BAD[case]
    args[name] = make(args)
    if op == "fwd":
        _expect_named(lambda: _call_scan_fwd(args, device), expected)
    else:  # the backward validates the same inputs, after dout and dlast_state
        values = [_on(device, v) for v in (torch.randn(B_, D_, L_), None, *args.values())]
        _expect_named(lambda: torch.ops.stmodels.selective_scan_bwd(*values), expected)


GRAD_BAD = {
    "dout_shape": (lambda: torch.randn(B_, D_, L_ + 1), None, "dout"),
    "dout_dtype": (lambda: torch.randn(B_, D_, L_).half(), None, "dout"),
    "dlast_shape": (lambda: torch.randn(B_, D_, L_), lambda: torch.randn(B_, D_, N_ + 1), "dlast_state"),
    "dlast_dtype": (lambda: torch.randn(B_, D_, L_), lambda: torch.randn(B_, D_, N_).double(), "dlast_state"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(GRAD_BAD))
def test_selective_scan_bwd_checks_its_gradients(case, device):
    make_dout, make_dlast, expected = GRAD_BAD[case]
    args = _scan_fwd_args()
    values = [_on(device, v) for v in (make_dout(), make_dlast() if make_dlast else None, *args.values())]
    _expect_named(lambda: torch.ops.stmodels.selective_scan_bwd(*values), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_selective_scan_flag_and_form_errors(device):
    bi = _scan_fwd_args(bidirectional=True)
    bi["reverse"] = True
    _expect_named(lambda: _call_scan_fwd(bi, device), "reverse")
    bi = _scan_fwd_args(bidirectional=True)
    bi["initial_state"] = torch.zeros(B_, D_, N_)
    _expect_named(lambda: _call_scan_fwd(bi, device), "initial_state")
    mismatch = _scan_fwd_args()
    mismatch["B"], mismatch["C"] = torch.randn(B_, 2, N_, L_), torch.randn(B_, 4, N_, L_)
    _expect_named(lambda: _call_scan_fwd(mismatch, device), "C")


@pytest.mark.parametrize("device", DEVICES)
def test_selective_scan_valid_arguments_pass(device):
    """The baselines of the cases above are valid: each failure is the one bad argument's."""
    for bidirectional in (False, True):
        out, last = _call_scan_fwd(_scan_fwd_args(bidirectional), device)
        assert out.shape == (B_, D_, L_) and last.shape[-3:] == (B_, D_, N_)


def _adaln_args(per_token=False):
    mod = (B_, S_, H_) if per_token else (B_, H_)
    return {"x": torch.randn(B_, S_, H_), "shift": torch.randn(*mod), "scale": torch.randn(*mod),
            "weight": torch.ones(H_), "bias": torch.zeros(H_), "eps": 1e-6}


ADALN_BAD = {
    "x_rank": ("x", lambda a: a["x"][0], "x"),
    "x_dtype": ("x", lambda a: a["x"].to(torch.int32), "x"),
    "shift_shape": ("shift", lambda a: a["shift"][:, :-1], "shift"),
    "shift_dtype": ("shift", lambda a: a["shift"].half(), "shift"),
    "scale_shape": ("scale", lambda a: torch.randn(B_, S_, H_), "scale"),
    "scale_dtype": ("scale", lambda a: a["scale"].double(), "scale"),
    "weight_shape": ("weight", lambda a: torch.ones(H_ + 1), "weight"),
    "weight_dtype": ("weight", lambda a: torch.ones(H_).half(), "weight"),
    "bias_shape": ("bias", lambda a: torch.zeros(1, H_), "bias"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(ADALN_BAD))
def test_adaln_fwd_names_the_bad_argument(case, device):
    args = _adaln_args()
    name, make, expected = ADALN_BAD[case]
    args[name] = make(args)
    values = [_on(device, v) for v in args.values()]
    _expect_named(lambda: torch.ops.stmodels.adaln_fwd(*values), expected)


ADALN_BWD_BAD = {
    "dout_shape": ("dout", lambda a: a["dout"][:, :-1], "dout"),
    "dout_dtype": ("dout", lambda a: a["dout"].half(), "dout"),
    "x_rank": ("x", lambda a: a["x"][0], "x"),
    "scale_form": ("scale", lambda a: torch.randn(B_, S_, H_), "scale"),  # shift_per_token=False
    "weight_shape": ("weight", lambda a: torch.ones(H_ - 1), "weight"),
    "bias_dtype": ("bias", lambda a: torch.zeros(H_, dtype=torch.float64), "bias"),
    "mean_shape": ("mean", lambda a: torch.zeros(B_, S_ + 1), "mean"),
    "rstd_dtype": ("rstd", lambda a: torch.ones(B_, S_).half(), "rstd"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(ADALN_BWD_BAD))
def test_adaln_bwd_names_the_bad_argument(case, device):
    fwd = _adaln_args()
    args = {"dout": torch.randn(B_, S_, H_), "x": fwd["x"], "scale": fwd["scale"], "weight": fwd["weight"],
            "bias": fwd["bias"], "mean": torch.zeros(B_, S_), "rstd": torch.ones(B_, S_), "shift_per_token": False}
    name, make, expected = ADALN_BWD_BAD[case]
    args[name] = make(args)
    values = [_on(device, v) for v in args.values()]
    _expect_named(lambda: torch.ops.stmodels.adaln_bwd(*values), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_adaln_valid_arguments_pass(device):
    for per_token in (False, True):
        args = _adaln_args(per_token)
        out, mean, rstd = torch.ops.stmodels.adaln_fwd(*[_on(device, v) for v in args.values()])
        assert out.shape == (B_, S_, H_) and mean.shape == rstd.shape == (B_, S_)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name", ["delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"])
def test_cuda_scan_rejects_an_input_on_another_device(name):
    args = {k: _on("cuda", v) for k, v in _scan_fwd_args().items()}
    args[name] = args[name].cpu()
    _expect_named(lambda: torch.ops.stmodels.selective_scan_fwd(*args.values()), name)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name", ["shift", "scale", "weight", "bias"])
def test_cuda_adaln_rejects_an_input_on_another_device(name):
    args = {k: _on("cuda", v) for k, v in _adaln_args().items()}
    args[name] = args[name].cpu()
    _expect_named(lambda: torch.ops.stmodels.adaln_fwd(*args.values()), name)

