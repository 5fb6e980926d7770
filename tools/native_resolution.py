"""Native resolution (issue 24): accuracy of the resize modes on non-square images, the speed of a dynamic-size
export against fixed exports at the same sizes, and a large image in tiles within bounded memory; writes the
``native-resolution`` block of docs/results.md.

    python tools/native_resolution.py [--limit 100] [--work runs/native]

Accuracy: the demo model (trained on 160×160 synthetic images) on synthetic val sets of other shapes: its fixed
160² export under ``fit`` and ``stretch``, the same export under ``none`` (tiles of 160² at the images' own
resolution) and a dynamic-size export of the same checkpoint under ``none`` (each image whole, at its own size);
mIoU by lc-eval (ONNX Runtime, the exact reference). Speed: the dynamic export at each size and a fixed export at
that size, on ONNX Runtime and OpenVINO, in one process in alternating blocks. Own resolution: the issue's sizes
on both runtimes. Tiles: a 10000×8000 synthetic image through ``lc-run --tile`` on the fixed export, its peak memory
(max RSS) beside a 2000×1600 one's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from make_results import DEMO, DEMO_MODEL_DIR, run  # tools/, beside this script
from results_block import ROOT, shown, write_block
from results_block import machine as host_and_runtimes

SHAPES = ("160x240", "240x160", "320x480")
SPEED_SIZES = ("160x160", "240x320", "512x512")
BOUNDS = "32x32:2048x2048"


def miou(model: Path, data: str, limit: int, resize: str) -> float:
    out = run(["lc-eval", str(model), "--data", data, "--limit", str(limit), "--resize", resize, "--json"])
    return json.loads(out)["miou"]


def accuracy(dynamic: Path, limit: int) -> list[list[str]]:
    rows = []
    for shape in SHAPES:
        data = f"synthetic:{shape}"
        cells = [miou(DEMO_MODEL_DIR, data, limit, mode) for mode in ("stretch", "fit", "none")]
        cells.append(miou(dynamic, data, limit, "none"))
        rows.append([shape.replace("x", "×"), *(f"{value:.2f}" for value in cells)])
    return rows


def speed(dynamic: Path, work: Path, blocks: int) -> list[list[str]]:
    """The dynamic export at each size against a fixed export at that size, in one process, in alternating blocks
    (runtime_study.interleaved_medians): medians of ``Cascade.run_batch`` on a bundled sample image at that size."""
    from runtime_study import interleaved_medians

    from layercascade.runtime.bench import sample_batch
    from layercascade.runtime.cascade import Cascade

    rows = []
    for backend in ("ort", "openvino"):
        for size in SPEED_SIZES:
            fixed = work / f"fixed_{size}"
            if not (fixed / "lc.json").is_file():
                run(["lc-export", str(DEMO), "-o", str(fixed), "--input-size", size])
            shape = tuple(int(n) for n in size.split("x"))
            with Cascade.load(fixed, backend=backend) as fixed_cascade, \
                    Cascade.load(dynamic, backend=backend) as dynamic_cascade:
                image = sample_batch(fixed_cascade, 1, shape)
                ms = interleaved_medians({"fixed": lambda c=fixed_cascade: c.run_batch(image),
                                          "dynamic": lambda c=dynamic_cascade: c.run_batch(image)}, blocks)
            rows.append([backend, size.replace("x", "×"), f"{ms['fixed']:.2f}", f"{ms['dynamic']:.2f}",
                         f"{100 * (ms['dynamic'] / ms['fixed'] - 1):+.1f} %"])
    return rows


OWN_SIZES = ((500, 741), (1080, 1920), (2048, 1024))


def own_resolution(dynamic: Path) -> list[list[str]]:
    """Synthetic images of the issue's sizes through the dynamic export at their own resolution on ONNX Runtime and
    OpenVINO (fp32): labels' shape, ms (the median of 5 runs after one) and the share of equal labels."""
    import numpy as np

    from layercascade.model.data.synthetic import SyntheticSegmentation
    from layercascade.runtime.cascade import Cascade
    from layercascade.runtime.timing import time_calls

    rows = []
    with Cascade.load(dynamic, backend="ort") as ort, Cascade.load(dynamic, backend="openvino",
                                                                    precision="fp32") as openvino:
        for size in OWN_SIZES:
            image = SyntheticSegmentation("val", size=size, length=1)[0][0]
            results, ms = {}, {}
            for name, cascade in (("ort", ort), ("openvino", openvino)):
                results[name] = cascade(image)
                ms[name] = float(np.median(time_calls(lambda c=cascade: c(image), 5)))
            labels = results["ort"].labels
            same = float((labels == results["openvino"].labels).mean())
            rows.append([f"{size[0]}×{size[1]}", f"{labels.shape[0]}×{labels.shape[1]}", f"{ms['ort']:.1f}",
                         f"{ms['openvino']:.1f}", f"{100 * same:.3f} %",
                         "/".join(f"{100 * f:.0f}" for f in results["ort"].stage_fractions)])
    return rows


def tiles(work: Path) -> list[list[str]]:
    """Peak memory of lc-run --tile on a large image and on one a 25th of its size: memory follows the tiles. Run
    first, from a small parent: a child's max RSS starts from its parent's at the fork (Linux keeps it across exec),
    so the images are made in a process of their own too."""
    rows = []
    for height, width in ((1600, 2000), (8000, 10000)):
        path = work / f"large_{height}x{width}.png"
        if not path.is_file():
            run([sys.executable, "-c", "from PIL import Image; from layercascade.model.data.synthetic import "
                 f"SyntheticSegmentation as S; Image.fromarray(S('val', size=({height}, {width}), length=1)[0][0])"
                 f".save({str(path)!r})"])
        code = ("import resource, sys, time; from layercascade.cli.run import main; t = time.perf_counter(); "
                f"main([{str(path)!r}, '-o', {str(work / 'tiles')!r}, '--tile', '--quiet', '--backend', 'ort']); "
                "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        seconds, rss_kib = run([sys.executable, "-c", code]).split()[-2:]
        rows.append([f"{height}×{width}", f"{float(seconds):.1f}", f"{int(rss_kib) / 1024:.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="images per val set (default: 100)")
    parser.add_argument("--blocks", type=int, default=30, help="alternating blocks of 10 runs for the speed table")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "native")
    parser.add_argument("--skip-speed", action="store_true", help="only the accuracy and tile tables")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tile_rows = tiles(args.work)  # first: this process is still small (see tiles)
    from layercascade.model.evaluate import markdown_table
    dynamic = args.work / "dynamic"
    run(["lc-export", str(DEMO), "-o", str(dynamic), "--dynamic-size", BOUNDS])
    machine = host_and_runtimes()
    accuracy_rows = accuracy(dynamic, args.limit)
    speed_rows = None if args.skip_speed else speed(dynamic, args.work, args.blocks)
    own_rows = own_resolution(dynamic)
    command = " ".join(["python tools/native_resolution.py", "--limit", str(args.limit), "--blocks", str(args.blocks),
                        "--work", shown(args.work)])
    body = f"""## Native resolution: resize modes, dynamic-size exports, tiles

Measured {time.strftime('%Y-%m-%d')} with `{command}`; machine: {machine}.

**Accuracy of the resize modes** (mIoU %, ONNX Runtime, {args.limit} synthetic val images of each shape; the demo
model was trained on 160×160 images): the fixed 160² export under `stretch` (squashed), `fit` (letterboxed),
`none` (tiles of 160² at the image's own resolution), and a dynamic-size export (`--dynamic-size {BOUNDS}`) under
`none` (each image whole at its own size).

{markdown_table(["shape", "stretch", "fit", "none (tiles, fixed export)", "none (dynamic export)"], accuracy_rows)}

**Speed of a dynamic-size export** against a fixed export at the same size (the cascade's median ms, demo
model, batch 1, a bundled sample image; both in one process, {args.blocks} alternating blocks of 10 runs; OpenVINO
at its default precision):

{markdown_table(["backend", "size", "fixed export ms", "dynamic export ms", "dynamic vs fixed"], speed_rows)
 if speed_rows else "Not measured in this run (`--skip-speed`)."}

**Images at their own resolution** on the dynamic export (the issue's sizes, one synthetic image each, padded to
a multiple of 8 and cropped back; ms per image, median of 5; OpenVINO at fp32 so the labels compare with ONNX
Runtime's):

{markdown_table(["image", "labels", "ONNX Runtime ms", "OpenVINO fp32 ms", "labels equal", "% at stage 1/2/3"], own_rows)}

**A large image in tiles** (`lc-run --tile` on the fixed 160² export, ONNX Runtime; the whole process's peak
memory, reading the image, its label map at full size and the pictures included; the tiles are 160² whatever the
image's size):

{markdown_table(["image", "seconds", "max RSS MiB"], tile_rows)}
"""
    write_block(ROOT / "docs" / "results.md", "native-resolution", body)
    print(body)


if __name__ == "__main__":
    main()
