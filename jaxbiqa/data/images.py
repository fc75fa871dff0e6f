"""Reading, decoding and resizing images, with errors that name the record.

Decoding (Pillow) accepts any mode and returns RGB uint8 [H, W, 3]:
* EXIF orientation is applied first (a phone photo shown upright is assessed upright);
* 16-bit and 32-bit integer images ("I;16", "I") are scaled by their bit depth, not clipped;
* images with transparency (RGBA, LA, P with a transparent colour) are composited on white, so
  whatever colour hides under transparent pixels does not leak in;
* CMYK, YCbCr, palette, 1-bit and grey images go through Pillow's own RGB conversion.
A missing or zero-byte file, a truncated or corrupt file, a file Pillow cannot identify (Pillow
refuses images with a zero width or height there) and a decompression bomb are BadRecordErrors.
Decompression bombs: an image whose header promises more than `max_pixels` pixels
(`data.max_image_pixels`, by default Pillow's own hard limit of 178,956,970) is refused before
anything is decoded, with a message naming the setting; Pillow's global check
(`Image.MAX_IMAGE_PIXELS`) is turned off when this module is imported, so that the setting can
also raise the limit for a trusted large file.

Sizes: `read_image_size` reads the (height, width) an image decodes to from its header alone
(EXIF orientation included), and `resized_size` is the size Qwen2.5-VL's image processor gives it,
transformers' own `smart_resize` (from its torch-free Pillow processor module): the original aspect
ratio, both sides multiples of 28 px (14-px patches merged 2 x 2), about min_pixels..max_pixels
pixels. `resize_image` then resizes with Pillow's bicubic filter, as the processor does. E.g. at
200,704 pixels (256 visual tokens) a 512x384 KonIQ image becomes 504x392 (252 tokens, the former
fixed 4:3 size) and a 500x500 LIVE-C image 448x448 (256 tokens).
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from jaxbiqa.data.records import BadRecordError

FACTOR = 28  # Qwen2.5-VL: 14-px patches merged 2 x 2
MAX_IMAGE_PIXELS = 2 * Image.MAX_IMAGE_PIXELS  # Pillow's default DecompressionBombError limit: 178,956,970
Image.MAX_IMAGE_PIXELS = None  # `check_pixels` does it, with a limit the config can set
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def check_pixels(size: tuple[int, int], max_pixels: int, where: str) -> None:
    """Refuse an image of `size` (width, height as a header gives it) above `max_pixels`."""
    width, height = size
    if width * height > max_pixels:
        raise BadRecordError(where, f"image too large: {width}x{height} = {width * height:,} pixels is over the "
                                    f"decompression-bomb limit data.max_image_pixels={max_pixels:,}; raise it if "
                                    "you trust the file")


def _open_image_file(image: str | bytes, where: str) -> BinaryIO:
    """A binary handle on a record's `image` (a path, or the encoded bytes); a missing, unreadable
    or empty file is a BadRecordError."""
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise BadRecordError(where, "empty file: <bytes> has 0 bytes")
        return io.BytesIO(image)
    try:
        handle = open(image, "rb")
    except FileNotFoundError:
        raise BadRecordError(where, f"missing file: {image}") from None
    except (IsADirectoryError, PermissionError) as err:
        raise BadRecordError(where, f"unreadable file: {image} ({err.strerror})") from None
    if os.fstat(handle.fileno()).st_size == 0:
        handle.close()
        raise BadRecordError(where, f"empty file: {image} has 0 bytes")
    return handle


def read_image_bytes(image: str | bytes, where: str) -> bytes:
    """The encoded bytes of a record's `image` (a path, or bytes already)."""
    with _open_image_file(image, where) as handle:
        return handle.read()


def _decode_error(err: BaseException, where: str) -> BadRecordError:
    kind = "truncated image" if "truncated" in str(err) else "corrupt image"
    return BadRecordError(where, f"{kind}: {type(err).__name__}: {err}")


def read_image_size(image: str | bytes, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(height, width) of the array `decode_image` returns, read from the header only: Pillow's
    `open` parses the header, EXIF orientations 5-8 (a quarter turn) swap the sides. A PNG's
    EXIF is read only when it comes before the pixel data (reading a later one means decoding)."""
    with _open_image_file(image, where) as handle:
        try:
            with Image.open(handle) as img:
                width, height = img.size
                check_pixels(img.size, max_pixels, where)
                late_png_exif = img.format == "PNG" and "exif" not in img.info
                orientation = 1 if late_png_exif else img.getexif().get(ExifTags.Base.Orientation, 1)
        except BadRecordError:
            raise
        except _DECODE_ERRORS as err:
            raise _decode_error(err, where) from None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


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


def decode_image(data: bytes, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """RGB uint8 [H, W, 3] from encoded bytes (see the module doc for the modes handled); an image
    over `max_pixels` is refused before it is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_pixels(img.size, max_pixels, where)
            img.load()
            return np.asarray(_to_rgb(ImageOps.exif_transpose(img)), dtype=np.uint8)
    except BadRecordError:
        raise
    except _DECODE_ERRORS as err:
        raise _decode_error(err, where) from None


def resized_size(size: tuple[int, int], min_pixels: int, max_pixels: int, where: str) -> tuple[int, int]:
    """The (height, width) Qwen2.5-VL's processor resizes an image of `size` to (`smart_resize`
    with factor 28); an image it refuses (sides more than 200:1) is a BadRecordError."""
    try:
        return smart_resize(size[0], size[1], FACTOR, min_pixels, max_pixels)
    except ValueError as err:
        raise BadRecordError(where, f"unsupported size {size[1]}x{size[0]}: {err}") from None


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` resized to exactly (height, width) with Pillow's bicubic filter (as the processor)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
