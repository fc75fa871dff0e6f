import io
import math

import numpy as np
import pytest
from PIL import ExifTags, Image

from jaxbiqa.data.images import (FACTOR, decode_image, read_image_bytes, read_image_size, resize_image,
                                 resized_size)
from jaxbiqa.data.records import BadRecordError


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_grey_and_palette_become_rgb():
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, "L")
    out = decode_image(encode(grey), "w")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert (out[..., 0] == np.asarray(grey)).all() and (out[..., 1] == out[..., 2]).all()
    palette = grey.convert("P")
    assert decode_image(encode(palette), "w").shape == (3, 4, 3)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)     # opaque red
    rgba[0, 1] = (0, 0, 0, 0)         # fully transparent black
    rgba[1, 0] = (0, 0, 255, 128)     # half blue
    out = decode_image(encode(Image.fromarray(rgba, "RGBA")), "w")
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert abs(int(out[1, 0, 0]) - 127) <= 1 and out[1, 0, 2] == 255


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values)), "w")
    assert list(out[0, :, 0]) == [0, 100, 255]


def test_cmyk_jpeg_is_converted():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))   # red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=95), "w")
    assert out.shape == (8, 8, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_exif_orientation_is_applied():
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))   # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6                                         # rotate 90 degrees clockwise to view
    out = decode_image(encode(img, "JPEG", exif=exif), "w")
    assert out.shape == (20, 10, 3)


def test_broken_inputs_are_bad_records(tmp_path):
    good = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(BadRecordError, match="rec 1: truncated image"):
        decode_image(good[: len(good) // 2], "rec 1")
    with pytest.raises(BadRecordError, match="corrupt image"):
        decode_image(b"definitely not an image", "rec 2")
    with pytest.raises(BadRecordError, match="corrupt image"):
        decode_image(b"P6\n0 5\n255\n", "rec 2")  # a zero-width PPM
    with pytest.raises(BadRecordError, match="missing file"):
        read_image_bytes(str(tmp_path / "nope.png"), "rec 3")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadRecordError, match="empty file"):
        read_image_bytes(str(tmp_path / "empty.png"), "rec 4")
    assert read_image_bytes(b"abc", "rec 5") == b"abc"


def test_refused_sizes_are_bad_records():
    with pytest.raises(BadRecordError, match="unsupported size 2100x10"):
        resized_size((10, 2100), 3136, 200_704, "rec 6")


def test_resized_size_keeps_the_proportions():
    budget = (3136, 256 * 28 * 28)
    assert resized_size((384, 512), *budget, "r") == (392, 504)   # KonIQ 512x384: the former fixed 4:3 size
    assert resized_size((512, 384), *budget, "r") == (504, 392)   # portrait
    assert resized_size((500, 500), *budget, "r") == (448, 448)   # LIVE-C: square, 256 tokens
    assert resized_size((512, 512), *budget, "r") == (448, 448)   # CSIQ
    for size in ((3000, 4000), (100, 1000), (40, 60)):
        height, width = resized_size(size, *budget, "r")
        assert height % FACTOR == 0 and width % FACTOR == 0
        assert abs(math.log(width / height) - math.log(size[1] / size[0])) < 0.3
    with pytest.raises(BadRecordError, match=r"rec 7: unsupported size 3000x10"):
        resized_size((10, 3000), *budget, "rec 7")


def test_header_size_is_the_decoded_size(tmp_path):
    photo = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # rotated a quarter turn: shown 30 wide, 40 high
    rotated = encode(photo, "JPEG", exif=exif)
    assert read_image_size(rotated, "r") == decode_image(rotated, "r").shape[:2] == (40, 30)
    (tmp_path / "a.png").write_bytes(encode(photo))
    assert read_image_size(str(tmp_path / "a.png"), "r") == (30, 40)
    with pytest.raises(BadRecordError, match="missing file"):
        read_image_size(str(tmp_path / "nope.png"), "r")
    with pytest.raises(BadRecordError, match="corrupt image"):
        read_image_size(b"not an image", "r")


def test_resize_is_pillows_bicubic():
    image = np.random.default_rng(0).integers(0, 256, (384, 512, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((504, 392), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(resize_image(image, (392, 504)), expected)
    assert resize_image(image, (384, 512)) is image
