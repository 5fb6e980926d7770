"""Build the three stage graphs (and the dense baseline) of a checkpoint; write a model dir.

The graphs follow the stage graph contract of ``layercascade.contract`` (recorded in ``lc.json``):
``stage1.onnx`` takes the uint8 image (normalisation happens inside the graph) and ρ, ``stage3.onnx``
gives the label map and the per-stage counts, and ``dense.onnx`` (``image`` → ``labels``) holds the
same weights as a plain network (every pixel through all stages' blocks, final head only) — the
baseline a user would otherwise deploy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from layercascade.contract import (
    FEAT1,
    FEAT2,
    IMAGE,
    LABELS,
    MASK2,
    MASK3,
    RHO,
    SCORES1,
    SCORES2,
    STAGE_COUNTS,
    STAGE_OUTPUTS,
)
from layercascade.errors import fail
from layercascade.export import regionconv
from layercascade.export.describe import check_input_size, model_keys, stage_shapes
from layercascade.export.emit import StageEmitter
from layercascade.export.graph import GraphBuilder, io_spec
from layercascade.manifest import write_model_dir
from layercascade.model.checkpoint import Checkpoint
from layercascade.model.network import NUM_STAGES, LayerCascadeNet
from layercascade.model.ops import backbone_ops, head_ops

SUPPORTED_OPSETS = range(18, 22)
SCALE = 8  # stage resolution → input resolution
FLOAT, UINT8, INT64 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT64


class _Exporter:
    def __init__(self, model: LayerCascadeNet, checkpoint: Checkpoint, input_size: tuple[int, int],
                 batch: int | str, opset: int) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.input_size = input_size
        self.batch = batch
        self.opset = opset
        self.shapes = stage_shapes(model.config, input_size)
        self.classes = model.config.num_classes

    def feature_shape(self, index: int) -> list:
        return [self.batch, *self.shapes[index]]

    def map_shape(self, channels: int) -> list:
        return [self.batch, channels, *self.shapes[0][1:]]

    def normalized_image(self, g: GraphBuilder) -> str:
        """``(image − mean) / std`` as float NCHW; :meth:`fold_normalisation` later moves the
        division into the convs that read it."""
        image = g.add_input(IMAGE, UINT8, [self.batch, *self.input_size, 3])
        # Converted, then transposed: ONNX Runtime transposes 3-channel uint8 slower than float (a
        # stem-only graph at 512²: 0.55 ms this way, 0.85 ms transposing first; in the whole cascade the
        # two orders time alike). OpenVINO's loader moves the Sub above the transpose, where its
        # convolutions read the image channels-last (runtime/openvino/layout.py).
        x = g.node("Cast", [image], "preprocess/cast", to=FLOAT)
        x = g.node("Transpose", [x], "preprocess/nchw", perm=[0, 3, 1, 2])
        mean = g.constant("preprocess.mean", np.asarray(self.checkpoint.mean, np.float32).reshape(1, 3, 1, 1))
        std = g.constant("preprocess.std", np.asarray(self.checkpoint.std, np.float32).reshape(1, 3, 1, 1))
        x = g.node("Sub", [x, mean], "preprocess/sub_mean")
        return g.node("Div", [x, std], "preprocess/div_std")

    def fold_normalisation(self, g: GraphBuilder, normalized: str) -> None:
        """Fold the division by std into the convs that read ``normalized`` (the stem).

        It scales input channels, so it moves into their weights exactly (their zero padding
        stays zero): one pass over the full-size image fewer. The mean stays a Sub: folded into
        the bias, a padded stem's border would see −mean/std instead of the normalised 0.
        """
        readers = [n for n in g.nodes if normalized in n.input]
        if not readers or any(n.op_type != "Conv" or n.input[0] != normalized for n in readers):
            return
        divide = next(n for n in g.nodes if n.output[0] == normalized)
        values = {t.name: t for t in g.initializers}
        std = numpy_helper.to_array(values[divide.input[1]]).reshape(1, 3, 1, 1)
        for conv in readers:
            weight = numpy_helper.to_array(values[conv.input[1]]) / std
            values[conv.input[1]].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), conv.input[1]))
            conv.input[0] = divide.input[0]
        g.nodes.remove(divide)
        g.initializers.remove(values[divide.input[1]])

    def stage_body(self, g: GraphBuilder, index: int, x: str, mask: str | None) -> tuple[str, str]:
        emitter, regional = StageEmitter(g, mask), mask is not None
        features = emitter.emit(backbone_ops(self.model, index, regional), x)
        return features, emitter.emit(head_ops(self.model, index, regional), features)

    def threshold(self, g: GraphBuilder, scores: str, rho: str, region: str | None, name: str) -> str:
        """``[max softmax(scores) ≤ ρ]`` (∧ the current region) as float 0/1.

        max softmax = 1 / Σ_c exp(s_c − max s), so the test is ``ρ · Σ_c exp(s_c − max s) ≥ 1``:
        two reductions over the class axis and no Softmax, which ONNX Runtime runs
        slower (over axis 1, or with the transposes to put the classes last).
        """
        axes = g.constant(f"{name}.axes", [1])
        peak = g.node("ReduceMax", [scores, axes], f"{name}/peak", keepdims=1)
        shifted = g.node("Exp", [g.node("Sub", [scores, peak], f"{name}/shift")], f"{name}/exp")
        partition = g.node("ReduceSum", [shifted, axes], f"{name}/partition", keepdims=1)
        scaled = g.node("Mul", [partition, rho], f"{name}/scaled")
        one = g.constant(f"{name}.one", np.ones((), np.float32))
        uncertain = g.node("GreaterOrEqual", [scaled, one], f"{name}/uncertain")
        mask = g.node("Cast", [uncertain], f"{name}/cast", to=FLOAT)
        return mask if region is None else g.node("Mul", [mask, region], f"{name}/nest")

    def labels(self, g: GraphBuilder, nhwc: str) -> str:
        """argmax of the channels-last scores ``nhwc`` upsampled bilinearly to the input size
        (half-pixel centres, as PyTorch's ``interpolate(..., align_corners=False)``), uint8."""
        (height, width), (h, w) = self.input_size, self.shapes[0][1:]
        if (height, width) == (SCALE * h, SCALE * w):
            return self.cell_labels(g, nhwc, h, w)
        # Channels-last: ONNX Runtime's Resize and ArgMax run faster on NHWC than over axis 1.
        sizes = g.constant("upsample.sizes", list(self.input_size))
        upsampled = g.node("Resize", [nhwc, "", "", sizes], "upsample", mode="linear",
                           coordinate_transformation_mode="half_pixel", axes=[1, 2])
        return g.node("Cast", [g.node("ArgMax", [upsampled], "argmax", axis=3, keepdims=0)], LABELS, to=UINT8)

    def cell_labels(self, g: GraphBuilder, nhwc: str, h: int, w: int) -> str:
        """The exact labels of an 8× bilinear upsampling, interpolating only where it matters.

        With edge padding, every output pixel lies in a cell of 8×8 pixels between four
        low-resolution pixels and blends them with non-negative weights that depend only
        on its place in the cell. Where the four corners share their argmax class, that
        class is the argmax of every blend in the cell; only the other cells (near label
        boundaries) are blended in full, as one batched (C × 4) · (4 × 64) product. The label
        grid is built in uint8 (class ids < 256), an eighth of the bytes of int64 ids, and in
        the image's own row order, so no transpose of the full-size map is needed.

        Both ArgMax run over an axis that is not the last one: OpenVINO's ArgMax over the last
        axis is a stable TopK several times slower than over a middle one (ONNX Runtime's runs
        as fast either way).
        """
        axis1 = g.constant("labels.axis1", np.array([1], np.int64))
        # All eight pads, no axes input: ONNX Runtime's transpose optimizer, moving the Transpose below
        # up through this Pad, permutes a pads input as if it had all of them.
        padded = g.node("Pad", [nhwc, g.constant("labels.pads", np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64))],
                        "labels/edge_pad", mode="edge")
        classes_first = g.node("Transpose", [padded], "labels/classes_first", perm=[0, 3, 1, 2])
        corners_argmax = g.node("ArgMax", [classes_first], "labels/low_res", axis=1, keepdims=0)

        def corner(dy: int, dx: int) -> str:
            starts = g.constant(f"labels.start{dy}{dx}", np.array([dy, dx], np.int64))
            ends = g.constant(f"labels.end{dy}{dx}", np.array([h + 1 + dy, w + 1 + dx], np.int64))
            return g.node("Slice", [corners_argmax, starts, ends, g.constant("labels.hw_axes", np.array([1, 2]))],
                          f"labels/corner{dy}{dx}")

        c00, c01, c10, c11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
        agree = g.node("And", [g.node("Equal", [c00, c01], "labels/eq01"),
                               g.node("And", [g.node("Equal", [c00, c10], "labels/eq10"),
                                              g.node("Equal", [c00, c11], "labels/eq11")], "labels/eq_lower")],
                       "labels/agree")
        # Every pixel of a cell gets its top-left corner's class: rows of 8 from a (classes, 8) table, each
        # row of cells then gathered 8 times as whole rows (broadcasts run element by element on OpenVINO).
        cell_row_table = np.repeat(np.arange(self.classes, dtype=np.uint8)[:, None], SCALE, axis=1)
        cell_rows = g.node("Gather", [g.constant("labels.cell_row_table", cell_row_table), c00], "labels/cell_rows",
                           axis=0)  # (N, h+1, w+1, 8)
        grid = g.node("Gather", [cell_rows, g.constant("labels.pixel_row_cells", np.repeat(np.arange(h + 1), SCALE))],
                      "labels/grid", axis=1)  # (N, 8(h+1), w+1, 8)
        # NonZero of a float map: TensorRT's parser takes NonZero on float types only.
        disagree = g.node("Cast", [g.node("Not", [agree], "labels/disagree")], "labels/disagree_f", to=FLOAT)
        mixed = g.node("Transpose", [g.node("NonZero", [disagree], "labels/mixed")], "labels/mixed_cells", perm=[1, 0])
        # Row of each mixed cell's top-left corner in the padded (N·(h+2)·(w+2), C) score table: the
        # (n, y, x) indices dotted with the strides, as a product and a sum (TensorRT has no integer MatMul).
        strides = g.constant("labels.strides", np.array([[(h + 2) * (w + 2), w + 2, 1]], np.int64))
        top_left = g.node("ReduceSum", [g.node("Mul", [mixed, strides], "labels/top_left_terms"), axis1],
                          "labels/top_left", keepdims=1)  # (M, 1)
        table = g.node("Reshape", [padded, g.constant("labels.table", np.array([-1, self.classes], np.int64))],
                       "labels/score_rows")
        # The four corners' rows (00, 01, 10, 11) in one gather, then classes first.
        corner_rows = g.node("Add", [top_left, g.constant("labels.corner_offsets", np.array([[0, 1, w + 2, w + 3]]))],
                             "labels/corner_rows")  # (M, 4)
        corners = g.node("Transpose", [g.node("Gather", [table, corner_rows], "labels/corner_scores", axis=0)],
                         "labels/corners", perm=[0, 2, 1])  # (M, C, 4)
        blended = g.node("MatMul", [corners, g.constant("labels.cell_weights", cell_weights())],
                         "labels/blend")  # (M, C, 64)
        exact = g.node("Cast", [g.node("ArgMax", [blended], "labels/mixed_argmax", axis=1, keepdims=0)],
                       "labels/mixed_u8", to=UINT8)
        # Each mixed cell's 8 pixel rows as (n, pixel row, cell column) indices into the grid:
        # (n, y, x) · (1, 8, 1) + (0, r, 0).
        spread = g.node("Mul", [mixed, g.constant("labels.row_stride", np.array([1, SCALE, 1], np.int64))],
                        "labels/n8yx")
        pixel_rows = np.zeros((1, SCALE, 3), np.int64)
        pixel_rows[0, :, 1] = np.arange(SCALE)
        row_indices = g.node("Add", [g.node("Unsqueeze", [spread, axis1], "labels/n8yx_3d"),
                                     g.constant("labels.pixel_rows", pixel_rows)], "labels/row_indices")
        mixed_rows = g.node("Reshape", [exact, g.constant("labels.mixed_rows", np.array([-1, SCALE, SCALE], np.int64))],
                            "labels/mixed_rows")
        full = g.node("ScatterND", [grid, row_indices, mixed_rows], "labels/cells")
        image = g.node("Reshape", [full, g.constant("labels.image", np.array([0, SCALE * (h + 1), SCALE * (w + 1)]))],
                       "labels/padded_image")
        half = SCALE // 2
        return g.node("Slice", [image, g.constant("labels.crop_start", np.array([half, half])),
                                g.constant("labels.crop_end", np.array([half + SCALE * h, half + SCALE * w])),
                                g.constant("labels.crop_axes", np.array([1, 2]))], LABELS)

    def stage(self, index: int) -> onnx.ModelProto:
        g = GraphBuilder(f"lc_stage{index + 1}", self.opset)
        k = self.classes
        if index == 0:
            x, mask = self.normalized_image(g), None
            rho = g.add_input(RHO, FLOAT, [1])
        elif index == 1:
            x = g.add_input(FEAT1, FLOAT, self.feature_shape(0))
            mask = g.add_input(MASK2, FLOAT, self.map_shape(1))
            rho = g.add_input(RHO, FLOAT, [1])
        else:
            x = g.add_input(FEAT2, FLOAT, self.feature_shape(1))
            mask = g.add_input(MASK3, FLOAT, self.map_shape(1))
            scores1 = g.add_input(SCORES1, FLOAT, self.map_shape(k))
            scores2 = g.add_input(SCORES2, FLOAT, self.map_shape(k))
            mask2 = g.add_input(MASK2, FLOAT, self.map_shape(1))
        features, scores = self.stage_body(g, index, x, mask)
        if index == 0:
            self.fold_normalisation(g, x)
        if index < 2:
            feat, stage_scores, next_mask = STAGE_OUTPUTS[index]
            g.rename_output(features, feat)
            g.rename_output(scores, stage_scores)
            g.rename_output(self.threshold(g, scores, rho, mask, f"threshold{index + 2}"), next_mask)
            g.add_output(feat, FLOAT, self.feature_shape(index))
            g.add_output(stage_scores, FLOAT, self.map_shape(k))
            g.add_output(next_mask, FLOAT, self.map_shape(1))
        else:
            # The fusion runs channels-last, as the label upsampling reads the scores. ONNX Runtime
            # transposes a (C, H·W) map to (H·W, C) slowly for C = 21 but cancels these transposes of
            # stage 2's and 3's scores against the lowering's (which builds them channels-last),
            # and folds stage 1's into its classifier's NCHWc reorder.
            def nhwc(name: str) -> str:
                return g.node("Transpose", [name], f"{name}/nhwc", perm=[0, 2, 3, 1])

            fused = self.fuse(g, nhwc(scores1), nhwc(scores2), nhwc(mask2))
            fused = self.fuse(g, fused, nhwc(scores), nhwc(mask), "fuse/stage123")
            self.labels(g, fused)
            self.stage_counts(g, mask2, mask)
            g.add_output(LABELS, UINT8, [self.batch, *self.input_size])
            g.add_output(STAGE_COUNTS, INT64, [self.batch, 3])
        functions = [regionconv.function_proto(self.opset)] if regionconv.DOMAIN in g.domains else []
        return g.build(functions, doc=f"Layer Cascade stage {index + 1} ({self.model.config.backbone})")

    def fuse(self, g: GraphBuilder, earlier: str, region_scores: str, region: str,
             name: str = "fuse/stage12") -> str:
        """``region_scores`` where ``region``, ``earlier`` elsewhere, as ``earlier · (1 − M) + scores``.

        Exact, because a region stage's scores are 0 outside its region (RegionConv ends in
        ``⊙ M``), and cheaper on ONNX Runtime than ``Where`` with the mask broadcast over classes.
        """
        outside = g.node("Sub", [g.constant(f"{name}.one", np.ones((), np.float32)), region], f"{name}/outside")
        kept = g.node("Mul", [earlier, outside], f"{name}/kept")
        return g.node("Add", [kept, region_scores], name)

    def stage_counts(self, g: GraphBuilder, mask2: str, mask3: str) -> None:
        axes = g.constant("counts.axes", [1, 2, 3])
        reach2 = g.node("ReduceSum", [mask2, axes], "counts/reach2", keepdims=0)
        reach3 = g.node("ReduceSum", [mask3, axes], "counts/reach3", keepdims=0)
        total = g.constant("counts.pixels", np.array([self.shapes[0][1] * self.shapes[0][2]], np.float32))
        stop1 = g.node("Sub", [total, reach2], "counts/stop1")
        stop2 = g.node("Sub", [reach2, reach3], "counts/stop2")
        last = g.constant("counts.unsqueeze_axes", [1])
        columns = [g.node("Unsqueeze", [c, last], f"counts/col{i + 1}") for i, c in enumerate((stop1, stop2, reach3))]
        counts = g.node("Concat", columns, "counts/concat", axis=1)
        g.node("Cast", [counts], STAGE_COUNTS, to=INT64)

    def dense(self) -> onnx.ModelProto:
        g = GraphBuilder("lc_dense", self.opset)
        x = self.normalized_image(g)
        emitter = StageEmitter(g, None)
        image = x
        for index in range(NUM_STAGES):
            x = emitter.emit(backbone_ops(self.model, index, regional=False), x)
        scores = emitter.emit(head_ops(self.model, NUM_STAGES - 1, regional=False), x)
        self.fold_normalisation(g, image)
        self.labels(g, g.node("Transpose", [scores], "labels/nhwc", perm=[0, 2, 3, 1]))
        g.add_output(LABELS, UINT8, [self.batch, *self.input_size])
        return g.build(doc=f"Dense baseline: {self.model.config.backbone}, final head only")


def cell_weights() -> np.ndarray:
    """(4, 64) bilinear weights of the corners (00, 01, 10, 11) of one 8×8 cell on its pixels (row-major).

    Pixel r of a cell sits at fraction (r + 0.5) / 8 between its corners (half-pixel
    centres); the weights are multiples of 1/256, exact in float32.
    """
    fraction = (np.arange(SCALE) + 0.5) / SCALE
    rows = np.stack([1 - fraction, fraction], axis=1)
    weights = np.einsum("ra,cb->abrc", rows, rows).reshape(4, SCALE * SCALE)
    return weights.astype(np.float32)


def check_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Full ONNX check and strict shape inference (a failure here is an exporter bug)."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True, data_prop=True)


def export_model(
    checkpoint: Checkpoint,
    output_dir: str | os.PathLike,
    input_size: tuple[int, int] | None = None,
    batch: int = 1,
    dynamic_batch: int | None = None,
    opset: int = 18,
    dense_only: bool = False,
    source: str | os.PathLike | None = None,
) -> Path:
    """Export ``checkpoint`` to a model directory (stage graphs, dense graph, ``lc.json``).

    Args:
        input_size: (H, W) of the graphs (default: the checkpoint's).
        batch: static batch size; ignored with ``dynamic_batch``.
        dynamic_batch: a symbolic batch dimension, with this maximum recorded for engine builders.
        dense_only: write only ``dense.onnx`` (a plain network model dir).
        source: checkpoint path, recorded with its sha256.
    """
    if opset not in SUPPORTED_OPSETS:
        fail(f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}–{SUPPORTED_OPSETS.stop - 1}")
    input_size = check_input_size(input_size or checkpoint.input_size)
    if batch < 1 or (dynamic_batch is not None and dynamic_batch < 1):
        fail("batch sizes must be at least 1")
    model = checkpoint.build_model()
    exporter = _Exporter(model, checkpoint, input_size, "batch" if dynamic_batch else batch, opset)

    def write(folder: Path) -> dict[str, Any]:
        graphs = {"dense.onnx": exporter.dense()}
        if not dense_only:
            graphs.update({f"stage{k + 1}.onnx": exporter.stage(k) for k in range(NUM_STAGES)})
        specs = {}
        for name, graph in graphs.items():
            graph = check_graph(graph)
            onnx.save(graph, folder / name)
            specs[name] = {"file": name, **io_spec(graph)}
        keys = model_keys(checkpoint, input_size, source)
        return {
            "kind": "dense" if dense_only else "cascade",
            **keys,
            "batch": {"dynamic": True, "max": dynamic_batch} if dynamic_batch else {"dynamic": False, "size": batch},
            "opset": opset,
            "stages": [] if dense_only else [specs[f"stage{k + 1}.onnx"] for k in range(NUM_STAGES)],
            "dense": specs["dense.onnx"],
            "custom_ops": {} if dense_only else {f"{regionconv.DOMAIN}.{regionconv.OP_TYPE}": regionconv.VERSION},
            "tools": {**keys["tools"], "onnx": onnx.__version__},
        }

    return write_model_dir(output_dir, write, "lc-export")
