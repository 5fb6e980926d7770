"""Segmenting image files: read each, run the cascade, write its label map, overlay and stage
picture atomically, and a summary of the run (what lc-run does; the command only parses and prints)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from layercascade.contract import Rho, RhoLike, rho_value
from layercascade.errors import LCError, fail
from layercascade.manifest import temporary_path, write_atomic
from layercascade.model.data.images import MAX_PIXELS, read_rgb, resize_image, resize_labels
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
# The overlay and stage picture are drawn at most this size (the label map keeps the image's):
# 16 MP keeps a 12 MP photo whole and bounds a huge image's pictures to ~0.2 GB of memory.
PICTURE_MAX_PIXELS = 16_000_000
# ... and at most this many pixels a side (JPEG takes 65535; a 1×10⁸ image's picture stays a picture).
PICTURE_MAX_SIDE = 16_384


@dataclass
class Run:
    """What a run did: the records of the images done, the failures, whether it was interrupted."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None  # why the run ended early (an output could not be written)
    earlier: list[str] = field(default_factory=list)  # earlier runs' outputs found in the folder


@dataclass(frozen=True)
class ReadOptions:
    """How lc-run reads images (``read_rgb``'s settings)."""

    max_pixels: int = MAX_PIXELS
    exif_transpose: bool = True


def make_output_dir(path: Path) -> Path:
    """Create the output folder (and its parents) or fail with a one-line error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        fail(f"{path}: exists and is not a folder; pass another -o")
    except OSError as error:
        fail(f"{path}: cannot create the output folder ({error.strerror})")
    return path


@dataclass
class Segmented:
    """One image segmented, before its files are written: its summary entry (without ``outputs``) and
    its pictures encoded, keyed by their OUTPUTS variant."""

    record: dict[str, Any]
    files: dict[str, bytes]


# What a source of results yields for each image: its index in the run's paths, and the image done or
# the reason it could not be.
Outcome = tuple[int, "Segmented | LCError"]


def segment_all(cascade: Cascade, paths: list[Path], out: Path, *, rho: RhoLike | None, strict: bool,
                progress: bool, read: ReadOptions = ReadOptions(), earlier: list[str] | None = None) -> Run:
    """Segment every image and write its pictures (all of an image's files or none): :func:`write_all`
    of the images segmented here, one after another."""

    def outcomes() -> Iterator[Outcome]:
        for index, path in enumerate(paths):
            try:
                yield index, segment_file(cascade, path, rho, read)
            except LCError as error:
                yield index, error

    return write_all(outcomes(), paths, out, strict=strict, progress=progress, earlier=earlier)


def write_all(outcomes: Iterable[Outcome], paths: list[Path], out: Path, *, strict: bool, progress: bool,
              earlier: list[str] | None = None) -> Run:
    """Write the images of ``outcomes`` (in input order) as they come, each with its summary entry.

    An image that could not be read or segmented (an :class:`LCError` outcome) is reported on
    stderr and skipped, or ends the loop with ``strict``; nothing is written for it. An interrupt
    (Ctrl-C) ends the loop too: the run so far is returned, marked ``interrupted``; so does an
    output that cannot be written, or a source that fails (``stopped``: why). ``earlier``:
    :func:`earlier_outputs`, the files in ``out`` this run may replace; the others are never replaced.
    """
    run = Run(earlier=earlier_outputs(out) if earlier is None else earlier)
    stems = output_stems(paths, [variant + extension for variant, (extension, _) in OUTPUTS.items()],
                         in_use=files_in(out) - set(run.earlier) - {SUMMARY})
    with tqdm(total=len(paths), desc="lc-run", unit="image", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        try:
            for index, outcome in outcomes:
                bar.update()
                path = paths[index]
                if isinstance(outcome, LCError):
                    reason = failure_reason(outcome, path)
                    # tqdm.write keeps the progress bar intact below the message.
                    tqdm.write(f"warning: {path}: {reason}{' (stopping: --strict)' if strict else ''}",
                               file=sys.stderr)
                    run.failed.append({"input": str(path), "error": reason})
                    if strict:
                        break
                    continue
                try:
                    staged = stage_files(outcome.files, out, stems[index])
                    # Renamed and recorded together: a Ctrl-C waits until the image is listed as done.
                    with interrupts_deferred():
                        run.records.append({**outcome.record, "outputs": commit(staged)})
                except LCError as error:  # the disk (full, read-only): the next image would fail alike
                    run.failed.append({"input": str(path), "error": str(error)})
                    run.stopped = str(error)
                    break
        except KeyboardInterrupt:
            run.interrupted = True
        except LCError as error:  # the source itself failed (e.g. a cluster lost)
            run.stopped = str(error)
    return run


def segment_file(cascade: Cascade, path: Path, rho: RhoLike | None, read: ReadOptions = ReadOptions()) -> Segmented:
    """Read and segment one image and encode its pictures (:class:`LCError` if it cannot be)."""
    image, result, ms = segment(cascade, path, rho, read)
    return Segmented(image_record(path, image, result, ms), encode(render(image, result, cascade.palette)))


def files_in(out: Path) -> set[str]:
    """The names in the folder ``out`` (none if it cannot be listed)."""
    try:
        return {path.name for path in out.iterdir()}
    except OSError:
        return set()


def earlier_outputs(out: Path) -> list[str]:
    """The files in ``out`` that earlier runs wrote, as its ``summary.json`` lists them (a run's own
    outputs and those it found from runs before), that are still regular files: a run may replace these
    and no others. A ``summary.json`` that is not an lc-run summary is one line: a run would replace it.
    """
    path = out / SUMMARY
    if not path.exists():
        return []
    try:
        summary = json.loads(path.read_text())
        recorded = [name for record in summary["results"] for name in record["outputs"]]
        recorded += summary.get("earlier_outputs", [])
        if not all(isinstance(name, str) and name == Path(name).name for name in recorded):
            raise TypeError("output names must be plain file names")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        fail(f"{path}: exists and is not an lc-run summary, which this run would replace: move it or pass another -o")
    return sorted(name for name in set(recorded) if (out / name).is_file() and not (out / name).is_symlink())


def segment(cascade: Cascade, path: Path, rho: RhoLike | None,
            read: ReadOptions = ReadOptions()) -> tuple[np.ndarray, CascadeResult, float]:
    """Read and segment one image: (image, result, milliseconds)."""
    image = read_rgb(path, read.max_pixels, read.exif_transpose)
    start = time.perf_counter()
    result = cascade(image, rho=rho)
    wall_ms = (time.perf_counter() - start) * 1e3
    # The backend's own "total" leaves out the Python around the call; wall time stands in without it.
    return image, result, float(result.timings.get("total", wall_ms))


def failure_reason(error: LCError, path: Path) -> str:
    """The error message without a leading "<path>: " (the warning names the path itself)."""
    return str(error).removeprefix(f"{path}: ")


def render(image: np.ndarray, result: CascadeResult, palette: np.ndarray,
           max_pixels: int = PICTURE_MAX_PIXELS) -> dict[str, Image.Image]:
    """The pictures of one result, keyed by their OUTPUTS variant: the label map at the image's
    size, the overlay and stage picture at most ``max_pixels`` (scaled down, aspect kept)."""
    size = picture_size(image.shape[:2], max_pixels)
    shown = resize_image(image, size)
    return {
        "": label_image(result.labels, palette),
        "_overlay": overlay(shown, resize_labels(result.labels, size), palette),
        "_stages": stage_picture(shown, result.stage_map),
    }


def picture_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(height, width) scaled down to at most ``max_pixels`` and ``PICTURE_MAX_SIDE`` a side, aspect ratio
    kept as far as whole pixels allow; unchanged if within."""
    height, width = size
    scale = min(1.0, (max_pixels / (height * width)) ** 0.5, PICTURE_MAX_SIDE / height, PICTURE_MAX_SIDE / width)
    if scale == 1.0:
        return height, width
    return max(1, int(height * scale)), max(1, int(width * scale))


@dataclass
class Staged:
    """Pictures written to temporary names in the output folder: (temporary, final) pairs."""

    moves: list[tuple[Path, Path]]


def encode(pictures: dict[str, Image.Image]) -> dict[str, bytes]:
    """Each picture encoded as its OUTPUTS variant is saved (the bytes of the file)."""
    files = {}
    for variant, picture in pictures.items():
        extension, options = OUTPUTS[variant]
        buffer = io.BytesIO()
        picture.save(buffer, format=Image.registered_extensions()[extension], **options)
        files[variant] = buffer.getvalue()
    return files


def stage_files(files: dict[str, bytes], out: Path, stem: str) -> Staged:
    """Write each encoded picture as a temporary file beside its final name OUT/<stem><variant><ext>; on
    any failure (or Ctrl-C) the temporary files written so far are removed."""
    moves: list[tuple[Path, Path]] = []
    try:
        for variant, data in files.items():
            final = out / f"{stem}{variant}{OUTPUTS[variant][0]}"
            moves.append((temporary_path(final), final))
            try:
                moves[-1][0].write_bytes(data)
            except OSError as error:
                fail(f"{final}: cannot write ({error.strerror or error})")
    except BaseException:
        for temporary, _ in moves:
            temporary.unlink(missing_ok=True)
        raise
    return Staged(moves)


def commit(staged: Staged) -> list[str]:
    """Rename the staged pictures into place, all or none (a failed rename removes the ones renamed
    and the rest); returns the file names. Run with Ctrl-C held off (:func:`interrupts_deferred`)."""
    renamed: list[Path] = []
    try:
        for temporary, final in staged.moves:
            os.replace(temporary, final)
            renamed.append(final)
    except OSError as error:
        for path in [temporary for temporary, _ in staged.moves] + renamed:
            path.unlink(missing_ok=True)
        fail(f"{staged.moves[len(renamed)][1]}: cannot write ({error.strerror or error})")
    return [final.name for _, final in staged.moves]


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) off until the block is done, then deliver it (main thread only:
    signal handlers cannot be set elsewhere, and only the main thread gets them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)


def save(path: Path, write_fn: Callable[[Path], object]) -> None:
    """:func:`~layercascade.manifest.write_atomic`, with a failing disk (full, read-only) as a one-line error."""
    try:
        write_atomic(path, write_fn)
    except OSError as error:
        fail(f"{path}: cannot write ({error.strerror or error})")


def image_record(path: Path, image: np.ndarray, result: CascadeResult, ms: float) -> dict[str, Any]:
    """The summary entry of one image, but for its ``outputs``."""
    return {
        "input": str(path),
        "size": [int(image.shape[0]), int(image.shape[1])],
        "stage_fractions": [round(float(f), 6) for f in result.stage_fractions],
        "ms": round(ms, 3),
    }


def summarize(run: Run, *, backend: str, model: str, rho: Rho) -> dict[str, Any]:
    """Totals over the run, then the per-image records.

    ``stage_fractions`` is weighted by image pixels: the share of all segmented pixels
    each stage decided. Means are null when no image was segmented. ``interrupted``: the run
    was stopped (Ctrl-C) before every image was tried; ``stopped``: why it ended early (an output
    could not be written); the records are the images finished either way. ``rho``: one number when
    both stages shared it, else [ρ₂, ρ₃].
    """
    records = run.records
    pixels = [h * w for h, w in (r["size"] for r in records)]
    fractions = np.average([r["stage_fractions"] for r in records], axis=0, weights=pixels) if records else None
    written = {name for record in records for name in record["outputs"]}
    return {
        "images": len(records),
        "failed": run.failed,
        "interrupted": run.interrupted,
        "stopped": run.stopped,
        "mean_ms": round(float(np.mean([r["ms"] for r in records])), 3) if records else None,
        "stage_fractions": None if fractions is None else [round(float(f), 6) for f in fractions],
        "backend": backend,
        "model": str(model),
        "rho": rho_value(rho),
        "results": records,
        # Outputs of runs before found in the folder: the next run may replace them too.
        "earlier_outputs": sorted(set(run.earlier) - written),
    }


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``OUT/summary.json``, atomically."""
    save(out / SUMMARY, lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
