"""Reading images and label maps with Pillow into the arrays every data set returns.

Images become (H, W, 3) uint8 RGB whatever the file holds; label maps keep their stored
indices (a VOC palette PNG holds class ids, not colours). A file Pillow cannot decode is
a user error (:class:`~layercascade.errors.LCError` naming the file), not a traceback.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import ExifTags, Image

from layercascade import manifest
from layercascade.errors import LCError, fail

# Pillow's integer modes: 16-bit unsigned in various byte orders, and 32-bit signed 'I'
# (which is how many Pillow versions load 16-bit PNGs).
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# The largest image read by default (100 megapixels, beyond every common camera): checked from the
# header, before a pixel is decoded, so a small file claiming a huge image (a decompression bomb,
# or an all-zero 13000² PNG of 0.5 MB) is refused before it takes gigabytes. Also the largest model
# input a model dir may declare (``manifest.check_model_fields``).
MAX_PIXELS = manifest.MAX_PIXELS
# Pillow's own bomb limit is process-wide state; our reads set it to theirs one at a time.
_PILLOW_LIMIT = threading.Lock()
# Images are converted to RGB a band of about this many pixels at a time.
_BAND_PIXELS = 1 << 20


@contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb limit at ``max_pixels`` (its warning silenced: we say it ourselves)."""
    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


class ImageTooLarge(LCError):
    """An image over the pixel limit, known from its header (a server answers it with 413, not 400)."""


def _too_large(path: str | os.PathLike[str], pixels: int | str, max_pixels: int) -> LCError:
    return ImageTooLarge(f"{os.fspath(path)}: image of {pixels} pixels is over the limit of {max_pixels:,} "
                         "(a decompression bomb, or just huge); raise it with --max-pixels N if you trust the file")


def _open(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS, data: bytes | None = None) -> Image.Image:
    """Open, check the size from the header, then fully decode the first frame of ``path`` (or of
    ``data``, an encoded image that ``path`` only names), or raise LCError naming it."""
    try:
        # Our own file object: closing it after the decode leaves the image usable (no copy of it).
        with open(path, "rb") if data is None else io.BytesIO(data) as file:
            with _pillow_limit(max_pixels):
                img = Image.open(file)
            if img.width * img.height > max_pixels:
                raise _too_large(path, f"{img.width}×{img.height}", max_pixels)
            img.load()  # decode now: a truncated file fails here, not later in a worker
            return img
    except FileNotFoundError:
        raise LCError(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise LCError(f"{os.fspath(path)}: is a folder, not an image file") from None
    except Image.DecompressionBombError as error:
        # Pillow: "Image size (225000000 pixels) exceeds limit of ...": the header's size, not decoded.
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(path, f"{int(claimed[1]):,}" if claimed else "too many", max_pixels) from None
    except LCError:
        raise
    except Exception as error:
        raise _unreadable(path, error) from None


def _unreadable(path: str | os.PathLike[str], error: Exception) -> LCError:
    # Pillow's decoders report bad data as OSError, SyntaxError, ValueError, EOFError, zlib.error,
    # struct.error, ...: all mean "not a usable image".
    message = " ".join(str(error).split()) or type(error).__name__
    # Pillow names the file object it read ("<_io.BytesIO object at 0x...>"); the path is named already.
    message = re.sub(r" <_io\.\w+[^>]*>", "", message)
    return LCError(f"{os.fspath(path)}: cannot read image ({message}); check that the file is a complete, valid image")


def to_rgb(img: Image.Image) -> np.ndarray:
    """A Pillow image of any mode as an (H, W, 3) uint8 RGB array.

    Alpha is dropped, grayscale/palette/CMYK are converted, and 16/32-bit integer images
    are scaled from the 16-bit range to 8 bits (float images are clipped to 0..255). Done in
    bands of rows, so a huge image costs the array and little more.
    """
    rgb = np.empty((img.height, img.width, 3), np.uint8)
    rows = max(1, _BAND_PIXELS // max(img.width, 1))
    for top in range(0, img.height, rows):
        band = img.crop((0, top, img.width, min(top + rows, img.height)))
        rgb[top:top + band.height] = _band_rgb(band)
    return rgb


def _band_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in _WIDE_INT_MODES:
        wide = np.asarray(img).astype(np.float32)
        return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)[:, :, None]  # 65535 -> 255
    if img.mode == "F":
        return np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)[:, :, None]
    if img.mode == "P":
        # Via RGBA: Pillow warns when a palette image with transparency goes straight to RGB.
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def as_rgb(image: object) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array of a numpy array of that form or of a PIL image of any mode
    (:func:`to_rgb`); anything else, or an image without pixels, is one line saying what to pass."""
    if isinstance(image, Image.Image):
        try:
            image = to_rgb(image)
        except (ValueError, OSError) as error:  # modes Pillow cannot convert to RGB (e.g. "La")
            fail(f"cannot convert a PIL image of mode {image.mode} to RGB ({error}); pass an RGB image")
    elif not isinstance(image, np.ndarray):
        fail(f"expected an (H, W, 3) uint8 RGB numpy array or a PIL image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        fail(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        fail(f"the image is empty ({image.shape[0]}×{image.shape[1]} pixels)")
    return image


def read_rgb(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS,
             exif_transpose: bool = True, data: bytes | None = None) -> np.ndarray:
    """Read any Pillow-readable image as an (H, W, 3) uint8 RGB array (:func:`to_rgb`).

    Args:
        max_pixels: refuse (one line, :class:`ImageTooLarge`) an image with more pixels, checked
            before decoding.
        exif_transpose: turn the pixels as the file's EXIF orientation says, so the array (and a
            label map of it) is the photo as viewers show it; False keeps the stored pixel order
            (a data set's label files are aligned with that).
        data: the encoded image itself (e.g. a request's body); ``path`` then only names it in errors.
    """
    with _open(path, max_pixels, data) as img:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1) if exif_transpose else 1
        rgb = to_rgb(img)
    return oriented(rgb, orientation)


def oriented(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned as EXIF ``orientation`` (1-8) says, as ``ImageOps.exif_transpose`` turns it;
    other values leave it as stored. On the array, so a huge photo is not held twice by Pillow."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a),
    }.get(orientation)
    return image if turned is None else np.ascontiguousarray(turned(image))


def read_label(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a palette or grayscale label PNG as an (H, W) uint8 array of its stored indices."""
    img = _open(path)
    if img.mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode == "LA":  # grayscale with alpha: the alpha carries no label
        return np.asarray(img, dtype=np.uint8)[:, :, 0].copy()
    if img.mode in _WIDE_INT_MODES:
        wide = np.asarray(img)
        if wide.size and (wide.min() < 0 or wide.max() > 255):
            fail(f"{os.fspath(path)}: label values span {int(wide.min())}..{int(wide.max())}; "
                 "labels must be 0..255 (class ids, 255 = ignore)")
        return wide.astype(np.uint8)
    fail(
        f"{os.fspath(path)}: label image has mode {img.mode}; "
        "expected a palette or grayscale PNG of class ids (not a colour-coded RGB image)"
    )


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 image at ``size`` = (height, width): bilinear, the one policy by which
    images meet a model's input size (at run time and in calibration alike)."""
    if image.shape[:2] == tuple(size):
        return image
    height, width = size
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (h, w) label map at ``size`` = (height, width): nearest, so class ids stay class ids."""
    if labels.shape[:2] == tuple(size):
        return labels
    height, width = size
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
