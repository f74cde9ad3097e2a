"""Robust reading of any user image into one uint8 grey-level array, and model-input resizing.

Every per-file problem becomes an `ImageReadError` with a reason a user can act on; callers
report and skip such files instead of failing a whole import.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# The formats that hold integer samples deeper than 8 bits (Pillow reads BMP/JPEG as 8-bit).
_HIGH_BIT_SUFFIXES = (".png", ".tif", ".tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_PIXELS = 64_000_000

# Errors Pillow and tifffile raise for broken or unsupported files (tifffile's are ValueErrors).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)
# ITU-R 601 luma, as Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114])
# Pillow modes that numpy cannot take directly, and the mode to read them as.
_CONVERT = {
    "PA": "RGBA",
    "RGBa": "RGBA",
    "La": "LA",
    "1": "L",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


class ImageReadError(Exception):
    """A file that cannot be used as an image; `reason` says why in a few words."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class BitDepth:
    """How an integer image deeper than 8 bits is scaled: 2**bits - 1 is white.

    `source` says what decided it: the file's own metadata (PNG sBIT, TIFF BitsPerSample or
    MaxSampleValue) or the maximum over its folder's high-bit-depth images.
    """

    bits: int
    source: str

    @property
    def full(self) -> int:
        return 2**self.bits - 1


def read_gray8(path: Path, *, min_size: int = 16, max_pixels: int = _MAX_PIXELS) -> np.ndarray:
    """Read any supported image as uint8 (H, W), EXIF orientation applied, first page only.

    Integer images deeper than 8 bits are scaled by their bit depth (`image_bit_depth`), floats
    by their range; never stretched per image, so brightness stays comparable between images.
    Raises ImageReadError for empty, corrupt, tiny or huge files.
    """
    return read_gray8_with_depth(path, min_size=min_size, max_pixels=max_pixels)[0]


def read_gray8_with_depth(path: Path, *, min_size: int = 16, max_pixels: int = _MAX_PIXELS
                          ) -> tuple[np.ndarray, BitDepth | None]:
    """read_gray8 and the BitDepth it used (None for 8-bit, boolean and float images)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    arr, meta = _decode(path, min_size, max_pixels)
    depth = image_bit_depth(path, arr, meta) if _is_high_bit(arr) else None
    return _to_gray8(path, arr, depth), depth


def image_bit_depth(path: Path, arr: np.ndarray, meta: dict[str, int]) -> BitDepth:
    """The one place the bit depth of a high-bit-depth integer image is decided.

    The file's metadata when it declares fewer bits than the container; else the folder's:
    12-bit when no high-bit-depth image in the file's directory (without such metadata)
    exceeds 4095, else 16-bit (wider containers: the bits the folder's maximum needs). Taken
    per folder, not per image, so one bright pixel cannot make an image 16x darker than its
    neighbours; per directory, so every caller (importer, training, predict) reads a file
    the same way from its path alone.
    """
    declared = _metadata_depth(arr, meta)
    if declared is not None:
        return declared
    folder = path.absolute().parent
    top = _folder_maximum(str(folder), _dir_stamp(folder))
    top = max(top, _sample_max(arr))  # the file itself, even if it changed since the scan
    bits = 12 if top <= 4095 else 16 if top <= 65535 else top.bit_length()
    return BitDepth(bits, f"folder maximum {top}")


def to_model_input(img: np.ndarray, size: int) -> np.ndarray:
    """Center-crop to a square, then resize to size x size (uint8).

    Cropping instead of stretching keeps the geometry the classes differ by (line widths and
    pitch, round vias); SEM crops put the defect near the center, so the edges are the part to
    lose. INTER_AREA when shrinking avoids aliasing of fine line patterns.
    """
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = img[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square, dtype=np.uint8)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp).astype(np.uint8, copy=False)


def _check_size(path: Path, width: int, height: int, min_size: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            path, f"too large ({width}x{height} > {max_pixels} pixels); downscale or crop it"
        )
    if min(width, height) < min_size:
        raise ImageReadError(path, f"too small ({width}x{height}; need >= {min_size} per side)")


def _decode(path: Path, min_size: int, max_pixels: int) -> tuple[np.ndarray, dict[str, int]]:
    """The first page as an array, and the bit-depth metadata found ("sbit", "bits_per_sample",
    "max_sample_value")."""
    # tifffile keeps exact bit depth (Pillow clips 16-bit RGB to 8 bits and cannot open
    # float64 or extra-sample TIFFs); Pillow decodes the compressions tifffile needs
    # imagecodecs for (LZW, JPEG), so TIFFs try both.
    is_tiff = path.suffix.lower() in (".tif", ".tiff")
    readers = (_read_tifffile, _read_pil) if is_tiff else (_read_pil,)
    for reader in readers:
        try:
            return reader(path, min_size, max_pixels)
        except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
            error = exc
    raise ImageReadError(path, _pil_reason(error)) from error


def _read_pil(path: Path, min_size: int, max_pixels: int) -> tuple[np.ndarray, dict[str, int]]:
    with Image.open(path) as im:  # multi-page files open on their first page
        _check_size(path, im.width, im.height, min_size, max_pixels)
        im.load()  # decode now, so truncated files fail here and not later
        meta = _tiff_meta(getattr(im, "tag_v2", {}))
        if im.format == "PNG" and im.mode.startswith("I") and (sbit := _png_sbit(path)):
            meta["sbit"] = sbit
        im = ImageOps.exif_transpose(im)
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in _CONVERT:
            im = im.convert(_CONVERT[im.mode])
        return np.asarray(im), meta


def _read_tifffile(path: Path, min_size: int, max_pixels: int
                   ) -> tuple[np.ndarray, dict[str, int]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        planar = page.planarconfig == 2 and len(page.shape) == 3
        h, w = page.shape[1:3] if planar else page.shape[:2]
        _check_size(path, int(w), int(h), min_size, max_pixels)
        arr = page.asarray()
        orientation = page.tags[274].value if 274 in page.tags else 1
        meta = _tiff_meta({code: page.tags[code].value for code in (258, 281)
                           if code in page.tags})
    if planar:
        arr = np.moveaxis(arr, 0, -1)  # (S, H, W) → samples last
    return _ORIENT.get(int(orientation), lambda a: a)(arr), meta


def _tiff_meta(tags: Mapping[int, object]) -> dict[str, int]:
    """BitsPerSample (258) and MaxSampleValue (281) of a TIFF, the largest over samples."""
    meta = {}
    for code, key in ((258, "bits_per_sample"), (281, "max_sample_value")):
        value = tags.get(code)
        values = value if isinstance(value, tuple | list) else [value]
        if value is not None and all(isinstance(v, int) for v in values):
            meta[key] = max(values)
    return meta


def _png_sbit(path: Path) -> int | None:
    """The colour channels' significant bits from a PNG's sBIT chunk (Pillow ignores it)."""
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_SIGNATURE:
            return None
        while len(head := fh.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind == b"sBIT":
                data = fh.read(length)
                # grey: 1 byte, grey+alpha: 2, RGB: 3, RGBA: 4 (alpha last, not colour)
                colour = data[:3] if len(data) >= 3 else data[:1]
                return max(colour) if colour else None
            if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                return None
            fh.seek(length + 4, os.SEEK_CUR)  # data and CRC
    return None


def _metadata_depth(arr: np.ndarray, meta: dict[str, int]) -> BitDepth | None:
    """The depth the file declares, when it declares fewer bits than its container.

    A container-sized value (BitsPerSample 16 in a 16-bit TIFF) says nothing: 12-bit
    detectors write exactly that. PNG sBIT: raw s-bit samples stay <= 2**s - 1; larger ones
    mean the writer scaled them to the container, as the PNG spec asks.
    """
    container = 8 * arr.dtype.itemsize
    if 0 < meta.get("bits_per_sample", container) < container:
        return BitDepth(meta["bits_per_sample"], f"TIFF BitsPerSample {meta['bits_per_sample']}")
    if 0 < meta.get("max_sample_value", 2**container - 1) < 2**container - 1:
        value = meta["max_sample_value"]
        return BitDepth(value.bit_length(), f"TIFF MaxSampleValue {value}")
    sbit = meta.get("sbit", container)
    if 0 < sbit < container:
        if _sample_max(arr) > 2**sbit - 1:
            return BitDepth(container, f"PNG sBIT {sbit}, samples scaled to {container} bits")
        return BitDepth(sbit, f"PNG sBIT {sbit}")
    return None


def _is_high_bit(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize > 1


def _sample_max(arr: np.ndarray) -> int:
    """The largest colour sample (an alpha channel, often all-opaque 65535, does not count)."""
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]
    return max(int(arr.max(initial=0)), 0)


def _dir_stamp(folder: Path) -> tuple[int, int]:
    """(mtime, size) of a directory: both change when files are added, removed or renamed
    (the size too within one coarse mtime tick)."""
    try:
        st = folder.stat()
    except OSError:
        return 0, 0
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4096)
def _folder_maximum(folder: str, stamp: tuple[int, int]) -> int:
    """The maximum over the high-bit-depth images in a directory without depth metadata.

    Cached per directory and its stamp, so a folder is scanned once, not once per image.
    Unreadable files do not count: they are skipped anyway.
    """
    del stamp  # only part of the cache key
    top = 0
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return 0
    for name in names:
        path = Path(folder) / name
        if name.startswith(".") or path.suffix.lower() not in _HIGH_BIT_SUFFIXES:
            continue
        if path.suffix.lower() == ".png" and not _png_is_16bit(path):
            continue  # 8-bit PNG: skip without decoding
        try:
            arr, meta = _decode(path, 1, _MAX_PIXELS)
        except (ImageReadError, OSError):
            continue
        if _is_high_bit(arr) and _metadata_depth(arr, meta) is None:
            top = max(top, _sample_max(arr))
    return top


def _png_is_16bit(path: Path) -> bool:
    """IHDR's bit depth (byte 24) is 16."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(25)
    except OSError:
        return False
    return len(head) == 25 and head[:8] == _PNG_SIGNATURE and head[24] == 16


# TIFF/EXIF orientation code → the transform that shows the image upright (as exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _to_gray8(path: Path, arr: np.ndarray, depth: BitDepth | None) -> np.ndarray:
    """(H, W) or (H, W, C) of any numeric dtype → uint8 (H, W); integers deeper than 8 bits
    scaled by `depth`."""
    alpha = None
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):
            alpha, arr = arr[..., -1], arr[..., :-1]
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]
    elif arr.ndim != 2:
        raise ImageReadError(path, f"unsupported image layout (array shape {arr.shape})")
    grey = _scale_to_255(arr, depth)
    if grey.ndim == 3:
        grey = grey @ _LUMA
    out = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    if alpha is not None:
        # Real RGBA/LA images are opaque except an anti-aliased 1-2 px border whose colour is
        # valid image content; compositing by alpha would draw a dark frame there. Only fully
        # transparent pixels (colour undefined) become black.
        out[alpha == 0] = 0
    return out


def _scale_to_255(arr: np.ndarray, depth: BitDepth | None) -> np.ndarray:
    """Values in 0..255 (float), scaled by bit depth or value range, never per-image stretched."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    if arr.dtype == np.bool_:
        return arr * 255.0
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max(initial=0.0))
    if depth is not None:
        full = float(depth.full)
    # Floats (and int8) have no container depth: their value range decides.
    elif top <= 1.0:
        full = 1.0
    elif top <= 255.0:
        full = 255.0
    elif top <= 4095:
        full = 4095.0
    elif top <= 65535:
        full = 65535.0
    else:
        full = top
    return np.clip(values, 0.0, full) * (255.0 / full)


def _pil_reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image or an unsupported format"
    if isinstance(exc, Image.DecompressionBombError):
        return "too large (decompression bomb guard); downscale or crop it"
    text = str(exc).strip() or type(exc).__name__
    return f"corrupt or truncated image ({text})"
