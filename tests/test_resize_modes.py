"""Native resolution through the Cascade (ONNX Runtime, exact): fit is a letterbox, stretch is the old squash,
none on a dynamic-size export is the fixed export at that (padded) size, images of several sizes batch by size,
and tiles of a large image equal the native run away from the tiles' borders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layercascade.errors import LCError
from layercascade.export.stages import export_model
from layercascade.model.checkpoint import load_checkpoint
from layercascade.model.data import open_dataset
from layercascade.model.data.images import resize_image, resize_labels
from layercascade.model.data.placement import tile_grid
from layercascade.runtime.cascade import Cascade

BOUNDS = ((32, 32), (512, 512))


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo weights as a fixed 160² export, a dynamic-size one (batch up to 4), and fixed exports at 240×320
    and 504×744 (the padded size of a 501×741 image)."""
    folder = tmp_path_factory.mktemp("resize")
    checkpoint = load_checkpoint()
    return {
        "fixed": export_model(checkpoint, folder / "fixed"),
        "dynamic": export_model(checkpoint, folder / "dynamic", dynamic_size=((32, 32), (768, 768)), dynamic_batch=4),
        "240x320": export_model(checkpoint, folder / "f240x320", input_size=(240, 320)),
        "504x744": export_model(checkpoint, folder / "f504x744", input_size=(504, 744)),
    }


def non_square(count: int, size: tuple[int, int] = (160, 240)) -> list[np.ndarray]:
    data = open_dataset(f"synthetic:{size[0]}x{size[1]}", "val", limit=count)
    return [data[k][0] for k in range(count)]


def test_fit_is_a_letterbox_with_the_mean_colour(demo_dirs) -> None:
    image = non_square(1)[0]
    with Cascade.load(demo_dirs["fixed"], backend="ort") as cascade:
        result = cascade(image)  # fit: the default of a fixed-size export
        canvas = np.empty((160, 160, 3), np.uint8)
        canvas[...] = [124, 116, 104]  # the demo's mean, which normalises to 0
        canvas[:107] = resize_image(image, (107, 160))  # 160×240 scaled by 2/3
        out = cascade.run_batch(canvas[None])
    assert result.labels.shape == (160, 240)
    np.testing.assert_array_equal(result.labels, resize_labels(out.labels[0, :107], (160, 240)))
    assert result.stage_map.shape == (14, 20)  # the stage pixels covering the 107 real rows, padding left out
    stage_map = (1 + (out.mask2[0, 0] > 0) + (out.mask3[0, 0] > 0))[:14]
    np.testing.assert_array_equal(result.stage_map, stage_map)
    assert result.stage_fractions == pytest.approx([(stage_map == k).mean() for k in (1, 2, 3)])


def test_stretch_is_the_old_squash(demo_dirs) -> None:
    image = non_square(1)[0]
    with Cascade.load(demo_dirs["fixed"], backend="ort") as cascade:
        result = cascade(image, resize="stretch")
        out = cascade.run_batch(resize_image(image, (160, 160))[None])
    np.testing.assert_array_equal(result.labels, resize_labels(out.labels[0], (160, 240)))
    assert result.stage_map.shape == (20, 20)


def test_none_on_a_dynamic_export_is_the_fixed_export_at_that_size(demo_dirs) -> None:
    image = non_square(1, (240, 320))[0]
    odd = np.ascontiguousarray(non_square(1, (504, 744))[0][:501, :741])
    with (Cascade.load(demo_dirs["dynamic"], backend="ort") as dynamic,
          Cascade.load(demo_dirs["240x320"], backend="ort") as fixed,
          Cascade.load(demo_dirs["504x744"], backend="ort") as padded):
        result = dynamic(image)  # none: the default of a dynamic-size export
        np.testing.assert_array_equal(result.labels, fixed(image, resize="stretch").labels)  # same size: no resize
        assert result.stage_map.shape == (30, 40)
        odd_result = dynamic(odd)
        canvas = np.empty((504, 744, 3), np.uint8)
        canvas[...] = dynamic.pad_colour
        canvas[:501, :741] = odd
        out = padded.run_batch(canvas[None])
    np.testing.assert_array_equal(odd_result.labels, out.labels[0, :501, :741])
    assert odd_result.stage_map.shape == (63, 93)


def test_images_of_several_sizes_batch_by_size(demo_dirs) -> None:
    images = [*non_square(2, (160, 240)), *non_square(3, (96, 64)), non_square(1, (160, 240))[0][:150]]
    with Cascade.load(demo_dirs["dynamic"], backend="ort") as cascade:
        together = cascade.segment_batch(images, 0.97)
        alone = [cascade(image, 0.97) for image in images]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.stage_map, b.stage_map)


def test_tiles_equal_the_native_run_away_from_their_borders(demo_dirs) -> None:
    """Each pixel comes from the window whose centre it is nearest, at least half the overlap inside it; what
    differs from the whole image's run is the context beyond that (the network sees farther than 48 px)."""
    images = non_square(3, (320, 480))
    tile, overlap = (160, 160), 96
    agree = far = total = far_total = 0
    with Cascade.load(demo_dirs["dynamic"], backend="ort") as cascade:
        for image in images:
            native, tiled = cascade(image), cascade(image, tile=tile, overlap=overlap)
            assert tiled.labels.shape == image.shape[:2] and tiled.stage_map.shape == native.stage_map.shape
            same = native.labels == tiled.labels
            distance = border_distance(image.shape[:2], tile, overlap)
            agree, total = agree + same.sum(), total + same.size
            far, far_total = far + same[distance >= 64].sum(), far_total + (distance >= 64).sum()
    assert agree / total >= 0.995 and far / far_total >= 0.999


def border_distance(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> np.ndarray:
    """Each pixel's distance to the nearest border of its window that is not the image's own edge."""
    height, width = size
    distance = np.zeros(size, np.int64)
    for t in tile_grid(size, tile, overlap):
        top, left, h, w = t.window
        core_top, core_left, core_bottom, core_right = t.core
        rows, columns = np.mgrid[core_top:core_bottom, core_left:core_right]
        near = np.full(rows.shape, 10**9)
        for inner, gap in ((top > 0, rows - top), (top + h < height, top + h - 1 - rows),
                           (left > 0, columns - left), (left + w < width, left + w - 1 - columns)):
            if inner:
                near = np.minimum(near, gap)
        distance[core_top:core_bottom, core_left:core_right] = near
    return distance


def test_a_fixed_export_runs_large_images_in_tiles(demo_dirs) -> None:
    image = non_square(1, (320, 480))[0]
    with Cascade.load(demo_dirs["fixed"], backend="ort") as cascade:
        result = cascade(image, resize="none")  # larger than 160²: tiles of the input size
        small = cascade(image[:100, :150], resize="none")  # smaller: padded, not resized
    assert result.labels.shape == (320, 480) and result.stage_map.shape == (40, 60)
    assert small.labels.shape == (100, 150) and small.stage_map.shape == (13, 19)
    assert sum(result.stage_fractions) == pytest.approx(1.0)


def test_the_image_policy_is_checked(demo_dirs) -> None:
    image = non_square(1)[0]
    with Cascade.load(demo_dirs["fixed"], backend="ort") as cascade:
        with pytest.raises(LCError, match="unknown resize mode 'squash'; choose one of fit, stretch, none"):
            cascade(image, resize="squash")
        with pytest.raises(LCError, match="--tile goes with --resize none, not fit"):
            cascade(image, resize="fit", tile=(80, 80))
        with pytest.raises(LCError, match="--tile 320x320: a tile must fit the model's input"):
            cascade(image, resize="none", tile=(320, 320))
        with pytest.raises(LCError, match="--overlap 80: must be 0 or more and at least 8 less than the tile"):
            cascade(np.zeros((400, 400, 3), np.uint8), resize="none", tile=(80, 80), overlap=80)
