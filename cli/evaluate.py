"""lc-eval: mIoU and per-stage pixel fractions of a checkpoint, at one ρ or the paper's sweep."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from layercascade.cli.args import add_data_arguments, add_image_arguments, add_rho_class_argument, rho
from layercascade.contract import check_rho_class, rho_class_value, rho_or_default
from layercascade.errors import fail, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-eval",
        description="Evaluate a Layer Cascade checkpoint: confusion-matrix mIoU over the classes present "
                    "(label 255 ignored), per-class IoU and the share of pixels decided at each stage.",
    )
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="checkpoint .pt written by lc-train (runs the PyTorch reference at each image's own "
                             "size) or model directory written by lc-export (runs ONNX Runtime, images placed by "
                             "--resize) (default: the bundled demo checkpoint)")
    add_data_arguments(parser, split="val")
    add_image_arguments(parser, tiles=False)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rho", type=rho, default=None, metavar="R|R2,R3",
                       help="confidence threshold ρ in (0, 1] for both stages, or ρ₂,ρ₃ (stage 1 → 2, stage 2 → 3); "
                            "1 = dense network (default: the checkpoint's)")
    which.add_argument("--rho-sweep", action="store_true",
                       help="evaluate at the paper's ρ values 1, 0.995, 0.985, 0.970, 0.950, 0.930, 0.900, 0.800")
    add_rho_class_argument(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object {miou, per_class_iou, stage_fractions, rho, rho_class, images} "
                             "(a list of them with --rho-sweep)")
    parser.add_argument("--per-class", action="store_true", help="also print the per-class IoU table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from layercascade.model.data import open_dataset
    from layercascade.model.evaluate import PAPER_RHOS, evaluate, format_per_class, format_table

    predict, classes, default_rho, rho_class = load_predictor(args.checkpoint, args.resize, args.rho_class)
    dataset = open_dataset(args.data, args.split, seed=args.seed, limit=args.limit)
    if len(dataset.classes) != len(classes):
        fail(f"data set {args.data!r} has {len(dataset.classes)} classes, the model {len(classes)}")
    rhos = PAPER_RHOS if args.rho_sweep else [rho_or_default(args.rho, default_rho)]
    results = evaluate(predict, dataset, rhos, classes, progress=not args.json)
    if args.json:
        payload = [{**r.to_dict(), "rho_class": rho_class} for r in results]
        print(json.dumps(payload if args.rho_sweep else payload[0]))
        return 0
    print(f"{args.checkpoint or 'demo model'} on {args.data} {args.split} ({len(dataset)} images)")
    print(format_table(results))
    if args.per_class:
        for result in results:
            print()
            print(format_per_class(result))
    return 0


def load_predictor(source: str | None, resize: str | None = None, rho_class: dict[str, float] | None = None):
    """(predictor, class names, default ρ, per-class thresholds by name) for a checkpoint file or an exported model
    directory (its images placed by ``resize``; None: the model's default), the predictor at ``rho_class``
    (None: the model's default)."""
    if source is not None and Path(source).is_dir():
        from layercascade.runtime.cascade import Cascade

        cascade = Cascade.load(source, backend="ort")  # the exact fp32 reference (auto may run bf16)
        by_index = cascade.rho_class(rho_class)
        return (functools.partial(cascade.predict, resize=resize, rho_class=by_index), cascade.classes,
                cascade.default_rho, rho_class_value(by_index, cascade.classes))
    if resize not in (None, "none"):
        fail(f"--resize {resize}: the PyTorch reference runs each image at its own size; evaluate a model dir "
             "(lc-export) to compare the resize modes")
    from layercascade.model.checkpoint import load_checkpoint
    from layercascade.model.evaluate import torch_predictor

    checkpoint = load_checkpoint(source)
    by_index = check_rho_class(rho_class, checkpoint.classes)
    predict = torch_predictor(checkpoint.build_model(), checkpoint.mean, checkpoint.std, by_index)
    return predict, checkpoint.classes, checkpoint.default_rho, rho_class_value(by_index, checkpoint.classes)


def cli() -> None:
    raise SystemExit(run_cli(main))
