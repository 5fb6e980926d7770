"""Evaluation of a cascade on a data set: mIoU, per-class IoU, stage fractions.

The loop is backend-free: it calls a *predictor* ``(image, rho) -> (labels, stage_fractions,
stage_pixels)``; :func:`torch_predictor` wraps a PyTorch model, and a loaded model's
``Cascade.predict`` (``runtime/``) is one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from layercascade.contract import RhoClass, RhoLike, format_rho, rho_value
from layercascade.model.data import SegmentationDataset
from layercascade.model.metrics import ConfusionMatrix

if TYPE_CHECKING:
    from layercascade.model.network import LayerCascadeNet

# (image (H, W, 3) uint8, rho: one ρ or (ρ₂, ρ₃)) -> (labels (H, W), stage fractions (3,), stage-resolution pixels)
Predictor = Callable[[np.ndarray, RhoLike], tuple[np.ndarray, np.ndarray, int]]

# The paper's Table 1 thresholds.
PAPER_RHOS = (1.0, 0.995, 0.985, 0.970, 0.950, 0.930, 0.900, 0.800)


@dataclass
class EvalResult:
    """Scores of one ρ over a data set (``miou`` and IoUs in percent, fractions in [0, 1]; ``rho`` one number
    when both stages share it, else [ρ₂, ρ₃])."""

    miou: float
    per_class_iou: dict[str, float | None]
    stage_fractions: list[float]
    rho: float | list[float]
    images: int
    pixel_accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


def torch_predictor(model: LayerCascadeNet, mean: Sequence[float], std: Sequence[float],
                    rho_class: RhoClass | None = None) -> Predictor:
    """A predictor running the PyTorch reference cascade on the CPU (with per-class thresholds ``rho_class``,
    class index → ρ_c)."""
    import torch

    from layercascade.model.network import normalize

    model.eval()

    def predict(image: np.ndarray, rho: RhoLike) -> tuple[np.ndarray, np.ndarray, int]:
        x = normalize(torch.from_numpy(np.ascontiguousarray(image))[None], tuple(mean), tuple(std))
        with torch.no_grad():
            output = model(x, rho, rho_class)
        return output.labels[0].numpy(), output.stage_fractions[0].numpy(), output.masks[0][0].numel()

    return predict


def evaluate(
    predict: Predictor,
    dataset: SegmentationDataset,
    rhos: Sequence[Any],
    classes: Sequence[str],
    progress: bool = True,
    rho_of: Callable[[Any], RhoLike] = lambda rho: rho,
) -> list[EvalResult]:
    """Run ``predict`` at every ρ of ``rhos`` on each image of ``dataset`` (a setting ``predict`` takes: a ρ, or
    what ``rho_of`` tells the ρ of, e.g. a ρ and per-class thresholds).

    Stage fractions are averaged over images weighted by their stage-resolution area.
    """
    matrices = [ConfusionMatrix(len(classes), dataset.ignore_index) for _ in rhos]
    fraction_sums = np.zeros((len(rhos), 3))
    area = 0.0
    for index in tqdm(range(len(dataset)), desc="evaluating", unit="img", disable=not progress, leave=False):
        image, label = dataset[index]
        for k, rho in enumerate(rhos):
            labels, fractions, pixels = predict(image, rho)
            matrices[k].update(labels, label)
            fraction_sums[k] += np.asarray(fractions) * pixels
        area += pixels
    results = []
    for k, rho in enumerate(rhos):
        iou = matrices[k].iou()
        results.append(EvalResult(
            miou=round(matrices[k].miou(), 4),
            per_class_iou={name: (None if np.isnan(v) else round(float(v) * 100, 4)) for name, v in zip(classes, iou)},
            stage_fractions=[round(float(f), 6) for f in fraction_sums[k] / max(area, 1.0)],
            rho=rho_value(rho_of(rho)),
            images=len(dataset),
            pixel_accuracy=round(matrices[k].pixel_accuracy(), 4),
        ))
    return results


def format_table(results: Sequence[EvalResult]) -> str:
    """A table like the paper's Table 1: one column per ρ."""
    header = ["ρ"] + [format_rho(r.rho) for r in results]
    rows = [
        ["% pixels stopping at stage 1"] + [f"{100 * r.stage_fractions[0]:.1f}" for r in results],
        ["% stopping at stage 2"] + [f"{100 * r.stage_fractions[1]:.1f}" for r in results],
        ["% reaching stage 3"] + [f"{100 * r.stage_fractions[2]:.1f}" for r in results],
        ["mIoU"] + [f"{r.miou:.2f}" for r in results],
        ["pixel accuracy"] + [f"{r.pixel_accuracy:.2f}" for r in results],
    ]
    return markdown_table(header, rows)


def format_per_class(result: EvalResult) -> str:
    """Per-class IoU of one result, one row per class."""
    rows = [[name, "—" if v is None else f"{v:.2f}"] for name, v in result.per_class_iou.items()]
    return markdown_table(["class", f"IoU (ρ = {format_rho(result.rho)})"], rows)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded for reading in a terminal."""
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
