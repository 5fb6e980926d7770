"""Segmenting image files: read each, run the cascade, write the outputs chosen (label map, overlay, stage
picture, confidence) atomically, and a summary of the run (what lc-run does; the command only parses and prints).
Videos and live sources among the inputs are segmented by ``runtime.video.segment_video``, in input order
with the images, their records in the same summary."""

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
from layercascade.runtime.inputs import Source, source_stem, unique_stems
from layercascade.runtime.sources import is_video
from layercascade.runtime.visualize import confidence_image, label_image, overlay, stage_picture

if TYPE_CHECKING:
    from layercascade.runtime.cascade import Cascade
    from layercascade.runtime.result import CascadeResult
    from layercascade.runtime.video import VideoRun

# The files lc-run can write per image, by their --outputs name: the file is stem + suffix, saved by Pillow with
# these options (a .npy by numpy). A video's outputs are runtime.video.VIDEO_OUTPUTS, whatever --outputs says.
OUTPUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "labels": (".png", {}),  # palette PNG of class ids, at the image's size
    "overlay": ("_overlay.jpg", {"quality": 90}),
    # The shaded picture compresses poorly whatever the level, so the fastest level costs little size.
    "stages": ("_stages.png", {"compress_level": 1}),
    "confidence": ("_confidence.png", {}),  # 16-bit grey at the image's size: round(p · 65535)
    "confidence-npy": ("_confidence.npy", {}),  # float32 at the stage resolution, as the cascade computed it
}
DEFAULT_OUTPUTS = ("labels", "overlay", "stages")
# The outputs that read the confidence (a model dir exported before lc.json version 3 has none).
CONFIDENCE_OUTPUTS = ("confidence", "confidence-npy")
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
    """What a run did: the records of the images and videos done, the failures, whether it was interrupted."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None  # why the run ended early (an output could not be written)
    earlier: dict[str, str] = field(default_factory=dict)  # earlier runs' outputs in the folder: name → sha256
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS  # what was written per image (OUTPUTS names)


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


def parse_outputs(text: str) -> tuple[str, ...]:
    """``--outputs``: comma-separated names of :data:`OUTPUTS`, each once, in :data:`OUTPUTS`' order; else one line."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        fail(f"--outputs {text!r}: unknown output {', '.join(map(repr, unknown))}; choose from {', '.join(OUTPUTS)}")
    return tuple(name for name in OUTPUTS if name in names)


def check_outputs(cascade: Cascade, outputs: Iterable[str]) -> None:
    """One line if ``outputs`` ask for the confidence of a model dir exported without it."""
    asked = [name for name in outputs if name in CONFIDENCE_OUTPUTS]
    if asked and not cascade.has_confidence:
        fail(f"--outputs {','.join(asked)}: {cascade.model_dir} was exported before layercascade wrote the "
             "confidence (lc.json version 2); re-export it with lc-export")


@dataclass
class Segmented:
    """One image segmented, before its files are written: its summary entry (without ``outputs``) and
    its outputs encoded, keyed by their OUTPUTS name."""

    record: dict[str, Any]
    files: dict[str, bytes]


# What a source of results yields for each input: its index in the run's paths, and the image done (its
# pictures still to write), the video done (its files written: runtime.video.segment_video) or the reason
# it could not be.
Outcome = tuple[int, "Segmented | VideoRun | LCError"]


@dataclass(frozen=True)
class VideoOptions:
    """How lc-run reads videos and live sources (``segment_video``'s settings): ``realtime`` drops frames
    when the model falls behind (None: for live sources only), ``open_timeout_s`` bounds opening one,
    ``target_fps`` lowers ρ along the model's frontier to keep that many frames per second."""

    realtime: bool | None = None
    open_timeout_s: float = 10.0
    target_fps: float | None = None


@dataclass(frozen=True)
class Plan:
    """The outputs of a run's inputs, decided before any is read: which are videos, each one's output stem
    (unique among the run's outputs and the files of ``out`` it may not replace), and the files of earlier
    runs it may replace (:func:`earlier_outputs`); ``outputs``: the :data:`OUTPUTS` written per image."""

    videos: list[bool]
    stems: list[str]
    earlier: dict[str, str]
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS

    @classmethod
    def make(cls, paths: list[Source], out: Path, earlier: dict[str, str] | None = None,
             outputs: tuple[str, ...] = DEFAULT_OUTPUTS) -> Plan:
        from layercascade.runtime.video import VIDEO_OUTPUTS  # here: runtime.video imports this module

        earlier = earlier_outputs(out) if earlier is None else earlier
        videos = [is_video(path) for path in paths]
        image_suffixes = tuple(OUTPUTS[name][0] for name in outputs)
        stems = unique_stems([(source_stem(path), VIDEO_OUTPUTS if video else image_suffixes)
                              for path, video in zip(paths, videos, strict=True)],
                             in_use=files_in(out) - set(earlier) - {SUMMARY})
        return cls(videos, stems, earlier, outputs)


def segment_all(cascade: Cascade, paths: list[Source], out: Path, *, rho: RhoLike | None, strict: bool,
                progress: bool, read: ImageOptions = ImageOptions(), earlier: dict[str, str] | None = None,
                video: VideoOptions = VideoOptions(), outputs: tuple[str, ...] = DEFAULT_OUTPUTS,
                rho_class: RhoClassLike | None = None) -> Run:
    """Segment every input, one after another, and write its outputs: an image's ``outputs`` through
    :func:`write_all` (all of an image's files or none), a video's containers by :func:`segment_one_video`; each at
    ``rho`` and ``rho_class`` (``Cascade.thresholds``; a video's ``target_fps`` moves ρ₂, ρ₃ only)."""
    check_outputs(cascade, outputs)
    plan = Plan.make(paths, out, earlier, outputs)

    def outcomes() -> Iterator[Outcome]:
        for index, path in enumerate(paths):
            outcome: Segmented | VideoRun | LCError
            try:
                if plan.videos[index]:
                    outcome = segment_one_video(cascade, path, out, plan.stems[index], rho=rho, read=read,
                                                video=video, progress=progress, rho_class=rho_class)
                else:
                    outcome = segment_file(cascade, path, rho, read, outputs, rho_class)
            except LCError as error:
                outcome = error
            yield index, outcome
            if getattr(outcome, "interrupted", False):
                return  # the video took the Ctrl-C: the run ends with it listed

    return write_all(outcomes(), paths, out, plan, strict=strict, progress=progress)


def segment_one_video(cascade: Cascade, source: Source, out: Path, stem: str, *, rho: RhoLike | None,
                      read: ImageOptions, video: VideoOptions, progress: bool,
                      rho_class: RhoClassLike | None = None) -> VideoRun:
    """``runtime.video.segment_video`` with lc-run's settings (imported here: PyAV loads only for a video)."""
    from layercascade.runtime.video import segment_video

    return segment_video(cascade, source, out, stem, rho=rho, read=read, realtime=video.realtime,
                         progress=progress, open_timeout_s=video.open_timeout_s, target_fps=video.target_fps,
                         rho_class=rho_class)


def write_all(outcomes: Iterable[Outcome], paths: list[Source], out: Path, plan: Plan, *, strict: bool,
              progress: bool) -> Run:
    """Write the images of ``outcomes`` (in input order) as they come, each with its summary entry, and list
    the videos done (their files are written already, under ``plan``'s stems).

    An input that could not be read or segmented (an :class:`LCError` outcome), or an image whose own output
    file cannot be written (:data:`IMAGE_ONLY_ERRNOS`), is reported on stderr and listed in ``failed``, or
    ends the loop with ``strict``; nothing of it is written. An interrupt (Ctrl-C) ends the loop too: the run
    so far is returned, marked ``interrupted`` (a video that took the Ctrl-C itself is listed, its containers
    finalised); so does an output folder that fails (disk full, read-only), a video whose source died or
    whose output failed, or a source of outcomes that fails (``stopped``: why). ``plan.earlier``: the files
    in ``out`` this run may replace; the others are never replaced. The records and failures are listed in
    input order, however the outcomes came.
    """
    run = Run(earlier=plan.earlier, outputs=plan.outputs)
    stems = plan.stems
    with tqdm(total=len(paths), desc="lc-run", unit="input", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        try:
            for index, outcome in outcomes:
                bar.update()
                path = paths[index]
                if not isinstance(outcome, (LCError, Segmented)):  # a video, its files written
                    run.records.append({**outcome.record, "input": str(path)})
                    run.interrupted = run.interrupted or outcome.interrupted
                    if outcome.stopped:  # named after the input, once
                        run.stopped = f"{path}: {failure_reason(LCError(outcome.stopped), path)}"
                        break
                    continue
                if isinstance(outcome, LCError):
                    reason = failure_reason(outcome, path)
                else:
                    try:
                        staged = stage({out / f"{stems[index]}{OUTPUTS[name][0]}": data
                                        for name, data in outcome.files.items()})
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
    position = {str(path): index for index, path in enumerate(paths)}  # inputs are unique (expand_inputs)
    run.records.sort(key=lambda record: position[record["input"]])
    run.failed.sort(key=lambda failure: position[failure["input"]])
    return run


def segment_file(cascade: Cascade, path: Path, rho: RhoLike | None, read: ImageOptions = ImageOptions(),
                 outputs: tuple[str, ...] = DEFAULT_OUTPUTS, rho_class: RhoClassLike | None = None) -> Segmented:
    """Read and segment one image and encode its ``outputs`` (:class:`LCError` if it cannot be)."""
    image, result, ms = segment(cascade, path, rho, read, rho_class)
    return Segmented(image_record(path, image, result, ms), encode(render(image, result, cascade.palette,
                                                                          outputs=outputs)))


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


def render(image: np.ndarray, result: CascadeResult, palette: np.ndarray, max_pixels: int = PICTURE_MAX_PIXELS,
           outputs: Iterable[str] = DEFAULT_OUTPUTS) -> dict[str, Image.Image | np.ndarray]:
    """The ``outputs`` of one result, keyed by their OUTPUTS name: the label map and the confidence picture at the
    image's size, the overlay and stage picture at most ``max_pixels`` (scaled down, aspect kept), the confidence
    array at the stage resolution."""
    outputs = set(outputs)
    size = picture_size(image.shape[:2], max_pixels)
    shown = resize_image(image, size) if outputs & {"overlay", "stages"} else image
    draw = {
        "labels": lambda: label_image(result.labels, palette),
        "overlay": lambda: overlay(shown, resize_labels(result.labels, size), palette),
        "stages": lambda: stage_picture(shown, result.stage_map),
        "confidence": lambda: confidence_image(result.confidence_at_image_size()),
        "confidence-npy": result.checked_confidence,
    }
    return {name: draw[name]() for name in OUTPUTS if name in outputs}


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


def encode(pictures: dict[str, Image.Image | np.ndarray]) -> dict[str, bytes]:
    """Each output encoded as its OUTPUTS name is saved (the bytes of the file): pictures by Pillow, arrays as .npy."""
    files = {}
    for name, picture in pictures.items():
        suffix, options = OUTPUTS[name]
        buffer = io.BytesIO()
        if isinstance(picture, np.ndarray):
            np.save(buffer, picture, allow_pickle=False)
        else:
            picture.save(buffer, format=Image.registered_extensions()[suffix[suffix.rindex("."):]], **options)
        files[name] = buffer.getvalue()
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


def is_video_record(record: dict[str, Any]) -> bool:
    """Whether a summary record is a video's (``segment_video``'s; an image's has no ``kind``)."""
    return record.get("kind") == "video"


def summarize(run: Run, *, backend: str, precision: str | None, model: str, rho: Rho,
              rho_class: dict[str, float] | None = None) -> dict[str, Any]:
    """Totals over the run, then the per-input records.

    ``images`` and ``videos`` count the records of each kind; ``frames``, ``dropped`` and ``decode_errors``
    add up the videos' frames segmented, dropped (realtime) and undecodable. ``stage_fractions`` is weighted
    by pixels segmented (a video's size times its frames): the share of all segmented pixels each stage
    decided; ``mean_ms`` is per image or video frame. Means are null when nothing was segmented.
    ``interrupted``: the run was stopped (Ctrl-C) before every input was tried; ``stopped``: why it ended
    early (an output could not be written, a live source died); the records are the inputs finished either
    way. ``backend`` and ``precision``: the engine that ran and what it computed in. ``rho``: one number when
    both stages shared it, else [ρ₂, ρ₃]; ``rho_class``: the per-class thresholds, class name → ρ_c ({} when none).
    """
    records = run.records
    videos = [record for record in records if is_video_record(record)]
    # A video of no frames (interrupted at once) weighs nothing.
    counts = [record["frames"] if is_video_record(record) else 1 for record in records]
    segmented = [(record, count) for record, count in zip(records, counts, strict=True) if count]
    pixels = [record["size"][0] * record["size"][1] * count for record, count in segmented]
    fractions = (np.average([record["stage_fractions"] for record, _ in segmented], axis=0, weights=pixels)
                 if segmented else None)
    mean_ms = (np.average([record["ms"] for record, _ in segmented], weights=[count for _, count in segmented])
               if segmented else None)
    written = {name for record in records for name in record["outputs"]}
    return {
        "images": len(records) - len(videos),
        "videos": len(videos),
        "frames": sum(record["frames"] for record in videos),
        "dropped": sum(record["dropped"] for record in videos),
        "decode_errors": sum(record["decode_errors"] for record in videos),
        "failed": run.failed,
        "interrupted": run.interrupted,
        "stopped": run.stopped,
        "mean_ms": None if mean_ms is None else round(float(mean_ms), 3),
        "stage_fractions": None if fractions is None else [round(float(f), 6) for f in fractions],
        "backend": backend,
        "precision": precision,  # what the backend computed in (Cascade.precision)
        "model": str(model),
        "rho": rho_value(rho),
        "rho_class": dict(rho_class or {}),
        "outputs": list(run.outputs),  # the OUTPUTS written per image (lc-run --outputs)
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
