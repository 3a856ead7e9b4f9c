"""Frame-file I/O for the CHDL folder format: probe headers, read frames, write PNGs, atomic writes.

Every reader returns frames as ``(C, H, W)`` arrays in the file's own dtype (``uint8``, ``uint16`` or
``float32``); normalising to [0, 1] is the dataset's job. Alpha channels are dropped: grey + alpha
gives one channel, RGB(A) and palette images three. Every failure is a :class:`CHDLFormatError`
whose message starts with the offending file.

Pillow reads PNG and JPEG; tifffile reads TIFF. Both are imported on first use, so importing
:mod:`stmodels.data` needs neither.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CHDLFormatError",
    "FrameInfo",
    "IMAGE_SUFFIXES",
    "natural_key",
    "probe_image",
    "read_image",
    "encode_png",
    "set_max_image_pixels",
]

# Frames larger than this (height x width) are refused from their header, before any pixel memory
# is allocated: a damaged or hostile header must not exhaust memory. STMODELS_MAX_IMAGE_PIXELS or
# set_max_image_pixels() changes it.
MAX_IMAGE_PIXELS = int(os.environ.get("STMODELS_MAX_IMAGE_PIXELS", 1 << 26))


def set_max_image_pixels(pixels: int) -> None:
    """Refuse frame files of more than ``pixels`` (height x width) pixels (default 2**26)."""
    global MAX_IMAGE_PIXELS
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
        raise ValueError(f"set_max_image_pixels: expected a positive integer, got {pixels!r}")
    MAX_IMAGE_PIXELS = pixels


def _check_pixels(path, height: int, width: int) -> None:
    if int(height) * int(width) > MAX_IMAGE_PIXELS:
        raise _fail(path, f"image of {width}x{height} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels "
                          "(a damaged header, or raise it with STMODELS_MAX_IMAGE_PIXELS)")

# Suffix (lower case) -> reader. Files with other suffixes inside a sequence folder are ignored.
IMAGE_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg", ".jpeg": "jpeg"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels once alpha is dropped (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}


class CHDLFormatError(ValueError):
    """Bad input in a CHDL folder (or a frame file); the message names the file."""


@dataclass(frozen=True)
class FrameInfo:
    """What a frame file holds, read from its header: ``(height, width)``, channels, dtype name."""

    height: int
    width: int
    channels: int
    dtype: str


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``frame_2.png`` before ``frame_10.png``.

    Text parts compare case-insensitively; the name itself breaks ties so the order is total.
    """
    parts = re.split(r"(\d+)", name)
    key = tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts if part)
    return key + ((2, 0, name),)


def _fail(path: os.PathLike | str, message: str) -> CHDLFormatError:
    return CHDLFormatError(f"{os.fspath(path)}: {message}")


def _require_pillow(path):
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow ships with scikit-image in the dev env
        raise ImportError(f"{os.fspath(path)}: reading PNG/JPEG frames needs Pillow (pip install pillow)") from exc
    return Image


def _require_tifffile(path):
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover
        raise ImportError(f"{os.fspath(path)}: reading TIFF frames needs tifffile (pip install tifffile)") from exc
    return tifffile


def _png_header(path) -> tuple[int, int, int, int]:
    """``(width, height, bit_depth, colour_type)`` from the IHDR chunk, without decoding pixels."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(33)
    except OSError as exc:
        raise _fail(path, f"cannot open ({exc})") from exc
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise _fail(path, "not a readable PNG (bad signature or IHDR chunk; truncated or not a PNG)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in _PNG_CHANNELS or width == 0 or height == 0:
        raise _fail(path, f"unsupported PNG header (colour type {colour}, size {width}x{height})")
    _check_pixels(path, height, width)
    if depth == 16 and colour == 4:
        # Pillow has no 16-bit grey+alpha unpacker; it would silently keep 8 bits.
        raise _fail(path, "16-bit grey+alpha PNGs are not supported; save the frames without alpha")
    return width, height, depth, colour


# TIFF photometric interpretations read as stored: 0 MINISWHITE (inverted), 1 MINISBLACK, 2 RGB,
# 3 PALETTE (expanded through its colour map to 16-bit RGB).
_TIFF_PHOTOMETRICS = {0: "min-is-white", 1: "min-is-black", 2: "RGB", 3: "palette"}
_TIFF_PHOTOMETRIC_NAMES = {4: "transparency mask", 5: "CMYK (separated)", 6: "YCbCr", 8: "CIELab", 9: "ICCLab",
                           10: "ITULab", 32844: "LogL", 32845: "LogLuv", 32803: "colour filter array (raw)"}


def _tiff_photometric(path, page) -> int:
    photometric = int(page.photometric)
    if photometric not in _TIFF_PHOTOMETRICS:
        name = _TIFF_PHOTOMETRIC_NAMES.get(photometric, f"photometric {photometric}")
        raise _fail(path, f"{name} TIFFs are not supported; convert the frames to grey or RGB")
    if photometric == 3 and getattr(page, "colormap", None) is None:
        raise _fail(path, "palette TIFF without a colour map")
    return photometric


def _tiff_layout(path, page) -> tuple[int, int, int, int | None]:
    """``(height, width, channels kept, samples axis or None)`` of a TIFF page."""
    axes, shape = page.axes, page.shape
    if set(axes) - set("YXS") or "Y" not in axes or "X" not in axes:
        raise _fail(path, f"unsupported TIFF layout (axes {axes!r}, shape {shape})")
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    _check_pixels(path, height, width)
    if _tiff_photometric(path, page) == 3:
        if "S" in axes:
            raise _fail(path, f"palette TIFF with {shape[axes.index('S')]} samples per pixel is not supported")
        return height, width, 3, None
    samples = shape[axes.index("S")] if "S" in axes else 1
    if samples not in (1, 2, 3, 4):
        raise _fail(path, f"TIFF with {samples} samples per pixel is not supported (expected grey or RGB)")
    return height, width, (1 if samples <= 2 else 3), (axes.index("S") if "S" in axes else None)


_TIFF_DTYPES = ("uint8", "uint16", "float32", "float64")


def probe_image(path: os.PathLike | str) -> FrameInfo:
    """Read a frame file's header: size, channels (alpha dropped) and dtype, without the pixels."""
    kind = IMAGE_SUFFIXES.get(Path(path).suffix.lower())
    if kind == "png":
        width, height, depth, colour = _png_header(path)
        return FrameInfo(height, width, _PNG_CHANNELS[colour], "uint16" if depth == 16 else "uint8")
    if kind == "tiff":
        tifffile = _require_tifffile(path)
        try:
            with tifffile.TiffFile(path) as tif:
                if len(tif.pages) == 0:
                    raise _fail(path, "no image in the TIFF file (damaged or truncated)")
                if len(tif.pages) != 1:
                    raise _fail(path, f"multi-page TIFF ({len(tif.pages)} pages); a frame file holds one image")
                page = tif.pages[0]
                height, width, channels, _ = _tiff_layout(path, page)
                dtype = "uint16" if int(page.photometric) == 3 else np.dtype(page.dtype).name
        except CHDLFormatError:
            raise
        except Exception as exc:  # tifffile raises several types for damaged files
            raise _fail(path, f"unreadable TIFF ({type(exc).__name__}: {exc})") from exc
        if dtype not in _TIFF_DTYPES:
            raise _fail(path, f"unsupported TIFF dtype {dtype} (expected uint8, uint16 or float in [0, 1])")
        return FrameInfo(height, width, channels, "float32" if dtype.startswith("float") else dtype)
    if kind == "jpeg":
        image_module = _require_pillow(path)
        try:
            with image_module.open(path) as image:
                mode, (width, height) = image.mode, image.size
        except Exception as exc:
            raise _fail(path, f"unreadable JPEG ({type(exc).__name__}: {exc})") from exc
        if mode not in ("L", "RGB", "CMYK", "YCbCr"):
            raise _fail(path, f"unsupported JPEG mode {mode!r}")
        _check_pixels(path, height, width)
        return FrameInfo(height, width, 1 if mode == "L" else 3, "uint8")
    raise _fail(path, f"not a frame file (expected one of {sorted(IMAGE_SUFFIXES)})")


def _pillow_to_array(path, image) -> np.ndarray:
    """A loaded Pillow image as ``(C, H, W)`` uint8 / uint16 / float32, alpha dropped."""
    mode = image.mode
    if mode in ("1", "L", "LA", "La"):
        array = np.asarray(image.convert("L") if mode != "L" else image)
    elif mode.startswith("I;16"):
        array = np.asarray(image).astype(np.uint16, copy=False)
    elif mode == "F":
        array = np.asarray(image, dtype=np.float32)
    elif mode in ("RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr"):
        array = np.asarray(image.convert("RGB") if mode != "RGB" else image)
    else:
        raise _fail(path, f"unsupported image mode {mode!r}")
    return np.moveaxis(array, -1, 0) if array.ndim == 3 else array[None]


def _read_png_16bit_colour(path, image_module) -> np.ndarray:
    """16-bit RGB(A) PNG at full precision. Pillow keeps only the high byte of each sample, so decode
    twice: as big-endian (high bytes) and with the little-endian unpacker (which then picks the low
    bytes); the C decoder does the unfiltering both times."""
    halves = []
    for suffix in ("16B", "16L"):
        with image_module.open(path) as image:
            if len(image.tile) != 1 or image.tile[0][0] != "zip" or not str(image.tile[0][3]).endswith(";16B"):
                raise _fail(path, "16-bit colour PNG layout not understood by this Pillow version; use TIFF")
            rawmode = str(image.tile[0][3])[: -len("16B")] + suffix
            image.tile = [image.tile[0]._replace(args=rawmode)]
            image.load()
            halves.append(np.asarray(image)[..., :3].astype(np.uint16))
    high, low = halves
    return np.moveaxis((high << 8) | low, -1, 0)


def read_image(path: os.PathLike | str) -> np.ndarray:
    """Decode a frame file to ``(C, H, W)`` in its own dtype (uint8, uint16 or float32), alpha dropped.

    Raises :class:`CHDLFormatError` naming the file for anything unreadable, truncated or unsupported.
    """
    kind = IMAGE_SUFFIXES.get(Path(path).suffix.lower())
    if kind == "tiff":
        tifffile = _require_tifffile(path)
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                _, _, channels, samples_axis = _tiff_layout(path, page)
                photometric = int(page.photometric)
                array = page.asarray()
                if photometric == 3:  # palette: indices through the (3, 2**bits) 16-bit colour map
                    colormap = np.asarray(page.colormap)
                    if array.dtype.kind != "u" or array.max(initial=0) >= colormap.shape[-1]:
                        raise _fail(path, "palette TIFF with indices outside its colour map")
                    array = np.moveaxis(colormap.astype(np.uint16)[:, array], 0, -1)
                    samples_axis = array.ndim - 1
        except CHDLFormatError:
            raise
        except Exception as exc:
            raise _fail(path, f"unreadable TIFF ({type(exc).__name__}: {exc})") from exc
        if array.dtype.name not in _TIFF_DTYPES:
            raise _fail(path, f"unsupported TIFF dtype {array.dtype.name}")
        if samples_axis is None:
            array = array[None]
        else:
            array = np.moveaxis(array, samples_axis, 0)[:channels]
        if photometric == 0:  # MINISWHITE: 0 is white, so invert to the usual convention
            array = (np.iinfo(array.dtype).max - array) if array.dtype.kind == "u" else (1.0 - array)
        return np.ascontiguousarray(array.astype(np.float32) if array.dtype.kind == "f" else array)
    if kind not in ("png", "jpeg"):
        raise _fail(path, f"not a frame file (expected one of {sorted(IMAGE_SUFFIXES)})")
    image_module = _require_pillow(path)
    try:
        if kind == "png":
            _, _, depth, colour = _png_header(path)  # checks the size before any decoding
            if depth == 16 and colour in (2, 6):
                return _read_png_16bit_colour(path, image_module)
        with image_module.open(path) as image:
            _check_pixels(path, image.size[1], image.size[0])
            image.load()
            return np.ascontiguousarray(_pillow_to_array(path, image))
    except CHDLFormatError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error ...
        raise _fail(path, f"unreadable or truncated image ({type(exc).__name__}: {exc})") from exc


def encode_png(array: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode ``(H, W)`` or ``(H, W, C)`` (C in 1, 3) uint8 / uint16 as a PNG file's bytes.

    A minimal encoder (filter type 0, one IDAT chunk), because Pillow cannot write 16-bit RGB.
    """
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"encode_png: expected uint8 or uint16, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        colour = 0
    elif array.ndim == 3 and array.shape[2] == 3:
        colour = 2
    else:
        raise ValueError(f"encode_png: expected (H, W) or (H, W, 1|3), got shape {array.shape}")
    height, width = array.shape[:2]
    depth = 16 if array.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(array.astype(">u2") if depth == 16 else array).view(np.uint8).reshape(height, -1)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), compress_level))
        + chunk(b"IEND", b"")
    )
