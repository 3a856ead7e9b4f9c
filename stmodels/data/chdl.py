"""The CHDL folder format: how a user brings real dicing-lane video (or any frame sequences).

Layout::

    root/<split>/<sequence>/<frame files>   PNG, TIFF or JPEG; 8- or 16-bit; grey or RGB
    root/<split>/<sequence>.npy             (T, H, W) or (T, C, H, W)

Frames of a sequence are ordered by the natural order of their names (``frame_2.png`` before
``frame_10.png``). Hidden entries (``.name``) and files with other suffixes are ignored. Integer
data is normalised by its dtype's range (uint8 / 255, uint16 / 65535); float data is kept as is and
must lie in [0, 1].

A manifest of the split (sequences, frame files with sizes and mtimes, shapes, dtypes) is built on
first use and cached as ``root/<split>/.stmodels_manifest.json``; sequences whose files changed are
probed again, the others reused. Items are read lazily: one item reads only its window's frames.
"""

from __future__ import annotations

import bisect
import errno
import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from stmodels._fileio import atomic_write_text
from stmodels.data import _io
from stmodels.data._io import (
    IMAGE_SUFFIXES,
    CHDLFormatError,
    natural_key,
    probe_image,
    read_image,
)

__all__ = ["CHDLFolder", "CHDLFormatError", "MANIFEST_NAME", "natural_key", "to_unit_range", "window_count"]

MANIFEST_NAME = ".stmodels_manifest.json"
_MANIFEST_VERSION = 1
_INTEGER_RANGES = {"uint8": 255.0, "uint16": 65535.0}
_NPY_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")
# ITU-R BT.601 luma, the weights Pillow's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)


def window_count(num_frames: int, window: int, stride: int) -> int:
    """Number of windows of ``window`` consecutive frames starting at 0, stride, 2 * stride, ..."""
    return 0 if num_frames < window else (num_frames - window) // stride + 1


def to_unit_range(array: np.ndarray, source: os.PathLike | str) -> np.ndarray:
    """``array`` as float32 in [0, 1]: integers divided by their dtype's maximum, floats checked.

    Raises:
        CHDLFormatError: naming ``source`` for float values outside [0, 1] (or NaN) or another dtype.
    """
    name = array.dtype.name
    if name in _INTEGER_RANGES:
        return array.astype(np.float32) / np.float32(_INTEGER_RANGES[name])
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
        if array.size and (np.isnan(array).any() or array.min() < 0.0 or array.max() > 1.0):
            found = "NaN" if np.isnan(array).any() else f"min {array.min():.4g}, max {array.max():.4g}"
            raise CHDLFormatError(
                f"{os.fspath(source)}: float data must lie in [0, 1] (found {found}); rescale it or store uint8/uint16"
            )
        return array
    raise CHDLFormatError(f"{os.fspath(source)}: unsupported dtype {name} (expected uint8, uint16 or float)")


def _stat(path: str) -> os.stat_result:
    """``os.stat`` with a CHDLFormatError naming the file for dangling symlinks, loops, no access."""
    try:
        return os.stat(path)
    except OSError as exc:
        if os.path.islink(path) and not os.path.exists(path):
            reason = "a dangling symlink (its target is missing)"
        elif getattr(exc, "errno", None) == errno.ELOOP:
            reason = "a symlink loop"
        else:
            reason = f"cannot be read ({exc.strerror or exc})"
        raise CHDLFormatError(f"{path}: {reason}") from None


def _scan_split(split_dir: Path) -> dict[str, dict]:
    """What is on disk now: sequence name -> {"kind", "path", "files": [[name, size, mtime_ns], ...]}."""
    found: dict[str, dict] = {}
    for entry in os.scandir(split_dir):
        if entry.name.startswith("."):
            continue
        entry_stat = _stat(entry.path)
        if stat.S_ISDIR(entry_stat.st_mode):
            name, kind = entry.name, "frames"
            files = []
            for f in os.scandir(entry.path):
                if f.name.startswith(".") or Path(f.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                file_stat = _stat(f.path)
                if not stat.S_ISREG(file_stat.st_mode):
                    raise CHDLFormatError(f"{f.path}: a frame name but not a regular file")
                files.append([f.name, file_stat.st_size, file_stat.st_mtime_ns])
            if not files:
                raise CHDLFormatError(
                    f"{entry.path}: sequence folder holds no frame files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            files.sort(key=lambda record: natural_key(record[0]))
        elif entry.name.lower().endswith(".npy") and stat.S_ISREG(entry_stat.st_mode):
            name, kind = entry.name[: -len(".npy")], "npy"
            files = [[entry.name, entry_stat.st_size, entry_stat.st_mtime_ns]]
        else:
            continue
        if name in found:
            raise CHDLFormatError(f"{entry.path}: two sequences named {name!r} (a folder and a .npy file)")
        found[name] = {"kind": kind, "files": files}
    return dict(sorted(found.items(), key=lambda item: natural_key(item[0])))


def _probe_frames(seq_dir: Path, files: list) -> dict:
    first = None
    dtypes: set[str] = set()
    for name, _, _ in files:
        info = probe_image(seq_dir / name)
        dtypes.add(info.dtype)
        if first is None:
            first, first_name = info, name
            continue
        if (info.height, info.width) != (first.height, first.width):
            raise CHDLFormatError(
                f"{seq_dir / name}: frame size {info.height}x{info.width} differs from {first.height}x{first.width} "
                f"of {first_name}; all frames of a sequence must have the same size"
            )
        if info.channels != first.channels:
            raise CHDLFormatError(
                f"{seq_dir / name}: {info.channels} channel(s) but {first_name} has {first.channels}; "
                "all frames of a sequence must have the same channel count"
            )
    return {
        "num_frames": len(files),
        "height": first.height,
        "width": first.width,
        "channels": first.channels,
        "dtypes": sorted(dtypes),
    }


def _probe_npy(path: Path) -> dict:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # bad header, truncated data, pickled objects
        raise CHDLFormatError(f"{path}: unreadable .npy file ({type(exc).__name__}: {exc})") from exc
    if array.dtype.name not in _NPY_DTYPES:
        raise CHDLFormatError(
            f"{path}: unsupported dtype {array.dtype.name} (expected uint8, uint16 or float in [0, 1])"
        )
    if array.ndim == 3:
        num_frames, channels, height, width = array.shape[0], 1, *array.shape[1:]
    elif array.ndim == 4:
        if array.shape[1] > 4 and array.shape[-1] in (1, 3, 4):
            raise CHDLFormatError(
                f"{path}: shape {array.shape} looks channel-last (T, H, W, C); save it as (T, C, H, W)"
            )
        num_frames, channels, height, width = array.shape
    else:
        raise CHDLFormatError(f"{path}: expected shape (T, H, W) or (T, C, H, W), got {array.shape}")
    if min(num_frames, channels, height, width) == 0:
        raise CHDLFormatError(f"{path}: empty array of shape {array.shape}")
    if array.dtype.kind == "f":
        to_unit_range(np.asarray(array), path)  # checked once here, so a bad file fails before training
    return {
        "num_frames": int(num_frames),
        "height": int(height),
        "width": int(width),
        "channels": int(channels),
        "dtypes": [array.dtype.name],
    }


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _valid_record(name, record) -> bool:
    """Whether a cached manifest record has the right types and consistent counts."""
    if not isinstance(record, dict) or record.get("name") != name or record.get("kind") not in ("frames", "npy"):
        return False
    files = record.get("files")
    if not isinstance(files, list) or not files:
        return False
    for item in files:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item[1:])):
            return False
    if not all(_positive_int(record.get(key)) for key in ("num_frames", "height", "width", "channels")):
        return False
    if record["kind"] == "frames" and (record["num_frames"] != len(files)
                                       or record["height"] * record["width"] > _io.MAX_IMAGE_PIXELS):
        return False
    if record["kind"] == "npy" and len(files) != 1:
        return False
    dtypes = record.get("dtypes")
    return isinstance(dtypes, list) and bool(dtypes) and all(isinstance(d, str) for d in dtypes)


def _load_manifest(path: Path, split: str) -> dict[str, dict]:
    """The cached records that are well-formed; anything damaged is dropped (and so probed again)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: rebuilt from the files
    if not isinstance(manifest, dict) or manifest.get("version") != _MANIFEST_VERSION \
            or manifest.get("split") != split or not isinstance(manifest.get("sequences"), list):
        return {}
    records = {}
    for record in manifest["sequences"]:
        name = record.get("name") if isinstance(record, dict) else None
        if isinstance(name, str) and _valid_record(name, record):
            records[name] = record
    return records


def _npy_header(path: Path) -> tuple[tuple[int, ...], str] | None:
    """``(shape, dtype name)`` from a .npy header, without reading the data; None if unreadable."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(handle)
        return tuple(shape), np.dtype(dtype).name
    except Exception:
        return None


def _npy_shape(record: dict) -> tuple[int, ...]:
    frames, channels, height, width = (record[k] for k in ("num_frames", "channels", "height", "width"))
    return (frames, channels, height, width)


class CHDLFolder(Dataset):
    """Windows of consecutive frames from a CHDL-format folder.

    Item ``i`` is ``(inputs, targets)``: ``inputs: (in_frames, C, H, W)`` and
    ``targets: (out_frames, C, H, W)``, float32 in [0, 1]. Windows run over sequences in natural
    order of their names, and within a sequence start at frames ``0, stride, 2 * stride, ...``.

    Args:
        root: the dataset folder (holding one folder per split).
        split: the split folder's name (``"train"``, ``"test"``, ...).
        in_frames, out_frames: frames given to and predicted by the model; a window is their sum.
            ``out_frames=0`` gives windows of context only (for prediction without ground truth).
        stride: frames between the starts of consecutive windows of a sequence.
        resize: ``(H, W)`` to resize every frame to (bilinear, antialiased), or None to keep sizes.
        channels: 1 or 3 to convert (RGB -> grey by BT.601 luma, grey -> RGB by repetition), or None
            to keep the files' channels.

    All sequences of a split must give the same ``(C, H, W)`` after ``resize`` / ``channels``, so
    items can be batched. Errors name the file or folder: unreadable images, mixed sizes or channel
    counts within a sequence, a sequence shorter than one window, an empty or missing split (all
    found when the dataset is opened, from the files' headers); an image truncated after its header
    is found when its frame is first read.

    Attributes:
        sequences: sequence names in order.
        frame_shape: ``(C, H, W)`` of every frame of every item.
        manifest: sequence name -> record (kind, files with sizes and mtimes, num_frames, height,
            width, channels, dtypes), as cached on disk.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        in_frames: int = 10,
        out_frames: int = 10,
        stride: int = 1,
        resize: tuple[int, int] | None = None,
        channels: int | None = None,
    ) -> None:
        if in_frames < 1 or out_frames < 0:
            raise ValueError(f"CHDLFolder: need in_frames >= 1 and out_frames >= 0, got {in_frames}, {out_frames}")
        if stride < 1:
            raise ValueError(f"CHDLFolder: stride must be >= 1, got {stride}")
        if resize is not None:
            resize = tuple(int(s) for s in resize)
            if len(resize) != 2 or min(resize) < 1:
                raise ValueError(f"CHDLFolder: resize must be (H, W) with positive sizes, got {resize}")
        if channels not in (None, 1, 3):
            raise ValueError(f"CHDLFolder: channels must be None, 1 or 3, got {channels}")
        self.root = Path(root)
        self.split = split
        self.in_frames, self.out_frames, self.stride = in_frames, out_frames, stride
        self.resize, self.channels = resize, channels
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            present = (
                sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
                if self.root.is_dir()
                else []
            )
            raise FileNotFoundError(
                f"{self.split_dir}: split folder {split!r} not found"
                + (f" (root holds: {', '.join(present)})" if present else f" ({self.root} is missing or empty)")
            )
        self.manifest = self._build_manifest()
        if not self.manifest:
            raise CHDLFormatError(
                f"{self.split_dir}: split {split!r} is empty; expected sequence folders of frames or .npy files"
            )
        self.sequences = list(self.manifest)
        self.frame_shape = self._check_sequences()
        counts = [window_count(r["num_frames"], self.window, stride) for r in self.manifest.values()]
        self._offsets = np.cumsum([0] + counts).tolist()

    @property
    def window(self) -> int:
        """Frames per item: ``in_frames + out_frames``."""
        return self.in_frames + self.out_frames

    @property
    def manifest_path(self) -> Path:
        return self.split_dir / MANIFEST_NAME

    def _build_manifest(self) -> dict[str, dict]:
        cached = _load_manifest(self.manifest_path, self.split)
        records: dict[str, dict] = {}
        for name, found in _scan_split(self.split_dir).items():
            old = cached.get(name)
            if old is not None and old.get("kind") == found["kind"] and old.get("files") == found["files"]:
                if old["kind"] == "frames" or self._npy_matches(self.split_dir / found["files"][0][0], old):
                    records[name] = old
                    continue
            if found["kind"] == "frames":
                shape = _probe_frames(self.split_dir / name, found["files"])
            else:
                shape = _probe_npy(self.split_dir / found["files"][0][0])
            records[name] = {"name": name, "kind": found["kind"], "files": found["files"], **shape}
        if records != cached or list(records) != list(cached):
            text = json.dumps(
                {"version": _MANIFEST_VERSION, "split": self.split, "sequences": list(records.values())}, indent=1
            )
            try:
                atomic_write_text(self.manifest_path, text)
            except OSError as exc:  # a read-only dataset still works; it just probes again next time
                warnings.warn(f"{self.manifest_path}: cannot cache the manifest ({exc})", stacklevel=3)
        return records

    @staticmethod
    def _npy_matches(path: Path, record: dict) -> bool:
        header = _npy_header(path)
        if header is None:
            return False
        shape, dtype = header
        shape = (shape[0], 1, *shape[1:]) if len(shape) == 3 else shape
        return shape == _npy_shape(record) and [dtype] == record["dtypes"]

    def _source(self, record: dict) -> Path:
        return self.split_dir / (record["name"] if record["kind"] == "frames" else record["files"][0][0])

    def _check_sequences(self) -> tuple[int, int, int]:
        shapes: dict[tuple[int, int, int], str] = {}
        for name, record in self.manifest.items():
            source = self._source(record)
            if record["num_frames"] < self.window:
                raise CHDLFormatError(
                    f"{source}: sequence {name!r} has {record['num_frames']} frames, fewer than one window "
                    f"(in_frames + out_frames = {self.window})"
                )
            native = record["channels"]
            if self.channels is not None and native != self.channels and {native, self.channels} != {1, 3}:
                raise CHDLFormatError(f"{source}: cannot convert {native} channels to {self.channels}")
            shape = (
                self.channels or native,
                *(self.resize or (record["height"], record["width"])),
            )
            shapes.setdefault(shape, name)
        if len(shapes) > 1:
            listed = "; ".join(f"{shape} in {name!r}" for shape, name in shapes.items())
            raise CHDLFormatError(
                f"{self.split_dir}: sequences give different frame shapes (C, H, W): {listed}. "
                "Pass resize=(H, W) and/or channels= so that items can be batched"
            )
        return next(iter(shapes))

    def __len__(self) -> int:
        return self._offsets[-1]

    def locate(self, index: int) -> tuple[str, int]:
        """``(sequence name, first frame)`` of item ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"CHDLFolder: index out of range for {len(self)} windows")
        position = bisect.bisect_right(self._offsets, index) - 1
        return self.sequences[position], (index - self._offsets[position]) * self.stride

    def read_frames(self, name: str, start: int, count: int) -> np.ndarray:
        """Frames ``start .. start + count - 1`` of sequence ``name`` as ``(count, C, H, W)`` float32 in
        [0, 1], after the ``channels`` and ``resize`` conversions."""
        record = self.manifest[name]
        if not 0 <= start <= start + count <= record["num_frames"]:
            raise IndexError(f"{self._source(record)}: frames {start}..{start + count - 1} out of range")
        expected = (record["channels"], record["height"], record["width"])
        if record["kind"] == "npy":
            path = self._source(record)
            _, size, mtime = record["files"][0]
            try:
                now = os.stat(path)
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise CHDLFormatError(f"{path}: unreadable .npy file ({type(exc).__name__}: {exc})") from exc
            shape = (array.shape[0], 1, *array.shape[1:]) if array.ndim == 3 else tuple(array.shape)
            if (now.st_size, now.st_mtime_ns) != (size, mtime) or shape != _npy_shape(record) \
                    or array.dtype.name not in record["dtypes"]:
                raise CHDLFormatError(f"{path}: the file changed since the dataset was opened (now shape "
                                      f"{tuple(array.shape)} {array.dtype.name}); open the dataset again")
            window = np.array(array[start : start + count])
            frames = to_unit_range(window if window.ndim == 4 else window[:, None], path)
        else:
            frames = np.empty((count, *expected), np.float32)
            for slot, (file_name, _, _) in enumerate(record["files"][start : start + count]):
                path = self.split_dir / name / file_name
                frame = read_image(path)
                if frame.shape != expected:
                    raise CHDLFormatError(
                        f"{path}: decoded shape (C, H, W) {frame.shape} differs from {expected} in the manifest; "
                        "the file changed since the dataset was opened"
                    )
                frames[slot] = to_unit_range(frame, path)
        return self._convert(frames)

    def _convert(self, frames: np.ndarray) -> np.ndarray:
        # numpy wherever possible: in the main process torch's intra-op threads cost more than they
        # save on frames this small.
        if self.channels == 1 and frames.shape[1] == 3:
            frames = np.tensordot(np.asarray(_LUMA, np.float32), frames, axes=([0], [1]))[:, None]
        elif self.channels == 3 and frames.shape[1] == 1:
            frames = np.repeat(frames, 3, axis=1)
        if self.resize is not None and tuple(frames.shape[-2:]) != self.resize:
            resized = F.interpolate(
                torch.from_numpy(frames), size=self.resize, mode="bilinear", antialias=True, align_corners=False
            )
            frames = resized.numpy()
        # Luma weights and the antialiasing filter can overshoot [0, 1] by rounding; keep the promise.
        return np.ascontiguousarray(np.clip(frames, 0.0, 1.0, out=frames))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name, start = self.locate(index)
        frames = self.read_frames(name, start, self.window)
        return torch.from_numpy(frames[: self.in_frames]), torch.from_numpy(frames[self.in_frames :])

    def __repr__(self) -> str:
        return (
            f"CHDLFolder(root={str(self.root)!r}, split={self.split!r}, sequences={len(self.sequences)}, "
            f"windows={len(self)}, frame_shape={self.frame_shape}, in_frames={self.in_frames}, "
            f"out_frames={self.out_frames}, stride={self.stride})"
        )
