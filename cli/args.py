"""Argument types and groups shared by the commands: sizes, thresholds, the backend group (turned into
``Cascade.load`` keyword arguments here, so no backend checks flags itself) and the data group."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layercascade.contract import Rho, check_threshold, rho_class_from_text, rho_from_text
from layercascade.errors import LCError, fail


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


def sizes(count: int, example: str) -> Callable[[str], tuple[tuple[int, int], ...]]:
    """An argument type: ``count`` sizes ``HxW`` joined by ``:`` (``example``), e.g. a range ``MIN:MAX`` or a
    TensorRT profile ``MIN:OPT:MAX``."""
    def parse(text: str) -> tuple[tuple[int, int], ...]:
        parts = text.split(":")
        try:
            if len(parts) != count:
                raise argparse.ArgumentTypeError("")
            return tuple(size(part) for part in parts)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {count} sizes HxW joined by ':' such as {example}, "
                                             f"got {text!r}") from None

    return parse


def positive_int(text: str) -> int:
    """An integer ≥ 1 (underscores allowed: 150_000_000)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argument type: an integer in [low, high] (underscores allowed)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}")
        return value

    return parse


def finite_float(low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argument type: a finite number in [low, high] (nan and inf refused)."""
    bounds = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f"≥ {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected a finite number {bounds}, got {text!r}")
        return value

    return parse


def threshold(text: str) -> float:
    """One threshold in (0, 1] (``contract.check_threshold``)."""
    try:
        return check_threshold(float(text))
    except (ValueError, LCError):
        raise argparse.ArgumentTypeError(f"rho must be a number in (0, 1], got {text!r}") from None


def rho(text: str) -> Rho:
    """``R`` (both stages) or ``R2,R3`` (stage 1 → 2, stage 2 → 3) → (ρ₂, ρ₃), each in (0, 1]."""
    try:
        return rho_from_text(text)
    except LCError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def rho_list(text: str) -> list[float]:
    """``R1,R2,...`` → thresholds in (0, 1], each for both stages."""
    return [threshold(p) for p in text.split(",")]


def float_pair(text: str) -> tuple[float, float]:
    """``A,B`` → (A, B)."""
    try:
        low, high = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.75,1.25, got {text!r}") from None
    return low, high


def add_rho_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str,
                     deprecated: tuple[str, ...] = ()) -> None:
    """``--rho R`` or ``--rho R2,R3`` (thresholds in (0, 1]: one for both stages, or stage 1 → 2 and stage
    2 → 3; default None: the model's); ``deprecated`` spellings still work and print a line naming ``--rho``."""
    parser.add_argument("--rho", type=rho, default=None, metavar="R|R2,R3", help=help)
    for spelling in deprecated:
        parser.add_argument(spelling, type=rho, dest="rho", metavar="R|R2,R3", action=_Deprecated, help=argparse.SUPPRESS)


def rho_class(text: str) -> dict[str, float]:
    """``NAME=R[,NAME=R...]`` → {class name: ρ_c}, each R in (0, 1] (the names are checked against the model's
    classes when it is loaded)."""
    try:
        return rho_class_from_text(text)
    except LCError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_rho_class_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--rho-class NAME=R[,NAME=R...]``: per-class thresholds beside ``--rho`` (default None: the model's)."""
    parser.add_argument("--rho-class", type=rho_class, default=None, metavar="NAME=R[,NAME=R...]",
                        help="per-class thresholds: a pixel whose winner at stage 1 or 2 is class NAME stops there "
                             "only if its confidence exceeds R, in (0, 1] (1: that class never stops early); the "
                             "other classes keep --rho (default: the model's, usually none; e.g. person=1,car=0.9)")


class _Deprecated(argparse.Action):
    """Stores the value like the option it replaces, and says which option that is."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated; use --{self.dest}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--device``, ``--no-lowering``, ``--precision``, ``--performance-hint`` and ``--cuda-graph``
    (lc-run, lc-bench)."""
    from layercascade.runtime.registry import AUTO, BACKENDS, CHOICES, PRECISION_CHOICES

    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=CHOICES, default=AUTO,
                       help=f"inference backend: {', '.join(f'{s.name} ({s.label})' for s in BACKENDS)}; auto: "
                            "TensorRT for an engine dir, torch for a checkpoint .pt; for a model dir OpenVINO (at its "
                            "default precision, or int8 for an INT8 dir) where it is installed and compiles the model, "
                            "else ONNX Runtime, which also runs --precision fp32 (the exact reference) and --device "
                            "cuda (default: auto)")
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="where the model runs (default: cpu)")
    group.add_argument("--no-lowering", action="store_true",
                       help="ONNX Runtime, OpenVINO: run the RegionConv function bodies (dense conv ⊙ M) instead of the "
                            "compact form whose cost follows the pixels that reach stages 2–3")
    group.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                       help="; ".join(f"{spec.name} {'|'.join(spec.precisions)} ({spec.precision_note})"
                                      for spec in BACKENDS if spec.precisions))
    group.add_argument("--performance-hint", choices=("latency", "throughput"), default=None,
                       help="openvino: OpenVINO's performance hint (default: latency)")
    group.add_argument("--cuda-graph", action="store_true",
                       help="torch / TensorRT on CUDA: capture the whole cascade in one CUDA graph and replay it")


def engine(backend: str, precision: str | None) -> str:
    """What ran, for the commands' closing lines: the backend and its precision, e.g. "openvino bf16"."""
    return f"{backend} {precision}" if precision else backend


def load_options(args: argparse.Namespace, threads: int = 0) -> dict[str, Any]:
    """``Cascade.load``'s keyword arguments from :func:`add_backend_arguments`: the backend, device,
    lowering and threads, and the backend-specific settings that were given."""
    options: dict[str, Any] = {"backend": args.backend, "device": args.device, "lower": not args.no_lowering,
                               "threads": threads}
    if args.precision is not None:
        options["precision"] = args.precision
    if args.cuda_graph:
        options["cuda_graph"] = True
    if args.performance_hint is not None:
        options["performance_hint"] = args.performance_hint
    return options


RESIZE_HELP = ("how an image meets the model's input: fit (scale to fit inside it keeping the aspect ratio, pad "
               "with the mean colour; the default of a fixed-size export), stretch (resize to it: the aspect ratio "
               "is lost), none (the image's own pixels, padded: the default of a dynamic-size export; images larger "
               "than the input run in tiles); labels come back at the image's size either way")


def add_image_arguments(parser: argparse.ArgumentParser, tiles: bool = True) -> None:
    """``--resize`` (and with ``tiles``: ``--tile [HxW]``, ``--overlap PX``), read by :func:`image_options`."""
    group = parser.add_argument_group("resolution")
    group.add_argument("--resize", choices=("fit", "stretch", "none"), default=None, help=RESIZE_HELP)
    if tiles:
        group.add_argument("--tile", type=size, nargs="?", const=(0, 0), default=None, metavar="HxW",
                           help="run images at their own resolution, those larger than the tile in overlapping "
                                "windows of HxW (implies --resize none; default HxW: the input size, or a "
                                "dynamic-size export's largest); memory is bounded by the windows, not the image")
        group.add_argument("--overlap", type=int_in(0, 4096), default=None, metavar="PX",
                           help="pixels the windows overlap by at least (default: a quarter of the tile's smaller "
                                "side); each pixel's label comes from the window whose centre it is nearest")


def image_options(args: argparse.Namespace) -> dict[str, Any]:
    """``resize``, ``tile`` and ``overlap`` for ``Cascade``'s calls, from :func:`add_image_arguments`' flags."""
    tile = getattr(args, "tile", None)
    if tile is not None and args.resize not in (None, "none"):
        fail(f"--tile runs images at their own resolution: it goes with --resize none, not {args.resize}")
    return {"resize": "none" if tile is not None else args.resize, "tile": None if tile in (None, (0, 0)) else tile,
            "overlap": getattr(args, "overlap", None)}


DATA_HELP = ("data set: 'synthetic' (procedural, no download), 'voc:PATH' (VOCdevkit/VOC2012) or "
             "'cityscapes:PATH' (leftImg8bit + gtFine) (default: synthetic)")


def add_data_arguments(parser: argparse.ArgumentParser, split: str, required: bool = False) -> None:
    """``--data`` (``required``: no default), ``--split``, ``--seed``, ``--limit``."""
    group = parser.add_argument_group("data")
    if required:
        group.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP.replace(" (default: synthetic)", ""))
    else:
        group.add_argument("--data", default="synthetic", metavar="SPEC", help=DATA_HELP)
    group.add_argument("--split", default=split, help=f"split to use (default: {split})")
    group.add_argument("--seed", type=int, default=0,
                       help="seed: picks the synthetic images, and the training order/augmentation (default: 0)")
    group.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N images")


def check_frontier(model: str | None, option: str) -> None:
    """One line unless ``model`` (None: the bundled demo) is a model dir with a latency frontier (lc-tune's), which
    ``option`` (lc-serve's --target-ms, lc-run's --target-fps) moves ρ along."""
    from layercascade.runtime.control import TUNE_FIRST, read_model_frontier
    from layercascade.runtime.inputs import DEMO_MODEL

    if model is not None and Path(model).suffix == ".pt":
        fail(f"{model}: {option} needs a model dir tuned by lc-tune, not a checkpoint; export it (lc-export) and "
             f"{TUNE_FIRST}")
    read_model_frontier(DEMO_MODEL if model is None else model)
