"""lc-calibrate: an INT8 (explicit QDQ) model dir from an fp32 one, calibrated cascade-aware."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layercascade.cli.args import add_data_arguments, add_rho_argument
from layercascade.contract import format_rho
from layercascade.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-calibrate",
        description="Calibrate an exported fp32 model dir to INT8: the stage graphs (and the dense graph) get "
                    "explicit QuantizeLinear/DequantizeLinear nodes (int8 weights per output channel, int8 "
                    "activations per tensor, both symmetric), which TensorRT (lc-build --precision int8) and "
                    "ONNX Runtime's CPU int8 kernels run. Stage 2 and 3 statistics come only from the pixels "
                    "that reach them at the calibration ρ (from the first 64 images unless --limit says otherwise). "
                    "Statistics are cached, so another --method reuses them.",
    )
    parser.add_argument("model", metavar="DIR", help="fp32 model directory from lc-export")
    parser.add_argument("-o", "--output", required=True, metavar="DIR_INT8", help="INT8 model directory to write")
    add_data_arguments(parser, split="train")
    parser.set_defaults(limit=64)  # calibration needs a sample, not the whole split
    parser.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="percentile",
                        help="activation ranges: exact min/max, the 99.999th percentile of |x|, or the "
                             "KL-optimal clipping threshold (default: percentile, the most accurate on the demo "
                             "model, docs/results.md)")
    add_rho_argument(parser, "calibration ρ (or ρ₂,ρ₃): which pixels reach stages 2 and 3 while statistics are "
                             "collected (default: the model's)", deprecated=("--per-stage-rho",))
    parser.add_argument("--naive", action="store_true",
                        help="stage 2-3 statistics over all pixels instead of those that reach the stage "
                             "(for comparison only)")
    parser.add_argument("--cache", type=Path, default=None, metavar="FILE",
                        help="statistics file to reuse or write (default: one per model, data and ρ under "
                             "~/.cache/layercascade/calibration)")
    parser.add_argument("--json", action="store_true", help="print the quantization record as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from layercascade.calibration.calibrate import calibrate

    record = calibrate(Path(args.model), Path(args.output), data=args.data, split=args.split, seed=args.seed,
                       limit=args.limit, method=args.method, rho=args.rho, cascade_aware=not args.naive,
                       cache=args.cache, progress=not args.json)
    if args.json:
        print(json.dumps(record))
        return 0
    reused = "reused" if record["statistics_reused"] else "collected"
    print(f"{args.output}: INT8 ({record['method']}, {record['images']} {record['data']} {record['split']} images, "
          f"ρ = {format_rho(record['rho'])}, "
          f"{'cascade-aware' if record['cascade_aware'] else 'all-pixel'} statistics "
          f"{reused}: {record['statistics_cache']})")
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
