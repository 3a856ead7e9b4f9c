"""Datasets named by a short string, as the command line and run configs do.

``chdl:DIR`` (a CHDL-format folder), ``chdl-synthetic`` (the embedded default) and ``mmnist``
(Moving MNIST from the bundled digits). A :class:`DataSpec` records everything needed to rebuild
the same datasets later (``stmodels eval`` reads it back from a run's ``config.json``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

__all__ = ["DataSpec", "parse_data_spec"]

KINDS = ("chdl", "chdl-synthetic", "mmnist")


@dataclasses.dataclass
class DataSpec:
    """A dataset description that :meth:`build` turns into train / validation datasets.

    Args:
        kind: ``"chdl"``, ``"chdl-synthetic"`` or ``"mmnist"``.
        root: the CHDL folder (``kind="chdl"`` only).
        in_frames, out_frames: frames given to and predicted by the model.
        size: frame height and width (synthetic and Moving MNIST; for a folder, resize to it
            when set, else keep the files' size).
        channels: 1 or 3 (synthetic: grey or RGB; folder: convert to it when set).
        train_sequences, val_sequences: sequences per split (generated data only).
        frames: frames rendered per synthetic sequence (at least ``in_frames + out_frames``).
        stride: frames between consecutive windows (synthetic and folder data).
        seed: the generated data's seed.
        train_split, val_split: the folder's split names; ``val_split=None`` takes ``"val"`` when
            present, else ``"test"``.
    """

    kind: str = "chdl-synthetic"
    root: str | None = None
    in_frames: int = 10
    out_frames: int = 10
    size: int | None = 64
    channels: int | None = None
    train_sequences: int = 1000
    val_sequences: int = 100
    frames: int | None = None
    stride: int = 1
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"DataSpec: `kind` must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "chdl" and not self.root:
            raise ValueError("DataSpec: kind 'chdl' needs `root`, the CHDL folder (e.g. chdl:/data/lanes)")
        minimum = {"in_frames": 1, "out_frames": 0, "size": 1, "channels": 1, "train_sequences": 1,
                   "val_sequences": 1, "frames": 1, "stride": 1, "seed": 0}
        optional = ("size", "channels", "frames")
        for name, low in minimum.items():
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DataSpec: `{name}` must be an integer >= {low}"
                                 + (" or None" if name in optional else "") + f", got {value!r}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"DataSpec: `channels` must be None, 1 or 3, got {self.channels!r}")
        if self.frames is not None and self.frames < self.in_frames + self.out_frames:
            raise ValueError(f"DataSpec: `frames` {self.frames} is shorter than one window "
                             f"({self.in_frames} + {self.out_frames})")
        for name in ("root", "train_split", "val_split"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"DataSpec: `{name}` must be a string, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        if not isinstance(values, dict):
            raise ValueError(f"DataSpec: expected a mapping of fields, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"DataSpec: unknown fields {unknown}")
        return cls(**values)

    def _resolved_val_split(self) -> str:
        if self.val_split:
            return self.val_split
        return "val" if (Path(self.root) / "val").is_dir() else "test"

    def build(self, split: str) -> Dataset:
        """The dataset of ``split``: ``"train"`` or ``"val"`` (validation / test)."""
        if split not in ("train", "val"):
            raise ValueError(f"DataSpec.build: split must be 'train' or 'val', got {split!r}")
        train = split == "train"
        if self.kind == "chdl":
            from stmodels.data.chdl import CHDLFolder

            return CHDLFolder(
                self.root, self.train_split if train else self._resolved_val_split(), self.in_frames,
                self.out_frames, stride=self.stride, resize=(self.size, self.size) if self.size else None,
                channels=self.channels,
            )
        count = self.train_sequences if train else self.val_sequences
        if self.kind == "chdl-synthetic":
            from stmodels.data.synthetic import SyntheticCHDL

            return SyntheticCHDL(
                count, self.frames or self.in_frames + self.out_frames, self.size or 64, self.in_frames,
                self.out_frames, seed=self.seed, channels=self.channels or 1, stride=self.stride,
                split="train" if train else "test",
            )
        from stmodels.data.mmnist import MovingMNIST

        return MovingMNIST("train" if train else "test", count, self.in_frames, self.out_frames,
                           size=self.size or 64, seed=self.seed)


def parse_data_spec(text: str, **fields) -> DataSpec:
    """``"chdl:DIR"``, ``"chdl-synthetic"`` or ``"mmnist"`` -> a :class:`DataSpec` with ``fields`` set.

    Fields that are None are left at their defaults.
    """
    fields = {name: value for name, value in fields.items() if value is not None}
    if text.startswith("chdl:"):
        root = text[len("chdl:"):]
        if not root:
            raise ValueError("parse_data_spec: 'chdl:' needs a folder, e.g. chdl:/data/lanes")
        fields.setdefault("size", None)  # keep the folder's frame size unless asked to resize
        # Absolute, so `stmodels eval` finds the data from any working directory.
        return DataSpec(kind="chdl", root=str(Path(root).expanduser().resolve()), **fields)
    if text in ("chdl-synthetic", "mmnist"):
        return DataSpec(kind=text, **fields)
    raise ValueError(f"unknown data {text!r}: expected chdl:DIR, chdl-synthetic or mmnist")
