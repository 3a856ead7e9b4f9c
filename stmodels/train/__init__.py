"""Training: the :class:`Trainer`, its config, checkpoints, evaluation, logs and pictures.

Example::

    from stmodels.data import SyntheticCHDL
    from stmodels.models import create_model
    from stmodels.train import TrainConfig, Trainer

    model = create_model("diffuma_tiny")
    trainer = Trainer(model, SyntheticCHDL(64, size=16, in_frames=4, out_frames=4),
                      SyntheticCHDL(8, size=16, in_frames=4, out_frames=4, split="test"),
                      TrainConfig(epochs=2, batch_size=8), out_dir="runs/tiny")
    trainer.fit()
"""

from stmodels.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stmodels.train.config import TrainConfig
from stmodels.train.distributed import DistributedContext, ShardedBatchSampler, init_distributed, resolve_device
from stmodels.train.ema import ModelEMA
from stmodels.train.evaluate import EvalResult, evaluate
from stmodels.train.run_log import RunLog, read_csv
from stmodels.train.runs import load_run, read_run_config
from stmodels.train.trainer import Trainer

__all__ = [
    "CheckpointError",
    "DistributedContext",
    "EvalResult",
    "ModelEMA",
    "RunLog",
    "ShardedBatchSampler",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "init_distributed",
    "load_checkpoint",
    "load_run",
    "read_csv",
    "read_run_config",
    "resolve_device",
    "save_checkpoint",
]
