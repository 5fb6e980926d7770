"""lc-run: segment images with a Layer Cascade model and write label maps, overlays, stage pictures and a summary."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from layercascade.errors import LCError, fail, run_cli
from layercascade.model.cli.args import add_backend_arguments, backend_options
from layercascade.model.cli.args import rho as rho_value
from layercascade.model.data.images import read_rgb
from layercascade.runtime.inputs import SAMPLES, expand_inputs, output_stems, write_atomic
from layercascade.runtime.visualize import label_image, overlay, stage_picture

if TYPE_CHECKING:
    from layercascade.runtime.cascade import Cascade
    from layercascade.runtime.result import CascadeResult

# The files written per image: stem + variant + extension, and the Pillow save options.
OUTPUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "": (".png", {}),  # palette PNG of class ids, at the image's size
    "_overlay": (".jpg", {"quality": 90}),
    # The shaded picture compresses poorly whatever the level, so the fastest level costs little size.
    "_stages": (".png", {"compress_level": 1}),
}
SUMMARY = "summary.json"


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
    parser.add_argument("--engine", default=None, metavar="DIR",
                        help="model folder written by lc-export, engine folder written by lc-build, or (torch backend) "
                             "a checkpoint .pt (default: the bundled demo model)")
    parser.add_argument("--rho", type=rho_value, default=None, metavar="R",
                        help="confidence threshold ρ in (0, 1]: pixels more confident than ρ at a stage stop "
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
    paths = expand_inputs(args.inputs or [str(SAMPLES)])
    out = make_output_dir(args.output)
    from layercascade.runtime.cascade import Cascade  # lazily: loads the backend's heavy libraries

    cascade = Cascade.load(args.engine, backend=args.backend, device=args.device, lower=not args.no_lowering,
                           **backend_options(args))
    records, failed = segment_all(cascade, paths, out, rho=args.rho, strict=args.strict,
                                  progress=not (args.quiet or args.json))
    summary = summarize(records, failed, backend=cascade.backend, model=args.engine or "demo",
                        rho=cascade.default_rho if args.rho is None else args.rho)
    save(out / SUMMARY, lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(closing_line(summary, out))
    return 1 if failed else 0


def cli() -> None:
    raise SystemExit(run_cli(main))


def make_output_dir(path: Path) -> Path:
    """Create the output folder (and its parents) or fail with a one-line error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        fail(f"{path}: exists and is not a folder; pass another -o")
    except OSError as error:
        fail(f"{path}: cannot create the output folder ({error.strerror})")
    return path


def segment_all(cascade: Cascade, paths: list[Path], out: Path, *, rho: float | None, strict: bool,
                progress: bool) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Segment every image and write its pictures; returns (records of the done ones, failures).

    An image that cannot be read or segmented (:class:`LCError`) is reported on stderr and
    skipped, or ends the loop with ``strict``; nothing is written for it.
    """
    records: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    stems = output_stems(paths, OUTPUTS)
    with tqdm(list(zip(paths, stems, strict=True)), desc="lc-run", unit="image", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for path, stem in bar:
            try:
                image, result, ms = segment(cascade, path, rho)
            except LCError as error:
                reason = failure_reason(error, path)
                # tqdm.write keeps the progress bar intact below the message.
                tqdm.write(f"warning: {path}: {reason}{' (stopping: --strict)' if strict else ''}", file=sys.stderr)
                failed.append({"input": str(path), "error": reason})
                if strict:
                    break
                continue
            outputs = save_pictures(render(image, result, cascade.palette), out, stem)
            records.append(image_record(path, image, result, ms, outputs))
    return records, failed


def segment(cascade: Cascade, path: Path, rho: float | None) -> tuple[np.ndarray, CascadeResult, float]:
    """Read and segment one image: (image, result, milliseconds)."""
    image = read_rgb(path)
    start = time.perf_counter()
    result = cascade(image, rho=rho)
    wall_ms = (time.perf_counter() - start) * 1e3
    # The backend's own "total" leaves out the Python around the call; wall time stands in without it.
    return image, result, float(result.timings.get("total", wall_ms))


def failure_reason(error: LCError, path: Path) -> str:
    """The error message without a leading "<path>: " (the warning names the path itself)."""
    return str(error).removeprefix(f"{path}: ")


def render(image: np.ndarray, result: CascadeResult, palette: np.ndarray) -> dict[str, Image.Image]:
    """The pictures of one result, keyed by their OUTPUTS variant."""
    return {
        "": label_image(result.labels, palette),
        "_overlay": overlay(image, result.labels, palette),
        "_stages": stage_picture(image, result.stage_map),
    }


def save_pictures(pictures: dict[str, Image.Image], out: Path, stem: str) -> list[str]:
    """Write each picture atomically as OUT/<stem><variant><ext>; returns the file names."""
    names = []
    for variant, picture in pictures.items():
        extension, options = OUTPUTS[variant]
        names.append(f"{stem}{variant}{extension}")
        save(out / names[-1], functools.partial(picture.save, **options))
    return names


def save(path: Path, write_fn: Callable[[Path], object]) -> None:
    """:func:`write_atomic`, with a failing disk (full, read-only) as a one-line error."""
    try:
        write_atomic(path, write_fn)
    except OSError as error:
        fail(f"{path}: cannot write ({error.strerror or error})")


def image_record(path: Path, image: np.ndarray, result: CascadeResult, ms: float,
                 outputs: list[str]) -> dict[str, Any]:
    """The summary entry of one image."""
    return {
        "input": str(path),
        "size": [int(image.shape[0]), int(image.shape[1])],
        "stage_fractions": [round(float(f), 6) for f in result.stage_fractions],
        "ms": round(ms, 3),
        "outputs": outputs,
    }


def summarize(records: list[dict[str, Any]], failed: list[dict[str, str]], *, backend: str, model: str,
              rho: float) -> dict[str, Any]:
    """Totals over the run, then the per-image records.

    ``stage_fractions`` is weighted by image pixels: the share of all segmented pixels
    each stage decided. Means are null when no image was segmented.
    """
    pixels = [h * w for h, w in (r["size"] for r in records)]
    fractions = np.average([r["stage_fractions"] for r in records], axis=0, weights=pixels) if records else None
    return {
        "images": len(records),
        "failed": failed,
        "mean_ms": round(float(np.mean([r["ms"] for r in records])), 3) if records else None,
        "stage_fractions": None if fractions is None else [round(float(f), 6) for f in fractions],
        "backend": backend,
        "model": str(model),
        "rho": rho,
        "results": records,
    }


def closing_line(summary: dict[str, Any], out: Path) -> str:
    """One line for people: how many images, where, how fast, and the stage shares."""
    line = f"{summary['images']} image(s) -> {out}"
    if summary["images"]:
        shares = " / ".join(f"{100 * f:.0f}%" for f in summary["stage_fractions"])
        line += f"  mean {summary['mean_ms']:.1f} ms  stages 1/2/3: {shares}"
    if summary["failed"]:
        line += f"  ({len(summary['failed'])} failed)"
    return line
