"""lc-triton: a Triton Inference Server model repository of a model dir (ONNX Runtime or OpenVINO) or
an engine dir (TensorRT)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from layercascade.cli.args import positive_int
from layercascade.errors import run_cli
from layercascade.serve.triton import PLATFORMS, write_repository


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-triton",
        description="Write a model for Triton Inference Server into a model repository. A model dir becomes one "
                    "model: the cascade's stage graphs joined and lowered to standard ONNX ops (inputs image, rho2 "
                    "and rho3, outputs labels, stage_counts and confidence, at the model's input size; a dynamic-size "
                    "export's heights and widths are -1), with Triton's dynamic batching for a dynamic-batch export. An "
                    "engine dir (lc-build) becomes an ensemble of the three stage plans (-1 where the engines' "
                    "optimization profile has a range). Other models in the repository are left alone; an earlier "
                    "lc-triton model of the same name is replaced.",
    )
    parser.add_argument("model", nargs="?", default=None, type=Path, metavar="DIR",
                        help="model dir (lc-export, lc-calibrate) or engine dir (lc-build) (default: the demo model)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="REPO", help="model repository folder")
    parser.add_argument("--platform", choices=PLATFORMS, default=None,
                        help="Triton backend: onnxruntime (model.onnx) or openvino (OpenVINO IR) for a model dir, "
                             "tensorrt for an engine dir (default: by the dir)")
    parser.add_argument("--name", default=None, help="model name (default: the dir's name; 'demo' for the bundled one)")
    parser.add_argument("--max-batch", type=positive_int, default=None, metavar="N",
                        help="Triton's max_batch_size for a dynamic-batch export (default: the export's maximum)")
    parser.add_argument("--instances", type=positive_int, default=1, metavar="N",
                        help="model instances Triton runs (default: 1)")
    parser.add_argument("--batch-delay-us", type=int, default=5000, metavar="T",
                        help="dynamic batching: longest wait for a batch to fill, in µs (default: 5000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    written = write_repository(args.model, args.output, args.platform, args.name, args.max_batch, args.instances,
                               args.batch_delay_us)
    for folder in written:
        print(f"wrote {folder}", file=sys.stderr)
    print(f"start Triton with: tritonserver --model-repository {args.output.resolve()}", file=sys.stderr)
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
