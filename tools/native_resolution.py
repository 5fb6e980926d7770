"""Native resolution (issue 24): accuracy of the resize modes on non-square images, the speed of a dynamic-size
export against fixed exports at the same sizes, and a large image in tiles within bounded memory; writes the
``native-resolution`` block of docs/results.md.

    python tools/native_resolution.py [--limit 100] [--work runs/native]

Accuracy: the demo model (trained on 160×160 synthetic images) on synthetic val sets of other shapes: its fixed
160² export under ``fit`` and ``stretch``, the same export under ``none`` (tiles of 160² at the images' own
resolution) and a dynamic-size export of the same checkpoint under ``none`` (each image whole, at its own size);
mIoU by lc-eval (ONNX Runtime, the exact reference). Speed: ``lc-bench`` of the dynamic export at each size and of a
fixed export at that size, on ONNX Runtime and OpenVINO, alternating in one process run after another. Tiles: a
10000×8000 synthetic image through ``lc-run --tile`` on the fixed export, its peak memory (max RSS) beside a
2000×1600 one's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from results_block import ROOT, shown, write_block  # tools/, beside this script

DEMO_CHECKPOINT = ROOT / "model" / "demo" / "lc_tiny_synthetic.pt"
DEMO_MODEL = ROOT / "runtime" / "demo_model"
SHAPES = ("160x240", "240x160", "320x480")
SPEED_SIZES = ("160x160", "240x320", "512x512")
BOUNDS = "32x32:2048x2048"


def run(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def miou(model: Path, data: str, limit: int, resize: str) -> float:
    out = run(["lc-eval", str(model), "--data", data, "--limit", str(limit), "--resize", resize, "--json"])
    return json.loads(out)["miou"]


def accuracy(dynamic: Path, limit: int) -> list[list[str]]:
    rows = []
    for shape in SHAPES:
        data = f"synthetic:{shape}"
        cells = [miou(DEMO_MODEL, data, limit, mode) for mode in ("stretch", "fit", "none")]
        cells.append(miou(dynamic, data, limit, "none"))
        rows.append([shape.replace("x", "×"), *(f"{value:.2f}" for value in cells)])
    return rows


def bench(model: Path, size: str, backend: str) -> dict:
    command = ["lc-bench", str(model), "--json", "--backend", backend, "--iters", "30"]
    if "dynamic_size" in json.loads((model / "lc.json").read_text()):
        command += ["--size", size]
    return json.loads(run(command))


def speed(dynamic: Path, work: Path, rounds: int) -> list[list[str]]:
    fixed = {}
    for size in SPEED_SIZES:
        fixed[size] = work / f"fixed_{size}"
        if not (fixed[size] / "lc.json").is_file():
            run(["lc-export", str(DEMO_CHECKPOINT), "-o", str(fixed[size]), "--input-size", size])
    rows = []
    for backend in ("ort", "openvino"):
        for size in SPEED_SIZES:
            times: dict[str, list[float]] = {"dynamic": [], "fixed": []}
            for _ in range(rounds):  # alternating, so drift hits both alike
                for kind, model in (("dynamic", dynamic), ("fixed", fixed[size])):
                    times[kind].append(bench(model, size, backend)["cascade"]["median_ms"])
            dynamic_ms, fixed_ms = (sorted(times[k])[rounds // 2] for k in ("dynamic", "fixed"))
            rows.append([backend, size.replace("x", "×"), f"{fixed_ms:.2f}", f"{dynamic_ms:.2f}",
                         f"{100 * (dynamic_ms / fixed_ms - 1):+.1f} %"])
    return rows


def tiles(work: Path) -> list[list[str]]:
    """Peak memory of lc-run --tile on a large image and on one a 25th of its size: memory follows the tiles."""
    from PIL import Image

    from layercascade.model.data.synthetic import SyntheticSegmentation

    rows = []
    for height, width in ((1600, 2000), (8000, 10000)):
        path = work / f"large_{height}x{width}.png"
        if not path.is_file():
            Image.fromarray(SyntheticSegmentation("val", size=(height, width), length=1)[0][0]).save(path)
        code = ("import resource, sys, time; from layercascade.cli.run import main; t = time.perf_counter(); "
                f"main([{str(path)!r}, '-o', {str(work / 'tiles')!r}, '--tile', '--quiet', '--backend', 'ort']); "
                "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        seconds, rss_kib = run([sys.executable, "-c", code]).split()[-2:]
        rows.append([f"{height}×{width}", f"{float(seconds):.1f}", f"{int(rss_kib) / 1024:.0f}"])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="images per val set (default: 100)")
    parser.add_argument("--rounds", type=int, default=3, help="lc-bench runs per case for the speed table")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "native")
    parser.add_argument("--skip-speed", action="store_true", help="only the accuracy and tile tables")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dynamic = args.work / "dynamic"
    run(["lc-export", str(DEMO_CHECKPOINT), "-o", str(dynamic), "--dynamic-size", BOUNDS])
    machine = json.loads(run(["lc-bench", str(DEMO_MODEL), "--json", "--backend", "ort", "--iters", "2"]))["machine"]
    accuracy_rows = accuracy(dynamic, args.limit)
    speed_rows = None if args.skip_speed else speed(dynamic, args.work, args.rounds)
    tile_rows = tiles(args.work)
    command = " ".join(["python tools/native_resolution.py", "--limit", str(args.limit), "--work", shown(args.work)])
    body = f"""## Native resolution: resize modes, dynamic-size exports, tiles

Measured {time.strftime('%Y-%m-%d')} with `{command}`; machine: {machine}.

**Accuracy of the resize modes** (mIoU %, ONNX Runtime, {args.limit} synthetic val images of each shape; the demo
model was trained on 160×160 images): the fixed 160² export under `stretch` (squashed), `fit` (letterboxed),
`none` (tiles of 160² at the image's own resolution), and a dynamic-size export (`--dynamic-size {BOUNDS}`) under
`none` (each image whole at its own size).

{table(["shape", "stretch", "fit", "none (tiles, fixed export)", "none (dynamic export)"], accuracy_rows)}

**Speed of a dynamic-size export** against a fixed export at the same size (`lc-bench` cascade median ms, demo
model, batch 1, median of {args.rounds} runs each, alternating):

{table(["backend", "size", "fixed export ms", "dynamic export ms", "dynamic vs fixed"], speed_rows)
 if speed_rows else "Not measured in this run (`--skip-speed`)."}

**A large image in tiles** (`lc-run --tile` on the fixed 160² export, ONNX Runtime; the whole process's peak
memory):

{table(["image", "seconds", "max RSS MiB"], tile_rows)}
"""
    write_block(ROOT / "docs" / "results.md", "native-resolution", body)
    print(body)


if __name__ == "__main__":
    main()
