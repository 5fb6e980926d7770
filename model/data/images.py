"""Reading images and label maps with Pillow into the arrays every data set returns.

Images become (H, W, 3) uint8 RGB whatever the file holds; label maps keep their stored
indices (a VOC palette PNG holds class ids, not colours). A file Pillow cannot decode is
a user error (:class:`~layercascade.errors.LCError` naming the file), not a traceback.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from layercascade.errors import LCError, fail

# Pillow's integer modes: 16-bit unsigned in various byte orders, and 32-bit signed 'I'
# (which is how many Pillow versions load 16-bit PNGs).
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _open(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode the first frame of ``path``, or raise LCError naming it."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a worker
            return img.copy()
    except FileNotFoundError:
        raise LCError(f"{os.fspath(path)}: no such file") from None
    except Exception as error:
        # Pillow's decoders report bad data as OSError, SyntaxError, ValueError, EOFError,
        # zlib.error, struct.error, DecompressionBombError...: all mean "not a usable image".
        message = " ".join(str(error).split()) or type(error).__name__
        raise LCError(f"{os.fspath(path)}: cannot read image ({message}); "
                      "check that the file is a complete, valid image") from None


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any Pillow-readable image as an (H, W, 3) uint8 RGB array.

    Alpha is dropped, grayscale/palette/CMYK are converted, and 16/32-bit integer images
    are scaled from the 16-bit range to 8 bits (float images are clipped to 0..255).
    EXIF orientation is not applied: label maps are aligned with the stored pixels.
    """
    img = _open(path)
    if img.mode in _WIDE_INT_MODES:
        wide = np.asarray(img).astype(np.float32)
        gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P":
        # Via RGBA: Pillow warns when a palette image with transparency goes straight to RGB.
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


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
