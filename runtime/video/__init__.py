"""Video files, network streams and cameras through the cascade: decode → segment → encode as a pipeline.

``segment_video`` writes a video's outputs (:data:`VIDEO_OUTPUTS`) and returns its summary entry;
``stream`` yields one :class:`FrameResult` per frame (what ``Cascade.stream`` returns). Both run the same
pipeline (``pipeline.py``): a decode thread (``source.py``) feeds a bounded queue, the calling thread runs
the cascade on batches of frames, and (``segment_video``) an encode thread writes the outputs
(``outputs.py``). Live sources never fall behind (frames are dropped and counted when the cascade is
slower); files never drop a frame.

This module needs no PyAV: sniffing, naming and the result types work without it, and importing it costs
nothing. PyAV (FFmpeg in its wheels) is imported when a video is opened; missing, it is one line.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from layercascade.contract import Rho, RhoClassLike, RhoLike
from layercascade.errors import fail
from layercascade.runtime.result import CascadeResult
from layercascade.runtime.segment import ImageOptions

if TYPE_CHECKING:
    from PIL import Image

    from layercascade.runtime.cascade import Cascade

__all__ = ["LIVE_SCHEMES", "VIDEO_EXTENSIONS", "VIDEO_OUTPUTS", "FrameResult", "SourceStoppedWarning", "VideoRun",
           "is_live", "looks_like_video", "segment_video", "stream"]

# URL schemes of sources that run on whether we read them or not (frames dropped under realtime).
LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "http", "https"})
# The suffixes a video's outputs take after its stem: the overlay, the class ids of every frame
# (lossless), one JSON line per frame.
VIDEO_OUTPUTS = ("_overlay.mp4", "_labels.mkv", "_frames.jsonl")
# Suffixes of video files; a file is recognised by its content too (looks_like_video), whatever its suffix.
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".3gp", ".3g2", ".mkv", ".webm", ".avi", ".ts", ".m2ts",
                              ".mts", ".mpg", ".mpeg", ".vob", ".flv", ".ogv", ".wmv", ".asf", ".mxf", ".y4m",
                              ".ivf", ".h264", ".264", ".h265", ".hevc"})
# How many leading bytes looks_like_video reads.
SNIFF_BYTES = 4096
# ISO-BMFF brands of still images (HEIF/AVIF) and of audio (m4a, m4b): an `ftyp` box, but not a video.
_NOT_VIDEO_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"mif1", b"avif", b"avci",
                               b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
# Top-level boxes an old QuickTime file may start with instead of `ftyp`.
_QUICKTIME_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
# Leading bytes of other containers and elementary streams.
_MAGIC = (
    b"\x1a\x45\xdf\xa3",  # EBML: Matroska, WebM
    b"\x00\x00\x01\xba",  # MPEG program stream
    b"\x00\x00\x01\xb3",  # MPEG-1/2 video sequence header
    b"FLV\x01",
    b"DKIF",  # IVF (VP8, VP9, AV1)
    b"YUV4MPEG2",
    b"\x30\x26\xb2\x75\x8e\x66\xcf\x11",  # ASF (WMV)
    b"\x06\x0e\x2b\x34\x02\x05\x01\x01",  # MXF partition pack
)
_TS_PACKET = 188


def is_live(spec: str | Path) -> bool:
    """Whether ``spec`` names a live source: a URL of :data:`LIVE_SCHEMES` or a V4L2 camera (/dev/videoN,
    /dev/v4l/...)."""
    text = str(spec)
    if re.fullmatch(r"/dev/video\d+", text) or text.startswith("/dev/v4l/"):  # udev's by-id/by-path names too
        return True
    return "://" in text and urlsplit(text).scheme.lower() in LIVE_SCHEMES


def looks_like_video(path: Path) -> bool:
    """Whether the file ``path`` holds a video container or stream, from its first bytes (whatever its
    suffix): ISO-BMFF (mp4, mov, m4v, 3gp; not HEIF/AVIF images nor m4a audio), Matroska/WebM, AVI, MPEG-TS and M2TS,
    MPEG-PS, FLV, Ogg with Theora or VP8, ASF, MXF, IVF, Y4M, H.264/H.265 Annex B. False if unreadable."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return False
    return sniff(head)


def sniff(head: bytes) -> bool:
    """:func:`looks_like_video` of a file's first bytes."""
    if head[4:8] in _QUICKTIME_BOXES:
        return not (head[4:8] == b"ftyp" and head[8:12] in _NOT_VIDEO_BRANDS)
    if head.startswith(_MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    if head[:4] == b"OggS":
        return b"\x80theora" in head or b"OVP80" in head
    for offset, stride in ((0, _TS_PACKET), (4, _TS_PACKET + 4)):  # MPEG-TS; M2TS has a 4-byte timecode
        syncs = head[offset::stride]
        if len(syncs) >= 3 and syncs == b"\x47" * len(syncs):
            return True
    # H.264 (SPS, AUD) or H.265 (VPS, AUD) Annex B elementary streams.
    for start in (b"\x00\x00\x00\x01", b"\x00\x00\x01"):
        if head.startswith(start) and len(head) > len(start):
            nal = head[len(start)]
            return nal & 0x1F in (7, 9) or (nal >> 1) & 0x3F in (32, 35)
    return False


@dataclass
class FrameResult:
    """One frame of a stream and the cascade's result for it.

    Attributes:
        index: the frame's number in the source (0, 1, ...; frames dropped under realtime leave gaps).
        pts: its presentation timestamp in the source's time base (None for an iterable of frames).
        time_s: its presentation time in seconds (for an iterable: seconds since the stream started).
        image: the (H, W, 3) uint8 RGB frame.
        result: the cascade's labels, stage map and stage fractions for it.
        rho: the thresholds (ρ₂, ρ₃) it ran at.
    """

    index: int
    pts: int | None
    time_s: float
    image: np.ndarray
    result: CascadeResult
    rho: Rho


@dataclass
class VideoRun:
    """What :func:`segment_video` did: the video's summary entry, whether a Ctrl-C ended it, and why it ended
    early otherwise (the source failed, an output could not be written; None when it ran to the end).

    ``record``: ``input``, ``kind`` ("video"), ``size`` [h, w], ``frames`` (segmented and written), ``dropped``
    (realtime), ``decode_errors`` (packets and frames skipped), ``fps`` (frames per wall second, end to end),
    ``inference_fps`` (frames per second inside the cascade), ``ms`` (mean cascade milliseconds per frame),
    ``stage_fractions`` (pixel-weighted mean over the frames), ``duration_s`` (wall seconds), ``audio``
    (whether the input's audio was carried over), ``interrupted``, ``stopped``, ``outputs`` (the file names
    written) and ``sha256`` ({name: sha256}).
    """

    record: dict[str, Any]
    interrupted: bool
    stopped: str | None


class SourceStoppedWarning(UserWarning):
    """A stream's source failed mid-way (a read timeout, a connection lost): its frames ended early."""


def pyav() -> ModuleType:
    """The ``av`` module, or one line saying how to install it."""
    try:
        return importlib.import_module("av")
    except ImportError:
        fail("videos and streams need PyAV: pip install 'layercascade[video]'")


def segment_video(cascade: Cascade, source: str | Path, out: Path, stem: str, *, rho: RhoLike | None = None,
                  read: ImageOptions = ImageOptions(), realtime: bool | None = None, progress: bool = True,
                  open_timeout_s: float = 10.0, target_fps: float | None = None,
                  rho_class: RhoClassLike | None = None) -> VideoRun:
    """Segment every frame of a video file, stream or camera and write ``out/<stem>`` + :data:`VIDEO_OUTPUTS`.

    The outputs are written under temporary names and renamed when finalised, also when the run ends early:
    a Ctrl-C (``interrupted``), a source that fails mid-way or an output that cannot be written
    (``stopped``) leaves playable files holding every frame done. ``realtime`` (default: for live sources,
    :func:`is_live`) drops frames the cascade cannot keep up with, and counts them; a file never drops one.
    ``read``: the frames' pixel limit (``max_pixels``) and how they meet the model's input (``resize``,
    ``tile``, ``overlap``). An input that is not a video, a stream that does not open within
    ``open_timeout_s`` seconds, a video without a video stream and a missing PyAV are one-line
    :class:`~layercascade.errors.LCError` s, before anything is written.

    ``target_fps``: keep that many frames per second by lowering ρ (in place of ``rho``) along the frontier lc-tune
    recorded in the model dir (``runtime/control.py``'s controller, observing each batch's time per frame and the
    frames waiting), and raising it again when there is room: a live source drops frames only where the fastest
    point of the frontier still cannot keep up. Each frame's line says its ρ; the record, the controller's moves
    and the mean expected mIoU cost. A model dir without a frontier is one line. ``rho_class`` (per-class
    thresholds, as ``Cascade.__call__`` takes them) applies to every frame, on top of the target's ρ₂, ρ₃.
    """
    pyav()
    from layercascade.runtime.video.pipeline import run_video

    return run_video(cascade, source, out, stem, rho=rho, read=read, realtime=realtime, progress=progress,
                     open_timeout_s=open_timeout_s, target_fps=target_fps, rho_class=rho_class)


def stream(cascade: Cascade, source: str | Path | Iterable[np.ndarray | Image.Image], *, rho: RhoLike | None = None,
           resize: str | None = None, realtime: bool | None = None, open_timeout_s: float = 10.0,
           target_fps: float | None = None, rho_class: RhoClassLike | None = None) -> Iterator[FrameResult]:
    """:class:`FrameResult` s of every frame of ``source`` (a video file, URL, camera, or an iterable of
    (H, W, 3) uint8 frames or PIL images), decoded in a thread of its own and batched as the model allows.

    The source is opened here (a one-line :class:`~layercascade.errors.LCError` if it cannot be), decoding
    starts with the first ``next()``; closing the generator stops it. ``realtime`` (default: for live sources)
    drops frames the cascade cannot keep up with; a file never drops one, an iterable only with ``realtime``.
    Corrupt packets and frames are skipped; a source that fails mid-way ends the frames with a
    :class:`SourceStoppedWarning` saying why. ``target_fps``: as :func:`segment_video`'s (each
    :class:`FrameResult`'s ``rho`` says the thresholds it ran at); ``rho_class``: as :func:`segment_video`'s.
    """
    from layercascade.runtime.video.pipeline import stream_results

    return stream_results(cascade, source, rho=rho, resize=resize, realtime=realtime, open_timeout_s=open_timeout_s,
                          target_fps=target_fps, rho_class=rho_class)
