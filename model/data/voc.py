"""PASCAL VOC 2012 segmentation (the paper's benchmark: 21 classes, 255 = boundary/ignore).

Layout (``root`` may be the ``VOC2012`` dir, the ``VOCdevkit`` dir, or the dir holding
``VOCdevkit``)::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png      palette PNG: stored indices are class ids
    VOC2012/ImageSets/Segmentation/<split>.txt   ids, one per line (train, val, trainval)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from layercascade.errors import fail
from layercascade.model.data.base import SegmentationDataset, check_limit
from layercascade.model.data.images import read_label, read_rgb

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def _voc_colormap(n: int) -> np.ndarray:
    """The VOC devkit's colour map: the bits of the class id spread over R, G, B from the top bit down."""
    cmap = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, rgb = k, [0, 0, 0]
        for bit in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - bit)
            c >>= 3
        cmap[k] = rgb
    return cmap


VOC_PALETTE: np.ndarray = _voc_colormap(len(VOC_CLASSES))
VOC_PALETTE.flags.writeable = False

_LAYOUT = "expected JPEGImages/, SegmentationClass/, ImageSets/Segmentation/"


def _find_voc2012(root: Path) -> Path | None:
    """The VOC2012 directory under ``root`` (itself, VOC2012/, or VOCdevkit/VOC2012/)."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir() \
                and (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    return None


class VOCSegmentation(SegmentationDataset):
    """VOC 2012 segmentation split ``split`` under ``root``; ``limit`` keeps the first N ids."""

    name = "voc"
    classes = VOC_CLASSES
    palette = VOC_PALETTE

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, limit: int | None = None) -> None:
        check_limit(limit)
        root = Path(root).expanduser()
        base = _find_voc2012(root)
        if base is None:
            fail(f"voc:{root}: no VOC2012 tree found ({_LAYOUT}); point it at VOCdevkit/VOC2012 or a parent")
        sets = base / "ImageSets" / "Segmentation"
        list_file = sets / f"{split}.txt"
        if not list_file.is_file():
            available = sorted(p.stem for p in sets.glob("*.txt"))
            fail(f"voc:{root}: no split {split!r} ({list_file} missing); available: {', '.join(available) or 'none'}")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            fail(f"voc:{root}: split {split!r} is empty ({list_file} lists no ids)")
        ids = ids[:limit]
        # Check every file now: a missing one should stop the run before training starts.
        for sample in ids:
            if not (base / "JPEGImages" / f"{sample}.jpg").is_file():
                fail(f"voc:{root}: image {sample}.jpg listed in {split}.txt is missing from JPEGImages/")
            if not (base / "SegmentationClass" / f"{sample}.png").is_file():
                fail(f"voc:{root}: label {sample}.png listed in {split}.txt is missing from SegmentationClass/")
        self.root = base
        self.split = split
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.ids[i]
        image = read_rgb(self.root / "JPEGImages" / f"{sample}.jpg", exif_transpose=False)
        label = read_label(self.root / "SegmentationClass" / f"{sample}.png")
        if image.shape[:2] != label.shape:
            fail(f"voc:{self.root}: {sample}: image is {image.shape[1]}x{image.shape[0]} but label is "
                 f"{label.shape[1]}x{label.shape[0]}; the pair must have the same size")
        return image, label

    def _sample_id(self, i: int) -> str:
        return self.ids[i]
