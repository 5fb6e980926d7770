"""What a cascade run returns for one image (backend-independent, numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from layercascade.errors import fail
from layercascade.model.data.placement import SCALE, upsample_stage_map

NO_CONFIDENCE = ("no confidence: the model dir was exported before layercascade wrote it (lc.json version 2); "
                 "re-export it with lc-export")


@dataclass
class CascadeResult:
    """The cascade's answer for one image.

    Attributes:
        labels: (H, W) uint8 class ids at the image's original size.
        stage_map: (h, w) uint8 at the stage resolution (input size / 8): 1, 2 or 3 = the
            stage that decided the pixel (like the paper's Fig. 4).
        stage_fractions: share of stage-resolution pixels decided at stages 1, 2, 3.
        timings: milliseconds per step (e.g. "preprocess", "stage1", "stage2", "stage3",
            "total"), measured by the backend.
        confidence: (h, w) float32 in [0, 1] on the stage map's grid: the max softmax probability of the scores of
            the stage that decided the pixel (low: a hard pixel); None for a model dir exported without it.
            :meth:`confidence_at_image_size` gives it at the image's size.
        stage_extent: how many stage pixels the image spans, (height, width) (the last row and column of the
            maps may be partly padding); None: the image's size / 8.
    """

    labels: np.ndarray
    stage_map: np.ndarray
    stage_fractions: tuple[float, float, float]
    timings: dict[str, float] = field(default_factory=dict)
    confidence: np.ndarray | None = None
    stage_extent: tuple[float, float] | None = None

    @property
    def stage_masks(self) -> np.ndarray:
        """(3, h, w) bool: pixel decided at stage k (index k − 1)."""
        return np.stack([self.stage_map == k for k in (1, 2, 3)])

    def checked_confidence(self) -> np.ndarray:
        """:attr:`confidence`, or one line if the model has no confidence output."""
        if self.confidence is None:
            fail(NO_CONFIDENCE)
        return self.confidence

    def confidence_at_image_size(self) -> np.ndarray:
        """(H, W) float32 in [0, 1]: :attr:`confidence` interpolated bilinearly to the image's size (as the label
        map's scores are); one line if the model has no confidence output."""
        height, width = self.labels.shape
        extent = self.stage_extent or (height / SCALE, width / SCALE)
        return upsample_stage_map(self.checked_confidence(), extent, (height, width))
