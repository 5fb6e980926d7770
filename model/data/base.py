"""The interface every segmentation data set implements.

A data set is a sequence of (image, label) pairs: image (H, W, 3) uint8 RGB, label (H, W)
uint8 class ids with ``ignore_index`` (255) for pixels that count for nothing. Numpy only,
so the runtime can evaluate exported models without torch.
"""

from __future__ import annotations

import numpy as np

from layercascade.errors import fail


class SegmentationDataset:
    """Base class: subclasses set the class attributes and implement ``__len__``, ``_load``, ``_sample_id``."""

    name: str = ""
    classes: tuple[str, ...] = ()
    palette: np.ndarray = np.zeros((0, 3), np.uint8)  # (len(classes), 3) uint8 RGB
    ignore_index: int = 255

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i``: image (H, W, 3) uint8 RGB and label (H, W) uint8; IndexError past the end."""
        return self._load(self._index(i))

    def sample_id(self, i: int) -> str:
        """A stable name for sample ``i``, usable as a file stem."""
        return self._sample_id(self._index(i))

    def _index(self, i: int) -> int:
        """Normalise a sequence index (negative counts from the end); IndexError when out of range."""
        n = len(self)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"{self.name} index {i} out of range for {n} samples")
        return j

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _sample_id(self, i: int) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self)} samples, {len(self.classes)} classes>"


def check_limit(limit: int | None) -> None:
    """Reject a sample limit below 1 (``None`` means no limit)."""
    if limit is not None and limit < 1:
        fail(f"limit must be at least 1 (got {limit}); leave it unset to use the whole split")
