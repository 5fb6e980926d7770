"""Opening video sources (files, URLs, V4L2 cameras) and the decode thread that feeds the pipeline.

PyAV is imported when a source is opened (``pyav``), so an iterable of frames needs none. Decoding yields
RGB frames with their timestamps, and the input's audio packets in order between them; a corrupt packet or
frame is skipped and counted, a source that fails mid-way ends the frames with its reason.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from layercascade.errors import fail
from layercascade.model.data.images import as_rgb
from layercascade.runtime.video import is_live, looks_like_video, pyav

if TYPE_CHECKING:
    from PIL import Image

# Demuxing errors in a row after which a file is taken as unreadable from there on (each skips some bytes).
MAX_ERRORS_IN_A_ROW = 100
# How often a decoder waiting for room in the queue looks whether it should stop.
_POLL_S = 0.1


@dataclass
class Frame:
    """A decoded frame: its number in the source, presentation timestamp (source time base; None for an
    iterable), presentation time in seconds and (H, W, 3) uint8 RGB pixels."""

    index: int
    pts: int | None
    time_s: float
    image: np.ndarray


@dataclass
class Opened:
    """An opened video source: its container, first video stream and (or None) first audio stream."""

    name: str
    container: Any  # av.container.InputContainer
    video: Any  # av.VideoStream
    audio: Any | None  # av.AudioStream
    live: bool
    timeout_s: float  # a live source's open and read timeout

    @property
    def size(self) -> tuple[int, int]:
        return self.video.codec_context.height, self.video.codec_context.width

    @property
    def rate(self) -> Fraction:
        """Frames per second as the stream states it (25 where it states none)."""
        return Fraction(self.video.average_rate or self.video.guessed_rate or 25)

    @property
    def frames(self) -> int | None:
        """The number of frames, where the container says (None for streams and many files)."""
        return int(self.video.frames) or None


@dataclass
class Counts:
    """What decoding a source met: packets and frames skipped as corrupt, and why it ended early (None: at
    its end)."""

    decode_errors: int = 0
    stopped: str | None = None


def open_video(source: str | Path, open_timeout_s: float, max_pixels: int) -> Opened:
    """Open a video file, URL or V4L2 camera and find its first video stream; one line if it cannot be
    opened (a live source: within ``open_timeout_s`` seconds, and each later read too), is not a video, has
    no video stream or its frames are over ``max_pixels``."""
    av = pyav()
    name = str(source)
    live = is_live(name)
    options: dict[str, Any] = {}
    if live:
        target = name
        options["timeout"] = (open_timeout_s, open_timeout_s)
        if name.startswith("/dev/"):
            options["format"] = "v4l2"
    else:
        path = Path(source)
        if not path.is_file():
            fail(f"{name}: {'not a file' if path.exists() else 'no such file'}")
        # "file:" so that FFmpeg never reads the path as a URL; a file reads local files only (no playlist
        # or concat list steers it to the network).
        target = f"file:{os.path.abspath(path)}"
        options["options"] = {"protocol_whitelist": "file"}
    try:
        container = av.open(target, **options)
    except av.error.ExitError:
        fail(f"{name}: the stream did not open within {open_timeout_s:g} s; check the address and that it is "
             "sending (or raise the timeout)")
    except (av.error.FFmpegError, OSError) as error:
        if not live and not looks_like_video(Path(source)):
            fail(f"{name}: not a video FFmpeg can read ({reason(error)})")
        fail(f"{name}: cannot open as a video ({reason(error)})")
    if not container.streams.video:
        container.close()
        fail(f"{name}: has no video stream")
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    opened = Opened(name, container, video, audio, live, open_timeout_s)
    height, width = opened.size
    if not height * width:
        container.close()
        fail(f"{name}: the video stream does not say its frame size (not a video FFmpeg can decode)")
    if height * width > max_pixels:
        container.close()
        fail(f"{name}: video frames of {width}x{height} pixels are over the limit of {max_pixels:,}; "
             "raise it with --max-pixels N if you trust the source")
    # Threads: a file decodes frames in parallel; a live source slices only, as frame threads hold frames back.
    video.thread_type = "SLICE" if live else "AUTO"
    return opened


def reason(error: BaseException) -> str:
    """FFmpeg's or the OS's words for an error, without the URL PyAV appends."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def decoded(opened: Opened, counts: Counts, *, audio: bool, max_pixels: int) -> Iterator[Frame | Any]:
    """The frames of ``opened`` in presentation order and (``audio``) its audio packets in stream order between
    them; closes the container at the end.

    A packet that cannot be demuxed or decoded and a frame the decoder marks corrupt (or over
    ``max_pixels``) are skipped and counted in ``counts.decode_errors``; a source that fails (a read timeout,
    a connection lost, an I/O error, or :data:`MAX_ERRORS_IN_A_ROW` errors in a row) ends the frames, after
    those still in the decoder, with its reason in ``counts.stopped``.
    """
    av = pyav()
    streams = [opened.video, *([opened.audio] if audio and opened.audio is not None else [])]
    index = 0

    def frames_of(packet: Any) -> Iterator[Frame]:
        nonlocal index
        try:
            frames = opened.video.codec_context.decode(packet)
        except (av.error.FFmpegError, ValueError):  # InvalidDataError is both
            counts.decode_errors += 1
            return
        for frame in frames:
            if frame.is_corrupt or frame.width * frame.height > max_pixels:
                counts.decode_errors += 1
                continue
            pts = frame.pts
            time_s = float(pts * frame.time_base) if pts is not None and frame.time_base else index / opened.rate
            image = frame.to_ndarray(format="rgb24")
            if frame.rotation:  # shown turned (a phone's portrait video): segmented upright, as players show it
                image = np.ascontiguousarray(np.rot90(image, round(frame.rotation / 90) % 4))
            yield Frame(index, pts, float(time_s), image)
            index += 1

    packets = opened.container.demux(*streams)
    in_a_row = 0
    try:
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.InvalidDataError:
                counts.decode_errors += 1
                in_a_row += 1
                if in_a_row <= MAX_ERRORS_IN_A_ROW:
                    packets = opened.container.demux(*streams)  # reading goes on after the bad bytes
                    continue
                counts.stopped = f"{opened.name}: unreadable after {index} frames ({MAX_ERRORS_IN_A_ROW} errors in a row)"
            except av.error.ExitError:  # PyAV's timeout interrupted a read
                counts.stopped = f"{opened.name}: the source sent nothing for {opened.timeout_s:g} s after {index} frames"
            except (av.error.FFmpegError, OSError) as error:
                counts.stopped = f"{opened.name}: the source failed after {index} frames ({reason(error)})"
            if counts.stopped:
                yield from frames_of(None)  # the frames the decoder still holds
                return
            in_a_row = 0
            if packet.stream is opened.video:
                yield from frames_of(packet)  # an empty packet at the end flushes the decoder
            elif packet.size and packet.dts is not None:
                yield packet
    finally:
        opened.container.close()


def iterable_frames(frames: Iterable[np.ndarray | Image.Image]) -> Iterator[Frame]:
    """Frames of an iterable of (H, W, 3) uint8 arrays or PIL images; ``time_s``: seconds since the first."""
    started = time.perf_counter()
    for index, image in enumerate(frames):
        yield Frame(index, None, time.perf_counter() - started, as_rgb(image))


class End:
    """What the decode thread puts last: decoding ended (``error``: an exception raised while decoding,
    for the consumer to raise)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Decoder:
    """The decode thread: the items of ``items`` (frames, audio packets) into a queue holding at most
    ``capacity`` frames, then an :class:`End`.

    ``drop`` (realtime): a new frame that finds ``capacity`` frames waiting takes the place of the oldest of
    them, which is dropped and counted in ``dropped``. So the decoder never waits, the source is read as fast
    as it sends, and the cascade always gets the newest frames (none older than ``capacity`` frames). Without
    it the decoder waits for room, and every frame is kept. Audio packets never wait and are never dropped.
    """

    def __init__(self, items: Iterator[Frame | Any], *, drop: bool, capacity: int) -> None:
        self.items = items
        self.drop = drop
        self.capacity = capacity
        self.dropped = 0
        self.waiting: collections.deque[Frame | Any] = collections.deque()
        self.frames = 0  # of the items waiting
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lc-video-decode", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        error = None
        try:
            for item in self.items:
                if self.stopping.is_set() or not self._put(item):
                    break
        except BaseException as raised:  # noqa: BLE001 - handed to the consumer, which raises it
            error = raised
        finally:
            close = getattr(self.items, "close", None)
            if close is not None:
                close()  # the source's container (``decoded``'s finally)
            with self.changed:
                self.waiting.append(End(error))
                self.changed.notify_all()

    def _put(self, item: Frame | Any) -> bool:
        """Queue ``item`` (a frame: in place of the oldest, or once there is room); False if stopping first."""
        with self.changed:
            if isinstance(item, Frame):
                if self.drop and self.frames >= self.capacity:
                    del self.waiting[next(i for i, w in enumerate(self.waiting) if isinstance(w, Frame))]
                    self.frames -= 1
                    self.dropped += 1
                while self.frames >= self.capacity:
                    if self.stopping.is_set():
                        return False
                    self.changed.wait(_POLL_S)
                self.frames += 1
            self.waiting.append(item)
            self.changed.notify_all()
        return True

    def get(self, block: bool = True) -> Frame | Any | End | None:
        """The next item (None: none waiting, with ``block=False``)."""
        with self.changed:
            while not self.waiting:
                if not block:
                    return None
                self.changed.wait(_POLL_S)
            item = self.waiting.popleft()
            if isinstance(item, Frame):
                self.frames -= 1
                self.changed.notify_all()
            return item

    def stop(self, wait_s: float) -> None:
        """Stop decoding and wait up to ``wait_s`` seconds for the thread (a live source's blocking read ends
        within its read timeout; the thread is a daemon, so a read that never returns keeps no process alive)."""
        self.stopping.set()
        self.thread.join(wait_s)
