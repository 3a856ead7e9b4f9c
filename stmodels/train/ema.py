"""An exponential moving average of a model's weights (Polyak averaging), for evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """``ema = decay_t * ema + (1 - decay_t) * weights`` after every optimiser step.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so
    the average is not dominated by the random initial weights in short runs. Buffers (e.g. norm
    statistics) are copied, not averaged. The average is kept in float32 on the model's device.

    Args:
        model: the (unwrapped) model being trained.
        decay: the long-run decay, e.g. 0.999.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.module.parameters(), model.parameters()):
            average.lerp_(current.detach().to(average.dtype), 1.0 - decay)
        for average, current in zip(self.module.buffers(), model.buffers()):
            average.copy_(current)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.module.load_state_dict(state["module"])
