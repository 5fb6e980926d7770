"""Make the bundled demo clip: a short synthetic video that the demo model segments (issue 25).

A camera pans over a few scenes of the procedural synthetic data set (``model/data/synthetic.py``, the demo
model's training distribution): each scene is one synthetic image 1.5 times the window's size, and the window moves
over it along a smooth path, so the shapes move through the picture and leave it; a cut joins the scenes. Each
window is shown at twice its size (bilinear; its true labels: the same crop of the scene's label map, doubled).
Twice, because the synthetic classes are told apart by their patterns' periods in pixels: ``fit`` brings the
frame back to the bundled model's input (160²) at the scale the model was trained at (the clip at 1:1 would be
shrunk to half its scale, where the model scores 10 % mIoU instead of 60-70 %). The script reports the demo
model's mIoU on the clip's decoded frames (what lc-run sees) against the true labels, and the clip's size.

    python tools/make_demo_clip.py [-o runtime/demo_clip/synthetic-clip.mp4] [--check]

``--check`` only measures the clip already there. Needs the ``video`` extra (PyAV) and ``cpu`` (ONNX Runtime).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from layercascade.model.data.synthetic import SyntheticSegmentation
from layercascade.model.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "runtime" / "demo_clip" / "synthetic-clip.mp4"
WINDOW = (120, 160)  # height, width in scene pixels: 4:3, what fit makes of a frame at the model's input (160²)
ZOOM = 2
FRAME = (WINDOW[0] * ZOOM, WINDOW[1] * ZOOM)
FPS = 25
SCENES = (4, 29, 14, 22)  # synthetic val images the demo model reads well (the best mIoU of the first 40 as clips)
FRAMES_PER_SCENE = 48
SCENE_SCALE = 1.5  # the scene is this much larger than the window: the window pans over the rest


def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) of each scene (255: the ignore band along object contours)."""
    size = (round(WINDOW[0] * SCENE_SCALE), round(WINDOW[1] * SCENE_SCALE))
    data = SyntheticSegmentation("val", size=size, length=max(SCENES) + 1)
    return [data[i] for i in SCENES]


def window(t: float, free: tuple[int, int], phase: float) -> tuple[int, int]:
    """The window's top-left corner at time ``t`` in [0, 1) of a scene: a Lissajous path over the free margin."""
    top = 0.5 * (1 - math.cos(2 * math.pi * (0.5 * t + phase)))
    left = 0.5 * (1 - math.cos(2 * math.pi * (t + phase)))
    return round(top * free[0]), round(left * free[1])


def frames() -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB frame, labels) of every frame of the clip, in order."""
    out = []
    for number, (image, labels) in enumerate(scenes()):
        free = (image.shape[0] - WINDOW[0], image.shape[1] - WINDOW[1])
        for k in range(FRAMES_PER_SCENE):
            top, left = window(k / FRAMES_PER_SCENE, free, phase=0.3 * number)
            crop = np.s_[top:top + WINDOW[0], left:left + WINDOW[1]]
            picture = Image.fromarray(image[crop]).resize(FRAME[::-1], Image.BILINEAR)
            out.append((np.asarray(picture), labels[crop].repeat(ZOOM, 0).repeat(ZOOM, 1)))
    return out


def write_clip(path: Path, pictures: list[np.ndarray]) -> None:
    """H.264 in MP4 (yuv420p: every player takes it), written to a temporary name and renamed."""
    import av

    temporary = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(temporary), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width = FRAME
        stream.pix_fmt = "yuv420p"
        # crf 23 keeps the patterns the model reads (stripes 3-16 px); slow packs them into fewer bytes.
        stream.options = {"crf": "23", "preset": "slow"}
        for picture in pictures:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    os.replace(temporary, path)


def decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def check(path: Path, truth: list[np.ndarray]) -> None:
    """The demo model's mIoU on the decoded clip against the frames' true labels, as lc-run runs it."""
    from layercascade.runtime.cascade import Cascade

    pictures = decoded(path)
    if len(pictures) != len(truth):
        raise SystemExit(f"{path}: {len(pictures)} frames decoded, {len(truth)} made")
    with Cascade.load(None, backend="ort") as cascade:
        matrix = ConfusionMatrix(len(cascade.classes))
        fractions = []
        for picture, labels in zip(pictures, truth, strict=True):
            result = cascade(picture)
            matrix.update(result.labels, labels)
            fractions.append(result.stage_fractions)
    shares = " / ".join(f"{100 * f:.0f}%" for f in np.mean(fractions, axis=0))
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(pictures)} frames "
          f"{FRAME[1]}x{FRAME[0]} at {FPS} fps, {path.stat().st_size / 1e6:.2f} MB; demo model (ort, fit): "
          f"mIoU {matrix.miou():.1f} %, pixel accuracy {matrix.pixel_accuracy():.1f} % on the decoded frames, stages 1/2/3: {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=CLIP)
    parser.add_argument("--check", action="store_true", help="only measure the clip already there")
    args = parser.parse_args()
    made = frames()
    if not args.check:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_clip(args.output, [picture for picture, _ in made])
    check(args.output, [labels for _, labels in made])


if __name__ == "__main__":
    main()
