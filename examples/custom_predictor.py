"""Compose stmodels blocks into your own predictor and train it with the library's Trainer.

A streaming variant of DIFFUMA: a *causal* Mamba temporal path that scans each pixel's history
(``direction="causal"``, ``scan="time"``: usable frame by frame), a DiT denoiser conditioned on the
pooled context (``conditioning="global"``) and a residual diffusion head that predicts ``v``
instead of the noise. Anything with ``model(X)`` and ``model.compute_loss(X, Y, generator)`` trains
with :class:`stmodels.train.Trainer` and evaluates with :func:`stmodels.train.evaluate`.

    python examples/custom_predictor.py --steps 200
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from stmodels.data import SyntheticCHDL
from stmodels.models import create_model
from stmodels.nn import DiTDenoiser, MambaEncoder, ResidualDiffusionHead
from stmodels.train import TrainConfig, Trainer, evaluate


class StreamingDiffusionPredictor(nn.Module):
    """Causal Mamba path + globally conditioned DiT residual.

    Shapes: ``X: (batch, T_in, C, H, W)`` -> ``(batch, T_out, C, H, W)``.
    """

    def __init__(self, in_shape=(6, 1, 16, 16), out_frames=6, hidden=16, lambda_diff=0.5):
        super().__init__()
        T_in, channels, height, width = in_shape
        self.lambda_diff = lambda_diff
        self.temporal = MambaEncoder(in_shape, out_frames, hidden_channels=hidden, num_downsamples=1, depth=1,
                                     d_state=8, scan="time", direction="causal")
        denoiser = DiTDenoiser((channels, height, width), out_frames, context_channels=hidden,
                               context_size=(height // 2, width // 2), patch_size=4, hidden=32, depth=2,
                               heads=2, conditioning="global")
        self.head = ResidualDiffusionHead(denoiser, num_steps=200, prediction="v", t_star=5)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        y_temporal, context = self.temporal(X)
        return y_temporal + self.head.single_pass(y_temporal, context)

    def compute_loss(self, X: torch.Tensor, Y: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        y_temporal, context = self.temporal(X)
        prediction = y_temporal + self.head.single_pass(y_temporal, context)
        recon = F.mse_loss(prediction, Y)
        diff = self.head.diffusion_loss(Y, context, generator=generator)
        return {"loss": recon + self.lambda_diff * diff, "recon": recon.detach(), "diff": diff.detach(),
                "prediction": prediction.detach()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=None, help="run folder (default: nothing written)")
    args = parser.parse_args(argv)
    data = dict(frames=12, size=16, in_frames=6, out_frames=6)
    train, test = SyntheticCHDL(256, **data), SyntheticCHDL(16, split="test", **data)
    torch.manual_seed(0)
    model = StreamingDiffusionPredictor()
    config = TrainConfig(epochs=10**6, max_steps=args.steps, batch_size=8, lr=2e-3, quiet=True, device="cpu",
                         pictures=False)
    Trainer(model, train, None, config, args.out).fit()
    ours = evaluate(model, test).metrics
    baseline = evaluate(create_model("copy_last", in_shape=(6, 1, 16, 16), out_frames=6), test).metrics
    for name, metrics in (("StreamingDiffusionPredictor", ours), ("copy last frame", baseline)):
        print(f"{name:<28} MSE {metrics['mse']:8.3f}  SSIM {metrics['ssim']:.4f}  PSNR {metrics['psnr']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
