"""Write the sample images bundled in runtime/samples/ (what ``lc-run`` segments when given no input).

Four synthetic validation images (seed 7), in different formats and sizes so a run with
no arguments shows the input handling: PNG, JPEG, BMP and WebP, square, landscape,
portrait and odd-sized. Together they stay under 600 KB.

    python tools/make_samples.py [--out runtime/samples]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from layercascade.model.data import SyntheticSegmentation

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
# (file name, (height, width), val image index, Pillow save options)
SAMPLES = (
    ("synthetic-320x320.png", (320, 320), 0, {"optimize": True}),
    ("synthetic-240x320.jpg", (240, 320), 1, {"quality": 92}),
    ("synthetic-256x256.bmp", (256, 256), 2, {}),
    ("synthetic-301x217.webp", (301, 217), 3, {"quality": 90}),
)
MAX_TOTAL_BYTES = 600_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runtime" / "samples",
                        help="folder to write the samples to (default: runtime/samples)")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, size, index, options in SAMPLES:
        image, _ = SyntheticSegmentation("val", seed=SEED, size=size)[index]
        path = out / name
        Image.fromarray(image).save(path, **options)
        total += path.stat().st_size
        print(f"{path}  {size[0]}x{size[1]} (HxW)  {path.stat().st_size / 1000:.0f} KB")
    print(f"total {total / 1000:.0f} KB")
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"samples total {total} bytes, over the {MAX_TOTAL_BYTES} byte budget")


if __name__ == "__main__":
    main()
