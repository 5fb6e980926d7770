"""A procedural stand-in for PASCAL VOC whose pixels differ in difficulty the way the paper describes.

Layer Cascade pays off because most pixels are easy and a few (boundaries, confusable
regions) are hard (the paper's analysis of pixel difficulty). This generator builds a 21-class problem (VOC's class
names and palette, 0 = background) with that structure, so the whole toolkit can be
trained, exported and benchmarked without downloading a data set:

* **Background (class 0)**: a smooth low-frequency colour field (a random 3x3..5x5
  colour grid, smoothly interpolated) with fine luminance grain, and 0-2 flat-colour
  "clutter" patches whose edges are *not* object boundaries.
* **Objects (classes 1..20)**: 2-6 per image, each of a random class and shape
  (ellipse, rotated rectangle, star-shaped polygon, Fourier blob, and thin lines, rings
  and arcs 3-6 px wide): one main object 0.4-0.7 of the image across, the others 8 px
  to half the image (log-uniform), drawn largest first so later objects occlude earlier
  ones. The label map is exactly what is visible; about 18% of pixels are objects.
* **Class signatures**: every class has two colours and a periodic pattern (stripes,
  checker, dots, wavy stripes, blocky grain) with a class-specific period and
  orientation; each instance jitters colour (+-15 per channel, contrast), period
  (+-5%), orientation (+-4 degrees), phase and shading. An object interior is therefore
  recognisable from local appearance -- the easy pixels.
* **Confusable pairs** share colours and pattern type and differ only by period
  (20-33%) or orientation (25 degrees): cat/dog, cow/sheep, chair/sofa,
  bicycle/motorbike (period) and bus/car (orientation). The pair gap is at least four
  times the instance jitter, so they are separable but only from an accurate local
  frequency or orientation estimate -- hard on small, thin or blurred objects.
* **Image effects**: Gaussian blur on 40% of images (sigma 0.5-1.4), random brightness
  and contrast, additive Gaussian noise (sigma 1-6), so boundaries are soft and
  ambiguous -- the hard pixels.
* **Ignore band** (``ignore_boundary=True``, the default): every pixel with a
  4-neighbour of another class becomes 255, a 2 px band straddling each object
  contour, like VOC's boundary annotation.

Image ``i`` of a split comes from ``np.random.default_rng([seed, split_code, i])``: the
same (seed, split, i) gives the same bytes, train and val never share a stream, and
another seed gives another image set. (Across CPUs or numpy builds, SIMD ``sin`` may
round differently, so a rare pixel can differ by one level.) Generating one 160x160
sample (image and label) takes 3-4.5 ms on average (300 val samples, repeated runs on
one core of our 2-core AMD EPYC development VM; numpy only, vectorised per object).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from layercascade.errors import fail
from layercascade.model.data.base import SegmentationDataset
from layercascade.model.data.voc import VOC_CLASSES, VOC_PALETTE

_SPLIT_CODES = {"train": 0, "val": 1}
_DEFAULT_LENGTHS = {"train": 2000, "val": 300}


@dataclass(frozen=True)
class _Signature:
    """How a class looks: ``pattern`` of ``period`` px at ``angle`` degrees, blending ``colour0`` to ``colour1``."""

    pattern: str  # stripes | checker | dots | wavy | grain
    period: float  # px; for grain, the cell size
    angle: float  # degrees; 0 = stripes vary along x
    colour0: tuple[int, int, int]
    colour1: tuple[int, int, int]


_TEAL = ((40, 140, 140), (10, 70, 80))
_RUST = ((210, 80, 40), (130, 30, 20))
_BROWN = ((150, 100, 60), (80, 50, 30))
_PURPLE = ((120, 60, 150), (60, 20, 90))
_BEIGE = ((215, 205, 180), (90, 80, 70))

# Indexed by class id - 1. Pairs sharing a colour constant are the confusable ones.
_SIGNATURES: tuple[_Signature, ...] = (
    _Signature("stripes", 7.0, 0.0, (170, 180, 200), (120, 130, 160)),  # aeroplane
    _Signature("checker", 6.0, 0.0, *_TEAL),  # bicycle     (motorbike: period 8)
    _Signature("dots", 7.0, 20.0, (200, 170, 60), (110, 80, 20)),  # bird
    _Signature("stripes", 4.0, 90.0, (235, 235, 245), (40, 70, 170)),  # boat
    _Signature("grain", 2.0, 0.0, (40, 150, 50), (120, 220, 110)),  # bottle
    _Signature("stripes", 9.0, 30.0, *_RUST),  # bus         (car: angle 55)
    _Signature("stripes", 9.0, 55.0, *_RUST),  # car
    _Signature("wavy", 9.0, 0.0, *_BROWN),  # cat         (dog: period 11)
    _Signature("dots", 6.0, 45.0, *_PURPLE),  # chair       (sofa: period 7.5)
    _Signature("stripes", 5.0, -30.0, *_BEIGE),  # cow         (sheep: period 6)
    _Signature("wavy", 14.0, 90.0, (200, 130, 60), (150, 80, 30)),  # diningtable
    _Signature("wavy", 11.0, 0.0, *_BROWN),  # dog
    _Signature("stripes", 16.0, -60.0, (110, 60, 40), (60, 30, 20)),  # horse
    _Signature("checker", 8.0, 0.0, *_TEAL),  # motorbike
    _Signature("checker", 12.0, 30.0, (230, 180, 160), (180, 120, 110)),  # person
    _Signature("dots", 5.0, 0.0, (60, 110, 30), (160, 200, 60)),  # pottedplant
    _Signature("stripes", 6.0, -30.0, *_BEIGE),  # sheep
    _Signature("dots", 7.5, 45.0, *_PURPLE),  # sofa
    _Signature("checker", 6.0, 45.0, (40, 50, 120), (150, 160, 210)),  # train
    _Signature("stripes", 3.0, 90.0, (30, 30, 35), (110, 110, 120)),  # tvmonitor
)
assert len(_SIGNATURES) == len(VOC_CLASSES) - 1

# Shape kinds, how often each is drawn, and how far each reaches in units of its radius
# (a rotated rectangle's corner at most sqrt(2), a blob's bulges at most 1 + 3 * 0.12).
_SHAPES = ("ellipse", "rectangle", "polygon", "blob", "line", "ring")
_SHAPE_CDF = np.cumsum([0.22, 0.2, 0.2, 0.2, 0.09, 0.09])
_EXTENT = {"ellipse": 1.0, "rectangle": 1.415, "polygon": 1.0, "blob": 1.36, "line": 1.0, "ring": 1.0}


class SyntheticSegmentation(SegmentationDataset):
    """Procedural VOC-like segmentation (see the module docstring); ``size`` is (height, width).

    ``length`` defaults to 2000 (train) / 300 (val). ``ignore_boundary`` (default on)
    marks a 2 px band of 255 along object contours.
    """

    name = "synthetic"
    classes = VOC_CLASSES
    palette = VOC_PALETTE

    def __init__(self, split: str = "train", seed: int = 0, size: tuple[int, int] = (160, 160),
                 length: int | None = None, *, ignore_boundary: bool = True) -> None:
        if split not in _SPLIT_CODES:
            fail(f"synthetic: no split {split!r}; use one of {', '.join(_SPLIT_CODES)}")
        if seed < 0:
            fail(f"synthetic: seed must be a non-negative integer (got {seed})")
        height, width = (int(v) for v in size)
        if height < 16 or width < 16:
            fail(f"synthetic: size {height}x{width} is too small; use at least 16x16")
        if length is not None and length < 1:
            fail(f"synthetic: length must be at least 1 (got {length})")
        self.split = split
        self.seed = int(seed)
        self.size = (height, width)
        self.length = _DEFAULT_LENGTHS[split] if length is None else int(length)
        self.ignore_boundary = ignore_boundary

    def __len__(self) -> int:
        return self.length

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], i])
        return _generate(rng, *self.size, ignore_boundary=self.ignore_boundary)

    def _sample_id(self, i: int) -> str:
        # The seed is part of the name only when it is not the default, so names stay short.
        prefix = "synthetic" if self.seed == 0 else f"synthetic-s{self.seed}"
        return f"{prefix}-{self.split}-{i:04d}"


def _generate(rng: np.random.Generator, height: int, width: int, *,
              ignore_boundary: bool) -> tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair; every random choice is drawn from ``rng`` in a fixed order."""
    # The image is built channel-first: numpy broadcasts a per-pixel term over 3 channels
    # ~10x faster along the slow axis than along a last axis of length 3.
    noise = _noise_tile(height, width)
    image = _background(rng, height, width, noise)
    label = np.zeros((height, width), np.uint8)
    side = min(height, width)
    for _ in range(rng.integers(0, 3)):
        _draw(rng, image, label, 0, side * rng.uniform(0.15, 0.5), noise)
    # One main object (0.4-0.7 of the image, so about a fifth of the pixels are objects as in
    # VOC) and 1-5 others, log-uniform 1/20 to 1/2, drawn largest first so occlusion stays partial.
    count = int(rng.integers(1, 6))
    sizes = np.concatenate([[rng.uniform(0.4, 0.7)], np.exp(rng.uniform(math.log(0.05), math.log(0.5), count))])
    for size in np.sort(sizes)[::-1] * side:
        _draw(rng, image, label, int(rng.integers(1, len(VOC_CLASSES))), float(size), noise)
    if ignore_boundary:
        label[_contours(label)] = 255
    if rng.random() < 0.4:
        _blur(image, rng.uniform(0.5, 1.4))
    mean, gain = float(image.mean()), rng.uniform(0.75, 1.25)
    # Contrast about the mean, brightness shift, and +0.5 so the uint8 cast below rounds.
    image *= np.float32(gain)
    image += np.float32(mean * (1 - gain) + rng.uniform(-20.0, 20.0) + 0.5)
    sigma = np.float32(rng.uniform(1.0, 6.0))
    for channel, grain in zip(image, _noise(rng, noise, height, width, 3)):
        channel += grain * sigma  # per channel: small temporaries, see _blur
    np.clip(image, 0, 255, out=image)
    return np.ascontiguousarray(image.astype(np.uint8).transpose(1, 2, 0)), label


@functools.lru_cache(maxsize=4)
def _noise_tile(height: int, width: int) -> np.ndarray:
    """A fixed (3, 2H, 2W) float32 standard-normal tile that every image crops its noise from.

    Fresh normals for every pixel would take a third of the generation time; a window at
    a random offset (one of (H+1)(W+1)) serves as pixel noise just as well.
    """
    return np.random.default_rng(0x5EED).standard_normal((3, 2 * height, 2 * width), dtype=np.float32)


def _noise(rng: np.random.Generator, tile: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """Standard-normal noise, (channels, height, width): a view of ``tile`` at a random offset."""
    y, x = rng.integers(0, tile.shape[1] - height + 1), rng.integers(0, tile.shape[2] - width + 1)
    return tile[:channels, y:y + height, x:x + width]


@functools.lru_cache(maxsize=16)
def _smooth_weights(n: int, knots: int) -> np.ndarray:
    """(n, knots) weights that interpolate ``knots`` values over ``n`` pixels with smoothstep (C1) blending."""
    position = (np.arange(n) + 0.5) / n * (knots - 1)
    f = np.clip(1 - np.abs(position[:, None] - np.arange(knots)[None, :]), 0, 1)
    return (f * f * (3 - 2 * f)).astype(np.float32)  # rows still sum to 1: S(f) + S(1 - f) = 1


def _background(rng: np.random.Generator, height: int, width: int, noise: np.ndarray) -> np.ndarray:
    """Class 0: a smooth random colour field plus fine luminance grain, (3, H, W) float32."""
    rows, cols = int(rng.integers(3, 6)), int(rng.integers(3, 6))
    grid = (rng.uniform(50.0, 205.0, (3, 1, 1)) + rng.normal(0.0, 35.0, (3, rows, cols))).astype(np.float32)
    field = _smooth_weights(height, rows) @ grid @ _smooth_weights(width, cols).T
    field += _noise(rng, noise, height, width, 1) * np.float32(rng.uniform(3.0, 8.0))
    return field


def _draw(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, cls: int, size: float,
          noise: np.ndarray) -> None:
    """Paint one object of class ``cls`` (0 = background clutter) about ``size`` px across, in place."""
    height, width = label.shape
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    shape = _SHAPES[int(np.searchsorted(_SHAPE_CDF, rng.random() * _SHAPE_CDF[-1]))]
    thickness = rng.uniform(3.0, 6.0) if shape in ("line", "ring") else 0.0
    radius = max(size / 2, thickness + 3) if shape == "ring" else size / 2  # keep a hole in small rings
    reach = radius * _EXTENT[shape] + thickness / 2 + 1
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 2)
    # Pixel-centre coordinates relative to the object centre, (h, 1) and (1, w).
    y = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    x = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    mask = _shape_mask(rng, shape, x, y, radius, thickness)
    if cls == 0:
        colour = _clutter(rng, noise, *mask.shape)
    else:
        colour = _texture(rng, _SIGNATURES[cls - 1], x, y, size)
    np.copyto(image[:, y0:y1, x0:x1], colour, where=mask)
    label[y0:y1, x0:x1][mask] = cls


def _shape_mask(rng: np.random.Generator, shape: str, x: np.ndarray, y: np.ndarray, radius: float,
                thickness: float) -> np.ndarray:
    """Boolean mask of ``shape`` centred at the origin, ``radius`` px, on the grid ``x`` by ``y``."""
    theta = rng.uniform(0, 2 * math.pi)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = y * math.cos(theta) - x * math.sin(theta)
    if shape == "ellipse":
        minor = radius * rng.uniform(0.4, 1.0)
        return (u / radius) ** 2 + (v / minor) ** 2 <= 1.0
    if shape == "rectangle":
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * rng.uniform(0.3, 1.0))
    if shape == "line":
        along = np.clip(u, -radius, radius)
        return (u - along) ** 2 + v**2 <= (thickness / 2) ** 2
    angle = np.arctan2(v, u)
    distance = np.sqrt(u**2 + v**2)
    if shape == "blob":
        k = np.arange(2, 5, dtype=np.float32)[:, None, None]
        wobble = rng.uniform(0, 0.12, (3, 1, 1)) * np.cos(k * angle + rng.uniform(0, 2 * math.pi, (3, 1, 1)))
        return distance <= radius * (1 + wobble.sum(axis=0))
    if shape == "ring":
        ring = np.abs(distance - radius) <= thickness / 2
        # Half of the rings are arcs: keep the part within a random angular span.
        return ring if rng.random() < 0.5 else ring & (np.mod(angle, 2 * math.pi) <= rng.uniform(math.pi, 2 * math.pi))
    return _polygon_mask(rng, u, v, angle, radius)


def _polygon_mask(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, angle: np.ndarray,
                  radius: float) -> np.ndarray:
    """A star-shaped polygon (3-8 vertices around the origin): inside its edge facing each pixel's direction."""
    n = int(rng.integers(3, 9))
    # Even spacing jittered by +-0.2 keeps every gap below pi (1.4 * 2pi/3 for a triangle),
    # so the origin is inside and each pixel's sector is bounded by one edge.
    vertex_angle = (np.arange(n) + rng.uniform(-0.2, 0.2, n)) * (2 * math.pi / n)
    vertex_radius = radius * rng.uniform(0.45, 1.0, n)
    px, py = vertex_radius * np.cos(vertex_angle), vertex_radius * np.sin(vertex_angle)
    relative = np.mod(angle - vertex_angle[0], 2 * math.pi)
    sector = np.searchsorted(vertex_angle - vertex_angle[0], relative, side="right") - 1
    ax, ay = px[sector], py[sector]
    ex, ey = px[(sector + 1) % n] - ax, py[(sector + 1) % n] - ay
    # Point (u, v) is inside when it lies left of edge A->B: cross((u, v), E) <= cross(A, E).
    return u * ey - v * ex <= ax * ey - ay * ex


def _texture(rng: np.random.Generator, sig: _Signature, x: np.ndarray, y: np.ndarray, size: float) -> np.ndarray:
    """The class pattern with this instance's jitter, (3, h, w) float32 over the grid ``x`` by ``y``."""
    period = sig.period * rng.uniform(0.95, 1.05)
    theta = math.radians(sig.angle + rng.uniform(-4.0, 4.0))
    phase_u, phase_v = rng.uniform(0, 2 * math.pi, 2)
    k = 2 * math.pi / period
    k_v = k / 1.5 if sig.pattern == "wavy" else k  # the waves run along v at 1.5x the period
    # Scales and phases go into the 1-D terms, so each 2-D array costs one broadcast add.
    u = (x * (k * math.cos(theta)) + phase_u) + y * (k * math.sin(theta))
    v = (y * (k_v * math.cos(theta)) + phase_v) - x * (k_v * math.sin(theta))
    if sig.pattern == "stripes":
        t = 0.5 + 0.5 * np.sin(u)
    elif sig.pattern == "checker":
        t = np.sin(u) * np.sin(v) > 0
    elif sig.pattern == "dots":
        t = np.cos(u) + np.cos(v) > 1.0
    elif sig.pattern == "wavy":
        t = 0.5 + 0.5 * np.sin(u + 1.9 * np.sin(v))
    else:  # grain: independent random cells of ``period`` px
        cell = int(period + 0.5)
        rows, cols = y.shape[0], x.shape[1]
        cells = rng.random((rows // cell + 1, cols // cell + 1), dtype=np.float32)
        t = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)[:rows, :cols]
    colour0 = np.asarray(sig.colour0, np.float32) + rng.uniform(-15.0, 15.0, 3).astype(np.float32)
    delta = (np.asarray(sig.colour1, np.float32) - sig.colour0) * np.float32(rng.uniform(0.8, 1.1))
    # A linear shading ramp of the base colour across the object, up to about +-12%.
    gy, gx = rng.uniform(-0.25, 0.25, 2) / max(size, 1.0)
    shade = (1 + np.float32(gy) * y) + np.float32(gx) * x
    return delta[:, None, None] * t + colour0[:, None, None] * shade


def _clutter(rng: np.random.Generator, noise: np.ndarray, height: int, width: int) -> np.ndarray:
    """A flat colour patch with grain for background clutter, (3, h, w) float32."""
    colour = rng.uniform(30.0, 225.0, (3, 1, 1)).astype(np.float32)
    return colour + _noise(rng, noise, height, width, 1) * np.float32(rng.uniform(2.0, 6.0))


def _contours(label: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label: a 2 px band straddling each contour."""
    edge = np.zeros(label.shape, bool)
    vertical = label[1:] != label[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    horizontal = label[:, 1:] != label[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _blur(image: np.ndarray, sigma: float) -> None:
    """Separable Gaussian blur with edge padding of a (3, H, W) float32 image, in place."""
    radius = int(math.ceil(2.5 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    height, width = image.shape[1:]
    # One channel at a time: glibc hands freed blocks over 128 KiB back to the kernel, and
    # page-faulting fresh 3-channel temporaries in again cost more than the blur itself.
    for channel in image:
        padded = np.pad(channel, radius, mode="edge")
        rows = sum(k * padded[j:j + height] for j, k in enumerate(kernel))
        channel[...] = sum(k * rows[:, j:j + width] for j, k in enumerate(kernel))
