"""Segmenting image files: read each, run the cascade, write its label map, overlay and stage
picture atomically, and a summary of the run (what lc-run does; the command only parses and prints)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from layercascade.contract import Rho, RhoClassLike, RhoLike, rho_value
from layercascade.errors import LCError, fail
from layercascade.manifest import is_plain_file_name, is_sha256, open_regular, read_regular, temporary_path
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
# A summary.json over this size is refused, not read: a record of one image is ~600-700 bytes, so this holds
# ~100,000 images', and the worst JSON of this size (`[{},{},…]`) still parses within a few GB.
SUMMARY_MAX_BYTES = 64 << 20
# Write errors that concern one output file: its name (too long, not valid on this file system), its
# permissions (EACCES/EPERM: a file the user may not replace), what sits at its name (a folder, a busy
# file), its size. That image fails and the run goes on, unless the folder itself no longer takes a new
# file (probed again: a folder made read-only mid-run gives EACCES too). Every other error (ENOSPC, EDQUOT,
# EROFS, EIO, the folder gone, and any errno not listed) would fail the next image alike: the run stops.
IMAGE_ONLY_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ, errno.EACCES, errno.EPERM,
                               errno.EISDIR, errno.EBUSY, errno.ETXTBSY, errno.EFBIG})


@dataclass
class Run:
    """What a run did: the records of the images done, the failures, whether it was interrupted."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None  # why the run ended early (an output could not be written)
    earlier: dict[str, str] = field(default_factory=dict)  # earlier runs' outputs in the folder: name → sha256


@dataclass(frozen=True)
class ImageOptions:
    """How lc-run reads images (``read_rgb``'s settings) and how they meet the model's input (``Cascade``'s
    ``resize``, ``tile`` and ``overlap``: None is the model's default)."""

    max_pixels: int = MAX_PIXELS
    exif_transpose: bool = True
    resize: str | None = None
    tile: tuple[int, int] | None = None
    overlap: int | None = None


class OutputError(LCError):
    """An output file could not be written (``errno``: why, as the OS said)."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"{path}: cannot write ({os_reason(error, path)})")
        self.errno = error.errno


def os_reason(error: OSError, path: Path) -> str:
    """What the OS said; for a name too long, its length against the file system's limit and what to do."""
    if error.errno != errno.ENAMETOOLONG:
        return error.strerror or str(error)
    size = len(os.fsencode(path.name))
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # AttributeError: no pathconf (Windows)
        limit = None
    if limit is not None and size <= limit:
        return f"path too long: {len(os.fsencode(str(path)))} bytes; pass a shorter -o"
    over = f", over the {limit} this file system takes" if limit else ""
    return f"file name too long: {size} bytes{over}; shorten the input's name"


def make_output_dir(path: Path) -> Path:
    """Create the output folder (and its parents) and check that files can be created, removed and listed
    there, or fail with a one-line error (before a model is loaded or an image read)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        fail(f"{path}: exists and is not a folder; pass another -o")
    except OSError as error:
        fail(f"{path}: cannot create the output folder ({error.strerror})")
    problem = unwritable(path)
    if problem is not None:
        fail(f"{path}: cannot write in the output folder ({problem.strerror or problem}); pass another -o")
    files_in(path)  # listed: the names there must be known to be kept
    return path


def unwritable(folder: Path) -> OSError | None:
    """Why a new file cannot be created and removed in ``folder`` (tried), or None if it can."""
    probe = temporary_path(folder / "probe")
    try:
        with open(probe, "xb"):
            pass
        os.unlink(probe)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(probe)
        return error
    return None


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
                progress: bool, read: ImageOptions = ImageOptions(), earlier: dict[str, str] | None = None,
                rho_class: RhoClassLike | None = None) -> Run:
    """Segment every image and write its pictures (all of an image's files or none): :func:`write_all`
    of the images segmented here, one after another."""

    def outcomes() -> Iterator[Outcome]:
        for index, path in enumerate(paths):
            try:
                yield index, segment_file(cascade, path, rho, read, rho_class)
            except LCError as error:
                yield index, error

    return write_all(outcomes(), paths, out, strict=strict, progress=progress, earlier=earlier)


def write_all(outcomes: Iterable[Outcome], paths: list[Path], out: Path, *, strict: bool, progress: bool,
              earlier: dict[str, str] | None = None) -> Run:
    """Write the images of ``outcomes`` (in input order) as they come, each with its summary entry.

    An image that could not be read or segmented (an :class:`LCError` outcome), or whose own output file
    cannot be written (:data:`IMAGE_ONLY_ERRNOS`), is reported on stderr and listed in ``failed``, or ends
    the loop with ``strict``; nothing of it is written. An interrupt (Ctrl-C) ends the loop too: the run so
    far is returned, marked ``interrupted``; so does an output folder that fails (disk full, read-only), or
    a source that fails (``stopped``: why). ``earlier``: :func:`earlier_outputs`, the files in ``out`` this
    run may replace; the others are never replaced.
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
                else:
                    try:
                        staged = stage({out / f"{stems[index]}{variant}{OUTPUTS[variant][0]}": data
                                        for variant, data in outcome.files.items()})
                        # Renamed and recorded together: a Ctrl-C waits until the image is listed as done.
                        with interrupts_deferred():
                            commit(staged)
                            run.records.append({**outcome.record, "outputs": [final.name for _, final in staged.moves],
                                                "sha256": staged.sha256})
                        continue
                    except OutputError as error:
                        reason = str(error)
                        if error.errno not in IMAGE_ONLY_ERRNOS or unwritable(out) is not None:
                            run.stopped = reason  # the folder: the next image would fail alike
                run.failed.append({"input": str(path), "error": reason})
                if run.stopped:
                    break
                # tqdm.write keeps the progress bar intact below the message.
                tqdm.write(f"warning: {path}: {reason}{' (stopping: --strict)' if strict else ''}", file=sys.stderr)
                if strict:
                    break
        except KeyboardInterrupt:
            run.interrupted = True
        except LCError as error:  # the source itself failed (e.g. a cluster lost)
            run.stopped = str(error)
    return run


def segment_file(cascade: Cascade, path: Path, rho: RhoLike | None, read: ImageOptions = ImageOptions(),
                 rho_class: RhoClassLike | None = None) -> Segmented:
    """Read and segment one image and encode its pictures (:class:`LCError` if it cannot be)."""
    image, result, ms = segment(cascade, path, rho, read, rho_class)
    return Segmented(image_record(path, image, result, ms), encode(render(image, result, cascade.palette)))


def files_in(out: Path) -> set[str]:
    """The names in the folder ``out``; one line if it cannot be listed (its files could not be kept)."""
    try:
        return {entry.name for entry in os.scandir(out)}
    except FileNotFoundError:
        return set()
    except OSError as error:
        fail(f"{out}: cannot list the output folder ({error.strerror}), so its files could not be kept; "
             "pass another -o")


def earlier_outputs(out: Path) -> dict[str, str]:
    """The files in ``out`` that earlier runs wrote, {name: sha256}: those its ``summary.json`` lists (a
    run's own outputs and those it found from runs before) that are still regular files (not links) with
    the sha256 it recorded. A run may replace these and no others: a summary.json copied from elsewhere
    claims only files byte for byte as lc-run wrote them, and one without hashes (older lc-run) claims none.
    A ``summary.json`` that is not an lc-run summary (or a link, over :data:`SUMMARY_MAX_BYTES`, nested too
    deep) is one line: a run would replace it. Only the files it names are read.
    """
    path = out / SUMMARY
    refused = f"{path}: exists and is not an lc-run summary, which this run would replace"
    try:
        data = read_regular(path, SUMMARY_MAX_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as error:
        fail(f"{path}: cannot read ({error.strerror or error}); move it or pass another -o")
    except LCError as error:
        fail(f"{refused} ({error}): move it or pass another -o")
    try:
        recorded = recorded_outputs(json.loads(data))
    except RecursionError:
        fail(f"{refused} (nested too deep): move it or pass another -o")
    except (ValueError, TypeError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        fail(f"{refused} ({str(error).splitlines()[0][:200]}): move it or pass another -o")
    claimed: dict[str, str] = {}
    for name, digests in recorded.items():
        digest = file_sha256(out / name)
        if digest in digests:
            claimed[name] = digest
    return dict(sorted(claimed.items()))


def recorded_outputs(summary: object) -> dict[str, set[str]]:
    """The output names a summary records with their sha256 (a name may have several: runs rewrote it);
    ValueError if ``summary`` is not an lc-run summary. Records and ``earlier_outputs`` without hashes
    (written by lc-run before it recorded them) claim nothing."""
    if not (isinstance(summary, dict) and isinstance(summary.get("results"), list)):
        raise ValueError("no 'results' list")
    hashes = []
    for record in summary["results"]:
        if not (isinstance(record, dict) and isinstance(record.get("outputs"), list)
                and all(map(is_plain_file_name, record["outputs"]))):
            raise ValueError("a result without a list of output file names")
        hashes.append(record.get("sha256", {}))
    earlier = summary.get("earlier_outputs", {})
    if isinstance(earlier, list) and all(map(is_plain_file_name, earlier)):
        earlier = {}  # names only: an older lc-run's
    recorded: dict[str, set[str]] = {}
    for digests in [*hashes, earlier]:
        if not (isinstance(digests, dict) and all(is_plain_file_name(n) and is_sha256(d) for n, d in digests.items())):
            raise ValueError("output hashes are not {file name: sha256}")
        for name, digest in digests.items():
            recorded.setdefault(name, set()).add(digest)
    return recorded


def file_sha256(path: Path) -> str | None:
    """The sha256 of the regular file ``path``; None if it is not one (a link, a folder) or cannot be read."""
    try:
        with open_regular(path) as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except (OSError, ValueError, LCError):  # ValueError: a name the OS cannot encode
        return None


def segment(cascade: Cascade, path: Path, rho: RhoLike | None, read: ImageOptions = ImageOptions(),
            rho_class: RhoClassLike | None = None) -> tuple[np.ndarray, CascadeResult, float]:
    """Read and segment one image at ``rho`` and ``rho_class`` (``Cascade.thresholds``): (image, result,
    milliseconds)."""
    image = read_rgb(path, read.max_pixels, read.exif_transpose)
    start = time.perf_counter()
    result = cascade(image, rho=rho, resize=read.resize, tile=read.tile, overlap=read.overlap, rho_class=rho_class)
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
    """Files written to temporary names beside their final ones: (temporary, final) pairs, and the
    sha256 of each file by its final name."""

    moves: list[tuple[Path, Path]]
    sha256: dict[str, str]


def encode(pictures: dict[str, Image.Image]) -> dict[str, bytes]:
    """Each picture encoded as its OUTPUTS variant is saved (the bytes of the file)."""
    files = {}
    for variant, picture in pictures.items():
        extension, options = OUTPUTS[variant]
        buffer = io.BytesIO()
        picture.save(buffer, format=Image.registered_extensions()[extension], **options)
        files[variant] = buffer.getvalue()
    return files


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``; never opens an existing file (nor the target of a link)."""
    with open(path, "xb") as handle:
        handle.write(data)


def stage(files: dict[Path, bytes]) -> Staged:
    """Write each file's bytes to a temporary name beside its final path; on any failure (:class:`OutputError`
    naming the final path) or Ctrl-C the temporary files written so far are removed."""
    moves: list[tuple[Path, Path]] = []
    try:
        for final, data in files.items():
            moves.append((temporary_path(final), final))
            try:
                write_new(moves[-1][0], data)
            except OSError as error:
                raise OutputError(final, error) from None
    except BaseException:
        remove([temporary for temporary, _ in moves])
        raise
    return Staged(moves, {final.name: hashlib.sha256(data).hexdigest() for final, data in files.items()})


def commit(staged: Staged) -> None:
    """Rename the staged files into place, all or none (a failed rename removes the ones renamed and the
    rest: :class:`OutputError`). Run with Ctrl-C held off (:func:`interrupts_deferred`)."""
    renamed: list[Path] = []
    try:
        for temporary, final in staged.moves:
            os.replace(temporary, final)
            renamed.append(final)
    except OSError as error:
        remove([temporary for temporary, _ in staged.moves[len(renamed):]] + renamed)
        raise OutputError(staged.moves[len(renamed)][1], error) from None


def remove(paths: list[Path]) -> None:
    """Remove files while an error is being reported: a failure here (a read-only disk) is not a second error."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


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


def image_record(path: Path, image: np.ndarray, result: CascadeResult, ms: float) -> dict[str, Any]:
    """The summary entry of one image, but for its ``outputs``."""
    return {
        "input": str(path),
        "size": [int(image.shape[0]), int(image.shape[1])],
        "stage_fractions": [round(float(f), 6) for f in result.stage_fractions],
        "ms": round(ms, 3),
    }


def summarize(run: Run, *, backend: str, precision: str | None, model: str, rho: Rho,
              rho_class: dict[str, float] | None = None) -> dict[str, Any]:
    """Totals over the run, then the per-image records.

    ``stage_fractions`` is weighted by image pixels: the share of all segmented pixels
    each stage decided. Means are null when no image was segmented. ``interrupted``: the run
    was stopped (Ctrl-C) before every image was tried; ``stopped``: why it ended early (an output
    could not be written); the records are the images finished either way. ``backend`` and ``precision``: the
    engine that ran and what it computed in. ``rho``: one number when both stages shared it, else [ρ₂, ρ₃];
    ``rho_class``: the per-class thresholds, class name → ρ_c ({} when none).
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
        "precision": precision,  # what the backend computed in (Cascade.precision)
        "model": str(model),
        "rho": rho_value(rho),
        "rho_class": dict(rho_class or {}),
        "results": records,
        # Outputs of runs before found in the folder (with their content's sha256, as each record has its
        # own): the next run may replace them too, while their content is still this.
        "earlier_outputs": {name: digest for name, digest in run.earlier.items() if name not in written},
    }


def write_summary(out: Path, summary: dict[str, Any]) -> int:
    """``OUT/summary.json``, atomically (:class:`OutputError` if it cannot be written); returns its size."""
    data = (json.dumps(summary, indent=2) + "\n").encode()
    commit(stage({out / SUMMARY: data}))
    return len(data)
