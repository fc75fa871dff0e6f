"""Reading, decoding and resizing images, with errors that name the record.

Decoding (Pillow) accepts any mode and returns RGB uint8 [H, W, 3]:
* EXIF orientation is applied first (a phone photo shown upright is assessed upright);
* 16-bit and 32-bit integer images ("I;16", "I") are scaled by their bit depth, not clipped;
* images with transparency (RGBA, LA, P with a transparent colour) are composited on white, so
  whatever colour hides under transparent pixels does not leak in;
* CMYK, YCbCr, palette, 1-bit and grey images go through Pillow's own RGB conversion.
A missing or zero-byte file, a truncated or corrupt file, a file Pillow cannot identify (Pillow
refuses images with a zero width or height there) and a decompression bomb are BadRecordErrors.

`target_size` turns a pixel budget into one (height, width), both multiples of the Qwen2.5-VL
28-pixel unit, so every image becomes the same number of visual tokens (h * w / 784).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

from jaxbiqa.data.records import BadRecordError

FACTOR = 28  # Qwen2.5-VL: 14-px patches merged 2 x 2
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning,
                  EOFError)


def read_image_bytes(image: str | bytes, where: str) -> bytes:
    """The encoded bytes of a record's `image` (a path, or bytes already)."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        try:
            with open(image, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise BadRecordError(where, f"missing file: {image}") from None
        except (IsADirectoryError, PermissionError) as err:
            raise BadRecordError(where, f"unreadable file: {image} ({err.strerror})") from None
    if not data:
        raise BadRecordError(where, f"empty file: {image if isinstance(image, str) else '<bytes>'} has 0 bytes")
    return data


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img).astype(np.float64)
        bits = 16 if img.mode.startswith("I;16") or array.max(initial=0) <= 65535 else 32
        scaled = np.clip(np.round(array / (2 ** bits - 1) * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, where: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] from encoded bytes (see the module doc for the modes handled)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return np.asarray(_to_rgb(ImageOps.exif_transpose(img)), dtype=np.uint8)
    except _DECODE_ERRORS as err:
        kind = "truncated image" if "truncated" in str(err) else "corrupt image"
        raise BadRecordError(where, f"{kind}: {type(err).__name__}: {err}") from None


def target_size(max_pixels: int, aspect: float = 4 / 3, min_pixels: int = FACTOR * FACTOR) -> tuple[int, int]:
    """The largest (height, width), multiples of 28, with width/height close to `aspect` and
    height * width <= max_pixels (e.g. 200,704 at 4:3 -> (392, 504), 252 visual tokens)."""
    if max_pixels < min_pixels or max_pixels < FACTOR * FACTOR:
        raise ValueError(f"max_pixels={max_pixels} is below min_pixels={min_pixels} or one 28x28 unit")
    unit = FACTOR * FACTOR
    best: tuple[float, int, int] | None = None
    for rows in range(1, max_pixels // unit + 1):
        cols = min(max_pixels // unit // rows, max(1, round(rows * aspect)))
        pixels = rows * cols * unit
        if pixels < min_pixels:
            continue
        # prefer more pixels, penalising the aspect error (log ratio) in units of the budget
        key = (pixels - abs(math.log(cols / rows / aspect)) * max_pixels, rows, cols)
        if best is None or key > best:
            best = key
    if best is None:
        raise ValueError(f"no 28-multiple size fits min_pixels={min_pixels}, max_pixels={max_pixels}")
    return best[1] * FACTOR, best[2] * FACTOR


def resize_image(image: np.ndarray, size: tuple[int, int], match_orientation: bool = True) -> np.ndarray:
    """Resize to exactly (height, width) with Pillow's bicubic filter; with `match_orientation`
    a portrait image gets (width, height) instead, which keeps the visual-token count."""
    height, width = size
    if match_orientation and (image.shape[0] > image.shape[1]) != (height > width) and height != width:
        height, width = width, height
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
