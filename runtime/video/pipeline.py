"""The video pipeline: decode thread → cascade on batches of frames (the calling thread) → encode thread,
joined by bounded queues, so decoding, inference and encoding overlap and memory stays flat however long
the video.

``run_video`` writes a video's outputs (``segment_video``), ``stream_results`` yields the results
(``Cascade.stream``); both batch frames as the model's batch capacity allows.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from layercascade.contract import Rho, RhoClass, RhoClassLike, RhoLike, rho_value
from layercascade.errors import LCError, fail
from layercascade.manifest import MANIFEST
from layercascade.runtime.control import Choice, RhoController, read_frontier
from layercascade.runtime.result import CascadeResult
from layercascade.runtime.segment import ImageOptions, interrupts_deferred
from layercascade.runtime.video import FrameResult, SourceStoppedWarning, VideoRun
from layercascade.runtime.video.source import Counts, Decoder, End, Frame, decoded, iterable_frames, open_video

if TYPE_CHECKING:
    from PIL import Image

    from layercascade.runtime.cascade import Cascade

# Frames run together at most (where the model's batch capacity allows as many): enough to fill a batch
# of a dynamic-batch export, few enough that the frames waiting stay a small, fixed amount of memory.
MAX_BATCH = 8
# Frames the decoder may hold ready (in batches): under realtime this bounds the latency, without it memory.
QUEUED_BATCHES = 2
# How long a stopped run waits for the decode thread (a live source's read ends within its timeout).
_DECODER_WAIT_S = 2.0


def batch_size(cascade: Cascade) -> int:
    """Frames per cascade run: the model's batch capacity, at most :data:`MAX_BATCH`."""
    return min(cascade.batch_capacity or MAX_BATCH, MAX_BATCH)


def batches(decoder: Decoder, size: int) -> Iterator[tuple[list[Frame], list[Any]]]:
    """(frames, audio packets that came before or among them) as the decoder gives them: up to ``size``
    frames, those ready when the first arrives (a batch never waits to fill). An exception the decode thread
    met is raised here."""
    while True:
        frames: list[Frame] = []
        packets: list[Any] = []
        item = decoder.get()
        while item is not None and not isinstance(item, End):
            (frames if isinstance(item, Frame) else packets).append(item)
            item = decoder.get(block=False) if len(frames) < size else None
        if frames or packets:
            yield frames, packets
        if isinstance(item, End):
            if item.error is not None:
                raise item.error
            return


def infer(cascade: Cascade, frames: list[Frame], rho: RhoLike | None, read: ImageOptions,
          rho_class: RhoClassLike | None = None) -> tuple[list[CascadeResult], float]:
    """The cascade's results for a batch of frames at ``rho`` and ``rho_class`` and the seconds it took."""
    started = time.perf_counter()
    results = cascade.segment_batch([frame.image for frame in frames], rho, read.resize, read.tile, read.overlap,
                                    rho_class)
    return results, time.perf_counter() - started


class Thresholds:
    """The ρ of each batch of a video: ``rho`` (the model's default when None), or with ``target_fps`` the point of
    the model's frontier a :class:`~layercascade.runtime.control.RhoController` picks for that rate, fed each
    batch's time per frame and the frames waiting behind it (a frame is the controller's unit: its target is
    1000 / ``target_fps`` ms, and the frontier's run times are scaled to this machine's frames as they come).
    The target moves ρ₂ and ρ₃ only: ``rho_class`` (checked here, before the source opens; None: the model's default)
    applies to every batch on top of them, as :attr:`per_class`."""

    def __init__(self, cascade: Cascade, rho: RhoLike | None, target_fps: float | None,
                 rho_class: RhoClassLike | None = None) -> None:
        self.fixed = cascade.rho(rho)
        self.per_class: RhoClass = cascade.rho_class(rho_class)
        self.controller: RhoController | None = None
        self.choice: Choice | None = None
        self.costs = 0.0  # the expected mIoU cost summed over the frames run
        self.frames = 0
        if target_fps is not None:
            if rho is not None:
                fail("--rho and --target-fps both set the thresholds: pass one (the target moves ρ along the model's "
                     "frontier)")
            frontier = read_frontier(cascade.manifest, Path(cascade.model_dir) / MANIFEST)
            self.controller = RhoController.for_fps(frontier, target_fps)

    def next(self) -> Rho:
        """The thresholds of the next batch."""
        if self.controller is None:
            return self.fixed
        self.choice = self.controller.choose()
        return self.choice.rho

    def ran(self, frames: int, seconds: float, waiting: int) -> None:
        """A batch of ``frames`` took ``seconds`` in the cascade; ``waiting`` frames are queued behind it."""
        if self.controller is None or self.choice is None or not frames:
            return
        per_frame_ms = seconds * 1e3 / frames
        self.controller.observe(per_frame_ms, waiting, per_frame_ms, self.choice.rho)
        self.costs += frames * self.choice.expected_miou_cost
        self.frames += frames

    def record(self) -> dict[str, Any]:
        """What a video's summary entry says of the control: nothing without a target."""
        if self.controller is None:
            return {}
        return {"target_fps": round(1e3 / self.controller.target_ms, 6), "rho_moves": self.controller.moves,
                "final_rho": rho_value(self.controller.point.rho),
                "mean_expected_miou_cost": round(self.costs / self.frames, 4) if self.frames else None}


def stream_results(cascade: Cascade, source: str | Path | Iterable[np.ndarray | Image.Image], *,
                   rho: RhoLike | None, resize: str | None, realtime: bool | None,
                   open_timeout_s: float, target_fps: float | None = None,
                   rho_class: RhoClassLike | None = None) -> Iterator[FrameResult]:
    """``video.stream``: the source opened and the settings checked now, the frames run as they are taken."""
    read = ImageOptions(resize=resize)
    cascade.image_policy(resize, None, None)
    thresholds = Thresholds(cascade, rho, target_fps, rho_class)
    size = batch_size(cascade)
    counts = Counts()
    if isinstance(source, (str, Path)):
        opened = open_video(source, open_timeout_s, read.max_pixels)
        decoder = Decoder(decoded(opened, counts, audio=False, max_pixels=read.max_pixels),
                          drop=opened.live if realtime is None else realtime and opened.live,
                          capacity=QUEUED_BATCHES * size)
    else:
        decoder = Decoder(iterable_frames(source), drop=bool(realtime), capacity=QUEUED_BATCHES * size)
    return _results(cascade, decoder, counts, size, thresholds, read)


def _results(cascade: Cascade, decoder: Decoder, counts: Counts, size: int, thresholds: Thresholds,
             read: ImageOptions) -> Iterator[FrameResult]:
    decoder.start()
    try:
        for frames, _ in batches(decoder, size):
            rho = thresholds.next()
            results, seconds = infer(cascade, frames, rho, read, thresholds.per_class)
            thresholds.ran(len(frames), seconds, decoder.frames)
            for frame, result in zip(frames, results, strict=True):
                yield FrameResult(frame.index, frame.pts, frame.time_s, frame.image, result, rho)
    finally:  # also when the caller closes the generator early
        decoder.stop(_DECODER_WAIT_S)
    if counts.stopped:  # the source failed mid-way: the frames end here, and the caller is told why
        warnings.warn(counts.stopped, SourceStoppedWarning, stacklevel=2)


@dataclass
class Totals:
    """Sums over the frames segmented: count, seconds in the cascade, pixel-weighted stage fractions."""

    frames: int = 0
    seconds: float = 0.0
    pixels: int = 0
    weighted: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def add(self, frames: list[Frame], results: list[CascadeResult], seconds: float) -> None:
        self.frames += len(frames)
        self.seconds += seconds
        for frame, result in zip(frames, results, strict=True):
            pixels = frame.image.shape[0] * frame.image.shape[1]
            self.pixels += pixels
            self.weighted += pixels * np.asarray(result.stage_fractions, dtype=np.float64)


def run_video(cascade: Cascade, source: str | Path, out: Path, stem: str, *, rho: RhoLike | None,
              read: ImageOptions, realtime: bool | None, progress: bool, open_timeout_s: float,
              target_fps: float | None = None, rho_class: RhoClassLike | None = None) -> VideoRun:
    """``segment_video``: see there."""
    from layercascade.runtime.video.outputs import Encoder, VideoWriter

    cascade.image_policy(read.resize, read.tile, read.overlap)
    thresholds = Thresholds(cascade, rho, target_fps, rho_class)
    opened = open_video(source, open_timeout_s, read.max_pixels)
    size = batch_size(cascade)
    counts = Counts()
    try:
        writer = VideoWriter(out, stem, opened, cascade.palette)
    except BaseException:
        opened.container.close()
        raise
    decoder = Decoder(decoded(opened, counts, audio=writer.audio, max_pixels=read.max_pixels),
                      drop=opened.live if realtime is None else realtime and opened.live,
                      capacity=QUEUED_BATCHES * size)
    encoder = Encoder(writer, capacity=QUEUED_BATCHES * size)
    totals = Totals()
    interrupted, stopped = False, None
    started = time.perf_counter()
    try:
        try:
            decoder.start()
            encoder.start()
            with tqdm(total=opened.frames, desc=Path(opened.name).name or opened.name, unit="frame",
                      file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
                for frames, packets in batches(decoder, size):
                    for packet in packets:
                        encoder.put(packet)
                    if frames:
                        batch_rho = thresholds.next()
                        results, seconds = infer(cascade, frames, batch_rho, read, thresholds.per_class)
                        thresholds.ran(len(frames), seconds, decoder.frames)
                        totals.add(frames, results, seconds)
                        for frame, result in zip(frames, results, strict=True):
                            encoder.put((frame, result, seconds * 1e3 / len(frames), batch_rho))
                        bar.update(len(frames))
                        if decoder.dropped:
                            bar.set_postfix(dropped=decoder.dropped, refresh=False)
                    if encoder.failed:
                        break
        except KeyboardInterrupt:
            interrupted = True
        except LCError as error:  # the cascade refused a frame
            stopped = str(error)
        # Finishing is not cut short by a second Ctrl-C: it is held until the outputs are renamed.
        with interrupts_deferred():
            decoder.stop(_DECODER_WAIT_S)
            encoder.finish()
            written, digests, problem = writer.close()
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:  # a bug: the threads ended, the outputs removed, the error raised
        decoder.stop(_DECODER_WAIT_S)
        with contextlib.suppress(Exception):
            encoder.finish()
        writer.discard()
        raise
    stopped = stopped or encoder.failed or problem or counts.stopped
    wall = time.perf_counter() - started
    frames = writer.frames
    record = {
        "input": opened.name,
        "kind": "video",
        "size": list(writer.size),
        "frames": frames,
        "dropped": decoder.dropped,
        "decode_errors": counts.decode_errors,
        "fps": round(frames / wall, 3) if wall > 0 else None,
        "inference_fps": round(totals.frames / totals.seconds, 3) if totals.seconds > 0 else None,
        "ms": round(totals.seconds * 1e3 / totals.frames, 3) if totals.frames else None,
        "stage_fractions": ([round(float(f), 6) for f in totals.weighted / totals.pixels] if totals.pixels else None),
        "duration_s": round(wall, 3),
        "audio": writer.audio,
        **thresholds.record(),
        "interrupted": interrupted,
        "stopped": stopped,
        "outputs": written,
        "sha256": digests,
    }
    return VideoRun(record, interrupted, stopped)
