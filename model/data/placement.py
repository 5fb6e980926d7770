"""How an image of any size meets a model's input, and how the model's maps go back to the image: the resize
modes (``fit``, ``stretch``, ``none``) and the tiles of a large image.

One policy for every caller (the cascade at run time, the calibration, the evaluation), numpy + Pillow only:

* ``stretch`` resizes the image to the input size (the aspect ratio is lost: what layercascade did before 0.2);
* ``fit`` scales it to fit inside the input size keeping its aspect ratio, and pads the rest;
* ``none`` keeps the image's own pixels: padded up to the input size (a fixed-size export) or to the next size a
  dynamic-size export takes (a multiple of 8 within its bounds); an image larger than that runs in tiles.

Padding goes below and to the right, with the model's mean colour: normalised, that is 0, what the network's own
zero padding shows it at every image border, so the padded pixels change the real pixels' labels as little as an
image edge does. The labels and the stage map are cropped back to the real pixels (the padding is never counted in
the stage fractions) and the labels resized back to the image's size (nearest).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from layercascade.errors import fail
from layercascade.model.data.images import resize_image, resize_labels

RESIZE_MODES = ("fit", "stretch", "none")
SCALE = 8  # the stage resolution is an eighth of the input's


@dataclass(frozen=True)
class Sizes:
    """The input sizes a model takes: one fixed size, or (dynamic) every multiple of ``multiple`` from ``low`` to
    ``high``, with ``nominal`` the size ``fit`` and ``stretch`` aim at."""

    nominal: tuple[int, int]
    low: tuple[int, int] | None = None
    high: tuple[int, int] | None = None
    multiple: int = SCALE
    # The padded sizes of a dynamic export are rounded up to this (a multiple of ``multiple``): a backend that
    # compiles per size (OpenVINO) asks for a coarser step, so images of similar sizes share one compiled model.
    step: int = SCALE

    @property
    def dynamic(self) -> bool:
        return self.low is not None

    @property
    def largest(self) -> tuple[int, int]:
        return self.high if self.dynamic else self.nominal

    def fits(self, size: tuple[int, int]) -> bool:
        """Whether an image of ``size`` runs whole (padded), not in tiles."""
        return size[0] <= self.largest[0] and size[1] <= self.largest[1]

    def takes(self, size: tuple[int, int]) -> bool:
        """Whether the graphs take an input of ``size`` as it is (no padding)."""
        if not self.dynamic:
            return tuple(size) == self.nominal
        return all(low <= n <= high and n % self.multiple == 0 for n, low, high in zip(size, self.low, self.high))

    def describe(self) -> str:
        """The sizes the graphs take, for messages: ``160, 160``, or ``H, W`` with their bounds."""
        if not self.dynamic:
            return f"{self.nominal[0]}, {self.nominal[1]}"
        (low_h, low_w), (high_h, high_w) = self.low, self.high
        return f"H, W (multiples of {self.multiple}, {low_h} <= H <= {high_h}, {low_w} <= W <= {high_w})"

    def input_for(self, size: tuple[int, int]) -> tuple[int, int]:
        """The input an image of ``size`` (that :meth:`fits`) runs at: the fixed size, or the size rounded up to
        the step (at least the smallest, at most the largest)."""
        if not self.dynamic:
            return self.nominal
        step = max(self.step, self.multiple)
        return tuple(min(high, max(low, -(-n // step) * step)) for n, low, high in zip(size, self.low, self.high))


@dataclass(frozen=True)
class Placement:
    """An image of ``image_size`` scaled to ``scaled_size`` at the top left of an input of ``input_size``."""

    image_size: tuple[int, int]
    scaled_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def stage_crop(self) -> tuple[int, int]:
        """The stage-resolution pixels (h, w) that cover the real pixels: a stage pixel counts if any of its 8×8
        input pixels is real."""
        return -(-self.scaled_size[0] // SCALE), -(-self.scaled_size[1] // SCALE)


def check_resize(mode: str) -> str:
    if mode not in RESIZE_MODES:
        fail(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    return mode


def default_resize(sizes: Sizes) -> str:
    """``none`` for a dynamic-size export (its images run at their own size), else ``fit``."""
    return "none" if sizes.dynamic else "fit"


def place(image_size: tuple[int, int], sizes: Sizes, mode: str) -> Placement:
    """Where an image of ``image_size`` goes in the model's input under ``mode`` (for ``none``: an image that
    :meth:`Sizes.fits`; larger ones run in tiles, :func:`tile_grid`)."""
    height, width = image_size
    if check_resize(mode) == "stretch":
        return Placement(image_size, sizes.nominal, sizes.nominal)
    if mode == "fit":
        scale = min(sizes.nominal[0] / height, sizes.nominal[1] / width)
        scaled = (min(sizes.nominal[0], max(1, round(height * scale))), min(sizes.nominal[1], max(1, round(width * scale))))
        return Placement(image_size, scaled, sizes.nominal)
    if not sizes.fits(image_size):
        raise ValueError(f"an image of {height}×{width} does not fit the input whole: run it in tiles")
    return Placement(image_size, image_size, sizes.input_for(image_size))


def to_input(image: np.ndarray, placement: Placement, pad_colour: np.ndarray) -> np.ndarray:
    """The model input (H, W, 3) uint8 of ``image`` at ``placement``, padded with ``pad_colour``."""
    scaled = resize_image(image, placement.scaled_size)
    if placement.scaled_size == placement.input_size:
        return scaled
    canvas = np.empty((*placement.input_size, 3), np.uint8)
    canvas[...] = pad_colour
    canvas[:scaled.shape[0], :scaled.shape[1]] = scaled
    return canvas


def pad_colour(mean: list[float]) -> np.ndarray:
    """The RGB colour that normalises to 0: the model's mean, rounded to uint8."""
    return np.clip(np.round(np.asarray(mean, np.float64)), 0, 255).astype(np.uint8)


def labels_back(labels: np.ndarray, placement: Placement) -> np.ndarray:
    """The input-size label map cropped to the real pixels and resized (nearest) to the image's size."""
    height, width = placement.scaled_size
    return resize_labels(np.ascontiguousarray(labels[:height, :width]), placement.image_size)


def stage_map_back(stage_map: np.ndarray, placement: Placement) -> np.ndarray:
    """A map at the stage resolution (the stage map, the confidence) cropped to the stage pixels that cover real
    ones."""
    height, width = placement.stage_crop
    return np.ascontiguousarray(stage_map[:height, :width])


def stage_fractions(stage_map: np.ndarray) -> tuple[float, float, float]:
    """The share of the stage map's pixels decided at stages 1, 2, 3."""
    counts = np.bincount(stage_map.ravel(), minlength=4)[1:4].astype(np.float64)
    total = max(counts.sum(), 1.0)
    return float(counts[0] / total), float(counts[1] / total), float(counts[2] / total)


def stage_extent(placement: Placement) -> tuple[float, float]:
    """How many stage pixels the image spans, (height, width): its scaled size over 8 (the last stage pixel of
    :meth:`Placement.stage_crop` may be partly padding)."""
    return placement.scaled_size[0] / SCALE, placement.scaled_size[1] / SCALE


def upsample_stage_map(values: np.ndarray, extent: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """A float map at the stage resolution, spanning ``extent`` stage pixels of the image (:func:`stage_extent`),
    bilinearly interpolated to the image's ``size`` (H, W) as float32: half-pixel centres, edges clamped, as the
    label map's upsampling reads the scores. Values stay within the map's range (convex blends). Computed in
    blocks of rows, so a large image needs little more memory than the result."""
    def axis(length: int, span: float, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(length) + 0.5) * (span / length) - 0.5, 0, cells - 1)
        low = np.floor(position).astype(np.intp)
        return low, np.minimum(low + 1, cells - 1), (position - low).astype(np.float32)

    values = np.asarray(values, np.float32)
    top, bottom, down = axis(size[0], extent[0], values.shape[0])
    left, right, across = axis(size[1], extent[1], values.shape[1])
    columns = values[:, left] * (1 - across) + values[:, right] * across  # (h, W)
    result = np.empty(size, np.float32)
    step = max(1, (1 << 20) // max(size[1], 1))
    for first in range(0, size[0], step):
        rows = slice(first, first + step)
        weight = down[rows, None]
        result[rows] = columns[top[rows]] * (1 - weight) + columns[bottom[rows]] * weight
    return result


# -- tiles ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One window of a large image: ``window`` (top, left, height, width) is run; ``core`` (top, left, bottom,
    right, in image coordinates) is the part of it whose labels are kept: the pixels nearer to this window's
    centre than to any other window's, so every kept pixel lies at least half the overlap from a window border
    (except at the image's own border)."""

    window: tuple[int, int, int, int]
    core: tuple[int, int, int, int]


def default_overlap(tile: tuple[int, int]) -> int:
    """The windows' default overlap: a quarter of the tile's smaller side, in multiples of 8 (0 for tiles too small
    to overlap)."""
    return max(0, min(min(tile) // 4 // SCALE * SCALE, min(tile) - 2 * SCALE))


def tile_grid(image_size: tuple[int, int], tile: tuple[int, int], overlap: int) -> list[Tile]:
    """The windows of at most ``tile`` pixels covering an image of ``image_size``, overlapping by at least
    ``overlap`` pixels. Every window starts on the stage grid (a multiple of 8), so its stage pixels are the
    image's own, as in a run of the whole image; all are ``tile`` pixels but the last row and column, which end
    at the image's edge (an image smaller than a tile is one window of its size)."""
    strides = [(side - overlap) // SCALE * SCALE for side in tile]
    if overlap < 0 or min(strides) < SCALE:
        fail(f"--overlap {overlap}: must be 0 or more and at least 8 less than the tile ({tile[0]}x{tile[1]})")
    tiles = []
    for top, bottom in _cores(_starts(image_size[0], tile[0], strides[0]), image_size[0], tile[0]):
        for left, right in _cores(_starts(image_size[1], tile[1], strides[1]), image_size[1], tile[1]):
            window = (top[0], left[0], min(tile[0], image_size[0] - top[0]), min(tile[1], image_size[1] - left[0]))
            tiles.append(Tile(window, (top[1], left[1], bottom, right)))
    return tiles


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis, multiples of 8 no more than ``stride`` apart, the last window ending at the
    image's end: evenly spread from 0 to the last start, rounded down to the stage grid."""
    last = max(0, -(-(length - tile) // SCALE) * SCALE)
    if last == 0:
        return [0]
    count = 1 + -(-last // stride)
    return [k * last // (count - 1) // SCALE * SCALE for k in range(count - 1)] + [last]


def _cores(starts: list[int], length: int, tile: int) -> Iterator[tuple[tuple[int, int], int]]:
    """((window start, core start), core end) along one axis: cores split the overlaps at their middles."""
    ends = [min(start + tile, length) for start in starts]
    for k, start in enumerate(starts):
        core_start = 0 if k == 0 else (ends[k - 1] + start) // 2
        core_end = length if k == len(starts) - 1 else (ends[k] + starts[k + 1]) // 2
        yield (start, core_start), core_end
