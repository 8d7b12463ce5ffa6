"""Decoding one image file to 8-bit RGB: every PIL mode handled or refused, memory bounded.

Both image inputs (:mod:`mcjax.data.image_folder`, :mod:`mcjax.data.streaming`) decode
through :func:`rgb_image`. By PIL mode:

* ``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and the
  modes with alpha (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``): PIL's conversion to
  RGB (alpha is dropped, as torchvision's loader does);
* 16-bit grey (``I;16`` and its byte orders, and ``I`` where the file says 16 bits:
  PNG, PGM, a TIFF of 16 bits per sample): scaled by ``255 / 65535``, rounded, not
  clipped;
* floating point (``F``): values in ``[0, 1]`` scaled by 255; any other range, NaN
  or inf is refused (no scale is standard);
* 32-bit integers (``I`` of a 32-bit TIFF, or of a file that does not say): refused,
  as any mode not listed here. An image refused says why in one sentence
  (:class:`ImageRefused`).

Memory: an image of more than :data:`MAX_PIXELS` pixels (far below Pillow's own bomb
limit of 89 million) is refused before it is decoded, and all threads of the process
together decode at most :data:`DECODE_BUDGET` pixels at once (a thread waits for its
share), so 8 threads cannot hold 8 images of 430 MB each.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import IO

import numpy as np

__all__ = ["DECODE_BUDGET", "MAX_PIXELS", "ImageRefused", "rgb_image"]

# Pixels of the largest image decoded (e.g. 8192 x 4096); larger ones are refused.
MAX_PIXELS = 2**25
# Pixels of all the images this process decodes at once: up to ~16 bytes each while a
# float image is scaled, ~7 for an ordinary one (its decode and its RGB copy).
DECODE_BUDGET = 2**26

# PIL's conversion to RGB is right for these.
_CONVERTIBLE = frozenset(
    {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa", "LA", "La", "PA"}
)
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageRefused(ValueError):
    """An image mcjax does not decode (its mode, range or size); one sentence."""


class _PixelBudget:
    """A counting semaphore of pixels: ``hold(n)`` waits until ``n`` pixels are free."""

    def __init__(self, total: int):
        self.total = total
        self._free = total
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)  # one image larger than all: alone
        with self._changed:
            self._changed.wait_for(lambda: self._free >= pixels)
            self._free -= pixels
        try:
            yield
        finally:
            with self._changed:
                self._free += pixels
                self._changed.notify_all()


_BUDGET = _PixelBudget(DECODE_BUDGET)


def _bits_per_sample(image) -> int | None:
    """What the file says an ``I`` image's samples hold (None: it does not say)."""
    if image.format in ("PNG", "PPM"):  # at most 16 bits; PIL scales PGM to 65535
        return 16
    if image.format == "TIFF":
        bits = image.tag_v2.get(258)
        bits = bits[0] if isinstance(bits, tuple) else bits
        return int(bits) if bits else None
    return None


def _grey_to_rgb(levels: np.ndarray):
    from PIL import Image

    return Image.fromarray(levels.astype(np.uint8), "L").convert("RGB")


def _to_rgb(image):
    """``image`` (decoded) as an RGB image, or :class:`ImageRefused` (module docstring)."""
    mode = image.mode
    if mode == "La":  # premultiplied: PIL converts it only to LA
        return image.convert("LA").convert("RGB")
    if mode in _CONVERTIBLE:
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT or (mode == "I" and _bits_per_sample(image) == 16):
        levels = np.asarray(image)
        if levels.size and (levels.min() < 0 or levels.max() > 65535):
            raise ImageRefused(
                f"a 16-bit image (mode {mode}) with values in [{levels.min()}, "
                f"{levels.max()}], outside 0..65535"
            )
        # Rounded to nearest in integers (v * 255 / 65535 is never halfway).
        wide = levels.astype(np.int64)
        return _grey_to_rgb((wide * 255 + 32767) // 65535)
    if mode == "I":
        bits = _bits_per_sample(image)
        raise ImageRefused(
            f"a {bits or 32}-bit integer image (mode I), which has no standard scale to 8 bits; "
            "save it with 8 or 16 bits per channel, or as floating point in [0, 1]"
        )
    if mode == "F":
        values = np.asarray(image, np.float32)
        finite = bool(np.isfinite(values).all())
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (finite and low >= 0.0 and high <= 1.0):
            shown = f"in [{low:g}, {high:g}]" if finite else "that are NaN or infinite"
            raise ImageRefused(
                f"a floating-point image (mode F) with values {shown}; floating-point images "
                "are read as [0, 1]: rescale it, or save it with 8 or 16 bits per channel"
            )
        return _grey_to_rgb(np.rint(values * np.float32(255.0)))
    raise ImageRefused(
        f"an image of PIL mode {mode!r}, which mcjax does not read; save it as 8-bit RGB, "
        "greyscale or palette"
    )


@contextlib.contextmanager
def rgb_image(source: str | IO[bytes]) -> Iterator:
    """The RGB ``PIL.Image`` of an image file, for the ``with`` block.

    ``source``: a path or a binary file object. The image's pixels count against
    :data:`DECODE_BUDGET` until the block ends (the caller's crop and resize included).

    Raises:
      ImageRefused: the image is larger than :data:`MAX_PIXELS` or of a mode or range
        it refuses (module docstring).
      Exception: whatever PIL raises for a file it cannot decode.
    """
    from PIL import Image

    with Image.open(source) as image:
        width, height = image.size  # from the header; nothing is decoded yet
        if width * height > MAX_PIXELS:
            raise ImageRefused(
                f"an image of {width}x{height} = {width * height:,} pixels, more than the "
                f"{MAX_PIXELS:,} mcjax decodes (mcjax.data.decode.MAX_PIXELS); resize it"
            )
        with _BUDGET.hold(width * height):
            image.load()
            yield _to_rgb(image)
