import io

import numpy as np
import pytest
from PIL import Image

from jaxbiqa.data.images import FACTOR, decode_image, read_image_bytes, resize_image, target_size
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


def test_target_size_is_a_fixed_token_grid():
    assert target_size(256 * 28 * 28, 4 / 3) == (392, 504)        # KonIQ 512x384 -> 252 tokens
    assert target_size(256 * 28 * 28, 3 / 4) == (504, 392)
    for budget, aspect in ((50_000, 1.0), (1_000_000, 16 / 9), (3136, 4 / 3)):
        height, width = target_size(budget, aspect)
        assert height % FACTOR == 0 and width % FACTOR == 0 and height * width <= budget
    with pytest.raises(ValueError, match="below"):
        target_size(100)


def test_resize_keeps_token_count_for_portrait_images():
    landscape = np.zeros((30, 40, 3), np.uint8)
    portrait = np.zeros((40, 30, 3), np.uint8)
    assert resize_image(landscape, (56, 84)).shape == (56, 84, 3)
    assert resize_image(portrait, (56, 84)).shape == (84, 56, 3)
    assert resize_image(portrait, (56, 84), match_orientation=False).shape == (56, 84, 3)
