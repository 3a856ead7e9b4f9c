"""DIFFUMA benchmarks on CPU: training step and inference latency per backend and preset, and
single-pass vs 50-step DDIM inference (target: single pass at least 10x faster).

Run: `python -m pytest benchmarks/bench_model.py --benchmark-only`.
"""

from __future__ import annotations

import pytest
import torch

from stmodels import _ext
from stmodels.models import create_model, model_config

BATCH = {"diffuma_tiny": 4, "diffuma_small": 2}


def _model_and_data(preset, backend, **overrides):
    if backend == "cpu" and not _ext.available():
        pytest.skip(_ext.load_error())
    torch.manual_seed(0)
    model = create_model(preset, backend=backend, **overrides)
    config = model_config(preset, **overrides)
    T_in, C, H, W = config.in_shape
    X = torch.rand(BATCH[preset], T_in, C, H, W)
    Y = torch.rand(BATCH[preset], config.out_frames, C, H, W)
    return model, X, Y


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("preset", ["diffuma_tiny", "diffuma_small"])
def test_training_step(benchmark, preset, backend):
    model, X, Y = _model_and_data(preset, backend)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    benchmark.group = f"training step {preset} batch {BATCH[preset]} float32"

    def step():
        losses = model.compute_loss(X, Y)
        optimiser.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimiser.step()

    benchmark.pedantic(step, rounds=3 if preset == "diffuma_small" else 10, warmup_rounds=1)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("preset", ["diffuma_tiny", "diffuma_small"])
def test_inference_single_pass(benchmark, preset, backend):
    model, X, _ = _model_and_data(preset, backend)
    model.eval()
    benchmark.group = f"inference single pass {preset} batch {BATCH[preset]} float32"

    def run():
        with torch.no_grad():
            return model(X)

    benchmark.pedantic(run, rounds=3 if preset == "diffuma_small" else 10, warmup_rounds=1)


@pytest.mark.parametrize("sampler", ["single", "ddim50"])
def test_single_pass_vs_ddim(benchmark, sampler):
    model, X, _ = _model_and_data("diffuma_small", "cpu")
    model.eval()
    benchmark.group = "diffuma_small inference: single pass vs 50-step DDIM (cpu backend)"

    def run():
        with torch.no_grad():
            if sampler == "single":
                return model(X)
            return model(X, sampler="ddim", ddim_steps=50, generator=torch.Generator().manual_seed(0))

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
