"""Peak memory of lc-run on huge images (the numbers of docs/run.md).

Each case runs in a fresh process and reports that process's peak resident set size
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``, read by a parent that waits for nothing else):

* reading a 12000×12000 JPEG alone (``read_rgb``, the limit raised);
* ``lc-run`` on it with the demo model (read, segment, write the three pictures);
* ``lc-run`` on a PNG whose header claims 13000×13000 pixels (refused from the header).

    python tools/measure_memory.py [--work DIR]
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 12000
LIMIT = 150_000_000  # above the JPEG's 144 MP, so that lc-run takes it
PARENT = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
          "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def images(work: Path) -> tuple[Path, Path]:
    """A 12000² JPEG of smooth noise and a small PNG whose header claims 13000²."""
    work.mkdir(parents=True, exist_ok=True)
    jpeg, bomb = work / "big.jpg", work / "bomb.png"
    if not jpeg.exists():
        small = np.random.default_rng(0).integers(0, 256, (375, 375, 3), np.uint8)
        Image.fromarray(small).resize((SIDE, SIDE), Image.BILINEAR).save(jpeg, quality=85)
    Image.new("L", (4, 4)).save(bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = struct.pack(">II", 13000, 13000)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb.write_bytes(bytes(data))
    return jpeg, bomb


def peak(command: list[str]) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of ``command`` in a process of its own."""
    started = time.perf_counter()
    kib = int(subprocess.run([sys.executable, "-c", PARENT, *command], capture_output=True, text=True,
                             check=True).stdout.split()[-1])
    return kib / 2**20, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/memory"), help="where the images and outputs go")
    args = parser.parse_args()
    jpeg, bomb = images(args.work)
    lc_run = [sys.executable, "-c", "from layercascade.cli.run import cli; cli()"]
    cases = {
        f"reading the {SIDE}² JPEG alone": [sys.executable, "-c", "import sys; from layercascade.model.data.images "
                                                                    f"import read_rgb; read_rgb(sys.argv[1], {LIMIT})",
                                             str(jpeg)],
        f"lc-run on the {SIDE}² JPEG (--max-pixels {LIMIT})": [*lc_run, str(jpeg), "-o", str(args.work / "out"),
                                                                "--quiet", "--max-pixels", str(LIMIT)],
        "lc-run on a PNG claiming 13000² (refused)": [*lc_run, str(bomb), "-o", str(args.work / "out"), "--quiet"],
    }
    print("| case | peak RSS | seconds |\n|---|---|---|")
    for label, command in cases.items():
        gigabytes, seconds = peak(command)
        print(f"| {label} | {gigabytes:.2f} GB | {seconds:.1f} |")


if __name__ == "__main__":
    main()
