"""Confusion-matrix mIoU against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from layercascade.model.metrics import ConfusionMatrix


def test_miou_by_hand() -> None:
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], dtype=np.uint8)
    prediction = np.array([[0, 1, 1, 1], [2, 0, 2, 3]], dtype=np.uint8)
    cm = ConfusionMatrix(num_classes=5)
    cm.update(prediction, target)
    # Counted pixels: 7 (one 255). Rows = truth.
    expected = np.zeros((5, 5), dtype=np.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[1, 3] = 1
    expected[2, 2] = 1
    expected[2, 0] = 1
    assert np.array_equal(cm.matrix, expected)
    # IoU: class 0: 1/(2+2-1)=1/3; class 1: 2/(3+3-2)=1/2; class 2: 1/(2+1-1)=1/2;
    # class 3: 0/(0+1-0)=0 (predicted but absent); class 4: absent everywhere -> not counted.
    iou = cm.iou()
    assert iou[:4] == pytest.approx([1 / 3, 1 / 2, 1 / 2, 0.0])
    assert np.isnan(iou[4])
    assert cm.miou() == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    assert cm.pixel_accuracy() == pytest.approx(100 * 4 / 7)


def test_accumulates_over_images_and_checks_input() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    cm.update(np.ones((1, 3), np.uint8), np.ones((1, 3), np.uint8))
    assert cm.miou() == 100.0 and cm.matrix.sum() == 7
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="below 3"):
        cm.update(np.full((1, 1), 7), np.zeros((1, 1), np.uint8))
    assert ConfusionMatrix(2).miou() == 0.0
