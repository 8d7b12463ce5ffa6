"""The image loader reads every PIL mode right or refuses it, and bounds its memory.

Before, a floating-point TIFF (mode ``F``, values in [0, 1]) loaded as all zeros, a
32-bit integer TIFF was scaled as if 16-bit and clipped, and images just under Pillow's
bomb limit were decoded in full by 8 threads at once. Each test writes the images it reads.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from mcjax.data import image_folder
from mcjax.data.sources import DataError

# 2x2 test patterns: grey levels 0, 64, 128, 255 as each mode holds them.
GREY = np.array([[0, 64], [128, 255]], np.uint8)


def _read(path) -> np.ndarray:
    return image_folder._read_resized(str(path), 2)  # 2x2: read, not resized


def _grey_of(pixels: np.ndarray) -> np.ndarray:
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
    return pixels[..., 0]


@pytest.mark.parametrize(
    "mode, extension",
    [
        ("L", "png"),
        ("L", "tiff"),
        ("LA", "png"),
        ("LA", "tiff"),
        ("P", "png"),
        ("P", "gif"),
        ("PA", "tiff"),
        ("RGB", "bmp"),
        ("RGBA", "png"),
        ("CMYK", "tiff"),
        ("YCbCr", "tiff"),
        ("LAB", "tiff"),
    ],
)
def test_eight_bit_modes_read_as_the_same_grey_levels(tmp_path, mode, extension):
    grey = Image.fromarray(GREY, "L")
    image = grey.convert("RGB").convert(mode) if mode not in ("L", "P") else grey.convert(mode)
    path = tmp_path / f"image.{extension}"
    image.save(path)
    with Image.open(path) as written:
        assert written.mode == mode  # really that mode on disk
        expected = np.asarray(written.convert("RGB"))  # PIL's own conversion
    pixels = _read(path)
    np.testing.assert_array_equal(pixels, expected)
    if mode in ("L", "LA", "P", "RGB", "RGBA"):  # these hold the grey levels exactly
        np.testing.assert_array_equal(_grey_of(pixels), GREY)


@pytest.mark.parametrize("mode", ["RGBX", "RGBa", "La", "HSV"])
def test_modes_no_file_keeps_are_converted_too(mode):
    """PIL writes these as other modes; an image opened some other way may still hold them."""
    from mcjax.data import decode

    image = Image.fromarray(GREY, "L").convert("RGBA" if mode in ("RGBa", "La") else "RGB")
    image = image.convert(mode)
    # La (premultiplied grey) is converted by PIL to LA only; the others to RGB directly.
    reference = image.convert("LA") if mode == "La" else image
    np.testing.assert_array_equal(
        np.asarray(decode._to_rgb(image)), np.asarray(reference.convert("RGB"))
    )


def test_one_bit_images_read_as_black_and_white(tmp_path):
    path = tmp_path / "bits.png"
    Image.fromarray(GREY >= 128).save(path)
    with Image.open(path) as written:
        assert written.mode == "1"
    np.testing.assert_array_equal(_grey_of(_read(path)), [[0, 0], [255, 255]])


@pytest.mark.parametrize("extension", ["png", "tiff"])
def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path, extension):
    path = tmp_path / f"deep.{extension}"
    Image.fromarray(GREY.astype(np.uint16) * 257).save(path)
    with Image.open(path) as written:
        assert written.mode.startswith("I;16")
    np.testing.assert_array_equal(_grey_of(_read(path)), GREY)


def test_sixteen_bit_pgm_is_scaled_by_its_maximum(tmp_path):
    path = tmp_path / "deep.pgm"  # PIL opens a 16-bit PGM as mode I
    levels = (GREY.astype(np.uint16) * 257).astype(">u2")
    path.write_bytes(b"P5\n2 2\n65535\n" + levels.tobytes())
    with Image.open(path) as written:
        assert written.mode == "I"
    np.testing.assert_array_equal(_grey_of(_read(path)), GREY)


def test_floating_point_images_in_0_1_are_scaled(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(GREY.astype(np.float32) / 255.0).save(path)
    with Image.open(path) as written:
        assert written.mode == "F"
    np.testing.assert_array_equal(_grey_of(_read(path)), GREY)


@pytest.mark.parametrize(
    "values, words",
    [
        (np.array([[0.0, 64.0], [128.0, 255.0]], np.float32), "values in [0, 255]"),
        (np.array([[0.0, np.nan], [0.5, 1.0]], np.float32), "NaN or infinite"),
    ],
    ids=["0-255", "nan"],
)
def test_floating_point_images_of_another_range_are_refused(tmp_path, values, words):
    path = tmp_path / "float.tiff"
    Image.fromarray(values).save(path)
    with pytest.raises(DataError) as info:
        _read(path)
    assert str(path) in str(info.value) and words in str(info.value)
    assert "mode F" in str(info.value) and "\n" not in str(info.value)


def test_thirty_two_bit_integer_images_are_refused(tmp_path):
    path = tmp_path / "wide.tiff"
    Image.fromarray(np.array([[0, 70000], [2**31 - 1, 5]], np.int32)).save(path)
    with Image.open(path) as written:
        assert written.mode == "I"
    with pytest.raises(DataError, match=r"32-bit integer image \(mode I\)") as info:
        _read(path)
    assert str(path) in str(info.value)


def test_an_image_over_the_pixel_bound_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    from mcjax.data import decode

    monkeypatch.setattr(decode, "MAX_PIXELS", 99)
    path = tmp_path / "large.png"
    Image.new("RGB", (10, 10)).save(path)
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1) or real_load(self))
    with pytest.raises(DataError, match="10x10 = 100 pixels, more than the 99"):
        _read(path)
    assert decoded == []
    Image.new("RGB", (9, 11)).save(path)  # 99 pixels: read
    assert _read(path).shape == (2, 2, 3)


def test_threads_decode_at_most_the_pixel_budget_at_once(tmp_path, monkeypatch):
    """Six threads, images of 40 pixels, a budget of 100: never more than 2 at once."""
    from mcjax.data import decode

    budget = decode._PixelBudget(100)
    monkeypatch.setattr(decode, "_BUDGET", budget)
    paths = []
    for index in range(6):
        paths.append(tmp_path / f"img_{index}.png")
        Image.new("RGB", (8, 5), (index, 0, 0)).save(paths[-1])
    in_flight, most = [0], [0]
    lock = threading.Lock()
    real = decode._to_rgb

    def slow_to_rgb(image):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return real(image)

    monkeypatch.setattr(decode, "_to_rgb", slow_to_rgb)
    threads = [threading.Thread(target=_read, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 2
