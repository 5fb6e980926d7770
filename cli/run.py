"""lc-run: segment images, videos and live streams with a Layer Cascade model and write label maps, overlays,
stage pictures, confidence maps (the outputs chosen; videos: overlay and label containers, per-frame records) and a
summary."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from layercascade.cli.args import (
    add_backend_arguments,
    add_image_arguments,
    add_rho_argument,
    add_rho_class_argument,
    check_frontier,
    engine,
    finite_float,
    image_options,
    load_options,
    positive_int,
)
from layercascade.contract import rho_class_value
from layercascade.errors import LCError, fail, run_cli
from layercascade.model.data.images import MAX_PIXELS
from layercascade.runtime.inputs import SAMPLES
from layercascade.runtime.segment import (
    DEFAULT_OUTPUTS,
    OUTPUTS,
    PICTURE_MAX_PIXELS,
    SUMMARY_MAX_BYTES,
    ImageOptions,
    check_outputs,
    parse_outputs,
    VideoOptions,
    earlier_outputs,
    make_output_dir,
    segment_all,
    summarize,
    write_summary,
)
from layercascade.runtime.sources import expand_inputs, is_video
from layercascade.serve import import_serving

LOCAL_RAY = "local"  # --ray without an address: start a Ray on this machine


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-run",
        description="Segment images, videos and live streams with a Layer Cascade model. For each image write "
                    "the --outputs chosen, by default OUT/<stem>.png (palette label map of class ids), "
                    "OUT/<stem>_overlay.jpg (classes over the image) and OUT/<stem>_stages.png (which stage decided "
                    "each pixel); for each video or stream "
                    "OUT/<stem>_overlay.mp4, OUT/<stem>_labels.mkv (lossless label frames) and "
                    "OUT/<stem>_frames.jsonl (one record per frame); then OUT/summary.json. "
                    "Unreadable images and videos, and images whose output the file system refuses (a name too "
                    "long, a folder in the way), are reported and skipped; the exit code is then 1; a disk that "
                    "fails (full, read-only) or a live source that dies stops the run. Inputs are never "
                    "overwritten: files inside OUT are never inputs. Each image's files appear together or not "
                    "at all, a video's under temporary names renamed when it ends; Ctrl-C drops the image in "
                    "flight or ends the video in flight with its containers finalised, and summary.json records "
                    "the inputs finished (exit code 130).",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image or video files (any container and codec FFmpeg decodes), folders (their image "
                             "and video files, videos known by their content too; not recursive), quoted glob "
                             "patterns ('photos/**/*.jpg' recurses), stream URLs (rtsp://, rtmp://, udp://, tcp://, "
                             "srt://, http(s)://) or cameras (/dev/video0) (default: the bundled sample images)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT",
                        help="folder for the outputs (created if missing, must take new files): not an input folder, "
                             "nor holding an input file. An earlier run's outputs (listed in its summary.json with "
                             "their sha256, content unchanged) are replaced; other files there never are: an output "
                             "takes a -2 name instead")
    parser.add_argument("--model", "--engine", dest="model", default=None, metavar="DIR",
                        help="model folder written by lc-export, TensorRT engine folder written by lc-build, or "
                             "(torch backend) a checkpoint .pt (default: the bundled demo model)")
    add_rho_argument(parser, "confidence threshold ρ in (0, 1]: pixels more confident than ρ at a stage stop "
                             "there; R2,R3 gives stage 1 → 2 and stage 2 → 3 a threshold each; 1 runs every "
                             "pixel through every stage (default: the model's)")
    add_rho_class_argument(parser)
    add_backend_arguments(parser)
    parser.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
                        help="refuse images of more pixels, read from the file's header before decoding "
                             f"(default: {MAX_PIXELS:,}); overlays and stage pictures are drawn at most "
                             f"{PICTURE_MAX_PIXELS:,} pixels, label maps at the image's size")
    parser.add_argument("--no-exif-transpose", dest="exif_transpose", action="store_false",
                        help="keep the pixels in stored order; by default the EXIF orientation is applied, so "
                             "outputs line up with the photo as viewers show it")
    parser.add_argument("--outputs", type=parse_outputs, default=DEFAULT_OUTPUTS, metavar="LIST",
                        help=f"what to write per image, comma-separated, from {', '.join(OUTPUTS)} (default: "
                             f"{','.join(DEFAULT_OUTPUTS)}): confidence = <stem>_confidence.png, the winning class's "
                             "probability p at the image's size as a 16-bit grayscale PNG of round(p * 65535); "
                             "confidence-npy = <stem>_confidence.npy, p as float32 at the stage resolution (an "
                             "eighth of the model input's). A video writes its own three outputs whatever this says")
    add_image_arguments(parser)
    video = parser.add_argument_group("videos and live streams (pip install 'layercascade[video]')")
    video.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                       help="streams and cameras: keep up with the source, dropping the frames the model cannot keep "
                            "up with (counted in the summary's 'dropped'), the default; --no-realtime queues them "
                            "instead, so a source that buffers gives every frame, later. Files never drop a frame")
    video.add_argument("--open-timeout", type=finite_float(0.1, 3600), default=10.0, metavar="S",
                       help="seconds a stream or camera may take to open (and to give a frame) before it is "
                            "reported as unreachable (default: 10)")
    video.add_argument("--target-fps", type=finite_float(0.01, 10_000), default=None, metavar="F",
                       help="keep F frames per second by lowering ρ along the latency frontier lc-tune recorded in the "
                            "model dir (raising it again when there is room), so a live source drops frames only "
                            "where the fastest setting cannot keep up; each frame's line says its ρ, the summary the "
                            "moves and the mean expected mIoU cost (in place of --rho; --rho-class still applies on "
                            "top; needs a dir tuned by lc-tune)")
    scale = parser.add_argument_group("scale-out (pip install 'layercascade[serve]')")
    scale.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                       help="segment with a Ray Data pipeline: a pool of workers, each holding the model, on a local "
                            "Ray or the cluster at ADDRESS ('auto', 'ray://head:10001'); each video runs as one Ray "
                            "task of its own; same outputs and summary. Live streams and cameras are refused (one "
                            "source: run them without --ray). On a cluster the inputs and OUT must be on a "
                            "filesystem every node sees")
    scale.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="with --ray: the workers, each running the model on one thread, and the videos segmented "
                            "at once (default: one per CPU of the cluster; for a model on a GPU, one per GPU)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary JSON to stdout (no progress bar)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first image or video that cannot be read or segmented (exit code 1)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no closing line (warnings are still printed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Intermixed: `lc-run a.jpg -o out b.jpg` keeps both images.
    args = build_parser().parse_intermixed_args(argv)
    from layercascade.runtime.cascade import Cascade  # lazily: loads the backend's heavy libraries

    if args.workers is not None and args.ray is None:
        fail("--workers sets the Ray workers: add --ray")
    if args.target_fps is not None:
        if args.rho is not None:
            fail("--rho and --target-fps both set the thresholds: pass one (the target moves ρ along the model's "
                 "frontier)")
        check_frontier(args.model, "--target-fps")
    paths = expand_inputs(args.inputs or [str(SAMPLES)], output=args.output)
    live = [path for path in paths if isinstance(path, str)]
    if args.ray is not None and live:
        fail(f"{live[0]}: a live stream or camera is one source, read by one process: run it without --ray")
    # Before the model loads: a foreign summary.json and a folder that cannot take files are one line.
    earlier = earlier_outputs(args.output)
    out = make_output_dir(args.output)
    read = ImageOptions(args.max_pixels, args.exif_transpose, **image_options(args))
    video = VideoOptions(args.realtime, args.open_timeout, args.target_fps)
    progress = not (args.quiet or args.json)
    # A video is decoded and encoded beside the model (runtime/video): the model leaves those threads a core
    # (docs/results.md "Video throughput": on 2 cores, the model on one thread runs the pipeline faster than on both).
    threads = max(1, (os.cpu_count() or 1) - 1) if any(map(is_video, paths)) else 0
    # With --ray the model is loaded here too, first: a model that does not load is lc-run's one line.
    with Cascade.load(args.model, **load_options(args, threads=threads)) as cascade:
        check_outputs(cascade, args.outputs)
        # Checked against the model's classes before any image runs; by class index from here on.
        rho_class = cascade.rho_class(args.rho_class)
        if args.ray is None:
            run = segment_all(cascade, paths, out, rho=args.rho, strict=args.strict, progress=progress, read=read,
                              earlier=earlier, video=video, outputs=args.outputs, rho_class=rho_class)
        backend, precision, rho = cascade.backend, cascade.precision, cascade.rho(args.rho)
        used_rho_class = rho_class_value(rho_class, cascade.classes)
    if args.ray is not None:
        batch = import_serving("batch")
        run = batch.segment_all_ray(args.model, load_options(args, threads=1), paths, out, rho=args.rho,
                                    strict=args.strict, progress=progress, read=read, earlier=earlier,
                                    address=None if args.ray == LOCAL_RAY else args.ray, workers=args.workers,
                                    video=video, outputs=args.outputs, rho_class=rho_class)
    summary = summarize(run, backend=backend, precision=precision, model=args.model or "demo", rho=rho,
                        rho_class=used_rho_class)
    try:
        size = write_summary(out, summary)
    except LCError as error:
        stopped = f"; the run had stopped: {run.stopped}" if run.stopped else ""
        fail(f"{error}: the {done(summary)} done are not listed in a summary{stopped}")
    if size > SUMMARY_MAX_BYTES:
        print(f"warning: {out / 'summary.json'} is over the {SUMMARY_MAX_BYTES >> 20} MiB lc-run reads back: a "
              "later run into this folder is refused; give each ~100,000 images their own -o", file=sys.stderr)
    if run.stopped:
        fail(f"{run.stopped} (stopped: {done(summary)} done, listed in {out / 'summary.json'})")
    if run.interrupted:
        cut = sum(1 for record in summary["results"] if record.get("interrupted"))
        short = f", {cut} video(s) cut short" if cut else ""
        print(f"interrupted: {len(summary['results']) - cut} of {len(paths)} input(s) done{short}{frames(summary)}, "
              f"listed in {out / 'summary.json'}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(closing_line(summary, out))
    return 1 if run.failed else 0


def done(summary: dict[str, Any]) -> str:
    """"3 image(s)", with ", 1 video(s)" when the run had videos."""
    videos = f", {summary['videos']} video(s)" if summary["videos"] else ""
    return f"{summary['images']} image(s){videos}"


def frames(summary: dict[str, Any]) -> str:
    """" (N frames at F FPS, D dropped)" over the videos done (end to end: frames over the seconds they took);
    empty without videos."""
    videos = [record for record in summary["results"] if record.get("kind") == "video"]
    if not videos:
        return ""
    seconds = sum(record["frames"] / record["fps"] for record in videos if record["fps"])
    rate = f" at {summary['frames'] / seconds:.1f} FPS" if seconds else ""
    dropped = f", {summary['dropped']} dropped" if summary["dropped"] else ""
    return f" ({summary['frames']} frames{rate}{dropped})"


def closing_line(summary: dict[str, Any], out: Path) -> str:
    """One line for people: how many images and videos (frames, FPS), where, how fast, and the stage shares."""
    line = f"{done(summary)}{frames(summary)} -> {out}"
    if summary["mean_ms"] is not None:
        shares = " / ".join(f"{100 * f:.0f}%" for f in summary["stage_fractions"])
        ran = engine(summary["backend"], summary["precision"])
        line += f"  mean {summary['mean_ms']:.1f} ms  stages 1/2/3: {shares}  ({ran})"
    if summary["failed"]:
        line += f"  ({len(summary['failed'])} failed)"
    return line


def cli() -> None:
    raise SystemExit(run_cli(main))
