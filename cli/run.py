"""lc-run: segment images with a Layer Cascade model and write label maps, overlays, stage pictures and a summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from layercascade.cli.args import add_backend_arguments, add_rho_argument, load_options
from layercascade.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-run",
        description="Segment images with a Layer Cascade model. For each image write OUT/<stem>.png (palette "
                    "label map of class ids), OUT/<stem>_overlay.jpg (classes over the image) and "
                    "OUT/<stem>_stages.png (which stage decided each pixel), then OUT/summary.json. "
                    "Unreadable images are reported and skipped; the exit code is then 1.",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files, folders (their image files, not recursive) or quoted glob patterns "
                             "('photos/**/*.jpg' recurses) (default: the bundled sample images)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT",
                        help="folder for the outputs (created if missing; files of the same name are replaced)")
    parser.add_argument("--model", "--engine", dest="model", default=None, metavar="DIR",
                        help="model folder written by lc-export, TensorRT engine folder written by lc-build, or "
                             "(torch backend) a checkpoint .pt (default: the bundled demo model)")
    add_rho_argument(parser, "confidence threshold ρ in (0, 1]: pixels more confident than ρ at a stage stop "
                             "there; 1 runs every pixel through every stage (default: the model's)")
    add_backend_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the summary JSON to stdout (no progress bar)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first image that cannot be read or segmented (exit code 1)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no closing line (warnings are still printed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Intermixed: `lc-run a.jpg -o out b.jpg` keeps both images.
    args = build_parser().parse_intermixed_args(argv)
    from layercascade.runtime.cascade import Cascade  # lazily: loads the backend's heavy libraries
    from layercascade.runtime.inputs import SAMPLES, expand_inputs
    from layercascade.runtime.segment import make_output_dir, segment_all, summarize, write_summary

    paths = expand_inputs(args.inputs or [str(SAMPLES)])
    out = make_output_dir(args.output)
    with Cascade.load(args.model, **load_options(args)) as cascade:
        records, failed = segment_all(cascade, paths, out, rho=args.rho, strict=args.strict,
                                      progress=not (args.quiet or args.json))
        summary = summarize(records, failed, backend=cascade.backend, model=args.model or "demo",
                            rho=cascade.rho(args.rho))
    write_summary(out, summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(closing_line(summary, out))
    return 1 if failed else 0


def closing_line(summary: dict[str, Any], out: Path) -> str:
    """One line for people: how many images, where, how fast, and the stage shares."""
    line = f"{summary['images']} image(s) -> {out}"
    if summary["images"]:
        shares = " / ".join(f"{100 * f:.0f}%" for f in summary["stage_fractions"])
        line += f"  mean {summary['mean_ms']:.1f} ms  stages 1/2/3: {shares}"
    if summary["failed"]:
        line += f"  ({len(summary['failed'])} failed)"
    return line


def cli() -> None:
    raise SystemExit(run_cli(main))
