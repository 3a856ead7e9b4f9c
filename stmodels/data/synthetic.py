"""Synthetic CHDL: deterministic dicing-lane video, the default data (no download needed).

Each sequence shows a wafer under a fixed camera: a grid of dies (seal ring, bond pads, blocks of
fine periodic circuit texture at a 3-5 pixel period) separated by dicing streets. The wafer
translates at a per-sequence velocity (0.25-1.5 pixels per frame along the cut street, up to 0.15
across it) with small jitter. A saw kerf (dark groove with bright edges) advances along one street;
chipping notches appear along its edges and persist; a few debris particles drift through;
illumination drifts slowly; Gaussian sensor noise (sigma 0.006-0.02) is added. The street runs
horizontally or vertically and the cut goes either way, at random per sequence.
Fine texture and small defects are what a blurry predictor loses.

Rendering is analytic: every pattern is the exact box-filtered coverage of a pixel by axis-aligned
shapes, evaluated at the wafer coordinates under that pixel, so sub-pixel motion is smooth and
nothing aliases. Most layers are separable (rows x columns), which keeps a 20-frame 64 x 64
sequence at a few milliseconds of numpy. A sequence depends only on ``(seed, split, index)``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from stmodels.data._io import encode_png

__all__ = ["SyntheticCHDL", "make_chdl_folder", "render_chdl_sequence"]

# Per-material tints for RGB output (grey output uses the base level alone): bare silicon in the
# street, bluish passivated die, copper lines, gold pads, bright seal ring, neutral kerf and debris.
_TINTS = {
    "street": (1.0, 1.0, 1.05),
    "die": (0.85, 0.95, 1.2),
    "line": (1.15, 0.9, 0.65),
    "pad": (1.1, 1.0, 0.7),
    "ring": (1.05, 1.0, 0.9),
    "neutral": (1.0, 1.0, 1.0),
}


def _split_code(split: str) -> int:
    # crc32, not hash(): the same on every run and every machine.
    return zlib.crc32(split.encode("utf-8"))


def _band(z: np.ndarray, period: float, lo: float, hi: float) -> np.ndarray:
    """Fraction of the pixel ``[z - 1/2, z + 1/2]`` covered by ``{z : z mod period in [lo, hi)}``.

    The exact box filter of a periodic stripe pattern (``0 <= lo <= hi <= period``), for any real
    ``z``: the measure of the set below ``w`` is ``floor(w / period) * (hi - lo) + clip(w mod period - lo)``.
    """

    def measure_below(w):
        turns = np.floor(w / period)
        return turns * (hi - lo) + np.clip(w - turns * period - lo, 0.0, hi - lo)

    return measure_below(z + 0.5) - measure_below(z - 0.5)


def _colour(level: float, material: str, channels: int) -> np.ndarray:
    """A material's colour as ``(1, C, 1, 1)`` float32."""
    tint = np.asarray(_TINTS[material] if channels == 3 else (1.0,), np.float64)
    return np.clip(level * tint, 0.0, 1.0).astype(np.float32).reshape(1, channels, 1, 1)


def _blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: ``image = image + (colour - image) * alpha``; alpha ``(T, H, W)`` or separable."""
    image += (colour - image) * alpha[:, None].astype(np.float32)


def render_chdl_sequence(
    index: int, frames: int = 20, size: int = 64, channels: int = 1, seed: int = 0, split: str = "train"
) -> np.ndarray:
    """Render synthetic dicing-lane sequence ``index`` of ``(seed, split)``.

    Returns:
        ``(frames, channels, size, size)`` float32 in [0, 1]; the same arrays on every call.
    """
    if channels not in (1, 3):
        raise ValueError(f"render_chdl_sequence: channels must be 1 or 3, got {channels}")
    if frames < 1 or size < 8 or index < 0 or seed < 0:
        raise ValueError(
            "render_chdl_sequence: need frames >= 1, size >= 8, index >= 0, seed >= 0; "
            f"got {frames}, {size}, {index}, {seed}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, _split_code(split), index]))
    T = frames
    t = np.arange(T, dtype=np.float64)
    y = np.arange(size, dtype=np.float64)
    x = np.arange(size, dtype=np.float64)

    # Wafer layout: streets occupy [0, street) of every pitch, in both directions.
    street = rng.uniform(9.0, 12.0)
    pitch = max(street + 30.0, rng.uniform(0.65, 0.95) * size)

    # Camera motion: wafer coordinates under pixel (y, x) at frame t are (y + oy[t], x + ox[t]).
    speed = rng.uniform(0.25, 1.5) * rng.choice([-1.0, 1.0])
    drift = rng.uniform(-0.15, 0.15)
    jitter = rng.uniform(0.03, 0.2)
    ox = rng.uniform(0.0, pitch) + speed * t + jitter * rng.standard_normal(T)
    street_row = rng.uniform(0.35, 0.65) * size  # image row of the cut street's centre at t = 0
    oy = street / 2 - street_row + drift * t + jitter * rng.standard_normal(T)
    u = y[None, :] + oy[:, None]  # (T, H) wafer row coordinate of each image row
    v = x[None, :] + ox[:, None]  # (T, W) wafer column coordinate of each image column

    # Die interior: seal ring, bond pads along two edges, a core of three texture blocks.
    ring_inset, ring_width = rng.uniform(0.8, 1.5), rng.uniform(1.0, 1.6)
    pad_size, pad_period = rng.uniform(2.2, 3.2), rng.uniform(4.5, 6.5)
    pad_inset = ring_inset + ring_width + rng.uniform(0.8, 1.5)
    core_inset = pad_inset + pad_size + rng.uniform(1.0, 2.0)
    lo, hi = street + core_inset, pitch - core_inset  # core span within a pitch (mod pitch)
    split_v = lo + rng.uniform(0.35, 0.65) * (hi - lo)
    split_u = lo + rng.uniform(0.35, 0.65) * (hi - lo)

    def stripes(z):  # lines 1 .. period/2 wide at a 3-5 pixel period
        period = rng.uniform(3.0, 5.0)
        return _band(z, period, 0.0, rng.uniform(1.0, 0.5 * period))

    def texture(kind):  # a block's pattern as (T, H, W), from one of four circuit motifs
        rows, cols = stripes(u), stripes(v)
        if kind == 0:
            return np.broadcast_to(rows[:, :, None], (T, size, size))
        if kind == 1:
            return np.broadcast_to(cols[:, None, :], (T, size, size))
        if kind == 2:
            return rows[:, :, None] * cols[:, None, :]  # via / contact array
        return np.clip(rows[:, :, None] + cols[:, None, :], 0.0, 1.0)  # mesh

    kinds = rng.permutation(4)[:3]
    left_v, right_v = _band(v, pitch, lo, split_v - 0.5), _band(v, pitch, split_v + 0.5, hi)
    top_u, bottom_u = _band(u, pitch, lo, split_u - 0.5), _band(u, pitch, split_u + 0.5, hi)
    core_u = _band(u, pitch, lo, hi)
    circuit = (
        (core_u[:, :, None] * left_v[:, None, :]) * texture(kinds[0])
        + (top_u[:, :, None] * right_v[:, None, :]) * texture(kinds[1])
        + (bottom_u[:, :, None] * right_v[:, None, :]) * texture(kinds[2])
    )

    def ring_and_span(z):
        inner, outer = street + ring_inset, pitch - ring_inset
        ring = _band(z, pitch, inner, inner + ring_width) + _band(z, pitch, outer - ring_width, outer)
        return ring, _band(z, pitch, inner, outer)

    ring_u, span_u = ring_and_span(u)
    ring_v, span_v = ring_and_span(v)
    ring = np.clip(ring_u[:, :, None] * span_v[:, None, :] + span_u[:, :, None] * ring_v[:, None, :], 0.0, 1.0)

    pad_lo, pad_hi = street + pad_inset, street + pad_inset + pad_size
    pad_phase = rng.uniform(0.0, pad_period)
    pad_span = (pad_hi + 1.0, pitch - pad_inset - pad_size - 1.0)
    pad_line_u, pad_line_v = _band(u, pitch, pad_lo, pad_hi), _band(v, pitch, pad_lo, pad_hi)
    pad_run_u = _band(u - pad_phase, pad_period, 0.0, pad_size) * _band(u, pitch, *pad_span)
    pad_run_v = _band(v - pad_phase, pad_period, 0.0, pad_size) * _band(v, pitch, *pad_span)
    pads = pad_line_u[:, :, None] * pad_run_v[:, None, :] + pad_run_u[:, :, None] * pad_line_v[:, None, :]
    pads = np.clip(pads, 0.0, 1.0)

    die = (1.0 - _band(u, pitch, 0.0, street))[:, :, None] * (1.0 - _band(v, pitch, 0.0, street))[:, None, :]

    # Saw kerf in the street at wafer rows [0, street): cut where v < front[t]. The blade moves in
    # the image; the running maximum keeps what was cut cut, whichever way the wafer moves.
    kerf_half = rng.uniform(1.5, 2.5)
    kerf_centre = street / 2 + rng.uniform(-0.5, 0.5)
    margin = kerf_centre - kerf_half - 0.8  # room for chips before the die edge
    blade = rng.uniform(0.2, 0.55) * size + rng.uniform(0.3, 1.2) * t
    front = np.maximum.accumulate(blade + ox)

    # Chipping notches along both kerf edges; a notch appears once the front has passed it (now or
    # after a random delay) and stays.
    reach_lo, reach_hi = front[0] - size - abs(speed) * T - 8.0, front[-1] + 4.0
    num_chips = rng.poisson((reach_hi - reach_lo) / rng.uniform(5.0, 9.0))
    chip_v = rng.uniform(reach_lo, reach_hi, num_chips)
    chip_side = rng.integers(0, 2, num_chips)
    chip_depth = rng.uniform(0.7, max(0.8, min(2.5, margin)), num_chips)
    chip_half = rng.uniform(0.8, 2.5, num_chips)
    delays = np.where(rng.random(num_chips) < 0.5, 0, rng.integers(1, T + 1, num_chips))
    appear = np.searchsorted(front, chip_v + chip_half) + delays
    active = t[:, None] >= appear[None, :]  # (T, chips)
    bump = np.sqrt(np.clip(1.0 - ((v[:, :, None] - chip_v) / chip_half) ** 2, 0.0, 1.0)) * chip_depth
    bump = bump * active[:, None, :]  # (T, W, chips)
    top_chips = np.where(chip_side == 0, bump, 0.0).max(axis=2, initial=0.0)
    bottom_chips = np.where(chip_side == 1, bump, 0.0).max(axis=2, initial=0.0)
    edge_top = (kerf_centre - kerf_half - top_chips)[:, None, :]  # (T, 1, W)
    edge_bottom = (kerf_centre + kerf_half + bottom_chips)[:, None, :]
    uu = u[:, :, None]
    cut = np.clip(front[:, None] - (v - 0.5), 0.0, 1.0)[:, None, :]  # (T, 1, W)
    kerf = np.clip(np.minimum(uu + 0.5, edge_bottom) - np.maximum(uu - 0.5, edge_top), 0.0, 1.0) * cut
    ridge_width = rng.uniform(0.45, 0.7)
    ridge = (
        np.exp(-(((uu - edge_top + 0.6) / ridge_width) ** 2)) + np.exp(-(((uu - edge_bottom - 0.6) / ridge_width) ** 2))
    ) * cut

    # Materials and compositing, back to front.
    image = np.empty((T, channels, size, size), np.float32)
    image[:] = _colour(rng.uniform(0.22, 0.32), "street", channels)
    _blend(image, _colour(rng.uniform(0.36, 0.46), "die", channels), die)
    _blend(image, _colour(rng.uniform(0.62, 0.76), "line", channels), circuit * die)
    _blend(image, _colour(rng.uniform(0.8, 0.92), "pad", channels), pads * die)
    _blend(image, _colour(rng.uniform(0.66, 0.8), "ring", channels), ring * die)
    _blend(image, _colour(rng.uniform(0.03, 0.1), "neutral", channels), kerf)
    image += (rng.uniform(0.3, 0.55) * ridge)[:, None].astype(np.float32)

    # Debris: small blobs drifting in image space (carried by coolant), each for a while.
    for _ in range(min(int(rng.poisson(1.2)), 4)):
        start, life = rng.integers(-T // 2, T), rng.integers(max(2, T // 4), T + 2)
        centre, velocity = rng.uniform(0.0, size, 2), rng.uniform(-1.5, 1.5, 2)
        sigma, peak = rng.uniform(0.6, 1.5), rng.uniform(0.7, 1.0)
        level = rng.choice([rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.12)])
        shown = (t >= start) & (t < start + life)
        cy, cx = centre[0] + velocity[0] * (t - start), centre[1] + velocity[1] * (t - start)
        blob_y = np.exp(-((y[None, :] - cy[:, None]) ** 2) / (2 * sigma**2)) * (peak * shown)[:, None]
        blob_x = np.exp(-((x[None, :] - cx[:, None]) ** 2) / (2 * sigma**2))
        _blend(image, _colour(level, "neutral", channels), blob_y[:, :, None] * blob_x[:, None, :])

    # Slow illumination drift: a global gain oscillating over tens of frames and a tilting gradient.
    level, swing = rng.uniform(0.92, 1.05), rng.uniform(0.02, 0.06)
    gain = level * (1 + swing * np.sin(2 * np.pi * t / rng.uniform(40, 120) + rng.uniform(0, 2 * np.pi)))
    tilt_y = rng.uniform(-0.08, 0.08) + rng.uniform(-0.04, 0.04) * t / max(T, 1)
    tilt_x = rng.uniform(-0.08, 0.08) + rng.uniform(-0.04, 0.04) * t / max(T, 1)
    across_y, across_x = (y / size - 0.5)[None, :, None], (x / size - 0.5)[None, None, :]
    light = gain[:, None, None] * (1 + tilt_y[:, None, None] * across_y + tilt_x[:, None, None] * across_x)
    image *= light[:, None].astype(np.float32)

    # The scene above cuts left to right along a horizontal street; any of the four orientations
    # (street horizontal or vertical, cut in either direction) is as likely.
    if rng.random() < 0.5:
        image = image[..., ::-1]
    if rng.random() < 0.5:
        image = image.transpose(0, 1, 3, 2)
    image = np.ascontiguousarray(image)

    noise = rng.uniform(0.006, 0.02)
    image += np.float32(noise) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0.0, 1.0, out=image)


class SyntheticCHDL(Dataset):
    """Synthetic dicing-lane video windows, generated on the fly from ``(seed, split, index)``.

    Item ``i`` is ``(inputs, targets)``: ``inputs: (in_frames, C, size, size)``,
    ``targets: (out_frames, C, size, size)``, float32 in [0, 1]. Sequence ``s`` has ``frames`` frames;
    its windows start at ``0, stride, 2 * stride, ...`` (one window when ``frames == in + out``), in
    the same order :class:`~stmodels.data.CHDLFolder` uses on a folder written by
    :func:`make_chdl_folder`. Nothing is stored; the same arguments always give the same items.

    Args:
        num_sequences: sequences in the dataset.
        frames: frames rendered per sequence (at least ``in_frames + out_frames``).
        size: frame height and width in pixels.
        in_frames, out_frames: frames given to and predicted by the model.
        seed: dataset seed (non-negative); different seeds give independent sequences.
        channels: 1 (grey) or 3 (RGB with material tints).
        stride: frames between consecutive windows of a sequence.
        split: name mixed into the seed, so ``"train"`` and ``"test"`` never share sequences.
    """

    def __init__(
        self,
        num_sequences: int = 1000,
        frames: int = 20,
        size: int = 64,
        in_frames: int = 10,
        out_frames: int = 10,
        seed: int = 0,
        channels: int = 1,
        *,
        stride: int = 1,
        split: str = "train",
    ) -> None:
        if num_sequences < 1 or in_frames < 1 or out_frames < 0 or stride < 1:
            raise ValueError(
                "SyntheticCHDL: need num_sequences >= 1, in_frames >= 1, out_frames >= 0, stride >= 1; got "
                f"{num_sequences}, {in_frames}, {out_frames}, {stride}"
            )
        if frames < in_frames + out_frames:
            raise ValueError(f"SyntheticCHDL: frames={frames} is shorter than one window ({in_frames} + {out_frames})")
        if channels not in (1, 3) or seed < 0 or size < 8:
            raise ValueError(
                f"SyntheticCHDL: need channels 1 or 3, seed >= 0, size >= 8; got {channels}, {seed}, {size}"
            )
        self.num_sequences, self.frames, self.size = num_sequences, frames, size
        self.in_frames, self.out_frames, self.seed, self.channels = in_frames, out_frames, seed, channels
        self.stride, self.split = stride, split
        self.windows_per_sequence = (frames - in_frames - out_frames) // stride + 1
        self._last: tuple[int, np.ndarray] | None = None  # consecutive windows share a sequence

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def __len__(self) -> int:
        return self.num_sequences * self.windows_per_sequence

    def sequence(self, index: int) -> np.ndarray:
        """All frames of sequence ``index``: ``(frames, C, size, size)`` float32 in [0, 1]."""
        if not 0 <= index < self.num_sequences:
            raise IndexError(f"SyntheticCHDL: sequence {index} out of range for {self.num_sequences}")
        if self._last is None or self._last[0] != index:
            array = render_chdl_sequence(index, self.frames, self.size, self.channels, self.seed, self.split)
            self._last = (index, array)
        return self._last[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"SyntheticCHDL: index out of range for {len(self)} windows")
        sequence, window = divmod(index, self.windows_per_sequence)
        start = window * self.stride
        frames = self.sequence(sequence)
        middle = start + self.in_frames
        inputs = torch.from_numpy(frames[start:middle].copy())
        targets = torch.from_numpy(frames[middle : middle + self.out_frames].copy())
        return inputs, targets

    def __repr__(self) -> str:
        return (
            f"SyntheticCHDL(num_sequences={self.num_sequences}, frames={self.frames}, size={self.size}, "
            f"in_frames={self.in_frames}, out_frames={self.out_frames}, seed={self.seed}, "
            f"channels={self.channels}, stride={self.stride}, split={self.split!r})"
        )


MARKER_NAME = "synthetic_chdl.json"
_GENERATOR = "stmodels.data.render_chdl_sequence"


def _check_replaceable(out_dir: Path) -> None:
    """Raise unless ``out_dir`` is a dataset written by :func:`make_chdl_folder`, safe to replace."""
    from stmodels.errors import UserValueError

    here = Path.cwd().resolve()
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise UserValueError(f"{out_dir}: not a folder written by `make-chdl`; refusing to replace it")
    resolved = out_dir.resolve()
    if resolved == here or resolved in here.parents:
        raise UserValueError(f"{out_dir}: is the working directory or holds it; refusing to replace it")
    marker = out_dir / MARKER_NAME
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserValueError(f"{out_dir}: has no readable {MARKER_NAME} marker, so it is not a dataset written "
                             "by `make-chdl`; refusing to replace it (remove or rename it yourself)") from exc
    splits = info.get("splits") if isinstance(info, dict) else None
    if not isinstance(splits, dict) or info.get("generator") != _GENERATOR:
        raise UserValueError(f"{marker}: not a `make-chdl` marker; refusing to replace {out_dir}")
    # Only what make_chdl_folder writes (and the loader's manifest caches) may be replaced.
    for entry in os.scandir(out_dir):
        if entry.name == MARKER_NAME:
            continue
        if entry.name not in splits or not entry.is_dir(follow_symlinks=False):
            raise UserValueError(f"{entry.path}: not part of the generated dataset; refusing to replace {out_dir}")
        for sequence in os.scandir(entry.path):
            if sequence.name.startswith(".stmodels_manifest"):
                continue
            if not (sequence.name.startswith("seq_") and sequence.is_dir(follow_symlinks=False)):
                raise UserValueError(f"{sequence.path}: not part of the generated dataset; refusing to replace "
                                     f"{out_dir}")
            for frame in os.scandir(sequence.path):
                if not (frame.name.startswith("frame_") and frame.name.endswith(".png")
                        and frame.is_file(follow_symlinks=False)):
                    raise UserValueError(f"{frame.path}: not part of the generated dataset; refusing to replace "
                                         f"{out_dir}")


def make_chdl_folder(
    out_dir: str | os.PathLike,
    num_sequences: int = 100,
    frames: int = 20,
    size: int = 64,
    seed: int = 0,
    splits: dict[str, int] | None = None,
    *,
    channels: int = 1,
    bit_depth: int = 8,
    overwrite: bool = False,
) -> Path:
    """Write synthetic CHDL sequences to ``out_dir`` in the CHDL folder format (PNG frames).

    Layout: ``out_dir/<split>/seq_00000/frame_0000.png`` ..., plus ``out_dir/synthetic_chdl.json``
    recording the arguments. Sequence ``i`` of split ``s`` is ``render_chdl_sequence(i, ...,
    seed=seed, split=s)``, so ``CHDLFolder(out_dir, s)`` reads back what
    ``SyntheticCHDL(..., seed=seed, split=s)`` yields, up to quantisation to ``bit_depth`` bits.

    The folder is built under a temporary name next to ``out_dir`` and renamed into place, so an
    interrupted run never leaves a half-written dataset.

    Args:
        out_dir: folder to create.
        num_sequences: training sequences when ``splits`` is None (then the test split gets a fifth
            as many, at least one).
        frames, size, seed, channels: as in :class:`SyntheticCHDL`.
        splits: split name -> number of sequences, e.g. ``{"train": 80, "test": 20}``; overrides
            ``num_sequences``.
        bit_depth: 8 or 16 bits per PNG sample.
        overwrite: replace an existing ``out_dir`` that is a dataset written by this function
            (it holds the ``synthetic_chdl.json`` marker and nothing but its splits and caches);
            any other folder, and the working directory or one above it, is refused. The new
            dataset is swapped in by renames, so the old one stays whole until the new one is.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"make_chdl_folder: bit_depth must be 8 or 16, got {bit_depth}")
    if splits is None:
        splits = {"train": num_sequences, "test": max(1, num_sequences // 5)}
    if not splits or any(int(n) < 1 for n in splits.values()):
        raise ValueError(f"make_chdl_folder: every split needs at least one sequence, got {splits}")
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.exists() or out_dir.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True, or --overwrite on the command line, to replace it)")
        _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    dtype, scale = (np.uint8, 255.0) if bit_depth == 8 else (np.uint16, 65535.0)
    digits = max(4, len(str(frames - 1)))
    # A unique hidden sibling (mkdir honours the umask, unlike mkdtemp's 0700).
    staging = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        for split, count in splits.items():
            for index in range(int(count)):
                sequence = render_chdl_sequence(index, frames, size, channels, seed, split)
                quantised = np.round(sequence * scale).astype(dtype).transpose(0, 2, 3, 1)  # (T, H, W, C)
                folder = staging / split / f"seq_{index:05d}"
                folder.mkdir(parents=True)
                for step, frame in enumerate(quantised):
                    (folder / f"frame_{step:0{digits}d}.png").write_bytes(encode_png(frame))
        info = {
            "generator": _GENERATOR,
            "frames": frames,
            "size": size,
            "seed": seed,
            "channels": channels,
            "bit_depth": bit_depth,
            "splits": {name: int(n) for name, n in splits.items()},
        }
        (staging / MARKER_NAME).write_text(json.dumps(info, indent=1), encoding="utf-8")
        if out_dir.exists():  # overwrite: move the old dataset aside so the swap is two renames
            retired = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old"
            os.rename(out_dir, retired)
            try:
                os.rename(staging, out_dir)
            except BaseException:
                os.rename(retired, out_dir)  # put the old dataset back
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
