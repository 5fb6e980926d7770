"""Confusion-matrix segmentation metrics (numpy only, so every backend can use them)."""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates a ``num_classes × num_classes`` confusion matrix (rows = ground truth).

    Pixels labelled ``ignore_index`` are not counted. IoU of class c is
    ``TP / (TP + FP + FN)``; mIoU averages over the classes *present*, i.e. those that
    occur in the ground truth or the prediction (union > 0), as VOC does once every
    class occurs.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """Add one image (or batch) of predicted and true class ids of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
        valid = target != self.ignore_index
        t = target[valid].astype(np.int64)
        p = prediction[valid].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or p.max() >= self.num_classes or p.min() < 0):
            raise ValueError(f"class ids must be below {self.num_classes} (or {self.ignore_index} to ignore)")
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1]; NaN for classes absent from both truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over present classes, in percent (0–100); 0 when nothing was counted."""
        iou = self.iou()
        return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else 0.0

    def pixel_accuracy(self) -> float:
        """Share of counted pixels labelled correctly, in percent."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total * 100) if total else 0.0
