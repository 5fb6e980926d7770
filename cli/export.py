"""lc-export: write a checkpoint's three stage graphs, the dense baseline and lc.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from layercascade.cli.args import size, sizes
from layercascade.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-export",
        description="Export a Layer Cascade checkpoint to a model directory: stage1.onnx, stage2.onnx, "
                    "stage3.onnx (region convolutions as lc::RegionConv nodes with a function body, BN folded, "
                    "thresholding and fusion inside the graphs, rho an input), dense.onnx (the same weights as "
                    "a plain network) and lc.json (shapes, classes, sha256 of every file).",
    )
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="checkpoint .pt written by lc-train (default: the bundled demo model)")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="model directory to write, replaced atomically (default: <checkpoint stem>_lc)")
    parser.add_argument("--input-size", type=size, default=None, metavar="HxW",
                        help="image size the graphs take (default: the checkpoint's input size)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, metavar="N", help="static batch size (default: 1)")
    batch.add_argument("--dynamic-batch", type=int, default=None, metavar="MAX",
                       help="symbolic batch dimension; MAX is recorded for TensorRT optimisation profiles")
    parser.add_argument("--dynamic-size", type=sizes(2, "64x64:2048x2048"), nargs="?", const=DEFAULT_DYNAMIC_SIZE, default=None,
                        metavar="MINxMIN:MAXxMAX",
                        help="symbolic image height and width: the graphs take any size within these bounds that "
                             "is a multiple of 8 (the runtime pads an image up to one and crops the labels back), "
                             "so images run at their own resolution and aspect ratio; --input-size is then the "
                             "nominal size lc-bench and lc-calibrate use (default bounds: "
                             f"{format_range(DEFAULT_DYNAMIC_SIZE)})")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 18–21 (default: 18)")
    parser.add_argument("--dense", action="store_true",
                        help="write only dense.onnx: the plain network (every pixel through every stage, final "
                             "head only), as a baseline model directory")
    return parser


# lc-export --dynamic-size without bounds: from small crops to 2K frames (1080×1920 and 2048×1024 included).
DEFAULT_DYNAMIC_SIZE = ((32, 32), (2048, 2048))


def format_range(bounds: tuple[tuple[int, int], tuple[int, int]]) -> str:
    return ":".join(f"{h}x{w}" for h, w in bounds)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from layercascade.export.stages import export_model
    from layercascade.model.checkpoint import DEMO_CHECKPOINT, load_checkpoint

    source = Path(args.checkpoint) if args.checkpoint else DEMO_CHECKPOINT
    checkpoint = load_checkpoint(source)
    output = args.output or Path(f"{source.stem}_lc")
    print(f"exporting {source.name} ({checkpoint.config.backbone}) to {output} ...", flush=True)
    written = export_model(checkpoint, output, input_size=args.input_size, batch=args.batch,
                           dynamic_batch=args.dynamic_batch, opset=args.opset, dense_only=args.dense,
                           source=source, dynamic_size=args.dynamic_size)
    for path in sorted(written.iterdir()):
        print(f"  {path.name:12s} {path.stat().st_size / 1e6:8.2f} MB")
    print(f"wrote {written}")
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
