"""Cityscapes fine annotations, mapped from the 34 label ids to the 19 train ids.

Layout (``root`` holds both ``leftImg8bit/`` and ``gtFine/``)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   8-bit label ids

Label ids outside the 19 evaluated classes become 255 (ignore), as in the official
``cityscapesscripts`` label table.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from layercascade.errors import fail
from layercascade.model.data.base import SegmentationDataset, check_limit
from layercascade.model.data.images import read_label, read_rgb

# (train id order) name, label id, colour -- from cityscapesscripts/helpers/labels.py.
_TABLE: tuple[tuple[str, int, tuple[int, int, int]], ...] = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

CITYSCAPES_CLASSES: tuple[str, ...] = tuple(name for name, _, _ in _TABLE)
CITYSCAPES_PALETTE: np.ndarray = np.array([colour for _, _, colour in _TABLE], np.uint8)
CITYSCAPES_PALETTE.flags.writeable = False


def _label_to_train_id() -> np.ndarray:
    """The 256-entry lookup table label id -> train id, 255 for every id that is not evaluated."""
    table = np.full(256, 255, np.uint8)
    for train_id, (_, label_id, _) in enumerate(_TABLE):
        table[label_id] = train_id
    table.flags.writeable = False
    return table


LABEL_TO_TRAIN_ID: np.ndarray = _label_to_train_id()

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes ``split`` (train, val, test) under ``root``, sorted by file name; ``limit`` keeps the first N."""

    name = "cityscapes"
    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, limit: int | None = None) -> None:
        check_limit(limit)
        root = Path(root).expanduser()
        if not (root / "leftImg8bit").is_dir() or not (root / "gtFine").is_dir():
            fail(f"cityscapes:{root}: no Cityscapes tree found (expected leftImg8bit/ and gtFine/ side by side)")
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            available = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
            fail(f"cityscapes:{root}: no split {split!r} ({image_dir} missing); "
                 f"available: {', '.join(available) or 'none'}")
        images = sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}"))
        if not images:
            fail(f"cityscapes:{root}: split {split!r} is empty (no <city>/*{_IMAGE_SUFFIX} under {image_dir})")
        images = images[:limit]
        labels = [root / "gtFine" / split / path.parent.name / (path.name[: -len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX)
                  for path in images]
        # Check every label now: a missing one should stop the run before training starts.
        for label in labels:
            if not label.is_file():
                fail(f"cityscapes:{root}: label {label.relative_to(root)} is missing; fetch gtFine for split {split!r}")
        self.root = root
        self.split = split
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.images[i], exif_transpose=False)
        label = LABEL_TO_TRAIN_ID[read_label(self.labels[i])]
        if image.shape[:2] != label.shape:
            fail(f"cityscapes:{self.root}: {self._sample_id(i)}: image is {image.shape[1]}x{image.shape[0]} "
                 f"but label is {label.shape[1]}x{label.shape[0]}; the pair must have the same size")
        return image, label

    def _sample_id(self, i: int) -> str:
        return self.images[i].name[: -len(_IMAGE_SUFFIX)]
