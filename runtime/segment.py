"""Segmenting image files: read each, run the cascade, write its label map, overlay and stage
picture atomically, and a summary of the run (what lc-run does; the command only parses and prints)."""

from __future__ import annotations

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

from layercascade.errors import LCError, fail
from layercascade.manifest import write_atomic
from layercascade.model.data.images import read_rgb
from layercascade.runtime.inputs import output_stems
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
    """:func:`~layercascade.manifest.write_atomic`, with a failing disk (full, read-only) as a one-line error."""
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


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``OUT/summary.json``, atomically."""
    save(out / SUMMARY, lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
