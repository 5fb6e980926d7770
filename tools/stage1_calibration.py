"""Why early exits cost accuracy on the synthetic benchmark: stage 1's confidence against its accuracy.

For each checkpoint, on the first ``--limit`` synthetic val images, at ρ (default: the checkpoint's own):

* a reliability diagram of stage 1's max-softmax confidence against the accuracy of its labels, on
  every val pixel and on the pixels it keeps (confidence > ρ), with the expected calibration error;
* how many kept pixels stage 1 labels wrongly, against the reference model's dense error on the same
  pixels, by distance to the nearest ground-truth boundary in stage-1 pixels;
* the class pairs those errors confuse;
* mIoU counterfactuals: the cascade's labels with the reference's dense labels put in at the kept
  pixels near boundaries, at the kept interior pixels, at every kept pixel.

An image pixel's confidence is that of the stage-1 cell it lies in (nearest upsampling, as the masks go
up); its stage-1 label is the argmax of stage 1's bilinearly upsampled scores, as the cascade labels a
pixel whose neighbours are all kept. Pixels labelled 255 (the 2 px band along every object contour) are
not counted; the boundary distance is the chessboard distance to that band.

    python tools/stage1_calibration.py [CHECKPOINT ...] [--reference DSN.pt] [--rho R] [--limit 300]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from results_block import shown, write_block  # tools/, beside this script

from layercascade.model.checkpoint import Checkpoint, load_checkpoint
from layercascade.model.data import open_dataset
from layercascade.model.evaluate import markdown_table
from layercascade.model.metrics import ConfusionMatrix
from layercascade.model.network import LayerCascadeNet, normalize

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "model" / "demo"
CASCADE_DEMO = DEMO_DIR / "lc_tiny_synthetic.pt"
DSN_DEMO = DEMO_DIR / "dsn_tiny_synthetic.pt"
BLOCK = "stage1-calibration"
IGNORE = 255
BATCH = 25
# Reliability bins: fine near 1, where the thresholds are.
CONFIDENCE_EDGES = (0.0, 0.5, 0.7, 0.9, 0.95, 0.985, 0.995, 0.999, 0.9999, 1.0)
ECE_BINS = 15
# Distance classes to the nearest boundary, in stage-1 pixels: ≤ 1, (1, 2], (2, 4], > 4.
DISTANCE_LIMITS = (1, 2, 4)
DISTANCE_NAMES = ("≤ 1", "1–2", "2–4", "> 4")
TOP_CONFUSIONS = 8


@dataclass
class PixelRecords:
    """One entry per counted val pixel (label not 255)."""

    confidence: np.ndarray  # stage 1's max softmax in the pixel's stage-1 cell
    truth: np.ndarray
    stage1: np.ndarray  # stage 1's label
    cascade: np.ndarray  # the cascade's label at ρ
    reference: np.ndarray  # the reference model's dense label
    kept: np.ndarray  # decided at stage 1 at ρ
    distance_class: np.ndarray  # index into DISTANCE_NAMES


@dataclass
class Analysis:
    name: str
    rho: float
    records: PixelRecords
    miou: dict[str, float]  # counterfactual name → mIoU
    class_iou: dict[str, np.ndarray]  # "cascade" / "reference dense" → per-class IoU


def distance_classes(labels: torch.Tensor, stride: int) -> torch.Tensor:
    """Index into DISTANCE_NAMES of each pixel of ``labels`` (N, H, W): its chessboard distance to the
    nearest 255 pixel in units of ``stride`` image pixels (a stage-1 pixel)."""
    band = (labels == IGNORE).float()[:, None]
    classes = torch.full(labels.shape, len(DISTANCE_LIMITS), dtype=torch.uint8)
    for index, limit in reversed(list(enumerate(DISTANCE_LIMITS))):
        reach = limit * stride
        near = F.max_pool2d(band, 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0
        classes[near] = index
    return classes


def analyse(checkpoint: Checkpoint, name: str, reference: LayerCascadeNet, rho: float, limit: int) -> Analysis:
    """Stage 1 of ``checkpoint`` on the first ``limit`` synthetic val images at ``rho``."""
    model = checkpoint.build_model()
    dataset = open_dataset("synthetic", "val", limit=limit)
    classes = len(checkpoint.classes)
    variants = ("cascade", "kept ≤ 1 from a boundary", "kept ≤ 2 from a boundary", "kept > 2 from a boundary",
                "every kept pixel", "every propagated pixel", "reference dense")
    matrices = {variant: ConfusionMatrix(classes) for variant in variants}
    parts: dict[str, list[np.ndarray]] = {field: [] for field in PixelRecords.__dataclass_fields__}
    for start in range(0, len(dataset), BATCH):
        samples = [dataset[i] for i in range(start, min(start + BATCH, len(dataset)))]
        images = torch.from_numpy(np.stack([image for image, _ in samples]))
        labels = torch.from_numpy(np.stack([label for _, label in samples]).astype(np.int64))
        x = normalize(images, tuple(checkpoint.mean), tuple(checkpoint.std))
        with torch.no_grad():
            output = model(x, rho)
            dense = reference(x, 1.0).labels
        size = tuple(labels.shape[-2:])
        stage1_scores = output.scores[0]
        stride = size[0] // stage1_scores.shape[-2]
        confidence = F.interpolate(torch.softmax(stage1_scores, 1).amax(1, keepdim=True), size=size,
                                   mode="nearest")[:, 0]
        stage1 = F.interpolate(stage1_scores, size=size, mode="bilinear", align_corners=False).argmax(1)
        kept = F.interpolate(1 - output.masks[0], size=size, mode="nearest")[:, 0] > 0
        distance = distance_classes(labels, stride)
        fills = {"cascade": torch.zeros_like(kept), "kept ≤ 1 from a boundary": kept & (distance == 0),
                 "kept ≤ 2 from a boundary": kept & (distance <= 1), "kept > 2 from a boundary": kept & (distance > 1),
                 "every kept pixel": kept, "every propagated pixel": ~kept, "reference dense": torch.ones_like(kept)}
        for variant, fill in fills.items():
            matrices[variant].update(torch.where(fill, dense, output.labels).numpy(), labels.numpy())
        valid = labels != IGNORE
        for field, values in (("confidence", confidence), ("truth", labels), ("stage1", stage1),
                              ("cascade", output.labels), ("reference", dense), ("kept", kept),
                              ("distance_class", distance)):
            parts[field].append(values[valid].numpy())
    records = PixelRecords(**{field: np.concatenate(values) for field, values in parts.items()})
    return Analysis(name, rho, records, {variant: matrices[variant].miou() for variant in variants},
                    {variant: matrices[variant].iou() for variant in ("cascade", "reference dense")})


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / n) |accuracy_b − confidence_b| over ``bins`` equal-width confidence bins, in percent."""
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, correct, bins) - np.bincount(index, confidence, bins))
    return float(gap.sum() / max(count.sum(), 1) * 100)


def reliability(confidence: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Per CONFIDENCE_EDGES bin: share of pixels, mean confidence and accuracy."""
    index = np.clip(np.searchsorted(CONFIDENCE_EDGES, confidence, side="right") - 1, 0, len(CONFIDENCE_EDGES) - 2)
    rows = []
    for b in range(len(CONFIDENCE_EDGES) - 1):
        inside = index == b
        n = int(inside.sum())
        rows.append({"bin": [CONFIDENCE_EDGES[b], CONFIDENCE_EDGES[b + 1]], "pixels": n,
                     "share": n / len(confidence) * 100,
                     "confidence": float(confidence[inside].mean()) if n else None,
                     "accuracy": float(correct[inside].mean()) if n else None})
    return rows


def summarise(analysis: Analysis, classes: Sequence[str]) -> dict:
    r = analysis.records
    correct, kept = r.stage1 == r.truth, r.kept
    reference_correct = r.reference == r.truth
    wrong_kept = kept & ~correct
    by_distance = []
    for index, name in enumerate(DISTANCE_NAMES):
        inside = kept & (r.distance_class == index)
        n = max(int(inside.sum()), 1)
        by_distance.append({"distance": name, "share_of_kept": inside.sum() / max(kept.sum(), 1) * 100,
                            "stage1_error": (inside & ~correct).sum() / n * 100,
                            "reference_error": (inside & ~reference_correct).sum() / n * 100,
                            "share_of_kept_errors": (inside & ~correct).sum() / max(wrong_kept.sum(), 1) * 100})
    pairs = np.bincount(r.truth[wrong_kept].astype(np.int64) * len(classes) + r.stage1[wrong_kept],
                        minlength=len(classes) ** 2)
    top = np.argsort(pairs)[::-1][:TOP_CONFUSIONS]
    confusions = [{"truth": classes[p // len(classes)], "predicted": classes[p % len(classes)],
                   "share_of_kept_errors": pairs[p] / max(wrong_kept.sum(), 1) * 100} for p in top if pairs[p]]
    propagated = ~kept
    iou_drop = (analysis.class_iou["reference dense"] - analysis.class_iou["cascade"]) * 100
    order = [c for c in np.argsort(np.nan_to_num(iou_drop, nan=-np.inf))[::-1][:TOP_CONFUSIONS] if iou_drop[c] > 0]
    return {
        "name": analysis.name, "rho": analysis.rho, "pixels": len(r.truth),
        "propagated_cascade_error": (propagated & (r.cascade != r.truth)).sum() / max(propagated.sum(), 1) * 100,
        "propagated_reference_error": (propagated & ~reference_correct).sum() / max(propagated.sum(), 1) * 100,
        "kept_cascade_error": (kept & (r.cascade != r.truth)).sum() / max(kept.sum(), 1) * 100,
        "class_iou_drops": [{"class": classes[c], "reference": analysis.class_iou["reference dense"][c] * 100,
                             "cascade": analysis.class_iou["cascade"][c] * 100} for c in order],
        "kept_share": kept.mean() * 100,
        "stage1_accuracy": correct.mean() * 100,
        "ece": expected_calibration_error(r.confidence, correct),
        "kept_confidence": float(r.confidence[kept].mean()) * 100,
        "kept_accuracy": correct[kept].mean() * 100,
        "kept_ece": expected_calibration_error(r.confidence[kept], correct[kept]),
        "reference_kept_accuracy": reference_correct[kept].mean() * 100,
        "reliability_all": reliability(r.confidence, correct),
        "reliability_kept": reliability(r.confidence[kept], correct[kept]),
        "by_distance": by_distance, "confusions": confusions, "miou": analysis.miou,
    }


def plot(summaries: list[dict], path: Path) -> None:
    """Left: stage-1 error rate against 1 − confidence (log–log; the diagonal is calibrated). Right: error
    rate of the kept pixels by distance to the nearest boundary, stage 1 against the reference dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for summary, colour in zip(summaries, colours):
        # Bins with no error have no place on the log scale; bins under 100 pixels say little.
        rows = [row for row in summary["reliability_all"] if row["pixels"] >= 100 and row["accuracy"] < 1]
        left.plot([1 - row["confidence"] for row in rows], [1 - row["accuracy"] for row in rows], "o-", color=colour,
                  markersize=4, label=summary["name"])
    left.axvline(1 - summaries[0]["rho"], color="0.3", linewidth=0.8)
    left.annotate(f"ρ = {summaries[0]['rho']:g}: kept to the right", (1 - summaries[0]["rho"], 3e-5), fontsize=7,
                  xytext=(3, 0), textcoords="offset points")
    left.plot([1e-5, 1], [1e-5, 1], ":", color="0.5", label="calibrated (error = 1 − confidence)")
    left.set_xscale("log")
    left.set_yscale("log")
    left.invert_xaxis()
    left.set_xlabel("1 − stage-1 confidence (bin mean)")
    left.set_ylabel("stage-1 error rate")
    left.set_title("Stage 1 on all counted val pixels (above the diagonal: over-confident)", fontsize=9)
    left.legend(fontsize=7)
    width = 0.8 / (2 * len(summaries))
    for k, (summary, colour) in enumerate(zip(summaries, colours)):
        xs = np.arange(len(DISTANCE_NAMES))
        stage1 = [row["stage1_error"] for row in summary["by_distance"]]
        reference = [row["reference_error"] for row in summary["by_distance"]]
        right.bar(xs + (2 * k - len(summaries) + 0.5) * width, stage1, width, color=colour,
                  label=f"{summary['name']}: stage 1")
        right.bar(xs + (2 * k - len(summaries) + 1.5) * width, reference, width, color=colour, alpha=0.4,
                  hatch="//", label=f"{summary['name']}: reference dense")
    right.set_xticks(np.arange(len(DISTANCE_NAMES)), DISTANCE_NAMES)
    right.set_xlabel("distance to the nearest boundary, stage-1 pixels")
    right.set_ylabel("% of kept pixels labelled wrongly")
    right.set_title(f"Pixels kept at stage 1 (ρ = {summaries[0]['rho']:g})", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(summaries: list[dict], command: str, reference: str, limit: int, figure: str | None) -> str:
    def pct(value: float) -> str:
        return f"{value:.2f}"

    names = [s["name"] for s in summaries]
    overview = markdown_table(
        ["", *names],
        [["% of val pixels kept at stage 1", *(pct(s["kept_share"]) for s in summaries)],
         ["stage-1 accuracy, all pixels %", *(pct(s["stage1_accuracy"]) for s in summaries)],
         ["stage-1 ECE, all pixels (15 bins) %", *(pct(s["ece"]) for s in summaries)],
         ["kept: mean confidence %", *(pct(s["kept_confidence"]) for s in summaries)],
         ["kept: stage-1 accuracy %", *(pct(s["kept_accuracy"]) for s in summaries)],
         ["kept: stage-1 error %", *(pct(100 - s["kept_accuracy"]) for s in summaries)],
         ["kept: error the confidence promises %", *(pct(100 - s["kept_confidence"]) for s in summaries)],
         ["kept: ECE %", *(pct(s["kept_ece"]) for s in summaries)],
         ["kept: reference dense error %", *(pct(100 - s["reference_kept_accuracy"]) for s in summaries)],
         ["kept: cascade's final-label error %", *(pct(s["kept_cascade_error"]) for s in summaries)],
         ["propagated (stages 2–3): cascade error %", *(pct(s["propagated_cascade_error"]) for s in summaries)],
         ["propagated: reference dense error %", *(pct(s["propagated_reference_error"]) for s in summaries)]])
    bins = markdown_table(
        ["stage-1 confidence", *(f"{n}: % px / mean conf / acc" for n in names)],
        [[f"{row['bin'][0]:g}–{row['bin'][1]:g}",
          *(f"{s['reliability_all'][b]['share']:.1f} / "
            + ("—" if s["reliability_all"][b]["confidence"] is None else
               f"{100 * s['reliability_all'][b]['confidence']:.2f} / {100 * s['reliability_all'][b]['accuracy']:.2f}")
            for s in summaries)]
         for b, row in enumerate(summaries[0]["reliability_all"])])
    distance = markdown_table(
        ["distance to boundary (stage-1 px)",
         *(f"{n}: % of kept / stage-1 err % / ref err % / % of kept errors" for n in names)],
        [[name, *(f"{s['by_distance'][k]['share_of_kept']:.1f} / {s['by_distance'][k]['stage1_error']:.2f} / "
                  f"{s['by_distance'][k]['reference_error']:.2f} / {s['by_distance'][k]['share_of_kept_errors']:.1f}"
                  for s in summaries)]
         for k, name in enumerate(DISTANCE_NAMES)])
    confusions = "\n".join(
        f"- {s['name']}: " + "; ".join(f"{c['truth']} → {c['predicted']} {c['share_of_kept_errors']:.1f} %"
                                        for c in s["confusions"]) for s in summaries)
    drops = "\n".join(
        f"- {s['name']}: " + "; ".join(f"{d['class']} {d['reference']:.1f} → {d['cascade']:.1f}"
                                        for d in s["class_iou_drops"]) for s in summaries)
    counterfactual = markdown_table(
        ["labels", *names],
        [[variant if variant in ("cascade", "reference dense") else f"cascade, reference labels at {variant}",
          *(f"{s['miou'][variant]:.2f}" for s in summaries)] for variant in summaries[0]["miou"]])
    picture = f"\n![stage-1 reliability]({figure})\n" if figure else ""
    return f"""Generated by `{command}` (first {limit} synthetic val images; ρ = {summaries[0]['rho']:g}). "Kept": decided at stage 1 (confidence > ρ); pixels in
the 255 band along object contours are not counted; distances are chessboard distances to that band in
stage-1 pixels (8 image pixels); "reference" is `{reference}` run densely (ρ = 1).
{picture}
{overview}

Stage 1's reliability on all counted pixels, per confidence bin:

{bins}

Kept pixels by distance to the nearest boundary:

{distance}

The most frequent confusions among kept pixels that stage 1 labels wrongly (truth → stage 1, share of
those errors):

{confusions}

The classes whose IoU drops most from the reference run densely to the cascade (reference → cascade):

{drops}

mIoU when the reference's dense labels replace the cascade's at some kept pixels (how much of the
cascade's loss each set of pixels explains):

{counterfactual}"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path,
                        help="checkpoints to analyse (default: the bundled cascade- and DSN-trained demo models)")
    parser.add_argument("--reference", type=Path, default=DSN_DEMO,
                        help="model whose dense labels are the yardstick (default: the bundled DSN-trained model)")
    parser.add_argument("--rho", type=float, help="threshold (default: each checkpoint's own)")
    parser.add_argument("--limit", type=int, default=300, help="val images (default: 300)")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "stage1_calibration.png",
                        help="picture to write (default: docs/stage1_calibration.png)")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "training.md",
                        help=f"file whose <!-- {BLOCK} --> block is rewritten (default: docs/training.md)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    checkpoints = args.checkpoints or [CASCADE_DEMO, DSN_DEMO]
    torch.manual_seed(0)
    reference = load_checkpoint(args.reference).build_model()
    summaries = []
    for path in checkpoints:
        checkpoint = load_checkpoint(path)
        rho = checkpoint.default_rho if args.rho is None else args.rho
        name = f"{checkpoint.training.get('mode', '?')}-trained {path.name}"
        summaries.append(summarise(analyse(checkpoint, name, reference, rho, args.limit), checkpoint.classes))
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1, default=float))
    plot(summaries, args.figure)
    figure = args.figure.relative_to(args.markdown.parent) if args.figure.is_relative_to(args.markdown.parent) else None
    command = shlex.join(["python", "tools/stage1_calibration.py", *map(shown, checkpoints), "--reference",
                          shown(args.reference), "--limit", str(args.limit)]
                         + ([] if args.rho is None else ["--rho", f"{args.rho:g}"]))
    block = markdown(summaries, command, shown(args.reference), args.limit,
                     None if figure is None else str(figure))
    write_block(args.markdown, BLOCK, block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
