"""Video throughput (issue 25): lc-run's pipeline end to end against each of its parts alone, in one run.

For each video and backend, the parts are timed one at a time on the same frames, then the whole pipeline:

* decode: the video decoded to RGB frames as the pipeline's decode thread does (``runtime/video/source.py``);
* inference: the cascade on those decoded frames, held in memory, in the pipeline's batches;
* encode: the outputs (overlay mp4, labels mkv, frames.jsonl) written from those frames and their results, as the
  pipeline's encode thread does (``runtime/video/outputs.py``);
* end to end: ``segment_video``, what ``lc-run VIDEO`` runs: the three parts overlapping in their threads.

Each is reported in frames per second (median of the rounds; the rounds take turns, so the machine's drift hits
every part alike), and end to end against the slowest part alone (the target: at least 85 %, the pipeline hiding
the other two) and against the parts run one after another (what a loop would give). Writes the
``video-throughput`` block of docs/results.md.

    python tools/video_bench.py [--rounds 5] [--backends ort,openvino] [--work runs/video-bench]

The cases: the bundled demo clip (320×240, 192 frames) and the same clip scaled to 1280×720 (made in --work), both
segmented by the bundled demo model (fit: each frame scaled to its 160² input), so every part is light and on a
small machine the three compete for its cores; then the 1280×720 clip segmented at its own resolution by the demo
model exported with a dynamic size (``lc-export --dynamic-size``, made in --work; ``resize="none"``), where the
model is the heavy part, as in a real deployment. Every case runs the model as lc-run does when its inputs include a
video (on all cores but one, leaving decoding and encoding a core); the heavy case also with the backend's own
threads on every core, the trade-off that policy makes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from make_demo_clip import CLIP, FPS  # tools/, beside this script
from results_block import ROOT, write_block
from results_block import machine as host_and_runtimes

from layercascade.model.data.images import MAX_PIXELS
from layercascade.model.evaluate import markdown_table
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.segment import ImageOptions
from layercascade.runtime.video import segment_video
from layercascade.runtime.video.outputs import VideoWriter
from layercascade.runtime.video.pipeline import batch_size, infer
from layercascade.runtime.video.source import Counts, Frame, decoded, open_video

PARTS = ("decode", "inference", "encode", "end to end")


def scaled_clip(work: Path, size: tuple[int, int]) -> Path:
    """The demo clip scaled to ``size`` (height, width), H.264 as a camera or phone would give it."""
    import av

    path = work / f"demo-clip-{size[1]}x{size[0]}.mp4"
    if path.exists():
        return path
    with av.open(str(CLIP)) as source, av.open(str(path), "w") as target:
        stream = target.add_stream("libx264", rate=FPS)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for frame in source.decode(video=0):
            target.mux(stream.encode(frame.reformat(width=size[1], height=size[0], format="yuv420p")))
        target.mux(stream.encode())
    return path


def decode(path: Path) -> tuple[list[Frame], float]:
    """The video's frames as the decode thread gives them, and the seconds decoding took."""
    started = time.perf_counter()
    opened = open_video(path, 10.0, MAX_PIXELS)
    try:
        frames = [item for item in decoded(opened, Counts(), audio=False, max_pixels=MAX_PIXELS)
                  if isinstance(item, Frame)]
    finally:
        opened.container.close()
    return frames, time.perf_counter() - started


def inference(cascade: Cascade, frames: list[Frame], read: ImageOptions) -> tuple[list, float]:
    """The cascade's results for the frames in the pipeline's batches, and the seconds it took."""
    size, results = batch_size(cascade), []
    started = time.perf_counter()
    for first in range(0, len(frames), size):
        done, _ = infer(cascade, frames[first:first + size], None, read)
        results.extend(done)
    return results, time.perf_counter() - started


def encode(cascade: Cascade, path: Path, frames: list[Frame], results: list, out: Path) -> float:
    """Seconds to write the three outputs of the frames and results (opened, written, finalised)."""
    opened = open_video(path, 10.0, MAX_PIXELS)  # the writer takes the source's rate and time base
    try:
        started = time.perf_counter()
        writer = VideoWriter(out, "encode", opened, cascade.palette)
        for frame, result in zip(frames, results, strict=True):
            writer.write(frame, result, 0.0, cascade.default_rho)
        writer.close()
        return time.perf_counter() - started
    finally:
        opened.container.close()


def end_to_end(cascade: Cascade, path: Path, out: Path, read: ImageOptions) -> tuple[int, float]:
    started = time.perf_counter()
    run = segment_video(cascade, path, out, "pipeline", read=read, progress=False)
    return run.record["frames"], time.perf_counter() - started


def dynamic_model(work: Path) -> Path:
    """The demo model exported with a dynamic size (up to 2048²): it runs a 1280×720 frame whole."""
    path = work / "demo-dynamic"
    if not (path / "lc.json").exists():
        subprocess.run(["lc-export", "-o", str(path), "--dynamic-size"], check=True, capture_output=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="ort,openvino")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "video-bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    hd = scaled_clip(args.work, (720, 1280))
    dynamic, whole = dynamic_model(args.work), ImageOptions(resize="none")
    lc_run = max(1, (os.cpu_count() or 1) - 1)  # lc-run's threads for a run with videos (cli/run.py)
    # (video, model) → (video file, model dir (None: the bundled demo), its threads (0: the backend's), how frames
    # meet the model's input)
    cases = {("demo clip 320×240", f"demo 160², fit, {lc_run} thread(s)"): (CLIP, None, lc_run, ImageOptions()),
             ("demo clip 1280×720", f"demo 160², fit, {lc_run} thread(s)"): (hd, None, lc_run, ImageOptions()),
             ("demo clip 1280×720", f"demo dynamic size, own resolution, {lc_run} thread(s)"): (hd, dynamic, lc_run,
                                                                                              whole),
             ("demo clip 1280×720", "the same, the backend's threads"): (hd, dynamic, 0, whole)}
    backends = args.backends.split(",")
    fps: dict[tuple[str, str, str, str], list[float]] = {}
    ran: dict[str, str] = {}
    cascades = {(model, threads, name): Cascade.load(model, backend=name, threads=threads)
                for model, threads, name in {(case[1], case[2], name) for case in cases.values() for name in backends}}
    try:
        for (_, _, name), cascade in cascades.items():
            ran[name] = f"{cascade.backend} {cascade.precision}"
            inference(cascade, decode(CLIP)[0][:8], ImageOptions())  # warm-up: the first runs plan and allocate
        with tempfile.TemporaryDirectory(dir=args.work) as scratch:
            for round_ in range(args.rounds):
                for number, ((video, model_label), (path, model, threads, read)) in enumerate(cases.items()):
                    for name in backends:
                        cascade = cascades[(model, threads, name)]
                        frames, seconds = decode(path)
                        count = len(frames)
                        results, inferred = inference(cascade, frames, read)
                        out = Path(scratch) / f"{round_}-{number}-{name}"
                        out.mkdir()
                        encoded = encode(cascade, path, frames, results, out)
                        del frames, results
                        written, whole = end_to_end(cascade, path, out, read)
                        if written != count:
                            raise SystemExit(f"{path}: {written} frames written end to end, {count} decoded")
                        for part, taken in zip(PARTS, (seconds, inferred, encoded, whole), strict=True):
                            fps.setdefault((video, model_label, name, part), []).append(count / taken)
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        for cascade in cascades.values():
            cascade.close()
    rows = []
    for video, model_label in cases:
        for name in backends:
            median = {part: statistics.median(fps[(video, model_label, name, part)]) for part in PARTS}
            slowest = min(PARTS[:3], key=median.__getitem__)
            serial = 1 / sum(1 / median[part] for part in PARTS[:3])  # the parts one after another, as a loop
            rows.append([video, model_label, ran[name], *(f"{median[part]:.0f}" for part in PARTS), slowest,
                         f"{100 * median['end to end'] / median[slowest]:.0f} %",
                         f"{median['end to end'] / serial:.2f}×"])
    table = markdown_table(["video", "model", "backend", *(f"{part} FPS" for part in PARTS), "slowest part",
                            "end to end / slowest", "end to end / loop"], rows)
    body = (f"Measured by `python tools/video_bench.py --rounds {args.rounds}` on {host_and_runtimes()}: frames per "
            "second, median of the rounds, of each part alone on the same frames and of the whole pipeline "
            "(`segment_video`, what `lc-run VIDEO` runs); 'loop' is the three parts one after another (1 / Σ 1/FPS). "
            f"Target: end to end at least 85 % of the slowest part alone.\n\n{table}")
    write_block(ROOT / "docs" / "results.md", "video-throughput", body)
    print(table)


if __name__ == "__main__":
    main()
