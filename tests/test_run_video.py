"""lc-run on videos, streams and cameras (the demo model; tiny videos made with PyAV here): a folder mixing
images and videos (one known by its content only), reruns that replace their own outputs and no other file,
failures in one line, Ctrl-C mid-video, and --ray giving the same outputs."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layercascade.manifest import sha256_file
from layercascade.runtime.inputs import SAMPLES
from layercascade.runtime.sources import expand_inputs
from layercascade.runtime.video import VIDEO_OUTPUTS
from layercascade.tests.fake_cascade import leftovers, run_lc
from layercascade.tests.test_video import decode, frames, serve_once, write_video  # skips without PyAV



def video(path: Path, count: int = 10, fmt: str | None = None) -> Path:
    """A video of ``count`` frames at ``path`` (tests/test_video.py's moving shapes, 64x96)."""
    write_video(path, frames(count), fmt=fmt)
    return path


def labels_of(path: Path) -> list[np.ndarray]:
    return [array for _, _, array in decode(path, "gray")]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def check_video_outputs(out: Path, record: dict) -> None:
    """The video's three outputs are there, hashed as the record says, and hold the frames it reports."""
    stem = record["outputs"][0].removesuffix(VIDEO_OUTPUTS[0])
    assert record["outputs"] == [stem + suffix for suffix in VIDEO_OUTPUTS]
    for name in record["outputs"]:
        assert record["sha256"][name] == sha256_file(out / name)
    labels = labels_of(out / f"{stem}_labels.mkv")
    assert len(labels) == record["frames"] == len(decode(out / f"{stem}_overlay.mp4"))
    assert all(frame.shape == tuple(record["size"]) for frame in labels)
    assert len((out / f"{stem}_frames.jsonl").read_text().splitlines()) == record["frames"]


def test_a_folder_of_images_and_videos(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(min(SAMPLES.iterdir()), folder / "photo.jpg")
    video(folder / "clip.mp4", 8)
    video(folder / "camera.bin", 6, fmt="matroska")  # a video by its content only
    video(folder / "photo.mp4", 4)  # the image's stem: the outputs differ, both keep it
    (folder / "notes.txt").write_text("not a video")
    assert expand_inputs([str(folder)]) == [folder / name for name in ("camera.bin", "clip.mp4", "photo.jpg",
                                                                       "photo.mp4")]
    out = tmp_path / "out"
    assert run_lc([folder, "-o", out]) == 0
    line = capsys.readouterr().out
    assert line.startswith("1 image(s), 3 video(s) (18 frames at ") and "FPS)" in line and "stages 1/2/3" in line
    summary = summary_of(out)
    assert (summary["images"], summary["videos"], summary["frames"], summary["dropped"], summary["failed"]) == (
        1, 3, 18, 0, [])
    assert [record["input"] for record in summary["results"]] == [str(folder / name) for name in (
        "camera.bin", "clip.mp4", "photo.jpg", "photo.mp4")]
    camera, clip, photo, photo_video = summary["results"]
    assert photo["outputs"] == ["photo.png", "photo_overlay.jpg", "photo_stages.png"]
    for record, count in ((camera, 6), (clip, 8), (photo_video, 4)):
        assert record["kind"] == "video" and record["frames"] == count and record["size"] == [64, 96]
        assert record["dropped"] == record["decode_errors"] == 0 and record["fps"] > 0 and record["inference_fps"] > 0
        check_video_outputs(out, record)
    assert photo_video["outputs"][0] == "photo_overlay.mp4"
    # Weighted by pixels segmented: a video's size times its frames, an image's size.
    weights = [64 * 96 * 6, 64 * 96 * 8, photo["size"][0] * photo["size"][1], 64 * 96 * 4]
    expected = np.average([r["stage_fractions"] for r in summary["results"]], axis=0, weights=weights)
    np.testing.assert_allclose(summary["stage_fractions"], expected, atol=1e-5)
    assert leftovers(out) == []


def test_a_rerun_replaces_its_own_video_outputs_and_no_other_file(tmp_path: Path) -> None:
    clip = video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    assert run_lc([clip, "-o", out, "--quiet"]) == 0
    assert run_lc([clip, "-o", out, "--quiet"]) == 0
    assert sorted(path.name for path in out.iterdir()) == sorted(["summary.json", *(f"clip{s}" for s in VIDEO_OUTPUTS)])
    check_video_outputs(out, summary_of(out)["results"][0])
    # A file of the user's named like an output is never replaced: the video takes the next stem.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "clip_frames.jsonl").write_text("the user's\n")
    assert run_lc([clip, "-o", mine, "--quiet"]) == 0
    assert (mine / "clip_frames.jsonl").read_text() == "the user's\n"
    record = summary_of(mine)["results"][0]
    assert record["outputs"] == [f"clip-2{suffix}" for suffix in VIDEO_OUTPUTS]
    check_video_outputs(mine, record)


def test_a_file_that_is_no_video_fails_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "fake.mp4").write_bytes(b"not a video at all")
    clip = video(tmp_path / "clip.mp4", 3)
    out = tmp_path / "out"
    assert run_lc([tmp_path / "fake.mp4", clip, "-o", out, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {tmp_path / 'fake.mp4'}: ")
    summary = summary_of(out)
    assert summary["videos"] == 1 and [f["input"] for f in summary["failed"]] == [str(tmp_path / "fake.mp4")]
    assert not any(path.name.startswith("fake") for path in out.iterdir()) and leftovers(out) == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_stream_that_does_not_open_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"tcp://127.0.0.1:{closed_port()}"
    assert run_lc([url, "-o", tmp_path / "out", "--open-timeout", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {url}: ")
    summary = summary_of(tmp_path / "out")
    assert summary["videos"] == 0 and summary["failed"][0]["input"] == url


def test_a_live_source_that_dies_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A stream that goes silent mid-way: its outputs hold the frames received, the summary says why the run
    stopped, exit code 1, and the inputs after it are not read."""
    stream = io.BytesIO()
    write_video(stream, frames(30), fmt="mpegts")
    data = stream.getvalue()
    url, server = serve_once(data[:len(data) // 2], stall=True)
    out = tmp_path / "out"
    with server:
        assert run_lc([url, SAMPLES, "-o", out, "--open-timeout", "0.5", "--no-realtime", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url}: ") and err.count("\n") == 1
    assert f"(stopped: 0 image(s), 1 video(s) done, listed in {out / 'summary.json'})" in err
    summary = summary_of(out)
    [record] = summary["results"]
    assert summary["stopped"] == record["stopped"] and 0 < record["frames"] < 30
    assert summary["stopped"].startswith(f"{url}: the source sent nothing for 0.5 s")  # named once
    assert record["outputs"][0] == "127.0.0.1_overlay.mp4"  # a URL without a path: named after its host
    check_video_outputs(out, record)


@pytest.mark.parametrize("item, message", [("/dev/video99", "/dev/video99: no such camera"),
                                           ("/dev/v4l/by-id/none", "/dev/v4l/by-id/none: no such camera")])
def test_a_missing_camera_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, item: str, message: str) -> None:
    assert run_lc([item, "-o", tmp_path / "out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_live_sources_get_stems_of_their_own(tmp_path: Path) -> None:
    from layercascade.runtime.inputs import source_stem

    assert [source_stem(s) for s in ("rtsp://cam.local:554/live/front.sdp", "udp://@:1234", "http://h/x y?q=1",
                                     "/dev/video0", tmp_path / "a.b.mp4")] == ["front", "stream", "x_y", "video0", "a.b"]
    assert expand_inputs(["udp://@:1234", "udp://@:1234", "rtsp://cam/a"]) == ["udp://@:1234", "rtsp://cam/a"]


def test_options_reach_segment_video(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from layercascade.runtime import video as video_module

    calls: list[dict] = []
    real = video_module.segment_video

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(video_module, "segment_video", recording)
    clip = video(tmp_path / "clip.mp4", 2)
    assert run_lc([clip, "-o", tmp_path / "a", "--quiet"]) == 0
    assert run_lc([clip, "-o", tmp_path / "b", "--quiet", "--realtime", "--open-timeout", "2.5", "--rho", "0.9",
                   "--resize", "stretch", "--max-pixels", "100000"]) == 0
    assert run_lc([clip, "-o", tmp_path / "c", "--quiet", "--no-realtime"]) == 0
    default, chosen, off = calls
    assert default["realtime"] is None and default["open_timeout_s"] == 10.0 and default["rho"] is None
    assert chosen["realtime"] is True and chosen["open_timeout_s"] == 2.5 and chosen["rho"] == (0.9, 0.9)
    assert chosen["read"].resize == "stretch" and chosen["read"].max_pixels == 100000 and off["realtime"] is False


# A sitecustomize for lc-run's process (and Ray's workers, which inherit its environment): each run of the
# cascade's graphs (every batch of images, frames and tiles goes through _run_placed) marks a file and then waits,
# so a Ctrl-C lands mid-video.
SLOW_CASCADE = """
import os, time
from layercascade.runtime.cascade import Cascade

run_placed = Cascade._run_placed

def slowed(self, *args, **kwargs):
    result = run_placed(self, *args, **kwargs)
    with open(os.environ["LC_TEST_MARKS"], "a") as marks:
        marks.write("x")
    time.sleep(0.1)
    return result

Cascade._run_placed = slowed
"""


def interrupted_lc_run(tmp_path: Path, args: list[str | Path], calls: int) -> tuple[subprocess.Popen, str]:
    """lc-run in a process of its own with a slowed cascade, sent SIGINT after ``calls`` cascade calls:
    (the process, its stderr)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_CASCADE)
    marks = tmp_path / "marks"
    env = {**os.environ, "LC_TEST_MARKS": str(marks),
           "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    process = subprocess.Popen([sys.executable, "-c", "from layercascade.cli.run import cli; cli()", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (marks.exists() and marks.stat().st_size >= calls):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    return process, process.communicate(timeout=120)[1]


def test_ctrl_c_mid_video_leaves_playable_outputs_and_a_summary(tmp_path: Path) -> None:
    clip = video(tmp_path / "long.mp4", 120)
    image = shutil.copy(min(SAMPLES.iterdir()), tmp_path / "after.jpg")
    out = tmp_path / "out"
    process, err = interrupted_lc_run(tmp_path, [clip, image, "-o", out, "--quiet"], calls=5)
    assert process.returncode == 130, err
    assert "interrupted: 0 of 2 input(s) done, 1 video(s) cut short" in err
    summary = summary_of(out)
    assert summary["interrupted"] is True and summary["images"] == 0 and summary["videos"] == 1
    [record] = summary["results"]
    assert record["interrupted"] is True and 0 < record["frames"] < 120 and summary["frames"] == record["frames"]
    check_video_outputs(out, record)
    assert {path.name for path in out.iterdir()} == {*record["outputs"], "summary.json"}


@pytest.mark.slow
def test_ctrl_c_with_ray_finalises_every_video_in_flight(tmp_path: Path) -> None:
    """The video tasks take the Ctrl-C too (cancelled): each finalises its files and is listed."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        video(folder / name, 150)
    out = tmp_path / "out"
    process, err = interrupted_lc_run(tmp_path, [folder, "-o", out, "--quiet", "--ray", "--workers", "2"], calls=10)
    assert process.returncode == 130, err
    summary = summary_of(out)
    assert summary["interrupted"] is True and summary["videos"] == 2
    for record in summary["results"]:
        assert record["interrupted"] is True and 0 < record["frames"] < 150
        check_video_outputs(out, record)
    assert {path.name for path in out.iterdir()} == {name for r in summary["results"] for name in r["outputs"]} | {
        "summary.json"}


def test_live_sources_with_ray_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_lc(["rtsp://127.0.0.1:1/x", "-o", tmp_path / "out", "--ray"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: rtsp://127.0.0.1:1/x: a live stream or camera is one source") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_ray_run_gives_the_same_video_outputs(tmp_path: Path, ray_session: None) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(min(SAMPLES.iterdir()), folder / "photo.jpg")
    video(folder / "clip.mp4", 6)
    video(folder / "camera.bin", 4, fmt="matroska")
    (folder / "broken.mp4").write_bytes(b"no video")
    assert run_lc([folder, "-o", tmp_path / "local", "--quiet"]) == 1  # 1: broken.mp4
    assert run_lc([folder, "-o", tmp_path / "ray", "--quiet", "--ray", "--workers", "1"]) == 1
    local, ray_summary = summary_of(tmp_path / "local"), summary_of(tmp_path / "ray")
    timing = {"ms", "fps", "inference_fps", "duration_s", "sha256", "stage_timings"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in ray_summary["results"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in local["results"]]
    assert ray_summary["failed"] == local["failed"] and ray_summary["failed"][0]["input"].endswith("broken.mp4")
    assert (ray_summary["videos"], ray_summary["frames"]) == (2, 10)
    for record in ray_summary["results"]:
        if record.get("kind") == "video":
            check_video_outputs(tmp_path / "ray", record)
            labels = record["outputs"][1]
            ours, theirs = labels_of(tmp_path / "ray" / labels), labels_of(tmp_path / "local" / labels)
            assert len(ours) == len(theirs) and all(map(np.array_equal, ours, theirs))
        else:
            for name in record["outputs"]:
                assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert leftovers(tmp_path / "ray") == []


def test_the_readme_demo_clip(tmp_path: Path) -> None:
    """The README's video command: the bundled clip (tools/make_demo_clip.py) segmented by the demo model, every
    frame in the overlay, the labels and the lines."""
    clip = Path(__file__).resolve().parent.parent / "runtime" / "demo_clip" / "synthetic-clip.mp4"
    out = tmp_path / "lc-demo-video"
    assert run_lc([clip, "-o", out, "--quiet"]) == 0
    summary = summary_of(out)
    (record,) = summary["results"]
    assert (summary["videos"], summary["frames"], record["size"]) == (1, 192, [240, 320])
    check_video_outputs(out, record)
    # Most pixels are background everywhere in the clip, and most stop at stage 1, as in the synthetic val set.
    assert record["stage_fractions"][0] > 0.5


def test_target_fps_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--target-fps needs a model dir with lc-tune's frontier and takes the place of --rho: one line each, before
    any video is read."""
    clip = video(tmp_path / "clip.mp4", 2)
    out = tmp_path / "out"
    assert run_lc([clip, "-o", out, "--target-fps", "30"]) == 1
    assert "records no latency frontier" in capsys.readouterr().err
    assert run_lc([clip, "-o", out, "--target-fps", "30", "--rho", "0.9"]) == 1
    assert "--rho and --target-fps" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
