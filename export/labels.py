"""The label map as ONNX nodes: the fused stage scores upsampled bilinearly to the input size (half-pixel
centres, as PyTorch's ``interpolate(..., align_corners=False)``) and their argmax, as uint8 class ids.

Where the input is 8× the stage resolution (every stage-1 stride of our backbones, and every size a
dynamic-size export runs at), :func:`cell_labels` gives the exact labels while interpolating only the
8×8 cells whose four corners disagree; elsewhere :func:`resized_labels` interpolates every pixel.
Both read the scores channels-last, ``(N, h, w, C)``, and neither needs static sizes: every index that
depends on h and w is computed from the scores' shape, so a runtime folds it for a fixed-size export
and computes it per run for a dynamic-size one.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from layercascade.contract import LABELS
from layercascade.export.graph import GraphBuilder
from layercascade.model.data.placement import SCALE  # stage resolution → input resolution

HALF = SCALE // 2
INT64, UINT8, FLOAT = TensorProto.INT64, TensorProto.UINT8, TensorProto.FLOAT


def label_map(g: GraphBuilder, nhwc: str, classes: int, input_size: tuple[int, int] | None,
              stage_size: tuple[int, int] | None) -> str:
    """The ``labels`` output (N, H, W) uint8 of the channels-last scores ``nhwc`` (N, h, w, C).

    ``input_size`` and ``stage_size`` are None for a dynamic-size export, whose runtime pads each image to
    a multiple of 8 (so the cells apply); a fixed size that is not 8× its stage size is resized."""
    if input_size is None or tuple(input_size) == (SCALE * stage_size[0], SCALE * stage_size[1]):
        return cell_labels(g, nhwc, classes)
    return resized_labels(g, nhwc, input_size)


def resized_labels(g: GraphBuilder, nhwc: str, input_size: tuple[int, int]) -> str:
    """Every pixel interpolated (Resize to ``input_size``), then the argmax over the classes, channels-last
    (ONNX Runtime's Resize and ArgMax run faster on NHWC than over axis 1; OpenVINO's loader moves the
    ArgMax to a middle axis: runtime/openvino/layout.py)."""
    sizes = g.constant("upsample.sizes", list(input_size))
    upsampled = g.node("Resize", [nhwc, "", "", sizes], "upsample", mode="linear",
                       coordinate_transformation_mode="half_pixel", axes=[1, 2])
    return g.node("Cast", [g.node("ArgMax", [upsampled], "argmax", axis=3, keepdims=0)], LABELS, to=UINT8)


def cell_labels(g: GraphBuilder, nhwc: str, classes: int) -> str:
    """The exact labels of an 8× bilinear upsampling, interpolating only where it matters.

    With edge padding, every output pixel lies in a cell of 8×8 pixels between four low-resolution pixels
    and blends them with non-negative weights that depend only on its place in the cell. Where the four
    corners share their argmax class, that class is the argmax of every blend in the cell
    (:func:`cell_grid`); only the other cells (near label boundaries) are blended in full, as one batched
    (C × 4) · (4 × 64) product (:func:`mixed_cell_labels`), and written over the grid. The label grid is
    uint8 (class ids < 256), an eighth of the bytes of int64 ids, and built in the image's own row order,
    so no transpose of the full-size map is needed.

    Both ArgMax run over an axis that is not the last one: OpenVINO's ArgMax over the last axis is a stable
    TopK several times slower than over a middle one (ONNX Runtime's runs as fast either way).
    """
    # All eight pads, no axes input: ONNX Runtime's transpose optimizer, moving the Transpose below up
    # through this Pad, permutes a pads input as if it had all of them.
    padded = g.node("Pad", [nhwc, g.constant("labels.pads", np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64))],
                    "labels/edge_pad", mode="edge")  # (N, h+2, w+2, C)
    classes_first = g.node("Transpose", [padded], "labels/classes_first", perm=[0, 3, 1, 2])
    corner_classes = g.node("ArgMax", [classes_first], "labels/low_res", axis=1, keepdims=0)  # (N, h+2, w+2)
    c00, c01, c10, c11 = (corner(g, corner_classes, dy, dx) for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)))
    agree = g.node("And", [g.node("Equal", [c00, c01], "labels/eq01"),
                           g.node("And", [g.node("Equal", [c00, c10], "labels/eq10"),
                                          g.node("Equal", [c00, c11], "labels/eq11")], "labels/eq_lower")],
                   "labels/agree")
    grid = cell_grid(g, c00, classes)
    # NonZero of a float map: TensorRT's parser takes NonZero on float types only.
    disagree = g.node("Cast", [g.node("Not", [agree], "labels/disagree")], "labels/disagree_f", to=FLOAT)
    mixed = g.node("Transpose", [g.node("NonZero", [disagree], "labels/mixed")], "labels/mixed_cells",
                   perm=[1, 0])  # (M, 3): (n, y, x) of each mixed cell
    rows, pixels = mixed_cell_labels(g, padded, mixed, classes)
    full = g.node("ScatterND", [grid, rows, pixels], "labels/cells")  # (N, 8(h+1), w+1, 8)
    image = g.node("Reshape", [full, g.constant("labels.image", np.array([0, 0, -1], np.int64))],
                   "labels/padded_image")  # (N, 8(h+1), 8(w+1)): the cells' rows side by side
    # The cells sit between pixel centres: the image is the grid without its outer half cells.
    return g.node("Slice", [image, g.constant("labels.crop_start", np.array([HALF, HALF], np.int64)),
                            g.constant("labels.crop_end", np.array([-HALF, -HALF], np.int64)),
                            g.constant("labels.crop_axes", np.array([1, 2], np.int64))], LABELS)


def corner(g: GraphBuilder, classes: str, dy: int, dx: int) -> str:
    """The classes (N, h+1, w+1) at one corner (``dy``, ``dx`` ∈ {0, 1}) of every cell of the edge-padded
    (N, h+2, w+2) class map: rows ``dy`` … ``h+dy``, columns ``dx`` … ``w+dx``."""
    end = lambda d: -1 if d == 0 else np.iinfo(np.int64).max  # noqa: E731 - "all but the last", "to the end"
    return g.node("Slice", [classes, g.constant(f"labels.start{dy}{dx}", np.array([dy, dx], np.int64)),
                            g.constant(f"labels.end{dy}{dx}", np.array([end(dy), end(dx)], np.int64)),
                            g.constant("labels.hw_axes", np.array([1, 2], np.int64))], f"labels/corner{dy}{dx}")


def cell_grid(g: GraphBuilder, top_left: str, classes: int) -> str:
    """(N, 8(h+1), w+1, 8) uint8: every pixel of a cell labelled with its top-left corner's class.

    Rows of 8 come from a (classes, 8) table, and each row of cells is then gathered 8 times as whole rows
    (pixel row r reads cell row r // 8): broadcasts (Expand) run element by element on OpenVINO."""
    row_table = np.repeat(np.arange(classes, dtype=np.uint8)[:, None], SCALE, axis=1)
    cell_rows = g.node("Gather", [g.constant("labels.cell_row_table", row_table), top_left], "labels/cell_rows",
                       axis=0)  # (N, h+1, w+1, 8)
    cell_row_count = g.node("Squeeze", [dim(g, top_left, 1, "labels/cell_row_count_1d"),
                                        g.constant("labels.squeeze_axis", np.array([0], np.int64))],
                            "labels/cell_row_count")
    pixel_rows = g.node("Mul", [cell_row_count, g.constant("labels.scale", np.array(SCALE, np.int64))],
                        "labels/pixel_row_count")
    cell_of_row = g.node("Div", [g.node("Range", [g.constant("labels.zero", np.array(0, np.int64)), pixel_rows,
                                                  g.constant("labels.step", np.array(1, np.int64))],
                                        "labels/pixel_row"),
                                 g.constant("labels.scale_div", np.array(SCALE, np.int64))], "labels/pixel_row_cells")
    return g.node("Gather", [cell_rows, cell_of_row], "labels/grid", axis=1)


def mixed_cell_labels(g: GraphBuilder, padded: str, mixed: str, classes: int) -> tuple[str, str]:
    """The exact labels of the mixed cells ``mixed`` (M, 3) of the edge-padded scores ``padded`` (N, h+2, w+2, C),
    with the indices they go to: ((M, 8, 3) grid rows (n, pixel row, cell column), (M, 8, 8) uint8 labels)."""
    # Row of each mixed cell's top-left corner in the (N·(h+2)·(w+2), C) score table: (n, y, x) dotted with
    # the strides ((h+2)(w+2), w+2, 1), as a product and a sum (TensorRT has no integer MatMul).
    height, width = dim(g, padded, 1, "labels/padded_height"), dim(g, padded, 2, "labels/padded_width")
    one = g.constant("labels.one", np.array([1], np.int64))
    strides = g.node("Unsqueeze", [g.node("Concat", [g.node("Mul", [height, width], "labels/plane"), width, one],
                                          "labels/strides_1d", axis=0), g.constant("labels.axis0", np.array([0]))],
                     "labels/strides")  # (1, 3)
    axis1 = g.constant("labels.axis1", np.array([1], np.int64))
    top_left = g.node("ReduceSum", [g.node("Mul", [mixed, strides], "labels/top_left_terms"), axis1],
                      "labels/top_left", keepdims=1)  # (M, 1)
    table = g.node("Reshape", [padded, g.constant("labels.table", np.array([-1, classes], np.int64))],
                   "labels/score_rows")
    # The four corners' rows (00, 01, 10, 11): offsets (0, 1, w+2, w+3), in one gather, then classes first.
    offsets = g.node("Unsqueeze", [g.node("Concat", [g.constant("labels.zero_one", np.array([0, 1], np.int64)),
                                                     width, g.node("Add", [width, one], "labels/below_right")],
                                          "labels/corner_offsets_1d", axis=0), g.constant("labels.axis0b",
                                                                                          np.array([0]))],
                      "labels/corner_offsets")  # (1, 4)
    corner_rows = g.node("Add", [top_left, offsets], "labels/corner_rows")  # (M, 4)
    corners = g.node("Transpose", [g.node("Gather", [table, corner_rows], "labels/corner_scores", axis=0)],
                     "labels/corners", perm=[0, 2, 1])  # (M, C, 4)
    blended = g.node("MatMul", [corners, g.constant("labels.cell_weights", cell_weights())],
                     "labels/blend")  # (M, C, 64)
    exact = g.node("Cast", [g.node("ArgMax", [blended], "labels/mixed_argmax", axis=1, keepdims=0)],
                   "labels/mixed_u8", to=UINT8)
    # Each mixed cell's 8 pixel rows as (n, pixel row, cell column): (n, y, x) · (1, 8, 1) + (0, r, 0).
    spread = g.node("Mul", [mixed, g.constant("labels.row_stride", np.array([1, SCALE, 1], np.int64))],
                    "labels/n8yx")
    pixel_rows = np.zeros((1, SCALE, 3), np.int64)
    pixel_rows[0, :, 1] = np.arange(SCALE)
    rows = g.node("Add", [g.node("Unsqueeze", [spread, axis1], "labels/n8yx_3d"),
                          g.constant("labels.pixel_rows", pixel_rows)], "labels/row_indices")
    pixels = g.node("Reshape", [exact, g.constant("labels.mixed_rows", np.array([-1, SCALE, SCALE], np.int64))],
                    "labels/mixed_rows")
    return rows, pixels


def dim(g: GraphBuilder, tensor: str, axis: int, name: str) -> str:
    """The size of ``tensor``'s axis ``axis``, as a (1,) int64 tensor."""
    return g.node("Shape", [tensor], name, start=axis, end=axis + 1)


def cell_weights() -> np.ndarray:
    """(4, 64) bilinear weights of the corners (00, 01, 10, 11) of one 8×8 cell on its pixels (row-major).

    Pixel r of a cell sits at fraction (r + 0.5) / 8 between its corners (half-pixel centres); the weights
    are multiples of 1/256, exact in float32.
    """
    fraction = (np.arange(SCALE) + 0.5) / SCALE
    rows = np.stack([1 - fraction, fraction], axis=1)
    weights = np.einsum("ra,cb->abrc", rows, rows).reshape(4, SCALE * SCALE)
    return weights.astype(np.float32)
