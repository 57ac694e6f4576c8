"""Helpers shared by the built-in dataset loaders: the checks their declared
parameters leave to them, image decoding and file hashing. (Decoded sets are cached through ``medbench.cache``.)"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medbench.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
RESIZE_METHODS = ("squash", "center-crop")


# --------------------------------------------------------------------------- options


def opt_choice(loader: str, name: str, value: Any, choices) -> Any:
    if value in choices:
        return value
    allowed = ", ".join(str(c) for c in choices)
    raise DataError(f"{loader}: option {name} must be one of {allowed}; got {value!r}")


def opt_str_list(loader: str, name: str, value: Any, unique: bool = True) -> list[str]:
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(v, str) and v for v in value)):
        raise DataError(f"{loader}: option {name} must be a non-empty list of names, got {value!r}")
    if unique and len(set(value)) != len(value):
        dup = sorted({v for v in value if list(value).count(v) > 1})
        raise DataError(f"{loader}: option {name} lists {dup[0]!r} twice; names must be unique")
    return list(value)


def check_spec(loader: str, image_size: Any, channels: Any) -> None:
    if channels not in (1, 3):
        raise DataError(f"{loader}: channels must be 1 or 3, got {channels!r}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise DataError(f"{loader}: image_size must be a positive integer, got {image_size!r}")


# --------------------------------------------------------------------------- hashing


def file_digest(path: Path, algo: str = "md5", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- decoding


def _to_8bit(img):
    """Map 16/32-bit integer and float images to 8-bit 'L'.

    16-bit data are divided by 257 (0..65535 -> 0..255) unless all values fit in 12 bits
    (common for X-ray detectors), which are then divided by 4095/255; 32-bit integer and
    float images are min-max scaled.
    """
    from PIL import Image

    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return Image.fromarray(arr, mode="L")
    a = arr.astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    low = float(a.min()) if a.size else 0.0
    if img.mode.startswith("I;16") or (img.mode == "I" and low >= 0 and top <= 65535):
        scale = 255.0 if top <= 255 else 4095.0 if top <= 4095 else 65535.0
        a = a * (255.0 / scale)
    else:
        a = (a - low) * (255.0 / (top - low)) if top > low else a * 0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


class OversizedImage(DataError):
    """An image above the imaging library's decompression-bomb limit."""


def decode_image(data: bytes, channels: int, size: int, resize: str = "squash",
                 jpeg_draft: bool = False, on_large=None) -> np.ndarray:
    """Decode image file bytes to a uint8 C x size x size array.

    Colour: greyscale stays grey; palette, CMYK, YCbCr etc. become RGB; an alpha channel
    is composited over black; 16-bit images are scaled to 8 bits (see ``_to_8bit``).
    channels 1 gives PIL "L" (ITU-R 601-2 luma: 0.299 R + 0.587 G + 0.114 B, like
    ``medbench.data.convert_channels``); channels 3 gives "RGB" (grey repeated).
    EXIF orientation is applied; for multi-frame files the first frame is used.

    Size: "squash" resizes the whole image straight to size x size with PIL's bilinear
    filter (which widens its support when shrinking, i.e. antialiased) and ignores the
    aspect ratio; "center-crop" takes the central square (side = shorter side) and
    resizes it the same way, which equals scaling the shorter side to ``size`` then
    cropping the center. ``jpeg_draft`` lets libjpeg decode JPEGs at a reduced scale
    (1/2, 1/4 or 1/8, never below 4x the target size) first: much faster on large
    photos, slightly different pixels.

    Oversized images: PIL warns about images above ``Image.MAX_IMAGE_PIXELS`` (a
    possible decompression bomb) and refuses those above twice that. medbench says so
    itself instead: the warning is silenced and ``on_large(width, height)`` is called
    (the image is decoded), and a refused one raises ``OversizedImage`` in one line.

    Raises whatever PIL raises on unreadable data (OSError, ValueError, ...).
    """
    from PIL import Image, ImageOps

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise OversizedImage(f"above {limit:.0f} Mpx, the largest image the imaging library "
                             "decodes (a decompression-bomb guard); shrink it") from None
    if on_large is not None and Image.MAX_IMAGE_PIXELS and \
            im.size[0] * im.size[1] > Image.MAX_IMAGE_PIXELS:
        on_large(*im.size)
    with im:
        if jpeg_draft and im.format == "JPEG":
            im.draft(None, (4 * size, 4 * size))
        im.load()
        if im.getexif().get(0x0112, 1) != 1:      # EXIF orientation
            im = ImageOps.exif_transpose(im)
        mode = im.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            im = _to_8bit(im)
        elif mode == "1":
            im = im.convert("L")
        elif mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "La", "RGBa"):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, rgba).convert("RGB")
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        if resize == "center-crop":
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            box = (left, top, left + side, top + side)
        else:
            box = None
        if (w, h) != (size, size) or box is not None and (w != h):
            im = im.resize((size, size), Image.BILINEAR, box=box)
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
