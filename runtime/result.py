"""What a cascade run returns for one image (backend-independent, numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    """

    labels: np.ndarray
    stage_map: np.ndarray
    stage_fractions: tuple[float, float, float]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stage_masks(self) -> np.ndarray:
        """(3, h, w) bool: pixel decided at stage k (index k − 1)."""
        return np.stack([self.stage_map == k for k in (1, 2, 3)])
