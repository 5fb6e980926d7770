"""Segmentation data sets (numpy + Pillow only, no torch): synthetic, PASCAL VOC 2012, Cityscapes.

Every data set is a :class:`SegmentationDataset`: a sequence of (image (H, W, 3) uint8
RGB, label (H, W) uint8 class ids, 255 = ignore). :func:`open_dataset` turns the
command-line spec (``synthetic``, ``voc:PATH``, ``cityscapes:PATH``) into one.
"""

from __future__ import annotations

from layercascade.errors import fail
from layercascade.model.data.base import SegmentationDataset, check_limit
from layercascade.model.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CityscapesSegmentation
from layercascade.model.data.images import read_label, read_rgb
from layercascade.model.data.synthetic import SyntheticSegmentation
from layercascade.model.data.voc import VOC_CLASSES, VOC_PALETTE, VOCSegmentation

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "CityscapesSegmentation",
    "SegmentationDataset",
    "SyntheticSegmentation",
    "VOCSegmentation",
    "open_dataset",
    "read_label",
    "read_rgb",
]

_SPEC_HELP = "use synthetic (160x160 images), synthetic:HxW (e.g. synthetic:160x240), voc:PATH or cityscapes:PATH"


def synthetic_size(text: str) -> tuple[int, int]:
    """The image size of a ``synthetic:HxW`` spec: non-square images for the resize modes' tests and studies."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        fail(f"data set spec synthetic:{text}: expected synthetic:HxW such as synthetic:160x240")
    return int(parts[0]), int(parts[1])


def open_dataset(spec: str, split: str = "train", *, seed: int = 0, limit: int | None = None) -> SegmentationDataset:
    """Open the data set named by ``spec`` at ``split``; ``limit`` keeps the first N samples.

    ``synthetic`` is the procedural set at 160×160; ``synthetic:HxW`` at another size (e.g. 160x240).

    ``seed`` picks the synthetic image set (file-backed data sets ignore it).
    """
    check_limit(limit)
    kind, _, path = spec.partition(":")
    if kind == "synthetic":
        size = synthetic_size(path) if path else (160, 160)
        default = len(SyntheticSegmentation(split, seed, size))
        return SyntheticSegmentation(split, seed, size, length=default if limit is None else min(limit, default))
    if kind in ("voc", "cityscapes"):
        if not path:
            fail(f"data set spec {spec!r} has no path; write {kind}:PATH")
        dataset = VOCSegmentation if kind == "voc" else CityscapesSegmentation
        return dataset(path, split, limit=limit)
    fail(f"unknown data set spec {spec!r}; {_SPEC_HELP}")
