"""Training seconds per step of the fidelity study's headline models, side by side in one process.

The study's own s/step columns are wall-clock times of runs that shared the machine; this measures
DIFFUMA (``diffuma_small``), Mamba-only and SimVP (the CPU budget's sizes) at the CHDL budget's shape
(batch 4, 10 -> 10 frames of 1x32x32, float32, one thread), interleaved, median of 5 steps after one
warm-up step, so that the ratios are comparable. Run on a quiet machine:

    python benchmarks/fidelity/step_cost.py
"""

import time

import torch

from stmodels.models import create_model

torch.set_num_threads(1)
shape = dict(in_shape=(10, 1, 32, 32), out_frames=10)
models = {
    "DIFFUMA": create_model("diffuma_small", **shape),
    "Mamba-only": create_model("diffuma_small", diffusion="off", **shape),
    "SimVP (gSTA)": create_model("simvp", hid_S=32, hid_T=256, N_T=4, mlp_ratio=4.0, **shape),
}
opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
X, Y = torch.rand(4, 10, 1, 32, 32), torch.rand(4, 10, 1, 32, 32)
times = {k: [] for k in models}
for rep in range(6):
    for k, m in models.items():
        t = time.perf_counter()
        loss = m.compute_loss(X, Y)["loss"]; opts[k].zero_grad(); loss.backward(); opts[k].step()
        if rep: times[k].append(time.perf_counter() - t)
base = sorted(times["SimVP (gSTA)"])[2]
for k, v in times.items():
    med = sorted(v)[2]
    print(f"{k:14s} median {med:.3f} s/step  ({med / base:.2f}x SimVP)")
