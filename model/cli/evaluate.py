"""lc-eval: mIoU and per-stage pixel fractions of a checkpoint, at one ρ or the paper's sweep."""

from __future__ import annotations

import argparse
import json

from layercascade.errors import fail, run_cli
from layercascade.model.cli.args import add_data_arguments, rho


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-eval",
        description="Evaluate a Layer Cascade checkpoint: confusion-matrix mIoU over the classes present "
                    "(label 255 ignored), per-class IoU and the share of pixels decided at each stage.",
    )
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="checkpoint .pt written by lc-train (default: the bundled demo model)")
    add_data_arguments(parser, split="val")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rho", type=rho, default=None,
                       help="confidence threshold ρ in (0, 1]; 1 = dense network (default: the checkpoint's)")
    which.add_argument("--rho-sweep", action="store_true",
                       help="evaluate at the paper's ρ values 1, 0.995, 0.985, 0.970, 0.950, 0.930, 0.900, 0.800")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object {miou, per_class_iou, stage_fractions, rho, images} "
                             "(a list of them with --rho-sweep)")
    parser.add_argument("--per-class", action="store_true", help="also print the per-class IoU table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from layercascade.model.checkpoint import load_checkpoint
    from layercascade.model.data import open_dataset
    from layercascade.model.evaluate import PAPER_RHOS, evaluate, format_per_class, format_table

    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.build_model()
    dataset = open_dataset(args.data, args.split, seed=args.seed, limit=args.limit)
    if len(dataset.classes) != checkpoint.config.num_classes:
        fail(f"data set {args.data!r} has {len(dataset.classes)} classes, the model {checkpoint.config.num_classes}")
    rhos = PAPER_RHOS if args.rho_sweep else [args.rho or checkpoint.default_rho]
    results = evaluate(model, dataset, rhos, checkpoint.mean, checkpoint.std, checkpoint.classes,
                       progress=not args.json)
    if args.json:
        payload = [r.to_dict() for r in results]
        print(json.dumps(payload if args.rho_sweep else payload[0]))
        return 0
    print(f"{args.checkpoint or 'demo model'} on {args.data} {args.split} ({len(dataset)} images)")
    print(format_table(results))
    if args.per_class:
        for result in results:
            print()
            print(format_per_class(result))
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
