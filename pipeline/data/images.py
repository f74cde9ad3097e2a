"""Robust reading of any user image into one uint8 grey-level array, and model-input resizing.

Every per-file problem becomes an `ImageReadError` with a reason a user can act on; callers
report and skip such files instead of failing a whole import.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

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


def read_gray8(path: Path, *, min_size: int = 16, max_pixels: int = 64_000_000) -> np.ndarray:
    """Read any supported image as uint8 (H, W), EXIF orientation applied, first page only.

    Integer images deeper than 8 bits are scaled by their bit depth (max <= 4095 → 12-bit,
    else 16-bit), floats by their range; never stretched per image, so brightness stays
    comparable between images. Raises ImageReadError for empty, corrupt, tiny or huge files.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    # tifffile keeps exact bit depth (Pillow clips 16-bit RGB to 8 bits and cannot open
    # float64 or extra-sample TIFFs); Pillow decodes the compressions tifffile needs
    # imagecodecs for (LZW, JPEG), so TIFFs try both.
    is_tiff = path.suffix.lower() in (".tif", ".tiff")
    readers = (_read_tifffile, _read_pil) if is_tiff else (_read_pil,)
    for reader in readers:
        try:
            arr = reader(path, min_size, max_pixels)
            break
        except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
            error = exc
    else:
        raise ImageReadError(path, _pil_reason(error)) from error
    return _to_gray8(path, arr)


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


def _read_pil(path: Path, min_size: int, max_pixels: int) -> np.ndarray:
    with Image.open(path) as im:  # multi-page files open on their first page
        _check_size(path, im.width, im.height, min_size, max_pixels)
        im.load()  # decode now, so truncated files fail here and not later
        im = ImageOps.exif_transpose(im)
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in _CONVERT:
            im = im.convert(_CONVERT[im.mode])
        return np.asarray(im)


def _read_tifffile(path: Path, min_size: int, max_pixels: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        planar = page.planarconfig == 2 and len(page.shape) == 3
        h, w = page.shape[1:3] if planar else page.shape[:2]
        _check_size(path, int(w), int(h), min_size, max_pixels)
        arr = page.asarray()
        orientation = page.tags[274].value if 274 in page.tags else 1
    if planar:
        arr = np.moveaxis(arr, 0, -1)  # (S, H, W) → samples last
    return _ORIENT.get(int(orientation), lambda a: a)(arr)


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


def _to_gray8(path: Path, arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) of any numeric dtype → uint8 (H, W)."""
    alpha = None
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):
            alpha, arr = arr[..., -1], arr[..., :-1]
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]
    elif arr.ndim != 2:
        raise ImageReadError(path, f"unsupported image layout (array shape {arr.shape})")
    grey = _scale_to_255(arr)
    if grey.ndim == 3:
        grey = grey @ _LUMA
    out = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    if alpha is not None:
        # Real RGBA/LA images are opaque except an anti-aliased 1-2 px border whose colour is
        # valid image content; compositing by alpha would draw a dark frame there. Only fully
        # transparent pixels (colour undefined) become black.
        out[alpha == 0] = 0
    return out


def _scale_to_255(arr: np.ndarray) -> np.ndarray:
    """Values in 0..255 (float), scaled by bit depth or value range, never per-image stretched."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    if arr.dtype == np.bool_:
        return arr * 255.0
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max(initial=0.0))
    if np.issubdtype(arr.dtype, np.floating) and top <= 1.0:
        full = 1.0
    elif np.issubdtype(arr.dtype, np.floating) and top <= 255.0:
        full = 255.0
    elif top <= 4095:
        full = 4095.0  # 12-bit detectors store in 16-bit containers
    elif top <= 65535:
        full = 65535.0
    else:
        full = top  # beyond 16 bits no container depth is meaningful: scale by the maximum
    return np.clip(values, 0.0, full) * (255.0 / full)


def _pil_reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image or an unsupported format"
    if isinstance(exc, Image.DecompressionBombError):
        return "too large (decompression bomb guard); downscale or crop it"
    text = str(exc).strip() or type(exc).__name__
    return f"corrupt or truncated image ({text})"
