"""Videos and streams through the cascade (runtime/video): the outputs read back, timestamps and audio kept,
damaged files, live sources under realtime, interrupts, Cascade.stream. Tiny videos made here with PyAV."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layercascade.errors import LCError
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.video import (VIDEO_OUTPUTS, SourceStoppedWarning, is_live, looks_like_video, pyav,
                                       segment_video, sniff, stream)

av = pytest.importorskip("av")

SIZE = (64, 96)
RATE = 25


def frames(count: int, size: tuple[int, int] = SIZE, noise: bool = False) -> list[np.ndarray]:
    """Moving coloured shapes on a grey background (``noise``: random pixels, which compress poorly, so each
    frame is a packet of its own size)."""
    rng = np.random.default_rng(0)
    height, width = size
    pictures = []
    for index in range(count):
        if noise:
            pictures.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            continue
        picture = np.full((height, width, 3), 110, np.uint8)
        left = (index * 4) % (width - 24)
        picture[8:40, left:left + 24] = (220, 40, 40)
        picture[height // 2:, width // 3:width // 3 + 20] = (30, 60, 200)
        pictures.append(picture)
    return pictures


def write_video(target: Path | io.BytesIO, pictures: list[np.ndarray], *, fmt: str | None = None,
                codec: str = "libx264", audio: str | None = None, options: dict | None = None,
                codec_options: dict | None = None, rotation: int = 0) -> None:
    """``pictures`` as a video (pts 0, 1, ... at RATE), with a tone in ``audio``'s codec as long as it, shown
    turned by ``rotation`` degrees counter-clockwise."""
    with av.open(target, "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=RATE, options=codec_options or {})
        if rotation:
            stream.set_display_rotation(rotation)
        stream.height, stream.width = pictures[0].shape[:2]
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"  # FFV1 takes odd sizes
        sound = None
        if audio:
            sound = container.add_stream(audio, rate=48_000)
            sound.layout = "stereo"
        for index, picture in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            write_tone(container, sound, len(pictures) / RATE)


def write_tone(container: Any, stream: Any, seconds: float) -> None:
    step = stream.codec_context.frame_size or 1024
    dtype = {"s16": np.int16, "s16p": np.int16, "flt": np.float32, "fltp": np.float32}[stream.format.name]
    total = int(48_000 * seconds)
    for start in range(0, total, step):
        count = min(step, total - start)
        wave = np.sin(np.arange(start, start + count) / 20.0) * (0.3 if dtype == np.float32 else 9000)
        planes = np.stack([wave, wave]) if stream.format.is_planar else np.repeat(wave, 2)[None]
        frame = av.AudioFrame.from_ndarray(planes.astype(dtype), format=stream.format.name, layout="stereo")
        frame.sample_rate, frame.pts = 48_000, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def decode(path: Path, kind: str = "rgb24") -> list[Any]:
    """The frames of ``path``'s first video stream, as PyAV frames (``kind``: their pixel format)."""
    with av.open(str(path)) as container:
        return [(frame.pts, frame.time, frame.to_ndarray(format=kind)) for frame in container.decode(video=0)]


def packets(path: Path, kind: str) -> list[Any]:
    with av.open(str(path)) as container:
        if kind == "audio" and not container.streams.audio:
            return []
        stream = container.streams.audio[0] if kind == "audio" else container.streams.video[0]
        return [(p.pts, p.stream.codec_context.name) for p in container.demux(stream) if p.size]


def outputs(out: Path, stem: str) -> list[Path]:
    return [out / f"{stem}{suffix}" for suffix in VIDEO_OUTPUTS]


def leftovers(out: Path) -> list[str]:
    """Temporary files left in ``out`` (there must be none)."""
    return [p.name for p in out.iterdir() if p.name.startswith(".lc-")]


@pytest.fixture(scope="module")
def cascade() -> Iterator[Cascade]:
    with Cascade.load(None, backend="ort") as loaded:
        yield loaded


class Slowed:
    """A cascade whose runs take ``delay`` seconds longer and, from run ``interrupt_at`` on, raise ``error``
    (by default a Ctrl-C arriving while the cascade runs)."""

    def __init__(self, cascade: Cascade, delay: float = 0.0, interrupt_at: int | None = None,
                 error: type[BaseException] = KeyboardInterrupt) -> None:
        self.cascade, self.delay, self.interrupt_at, self.error, self.runs = cascade, delay, interrupt_at, error, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cascade, name)

    def segment_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        if self.interrupt_at is not None and self.runs >= self.interrupt_at:
            raise self.error("raised by the test")
        time.sleep(self.delay)
        return self.cascade.segment_batch(*args, **kwargs)


def test_labels_overlay_and_audio_of_a_file(cascade: Cascade, tmp_path: Path) -> None:
    """The labels file reads back exactly the cascade's labels of every decoded frame; the overlay has the
    input's frames, timestamps and (copied) audio; one JSON line per frame; the record adds up."""
    source = tmp_path / "clip.mp4"
    write_video(source, frames(12), audio="aac")
    out = tmp_path / "out"
    out.mkdir()
    run = segment_video(cascade, source, out, "clip", progress=False)
    overlay, labels, lines = outputs(out, "clip")
    record = run.record
    assert (run.interrupted, run.stopped) == (False, None)
    assert record["outputs"] == [p.name for p in (overlay, labels, lines)] and not leftovers(out)
    assert (record["kind"], record["size"], record["frames"], record["dropped"], record["decode_errors"]) == \
        ("video", list(SIZE), 12, 0, 0)
    assert record["audio"] is True and record["fps"] > 0 and record["inference_fps"] > 0
    decoded = decode(source)
    read_back = decode(labels, "gray")
    assert len(read_back) == len(decoded) == 12
    for (_, time_s, image), (_, label_time, label_map) in zip(decoded, read_back, strict=True):
        np.testing.assert_array_equal(label_map, cascade(image).labels)
        assert label_time == pytest.approx(time_s, abs=1e-3)  # matroska keeps milliseconds
    shown = decode(overlay)
    assert [pts for pts, _, _ in shown] == [pts for pts, _, _ in decoded]
    assert shown[0][2].shape == (*SIZE, 3)
    with av.open(str(overlay)) as container, av.open(str(source)) as original:
        assert container.streams.video[0].time_base == original.streams.video[0].time_base
    assert packets(overlay, "audio") == packets(source, "audio")  # copied packet for packet
    entries = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [e["index"] for e in entries] == list(range(12))
    assert [e["pts"] for e in entries] == [pts for pts, _, _ in decoded]
    assert all(sum(e["stage_fractions"]) == pytest.approx(1.0, abs=1e-5) for e in entries)
    assert record["sha256"].keys() == set(record["outputs"])


def test_audio_the_mp4_does_not_take_is_transcoded_and_odd_sizes_crop(cascade: Cascade, tmp_path: Path) -> None:
    """PCM audio (not taken by the mp4 muxer) arrives as AAC; an odd-sized video's overlay loses its last
    row and column (yuv420p), its labels keep every pixel."""
    source = tmp_path / "odd.mkv"
    write_video(source, frames(6, (63, 95)), codec="ffv1", audio="pcm_s16le")
    run = segment_video(cascade, source, tmp_path, "odd", progress=False)
    overlay, labels, _ = outputs(tmp_path, "odd")
    assert run.record["audio"] is True and run.record["frames"] == 6
    audio = packets(overlay, "audio")
    assert audio and {codec for _, codec in audio} == {"aac"}
    assert decode(overlay)[0][2].shape == (62, 94, 3)
    assert decode(labels, "gray")[0][2].shape == (63, 95)


def test_a_turned_video_is_segmented_upright(cascade: Cascade, tmp_path: Path) -> None:
    """A video whose display matrix turns it (a phone's portrait clip) is segmented as players show it."""
    source = tmp_path / "portrait.mp4"
    write_video(source, frames(4), rotation=90, audio="aac")
    run = segment_video(cascade, source, tmp_path, "portrait", progress=False)
    assert run.record["size"] == [SIZE[1], SIZE[0]] and run.record["frames"] == 4 and run.record["audio"]
    overlay, labels, _ = outputs(tmp_path, "portrait")
    for (_, _, image), (_, _, label_map) in zip(decode(source), decode(labels, "gray"), strict=True):
        np.testing.assert_array_equal(label_map, cascade(np.rot90(image)).labels)
    assert decode(overlay)[0][2].shape == (SIZE[1], SIZE[0], 3)


def test_without_libx264_the_overlay_is_mpeg4_with_the_same_times(cascade: Cascade, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An FFmpeg without libx264: the overlay is MPEG-4 Part 2, whose time base cannot be MPEG-TS's 1/90000, so
    its timestamps are rescaled (to milliseconds) and keep the input's times."""
    from layercascade.runtime.video import outputs as video_outputs

    monkeypatch.setattr(video_outputs.av, "codecs_available", av.codecs_available - {"libx264"})
    source = tmp_path / "clip.ts"
    write_video(source, frames(6), fmt="mpegts")
    run = segment_video(cascade, source, tmp_path, "clip", progress=False)
    assert run.stopped is None and run.record["frames"] == 6
    overlay = outputs(tmp_path, "clip")[0]
    assert {codec for _, codec in packets(overlay, "video")} == {"mpeg4"}
    assert [round(t, 3) for _, t, _ in decode(overlay)] == [round(t, 3) for _, t, _ in decode(source)]


def test_truncated_file_gives_the_frames_it_holds(cascade: Cascade, tmp_path: Path) -> None:
    """A file cut short ends cleanly with the frames that decode; nothing is reported as failed."""
    whole = tmp_path / "whole.mkv"
    write_video(whole, frames(20, noise=True))
    cut = tmp_path / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) * 6 // 10])
    decodable = len(decode(cut))
    assert 0 < decodable < 20
    run = segment_video(cascade, cut, tmp_path, "cut", progress=False)
    assert run.stopped is None and run.record["frames"] + run.record["decode_errors"] >= decodable - 1
    assert run.record["frames"] >= decodable - 1  # the last, partial frame may be marked corrupt and skipped
    assert len(decode(outputs(tmp_path, "cut")[1], "gray")) == run.record["frames"]


def test_corrupt_packet_mid_file_is_skipped_and_counted(cascade: Cascade, tmp_path: Path) -> None:
    """Bytes overwritten in the middle of an mp4: the packet that no longer decodes is skipped and counted,
    the frames after it are segmented."""
    source = tmp_path / "damaged.mp4"
    write_video(source, frames(30, noise=True), options={"movflags": "+faststart"}, codec_options={"g": "5"})
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    source.write_bytes(bytes(data))
    run = segment_video(cascade, source, tmp_path, "damaged", progress=False)
    record = run.record
    assert run.stopped is None and record["decode_errors"] >= 1
    assert 20 <= record["frames"] < 30
    assert len(decode(outputs(tmp_path, "damaged")[1], "gray")) == record["frames"]


def test_not_a_video_is_one_line_and_writes_nothing(cascade: Cascade, tmp_path: Path) -> None:
    source = tmp_path / "notes.mp4"
    source.write_text("not a video at all\n" * 50)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LCError, match="not a video") as raised:
        segment_video(cascade, source, out, "notes", progress=False)
    assert "\n" not in str(raised.value) and not list(out.iterdir())
    with pytest.raises(LCError, match="no such file"):
        segment_video(cascade, tmp_path / "missing.mp4", out, "missing", progress=False)


def test_sniffing_and_live_sources(tmp_path: Path) -> None:
    """Videos are recognised by their first bytes whatever their name; images, audio-only Ogg and text are not."""
    assert sniff(b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00")
    assert not sniff(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00")  # a HEIF photo
    assert not sniff(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00")  # m4a audio
    assert sniff(b"\x1a\x45\xdf\xa3\x01\x00")
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST") and not sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    assert sniff(b"\x47" + bytes(187) + b"\x47" + bytes(187) + b"\x47" + bytes(10))
    assert sniff(b"OggS\x00\x02" + bytes(22) + b"\x80theora") and not sniff(b"OggS\x00\x02" + bytes(22) + b"OpusHead")
    assert not sniff(b"\x89PNG\r\n\x1a\n") and not sniff(b"hello world")
    clip = tmp_path / "clip.bin"  # any name
    write_video(clip, frames(2), fmt="matroska")
    assert looks_like_video(clip) and not looks_like_video(tmp_path / "none")
    assert is_live("rtsp://camera/stream") and is_live("UDP://239.0.0.1:1234") and is_live("/dev/video0")
    assert is_live("/dev/v4l/by-id/usb-cam-video-index0") and not is_live("/dev/videos/clip.mp4")
    assert not is_live("clip.mp4") and not is_live("file:///tmp/clip.mp4")


def serve_once(data: bytes, stall: bool = False) -> tuple[str, socket.socket]:
    """A TCP server on 127.0.0.1 that sends ``data`` to its first client and closes (``stall``: then keeps the
    connection open, sending nothing more)."""
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        client, _ = server.accept()
        client.sendall(data)
        if stall:
            time.sleep(5)
        client.close()

    threading.Thread(target=run, daemon=True).start()
    return f"tcp://127.0.0.1:{server.getsockname()[1]}", server


def test_live_stream_under_realtime_drops_and_counts(cascade: Cascade, tmp_path: Path) -> None:
    """A live MPEG-TS stream faster than a slowed cascade: frames are dropped, counted, and every frame sent is
    either segmented or dropped."""
    sent = 30
    stream = io.BytesIO()
    write_video(stream, frames(sent), fmt="mpegts")
    url, server = serve_once(stream.getvalue())
    with server:
        run = segment_video(Slowed(cascade, delay=0.05), url, tmp_path, "live", progress=False, open_timeout_s=5)
    record = run.record
    assert run.stopped is None and record["decode_errors"] == 0
    assert record["dropped"] > 0 and record["frames"] + record["dropped"] == sent
    assert len(decode(outputs(tmp_path, "live")[1], "gray")) == record["frames"]
    indices = [json.loads(line)["index"] for line in outputs(tmp_path, "live")[2].read_text().splitlines()]
    assert len(indices) == record["frames"] and indices == sorted(set(indices))


def test_live_source_that_dies_leaves_the_frames_done(cascade: Cascade, tmp_path: Path) -> None:
    """A stream that stops sending mid-way: the run ends after the read timeout, says why, and its outputs hold
    every frame received."""
    stream = io.BytesIO()
    write_video(stream, frames(30), fmt="mpegts")
    data = stream.getvalue()
    url, server = serve_once(data[:len(data) // 2], stall=True)
    with server:
        run = segment_video(cascade, url, tmp_path, "dying", realtime=False, progress=False, open_timeout_s=0.5)
    assert run.stopped is not None and "sent nothing for 0.5 s" in run.stopped and run.record["stopped"] == run.stopped
    assert 0 < run.record["frames"] < 30 and run.record["dropped"] == 0
    overlay, labels, _ = outputs(tmp_path, "dying")
    assert len(decode(overlay)) == len(decode(labels, "gray")) == run.record["frames"]


def test_a_failed_write_stops_the_video_and_keeps_what_plays(cascade: Cascade, tmp_path: Path) -> None:
    """A file size limit (EFBIG, as a full disk would fail): the run stops and says why; the outputs still
    whole are renamed with the frames written, the one that failed is removed, no temporary file is left."""
    resource = pytest.importorskip("resource")
    import signal

    source = tmp_path / "noise.mkv"
    write_video(source, frames(40, noise=True))
    out = tmp_path / "out"
    out.mkdir()
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, previous_limit[1]))
    try:
        run = segment_video(cascade, source, out, "noise", progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert run.stopped is not None and "noise_overlay.mp4: cannot write" in run.stopped
    assert "noise_overlay.mp4" not in run.record["outputs"] and "noise_labels.mkv" in run.record["outputs"]
    assert 0 < run.record["frames"] < 40 and not leftovers(out)
    _, labels, lines = outputs(out, "noise")
    assert len(decode(labels, "gray")) == len(lines.read_text().splitlines()) == run.record["frames"]


def test_a_stream_whose_source_dies_warns(cascade: Cascade) -> None:
    data = io.BytesIO()
    write_video(data, frames(30), fmt="mpegts")
    url, server = serve_once(data.getvalue()[:len(data.getvalue()) // 2], stall=True)
    with server, pytest.warns(SourceStoppedWarning, match="sent nothing for 0.5 s"):
        results = list(cascade.stream(url, realtime=False, open_timeout_s=0.5))
    assert 0 < len(results) < 30


def test_files_never_drop_a_frame_even_asked_for_realtime(cascade: Cascade, tmp_path: Path) -> None:
    source = tmp_path / "clip.mkv"
    write_video(source, frames(10))
    run = segment_video(Slowed(cascade, delay=0.02), source, tmp_path, "clip", realtime=True, progress=False)
    assert (run.record["frames"], run.record["dropped"]) == (10, 0)


def test_interrupt_leaves_playable_outputs_of_the_frames_done(cascade: Cascade, tmp_path: Path) -> None:
    source = tmp_path / "long.mp4"
    write_video(source, frames(24), audio="aac")
    run = segment_video(Slowed(cascade, interrupt_at=6), source, tmp_path, "long", progress=False)
    done = run.record["frames"]
    assert run.interrupted and run.record["interrupted"] and 0 < done < 24
    overlay, labels, lines = outputs(tmp_path, "long")
    assert len(decode(overlay)) == len(decode(labels, "gray")) == len(lines.read_text().splitlines()) == done
    assert not leftovers(tmp_path)


def test_interrupted_before_the_first_frame_leaves_nothing(cascade: Cascade, tmp_path: Path) -> None:
    source = tmp_path / "clip.mp4"
    write_video(source, frames(6), audio="aac")
    out = tmp_path / "out"
    out.mkdir()
    run = segment_video(Slowed(cascade, interrupt_at=1), source, out, "clip", progress=False)
    assert run.interrupted and run.record["frames"] == 0 and run.record["outputs"] == []
    assert not list(out.iterdir())


def test_a_bug_mid_video_is_raised_and_leaves_nothing(cascade: Cascade, tmp_path: Path) -> None:
    """An error that is not the user's (a bug) is raised as it is, the threads end and no file is left."""
    source = tmp_path / "clip.mp4"
    write_video(source, frames(10), audio="aac")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="raised by the test"):
        segment_video(Slowed(cascade, interrupt_at=4, error=RuntimeError), source, out, "clip", progress=False)
    assert not list(out.iterdir())
    assert not [t for t in threading.enumerate() if t.name == "lc-video-encode" and t.is_alive()]


def test_unreachable_stream_fails_within_the_timeout(cascade: Cascade, tmp_path: Path) -> None:
    url, server = serve_once(b"", stall=True)  # accepts, never sends
    with server, pytest.raises(LCError, match="did not open within 0.5 s") as raised:
        segment_video(cascade, url, tmp_path, "silent", progress=False, open_timeout_s=0.5)
    assert "\n" not in str(raised.value) and not list(tmp_path.iterdir())
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(LCError, match="cannot open"):
        segment_video(cascade, f"tcp://127.0.0.1:{port}", tmp_path, "refused", progress=False, open_timeout_s=0.5)


def test_stream_over_frames_and_a_file(cascade: Cascade, tmp_path: Path) -> None:
    pictures = frames(5)
    results = list(cascade.stream(iter(pictures)))
    assert [r.index for r in results] == list(range(5)) and {r.pts for r in results} == {None}
    for picture, result in zip(pictures, results, strict=True):
        np.testing.assert_array_equal(result.result.labels, cascade(picture).labels)
    source = tmp_path / "clip.mp4"
    write_video(source, frames(8))
    decoded = decode(source)
    results = list(cascade.stream(source))
    assert [r.pts for r in results] == [pts for pts, _, _ in decoded]
    for (_, _, image), result in zip(decoded, results, strict=True):
        np.testing.assert_array_equal(result.image, image)
        np.testing.assert_array_equal(result.result.labels, cascade(image).labels)


def test_realtime_stream_over_frames_drops_what_it_cannot_keep_up_with(cascade: Cascade) -> None:
    """An iterable faster than a slowed cascade, with realtime: older frames waiting make room for newer ones
    (gaps in the indices, the newest kept); without realtime every frame comes out."""
    results = list(stream(Slowed(cascade, delay=0.03), iter(frames(20)), realtime=True))
    indices = [r.index for r in results]
    assert 0 < len(indices) < 20 and indices == sorted(set(indices)) and indices[-1] == 19
    assert [r.index for r in stream(Slowed(cascade, delay=0.01), iter(frames(6)))] == list(range(6))


def test_closing_a_stream_early_stops_its_decoder(cascade: Cascade, tmp_path: Path) -> None:
    source = tmp_path / "clip.mp4"
    write_video(source, frames(30))
    before = set(threading.enumerate())
    results = cascade.stream(source)
    next(results)
    started = [t for t in set(threading.enumerate()) - before if t.name == "lc-video-decode"]
    results.close()
    assert len(started) == 1 and not started[0].is_alive()


def test_importing_the_video_package_loads_no_pyav() -> None:
    """lc-run imports runtime/video for every run: PyAV is loaded only when a video is opened."""
    code = "import sys, layercascade.runtime.video, layercascade.runtime.cascade; print('av' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_missing_pyav_is_one_line(monkeypatch: pytest.MonkeyPatch, cascade: Cascade, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(LCError, match=r"pip install 'layercascade\[video\]'"):
        pyav()
    with pytest.raises(LCError, match="pip install"):
        segment_video(cascade, tmp_path / "x.mp4", tmp_path, "x", progress=False)


# A frontier as lc-tune records it (fastest first) and the latency each of its settings takes here (injected).
TUNING = {"frontier": [{"rho": 0.9, "median_ms": 5.0, "miou": 68.0}, {"rho": [0.9, 0.97], "median_ms": 10.0, "miou": 70.0},
                       {"rho": 0.97, "median_ms": 20.0, "miou": 71.0}, {"rho": 1.0, "median_ms": 40.0, "miou": 72.0}],
          "previous_default": {"rho": 0.985, "median_ms": 30.0, "miou": 71.5}}


class Tuned(Slowed):
    """A cascade tuned by lc-tune (its manifest records :data:`TUNING`'s frontier) whose runs take, per frame, the
    frontier's latency of the thresholds they run at."""

    def __init__(self, cascade: Cascade) -> None:
        super().__init__(cascade)
        self.manifest = {**cascade.manifest, "tuning": TUNING}
        self.ms = {tuple(np.broadcast_to(p["rho"], 2).tolist()): p["median_ms"] for p in TUNING["frontier"]}

    def segment_batch(self, images: Any, rho: Any = None, *args: Any, **kwargs: Any) -> Any:
        time.sleep(len(images) * self.ms[tuple(rho)] / 1e3)
        return self.cascade.segment_batch(images, rho, *args, **kwargs)


def test_a_frame_rate_target_lowers_rho_along_the_frontier(cascade: Cascade, tmp_path: Path) -> None:
    """--target-fps 50 (20 ms a frame) on a model whose most accurate setting takes 40 ms a frame: the first frames
    run at ρ = 1, then the controller moves to a faster setting that keeps the rate; every frame's line says its ρ,
    the record the moves and the mean expected mIoU cost (against the default's 71.5)."""
    source = tmp_path / "clip.mp4"
    write_video(source, frames(16))
    run = segment_video(Tuned(cascade), source, tmp_path, "clip", progress=False, target_fps=50)
    lines = [json.loads(line) for line in (tmp_path / "clip_frames.jsonl").read_text().splitlines()]
    assert len(lines) == run.record["frames"] == 16 and run.record["dropped"] == 0
    assert lines[0]["rho"] == 1.0 and lines[-1]["rho"] in (0.97, [0.9, 0.97], 0.9)
    assert run.record["target_fps"] == 50 and run.record["rho_moves"] >= 1
    assert run.record["final_rho"] == lines[-1]["rho"]
    costs = {1.0: -0.5, 0.97: 0.5, (0.9, 0.97): 1.5, 0.9: 3.5}
    expected = np.mean([costs[tuple(line["rho"]) if isinstance(line["rho"], list) else line["rho"]] for line in lines])
    assert run.record["mean_expected_miou_cost"] == pytest.approx(expected, abs=1e-3)
    results = list(stream(Tuned(cascade), source, target_fps=50))
    assert results[0].rho == (1.0, 1.0) and results[-1].rho != (1.0, 1.0)
    with Cascade.load(None, backend="ort") as loaded, pytest.raises(LCError, match="records no latency frontier"):
        loaded.stream(source, target_fps=50)  # the method hands the target on


def test_per_class_thresholds_apply_on_top_of_the_targets_rho(cascade: Cascade) -> None:
    """rho_class with --target-fps: the controller picks each batch's (ρ₂, ρ₃), the classes' own thresholds hold
    for every frame on top of it; an unknown class is one line before a frame runs."""
    pictures = frames(6)
    per_class = {"background": 1.0}
    results = list(stream(Tuned(cascade), iter(pictures), target_fps=50, rho_class=per_class))
    assert results[0].rho == (1.0, 1.0) and results[-1].rho != (1.0, 1.0)
    for picture, result in zip(pictures, results, strict=True):
        alone = cascade(picture, result.rho, rho_class=per_class)
        assert result.result.stage_fractions == alone.stage_fractions
        np.testing.assert_array_equal(result.result.labels, alone.labels)
    assert any(cascade(p, r.rho).stage_fractions != r.result.stage_fractions for p, r in zip(pictures, results))
    with pytest.raises(LCError, match="'unicorn' is not a class of this model"):
        stream(Tuned(cascade), iter(pictures), target_fps=50, rho_class={"unicorn": 1.0})


def test_a_frame_rate_target_needs_a_frontier_and_no_rho(cascade: Cascade, tmp_path: Path) -> None:
    source = tmp_path / "clip.mp4"
    write_video(source, frames(2))
    with pytest.raises(LCError, match="records no latency frontier"):
        segment_video(cascade, source, tmp_path, "clip", progress=False, target_fps=30)
    with pytest.raises(LCError, match="--rho and --target-fps"):
        segment_video(Tuned(cascade), source, tmp_path, "clip", rho=0.9, progress=False, target_fps=30)
    assert leftovers(tmp_path) == [] and not list(tmp_path.glob("clip_*"))
