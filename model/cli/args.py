"""Argument helpers shared by the model CLIs."""

from __future__ import annotations

import argparse


def size(text: str) -> tuple[int, int]:
    """``HxW`` (or a single ``N`` for N×N) → (H, W)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x512, got {text!r}")
    return parts[0], parts[1]


def rho(text: str) -> float:
    """A threshold in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"rho must be a number in (0, 1], got {text!r}")
    return value


def float_pair(text: str) -> tuple[float, float]:
    """``A,B`` → (A, B)."""
    try:
        low, high = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.75,1.25, got {text!r}") from None
    return low, high


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--device``, ``--no-lowering``, ``--precision`` and ``--cuda-graph`` (lc-run, lc-bench)."""
    parser.add_argument("--backend", choices=("auto", "ort", "trt", "torch"), default="auto",
                        help="inference backend: ONNX Runtime, TensorRT or PyTorch; auto: TensorRT for an engine "
                             "dir, torch for a checkpoint .pt, else ONNX Runtime (default: auto)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the model runs (default: cpu)")
    parser.add_argument("--no-lowering", action="store_true",
                        help="ONNX Runtime: run the RegionConv function bodies (dense conv ⊙ M) instead of the "
                             "compact form whose cost follows the pixels that reach stages 2–3")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default=None,
                        help="torch backend: compute precision (default: fp32); TensorRT engines carry the "
                             "precision they were built with")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="torch / TensorRT on CUDA: capture the whole cascade in one CUDA graph and replay it")


def backend_options(args: argparse.Namespace) -> dict[str, object]:
    """The backend-specific options of ``add_backend_arguments`` that were given."""
    options: dict[str, object] = {}
    if args.precision is not None:
        options["precision"] = args.precision
    if args.cuda_graph:
        options["cuda_graph"] = True
    return options


DATA_HELP = ("data set: 'synthetic' (procedural, no download), 'voc:PATH' (VOCdevkit/VOC2012) or "
             "'cityscapes:PATH' (leftImg8bit + gtFine) (default: synthetic)")


def add_data_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    """``--data``, ``--split``, ``--seed``, ``--limit``."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="synthetic", metavar="SPEC", help=DATA_HELP)
    group.add_argument("--split", default=split, help=f"split to use (default: {split})")
    group.add_argument("--seed", type=int, default=0,
                       help="seed: picks the synthetic images, and the training order/augmentation (default: 0)")
    group.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N images")
