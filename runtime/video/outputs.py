"""Writing a video's outputs: the overlay (H.264 mp4, the input's timestamps and audio), the labels (FFV1
gray mkv, lossless) and one JSON line per frame, under temporary names until finalised; and the encode
thread that writes them while the cascade runs."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import threading
import warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from layercascade.contract import Rho, rho_value
from layercascade.manifest import temporary_path
from layercascade.model.data.images import resize_image, resize_labels
from layercascade.runtime.result import CascadeResult
from layercascade.runtime.segment import PICTURE_MAX_PIXELS, OutputError, file_sha256, picture_size, remove
from layercascade.runtime.video import VIDEO_OUTPUTS
from layercascade.runtime.video.source import Frame, Opened
from layercascade.runtime.visualize import overlay

# Audio codecs the mp4 muxer takes as they are (copied packet for packet); others are transcoded to AAC.
MP4_AUDIO = frozenset({"aac", "mp3", "opus", "flac", "ac3", "eac3", "alac", "mp2"})
# The channel layouts the AAC encoder takes, by channel count (more channels are mixed down to stereo).
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# Audio packets kept while waiting for the first frame (about 20 s of AAC); older ones are dropped.
MAX_WAITING_AUDIO = 1000
# The largest time base denominator MPEG-4 Part 2 (the fallback encoder) takes.
_MPEG4_MAX_DENOMINATOR = 65535


class VideoWriter:
    """The three outputs of one video (``out/<stem>`` + :data:`VIDEO_OUTPUTS`), each written to a temporary
    name beside its final one; :meth:`close` finalises and renames them. Any failure to write is an
    :class:`OutputError` naming the output."""

    def __init__(self, out: Path, stem: str, opened: Opened, palette: np.ndarray) -> None:
        self.finals = [out / f"{stem}{suffix}" for suffix in VIDEO_OUTPUTS]
        self.temporaries = [temporary_path(final) for final in self.finals]
        self.palette = palette
        self.size = opened.size
        self.time_base = opened.video.time_base or Fraction(1, 90_000)
        # The step a frame without a usable timestamp gets after the one before (one frame at the stated rate).
        self.step = max(1, round(1 / (opened.rate * self.time_base)))
        self.last_pts: int | None = None
        self.frames = 0
        self.audio = False
        self.transcoder: AudioTranscoder | None = None
        # Audio that comes before the first frame waits for it: the frame's size (upright, for a rotated video)
        # is the video streams' and must be set before the mp4's header is written.
        self.started = False
        self.waiting_audio: collections.deque[Any] = collections.deque(maxlen=MAX_WAITING_AUDIO)
        self.files: list[IO[bytes]] = []
        try:
            for temporary in self.temporaries:
                self.files.append(open(temporary, "xb"))  # noqa: SIM115 - closed in close()
        except OSError as error:
            self.discard()
            raise OutputError(self.finals[len(self.files)], error) from None
        try:
            self.overlay = av.open(self.files[0], "w", format="mp4")
            self.labels = av.open(self.files[1], "w", format="matroska")
            self.lines = self.files[2]
            self.video_out = self._video_stream(opened)
            self.labels_out = self._labels_stream(opened)
            self.audio_out = self._audio_stream(opened)
        except BaseException:
            self.discard()
            raise

    def _start(self, size: tuple[int, int]) -> None:
        """Size the video streams by the first frame, then write the audio that waited for it."""
        self.size = size
        height, width = picture_size(size, PICTURE_MAX_PIXELS)
        # yuv420p takes even sizes only: an odd overlay is cropped by its last row or column (the labels file
        # keeps every pixel); an overlay over PICTURE_MAX_PIXELS is scaled down as lc-run's pictures are.
        self.picture = (max(2, height - height % 2), max(2, width - width % 2))
        self.video_out.height, self.video_out.width = self.picture
        self.labels_out.height, self.labels_out.width = size
        self.started = True
        while self.waiting_audio:
            self.mux_audio(self.waiting_audio.popleft())

    def _video_stream(self, opened: Opened) -> Any:
        x264 = "libx264" in av.codecs_available
        stream = self.overlay.add_stream("libx264" if x264 else "mpeg4", rate=opened.rate,
                                         options={"preset": "veryfast"} if x264 else {})
        stream.pix_fmt = "yuv420p"
        # The encoder shares the machine with the cascade's threads: FFmpeg's default (1.5 threads a core for x264)
        # oversubscribes it. A quarter of the cores, one on a 2-core machine.
        stream.codec_context.thread_count = max(1, (os.cpu_count() or 1) // 4)
        # The input's time base, so its timestamps carry over unchanged (MPEG-4 Part 2 takes only coarser ones:
        # PyAV rescales the frames' timestamps to it).
        coarse = x264 or self.time_base.denominator <= _MPEG4_MAX_DENOMINATOR
        stream.codec_context.time_base = self.time_base if coarse else Fraction(1, 1000)
        stream.time_base = stream.codec_context.time_base
        return stream

    def _labels_stream(self, opened: Opened) -> Any:
        stream = self.labels.add_stream("ffv1", rate=opened.rate)
        stream.pix_fmt = "gray"
        stream.codec_context.time_base = self.time_base
        return stream

    def _audio_stream(self, opened: Opened) -> Any | None:
        """The overlay's audio stream: the input's first audio stream copied, or transcoded to AAC where the mp4
        muxer does not take its codec; None if the input has none (or, with a warning, if it cannot be carried)."""
        if opened.audio is None:
            return None
        try:
            if opened.audio.codec_context.name in MP4_AUDIO:
                stream = self.overlay.add_stream_from_template(opened.audio)
            else:
                self.transcoder = AudioTranscoder(self.overlay, opened.audio)
                stream = self.transcoder.stream
        except (av.error.FFmpegError, ValueError) as error:
            warnings.warn(f"{opened.name}: its audio is not carried to the overlay ({error})", stacklevel=2)
            return None
        self.audio = True
        return stream

    def write(self, frame: Frame, result: CascadeResult, ms: float, rho: Rho) -> None:
        """Encode one frame's overlay and labels and write its JSON line (``rho``: the thresholds it ran at)."""
        image, labels = frame.image, result.labels
        if not self.started:
            self._start(image.shape[:2])
        if image.shape[:2] != self.size:  # the stream changed size mid-way: the outputs keep the first one's
            image, labels = resize_image(image, self.size), resize_labels(labels, self.size)
        pts = frame.pts if frame.pts is not None and (self.last_pts is None or frame.pts > self.last_pts) else (
            0 if self.last_pts is None else self.last_pts + self.step)
        self.last_pts = pts
        height, width = self.picture
        scaled = picture_size(self.size, PICTURE_MAX_PIXELS)
        shown = image if scaled == self.size else resize_image(image, scaled)
        shown_labels = labels if scaled == self.size else resize_labels(labels, scaled)
        shown, shown_labels = shown[:height, :width], shown_labels[:height, :width]  # the odd row or column
        picture = np.asarray(overlay(np.ascontiguousarray(shown), np.ascontiguousarray(shown_labels), self.palette))
        self._encode(0, self.video_out, av.VideoFrame.from_ndarray(picture, format="rgb24"), pts)
        self._encode(1, self.labels_out, av.VideoFrame.from_ndarray(np.ascontiguousarray(labels), format="gray"), pts)
        line = {"index": frame.index, "pts": pts, "time_s": round(frame.time_s, 6), "ms": round(ms, 3),
                "rho": rho_value(rho), "stage_fractions": [round(float(f), 6) for f in result.stage_fractions]}
        with self._writing(2):
            self.lines.write((json.dumps(line) + "\n").encode())
        self.frames += 1

    def _encode(self, output: int, stream: Any, picture: Any, pts: int) -> None:
        picture.pts, picture.time_base = pts, self.time_base
        container = self.overlay if output == 0 else self.labels
        with self._writing(output):
            for packet in stream.encode(picture):
                container.mux(packet)

    @contextlib.contextmanager
    def _writing(self, output: int) -> Iterator[None]:
        """Writing output number ``output``: an OS or FFmpeg error is an :class:`OutputError` naming it."""
        try:
            yield
        except (OSError, av.error.FFmpegError) as error:
            raise OutputError(self.finals[output], error) from None

    def mux_audio(self, packet: Any) -> None:
        """Carry one audio packet of the input into the overlay (copied, or decoded and re-encoded)."""
        if self.audio_out is None:
            return
        if not self.started:
            self.waiting_audio.append(packet)
            return
        try:
            if self.transcoder is not None:
                self.transcoder.write(packet)
            else:
                packet.stream = self.audio_out
                self.overlay.mux(packet)
        except ValueError:  # a packet that does not decode or whose timestamps go back: the audio skips it
            return
        except (OSError, av.error.FFmpegError) as error:  # not a ValueError: the file
            raise OutputError(self.finals[0], error) from None

    def close(self) -> tuple[list[str], dict[str, str], str | None]:
        """Flush the encoders, write the containers' trailers, close and rename each output that is whole:
        (names written, {name: sha256}, why an output could not be finished, or None). An output that cannot be
        finished is removed, and so is every output when no frame was written (a container without one does not
        play)."""
        if not self.frames:
            for container in (self.overlay, self.labels):
                with contextlib.suppress(OSError, av.error.FFmpegError):
                    container.close()
            self.discard()
            return [], {}, None
        steps = [
            lambda: self._finish(self.overlay, self.video_out, self.transcoder),
            lambda: self._finish(self.labels, self.labels_out, None),
            lambda: None,
        ]
        written: list[str] = []
        problem = None
        for index, step in enumerate(steps):
            final, temporary = self.finals[index], self.temporaries[index]
            try:
                try:
                    step()
                finally:
                    self.files[index].close()
                os.replace(temporary, final)
                written.append(final.name)
            except (OSError, av.error.FFmpegError) as error:
                remove([temporary])
                problem = problem or str(OutputError(final, error))
        return written, {final.name: file_sha256(final) for final in self.finals if final.name in written}, problem

    @staticmethod
    def _finish(container: Any, stream: Any, transcoder: AudioTranscoder | None) -> None:
        """Flush ``stream``'s encoder (and the audio transcoder's) into ``container`` and close it."""
        try:
            for packet in stream.encode():
                container.mux(packet)
            if transcoder is not None:
                transcoder.flush()
        finally:
            container.close()  # the trailer: what was muxed plays even when flushing failed

    def discard(self) -> None:
        """Close and remove every output (a failure before the first frame: nothing is left)."""
        for handle in self.files:
            with contextlib.suppress(OSError):
                handle.close()
        remove(self.temporaries)


class AudioTranscoder:
    """An input audio stream the mp4 muxer does not take, decoded and re-encoded as AAC into ``container``."""

    def __init__(self, container: Any, source: Any) -> None:
        context = source.codec_context
        # The input stream's decoder, kept here: it outlives the input container, which the decode thread closes.
        self.decoder = context
        self.container = container
        # By channel count: a source without a channel order ("2 channels", e.g. PCM in Matroska) gets the usual one.
        layout = AAC_LAYOUTS.get(len(context.layout.channels), "stereo")
        rates = av.Codec("aac", "w").audio_rates
        rate = context.sample_rate if not rates or context.sample_rate in rates else 48_000
        self.stream = container.add_stream("aac", rate=rate)
        self.stream.layout = layout
        self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate,
                                           frame_size=self.stream.codec_context.frame_size or 1024)

    def write(self, packet: Any) -> None:
        for frame in self.decoder.decode(packet):
            self._encode(self.resampler.resample(frame))

    def flush(self) -> None:
        self._encode(self.resampler.resample(None))
        self._encode([None])

    def _encode(self, frames: list[Any]) -> None:
        for frame in frames:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)


class Encoder:
    """The encode thread: writes the frames and audio packets put into it (a queue of at most ``capacity``)
    through ``writer``. The first write that fails is kept in ``failed`` (its message); the rest are then
    taken and dropped, so a producer never waits on a writer that stopped."""

    _END = object()

    def __init__(self, writer: VideoWriter, capacity: int) -> None:
        self.writer = writer
        self.queue: queue.Queue[Any] = queue.Queue(capacity)
        self.failed: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lc-video-encode", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, item: tuple[Frame, CascadeResult, float, Rho] | Any) -> None:
        """A (frame, result, milliseconds, thresholds) to write, or an audio packet; waits while the queue is full."""
        self.queue.put(item)

    def _run(self) -> None:
        while (item := self.queue.get()) is not self._END:
            if self.failed or self.error:
                continue
            try:
                if isinstance(item, tuple):
                    self.writer.write(*item)
                else:
                    self.writer.mux_audio(item)
            except OutputError as error:
                self.failed = str(error)
            except BaseException as error:  # noqa: BLE001 - a bug: raised again in the thread that finishes
                self.error = error

    def finish(self) -> None:
        """Write what is queued and end the thread (an error it met other than a failed write is raised here)."""
        self.queue.put(self._END)
        self.thread.join()
        if self.error is not None:
            raise self.error
