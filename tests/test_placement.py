"""The resize modes and tiles (model/data/placement.py): where an image goes in the input, what comes back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercascade.errors import LCError
from layercascade.model.data.placement import (
    Placement,
    Sizes,
    default_resize,
    labels_back,
    pad_colour,
    place,
    stage_fractions,
    stage_map_back,
    tile_grid,
    to_input,
)

FIXED = Sizes((160, 160))
DYNAMIC = Sizes((160, 160), (32, 32), (512, 640))


def test_default_modes() -> None:
    assert default_resize(FIXED) == "fit" and default_resize(DYNAMIC) == "none"


def test_stretch_fills_the_input() -> None:
    assert place((480, 640), FIXED, "stretch") == Placement((480, 640), (160, 160), (160, 160))


@pytest.mark.parametrize(("image", "scaled"), [((480, 640), (120, 160)), ((640, 480), (160, 120)),
                                                ((100, 100), (160, 160)), ((1, 1000), (1, 160))])
def test_fit_keeps_the_aspect_ratio(image, scaled) -> None:
    assert place(image, FIXED, "fit") == Placement(image, scaled, (160, 160))


def test_none_pads_to_the_input_or_the_next_multiple_of_8() -> None:
    assert place((100, 150), FIXED, "none") == Placement((100, 150), (100, 150), (160, 160))
    assert place((500, 741), Sizes((160, 160), (32, 32), (1088, 1920)), "none").input_size == (504, 744)
    assert place((20, 30), DYNAMIC, "none").input_size == (32, 32)  # at least the smallest
    coarse = Sizes((160, 160), (32, 32), (504, 640), step=32)  # a backend that compiles per size
    assert place((100, 150), coarse, "none").input_size == (128, 160)
    assert place((500, 630), coarse, "none").input_size == (504, 640)  # at most the largest
    with pytest.raises(ValueError, match="tiles"):
        place((200, 100), FIXED, "none")
    with pytest.raises(LCError, match="unknown resize mode 'squash'"):
        place((10, 10), FIXED, "squash")


def test_the_input_is_padded_with_the_mean_and_the_maps_cropped_back() -> None:
    image = np.full((60, 80, 3), 200, np.uint8)
    placement = place((60, 80), FIXED, "fit")  # scaled to 120×160
    colour = pad_colour([123.675, 116.28, 103.53])
    assert colour.tolist() == [124, 116, 104]
    model_input = to_input(image, placement, colour)
    assert model_input.shape == (160, 160, 3)
    assert (model_input[:120] == 200).all() and (model_input[120:] == colour).all()
    labels = np.zeros((160, 160), np.uint8)
    labels[:120, :80] = 1  # left half of the real pixels: class 1
    labels[120:] = 9  # the padding: never seen again
    back = labels_back(labels, placement)
    assert back.shape == (60, 80) and set(np.unique(back)) == {0, 1} and (back[:, :40] == 1).all()
    stage_map = np.full((20, 20), 3, np.uint8)
    stage_map[15:] = 1  # the padding's stage pixels
    assert stage_map_back(stage_map, placement).shape == (15, 20)
    assert stage_fractions(stage_map_back(stage_map, placement)) == (0.0, 0.0, 1.0)


def test_a_partly_real_stage_pixel_counts() -> None:
    placement = place((100, 150), FIXED, "none")
    assert placement.stage_crop == (13, 19)  # 100 / 8 = 12.5, 150 / 8 = 18.75: rounded up


@settings(max_examples=80, deadline=None)
@given(height=st.integers(1, 700), width=st.integers(1, 700), tile=st.integers(2, 25).map(lambda t: 8 * t),
       overlap=st.integers(0, 64))
def test_tiles_cover_the_image_once_on_the_stage_grid(height, width, tile, overlap) -> None:
    if tile - overlap < 8:
        with pytest.raises(LCError, match="--overlap"):
            tile_grid((height, width), (tile, tile), overlap)
        return
    tiles = tile_grid((height, width), (tile, tile), overlap)
    covered = np.zeros((height, width), np.int32)
    for t in tiles:
        top, left, h, w = t.window
        assert top % 8 == 0 and left % 8 == 0  # on the stage grid, as in a run of the whole image
        assert 0 < h <= tile and 0 < w <= tile and top + h <= height and left + w <= width
        assert h == min(tile, height) or top + h == height  # whole, or the last one, ending at the image's end
        core_top, core_left, core_bottom, core_right = t.core
        assert top <= core_top < core_bottom <= top + h and left <= core_left < core_right <= left + w
        covered[core_top:core_bottom, core_left:core_right] += 1
        # Away from the window's border: at least half the overlap, except at the image's edge.
        margin = overlap // 2
        assert core_top == 0 or core_top - top >= margin
        assert core_bottom == height or top + h - core_bottom >= margin
        assert core_left == 0 or core_left - left >= margin
        assert core_right == width or left + w - core_right >= margin
    assert (covered == 1).all()
