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
from onnx import TensorProto, helper, numpy_helper

from layercascade.contract import (
    DENSE_INPUTS,
    DENSE_OUTPUTS,
    DTYPES,
    DYNAMIC_DIMS,
    DYNAMIC_STAGE_DIMS,
    FEAT1,
    FEAT2,
    CONFIDENCE,
    IMAGE,
    LABELS,
    MASK2,
    MASK3,
    RHO,
    SCORES1,
    SCORES2,
    STAGE_COUNTS,
    STAGE_INPUTS,
    STAGE_OUTPUTS,
)
from layercascade.errors import fail
from layercascade.export import regionconv
from layercascade.export.describe import MIN_INPUT_SIZE, check_input_size, model_keys, stage_shapes
from layercascade.export.emit import StageEmitter
from layercascade.export.graph import GraphBuilder, io_spec
from layercascade.export.labels import SCALE, label_map
from layercascade.manifest import MAX_PIXELS, write_model_dir
from layercascade.model.checkpoint import Checkpoint
from layercascade.model.network import NUM_STAGES, LayerCascadeNet
from layercascade.model.ops import backbone_ops, head_ops

SUPPORTED_OPSETS = range(18, 22)
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
# The ONNX element type of each contract tensor whose dtype the contract fixes (the others are float).
ELEMENT_TYPES = {name: helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) for name, dtype in DTYPES.items()}


class _Exporter:
    """The parts the graphs share: the contract's tensors at this export's sizes, the normalised image, a
    stage's blocks and head, the threshold, the score fusion, the counts. One method per graph
    (:meth:`stage1` … :meth:`stage3`, :meth:`dense`) puts them together.

    ``input_size`` is None for a dynamic-size export: the image's height and width are then symbolic, and so is
    every size that follows from them (``nominal_size`` gives the stage channels)."""

    def __init__(self, model: LayerCascadeNet, checkpoint: Checkpoint, nominal_size: tuple[int, int],
                 batch: int | str, opset: int, dynamic_size: bool = False) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.batch = batch
        self.opset = opset
        shapes = stage_shapes(model.config, nominal_size)
        self.channels = [c for c, _, _ in shapes]
        self.input_size = None if dynamic_size else tuple(nominal_size)
        self.stage_size = None if dynamic_size else tuple(shapes[0][1:])
        self.classes = model.config.num_classes

    def shape(self, name: str) -> list:
        """The shape of the contract tensor ``name`` in this export."""
        image = list(DYNAMIC_DIMS) if self.input_size is None else list(self.input_size)
        stage = list(DYNAMIC_STAGE_DIMS) if self.stage_size is None else list(self.stage_size)
        channels = {FEAT1: self.channels[0], FEAT2: self.channels[1], SCORES1: self.classes, SCORES2: self.classes,
                    MASK2: 1, MASK3: 1}
        if name == IMAGE:
            return [self.batch, *image, 3]
        if name == LABELS:
            return [self.batch, *image]
        if name == RHO:
            return [self.classes]
        if name == STAGE_COUNTS:
            return [self.batch, 3]
        if name == CONFIDENCE:
            return [self.batch, *stage]
        return [self.batch, channels[name], *stage]

    def inputs(self, g: GraphBuilder, names: tuple[str, ...]) -> list[str]:
        return [g.add_input(name, ELEMENT_TYPES.get(name, FLOAT), self.shape(name)) for name in names]

    def outputs(self, g: GraphBuilder, tensors: dict[str, str]) -> None:
        """Name the tensors the contract's outputs (an Identity each, unless the node is already named so)."""
        for name, tensor in tensors.items():
            if tensor != name:
                g.rename_output(tensor, name)
            g.add_output(name, ELEMENT_TYPES.get(name, FLOAT), self.shape(name))

    def normalized_image(self, g: GraphBuilder, image: str) -> str:
        """``(image − mean) / std`` as float NCHW; :meth:`fold_normalisation` later moves the
        division into the convs that read it."""
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
        """Stage ``index``'s blocks and head on ``x`` (RegionConvs of ``mask`` in stages 2–3): (features, scores)."""
        emitter, regional = StageEmitter(g, mask), mask is not None
        features = emitter.emit(backbone_ops(self.model, index, regional), x)
        return features, emitter.emit(head_ops(self.model, index, regional), features)

    def threshold(self, g: GraphBuilder, scores: str, rho: str, region: str | None, name: str) -> str:
        """``[max softmax(scores) ≤ ρ[argmax scores]]`` (∧ the current region) as float 0/1: ``rho`` holds one
        threshold per class, and a pixel's is its winner's (``model/region.py`` ``next_mask``).

        max softmax = 1 / Σ_c exp(s_c − max s) (:func:`partition`), so the test is
        ``ρ[argmax s] · Σ_c exp(s_c − max s) ≥ 1``: two reductions over the class axis, an ArgMax and a Gather of the
        winners' thresholds, and no Softmax, which ONNX Runtime runs slower (over axis 1, or with the transposes to
        put the classes last).
        """
        winner = g.node("ArgMax", [scores], f"{name}/winner", axis=1, keepdims=1)
        winner_rho = g.node("Gather", [rho, winner], f"{name}/winner_rho", axis=0)
        scaled = g.node("Mul", [partition(g, scores, 1, name, keepdims=1), winner_rho], f"{name}/scaled")
        one = g.constant(f"{name}.one", np.ones((), np.float32))
        uncertain = g.node("GreaterOrEqual", [scaled, one], f"{name}/uncertain")
        mask = g.node("Cast", [uncertain], f"{name}/cast", to=FLOAT)
        return mask if region is None else g.node("Mul", [mask, region], f"{name}/nest")

    def labels(self, g: GraphBuilder, nhwc: str) -> str:
        """The label map of the channels-last scores ``nhwc`` (``export/labels.py``)."""
        return label_map(g, nhwc, self.classes, self.input_size, self.stage_size)

    def build(self, g: GraphBuilder, doc: str) -> onnx.ModelProto:
        functions = [regionconv.function_proto(self.opset)] if regionconv.DOMAIN in g.domains else []
        return g.build(functions, doc=f"{doc} ({self.model.config.backbone})")

    def stage1(self) -> onnx.ModelProto:
        """image, ρ₂ (per class) → stage 1's features, scores and M₂ (``[max softmax(scores1) ≤ ρ₂[argmax]]``)."""
        g = GraphBuilder("lc_stage1", self.opset)
        image, rho = self.inputs(g, STAGE_INPUTS[0])
        x = self.normalized_image(g, image)
        features, scores = self.stage_body(g, 0, x, None)
        self.fold_normalisation(g, x)
        mask = self.threshold(g, scores, rho, None, "threshold2")
        self.outputs(g, dict(zip(STAGE_OUTPUTS[0], (features, scores, mask), strict=True)))
        return self.build(g, "Layer Cascade stage 1")

    def stage2(self) -> onnx.ModelProto:
        """Stage 1's features and M₂, ρ₃ → stage 2's features and scores (region convolutions of M₂) and
        M₃ = M₂ ∧ ``[max softmax(scores2) ≤ ρ₃]``."""
        g = GraphBuilder("lc_stage2", self.opset)
        feat1, mask2, rho = self.inputs(g, STAGE_INPUTS[1])
        features, scores = self.stage_body(g, 1, feat1, mask2)
        mask = self.threshold(g, scores, rho, mask2, "threshold3")
        self.outputs(g, dict(zip(STAGE_OUTPUTS[1], (features, scores, mask), strict=True)))
        return self.build(g, "Layer Cascade stage 2")

    def stage3(self) -> onnx.ModelProto:
        """Stage 2's features and M₃, the earlier scores and M₂ → the fused scores' label map, the pixels
        decided at each stage and the fused scores' confidence."""
        g = GraphBuilder("lc_stage3", self.opset)
        feat2, mask3, scores1, scores2, mask2 = self.inputs(g, STAGE_INPUTS[2])
        _, scores3 = self.stage_body(g, 2, feat2, mask3)

        # The fusion runs channels-last, as the label upsampling reads the scores. ONNX Runtime
        # transposes a (C, H·W) map to (H·W, C) slowly for C = 21 but cancels these transposes of
        # stage 2's and 3's scores against the lowering's (which builds them channels-last),
        # and folds stage 1's into its classifier's NCHWc reorder.
        def nhwc(name: str) -> str:
            return g.node("Transpose", [name], f"{name}/nhwc", perm=[0, 2, 3, 1])

        fused = self.fuse(g, nhwc(scores1), nhwc(scores2), nhwc(mask2))
        fused = self.fuse(g, fused, nhwc(scores3), nhwc(mask3), "fuse/stage123")
        labels = self.labels(g, fused)
        outputs = (labels, self.stage_counts(g, mask2, mask3), confidence(g, fused))
        self.outputs(g, dict(zip(STAGE_OUTPUTS[2], outputs, strict=True)))
        return self.build(g, "Layer Cascade stage 3")

    def fuse(self, g: GraphBuilder, earlier: str, region_scores: str, region: str,
             name: str = "fuse/stage12") -> str:
        """``region_scores`` where ``region``, ``earlier`` elsewhere, as ``earlier · (1 − M) + scores``.

        Exact, because a region stage's scores are 0 outside its region (RegionConv ends in
        ``⊙ M``), and cheaper on ONNX Runtime than ``Where`` with the mask broadcast over classes.
        """
        outside = g.node("Sub", [g.constant(f"{name}.one", np.ones((), np.float32)), region], f"{name}/outside")
        kept = g.node("Mul", [earlier, outside], f"{name}/kept")
        return g.node("Add", [kept, region_scores], name)

    def stage_counts(self, g: GraphBuilder, mask2: str, mask3: str) -> str:
        """(N, 3) int64: the stage pixels decided at stages 1, 2 and 3 (all of them, those of M₂, those of M₃)."""
        axes = g.constant("counts.axes", [1, 2, 3])
        reach2 = g.node("ReduceSum", [mask2, axes], "counts/reach2", keepdims=0)
        reach3 = g.node("ReduceSum", [mask3, axes], "counts/reach3", keepdims=0)
        # Every pixel of the map: h·w from M₂'s shape (a constant for a fixed-size export, once folded).
        plane = g.node("ReduceProd", [g.node("Shape", [mask2], "counts/hw", start=2)], "counts/plane", keepdims=0)
        total = g.node("Cast", [plane], "counts/pixels", to=FLOAT)
        stop1 = g.node("Sub", [total, reach2], "counts/stop1")
        stop2 = g.node("Sub", [reach2, reach3], "counts/stop2")
        last = g.constant("counts.unsqueeze_axes", [1])
        columns = [g.node("Unsqueeze", [c, last], f"counts/col{i + 1}") for i, c in enumerate((stop1, stop2, reach3))]
        counts = g.node("Concat", columns, "counts/concat", axis=1)
        return g.node("Cast", [counts], STAGE_COUNTS, to=INT64)

    def dense(self) -> onnx.ModelProto:
        """image → labels through every stage's blocks and the last head: the plain network of the same weights."""
        g = GraphBuilder("lc_dense", self.opset)
        (image,) = self.inputs(g, DENSE_INPUTS)
        x = normalized = self.normalized_image(g, image)
        emitter = StageEmitter(g, None)
        for index in range(NUM_STAGES):
            x = emitter.emit(backbone_ops(self.model, index, regional=False), x)
        scores = emitter.emit(head_ops(self.model, NUM_STAGES - 1, regional=False), x)
        self.fold_normalisation(g, normalized)
        labels = self.labels(g, g.node("Transpose", [scores], "labels/nhwc", perm=[0, 2, 3, 1]))
        self.outputs(g, dict(zip(DENSE_OUTPUTS, (labels,), strict=True)))
        return self.build(g, "Dense baseline, final head only")


def partition(g: GraphBuilder, scores: str, axis: int, name: str, keepdims: int) -> str:
    """Σ_c exp(s_c − max s) over the class ``axis`` of ``scores``: 1 / max softmax probability."""
    axes = g.constant(f"{name}.axes", [axis])
    peak = g.node("ReduceMax", [scores, axes], f"{name}/peak", keepdims=1)
    shifted = g.node("Exp", [g.node("Sub", [scores, peak], f"{name}/shift")], f"{name}/exp")
    return g.node("ReduceSum", [shifted, axes], f"{name}/partition", keepdims=keepdims)


def confidence(g: GraphBuilder, nhwc: str) -> str:
    """The ``confidence`` output (N, h, w): the max softmax probability of the channels-last scores ``nhwc``,
    1 / :func:`partition` (a Reciprocal of one small map, no Softmax)."""
    return g.node("Reciprocal", [partition(g, nhwc, 3, CONFIDENCE, keepdims=0)], CONFIDENCE)


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
    dynamic_size: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> Path:
    """Export ``checkpoint`` to a model directory (stage graphs, dense graph, ``lc.json``).

    Args:
        input_size: (H, W) of the graphs (default: the checkpoint's); with ``dynamic_size``, the nominal size
            (what lc-bench and lc-calibrate run at unless told otherwise, and TensorRT's optimal profile).
        batch: static batch size; ignored with ``dynamic_batch``.
        dynamic_batch: a symbolic batch dimension, with this maximum recorded for engine builders.
        dense_only: write only ``dense.onnx`` (a plain network model dir).
        source: checkpoint path, recorded with its sha256.
        dynamic_size: ((min H, min W), (max H, max W)): symbolic image height and width, each a multiple of 8
            within these bounds (the runtime pads an image up to the next multiple and crops the labels back).
    """
    if opset not in SUPPORTED_OPSETS:
        fail(f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}–{SUPPORTED_OPSETS.stop - 1}")
    input_size = check_input_size(input_size or checkpoint.input_size)
    if dynamic_size is not None:
        check_dynamic_size(dynamic_size, input_size)
    if batch < 1 or (dynamic_batch is not None and dynamic_batch < 1):
        fail("batch sizes must be at least 1")
    model = checkpoint.build_model()
    exporter = _Exporter(model, checkpoint, input_size, "batch" if dynamic_batch else batch, opset,
                         dynamic_size is not None)

    def write(folder: Path) -> dict[str, Any]:
        graphs = {"dense.onnx": exporter.dense()}
        if not dense_only:
            graphs.update({f"stage{k + 1}.onnx": stage() for k, stage in
                           enumerate((exporter.stage1, exporter.stage2, exporter.stage3))})
        specs = {}
        for name, graph in graphs.items():
            graph = check_graph(graph)
            onnx.save(graph, folder / name)
            specs[name] = {"file": name, **io_spec(graph)}
        keys = model_keys(checkpoint, input_size, source)
        spatial = {} if dynamic_size is None else {"dynamic_size": {
            "min": list(dynamic_size[0]), "max": list(dynamic_size[1]), "multiple": SCALE}}
        return {
            "kind": "dense" if dense_only else "cascade",
            **keys,
            "batch": {"dynamic": True, "max": dynamic_batch} if dynamic_batch else {"dynamic": False, "size": batch},
            **spatial,
            "opset": opset,
            "stages": [] if dense_only else [specs[f"stage{k + 1}.onnx"] for k in range(NUM_STAGES)],
            "dense": specs["dense.onnx"],
            "custom_ops": {} if dense_only else {f"{regionconv.DOMAIN}.{regionconv.OP_TYPE}": regionconv.VERSION},
            "tools": {**keys["tools"], "onnx": onnx.__version__},
        }

    return write_model_dir(output_dir, write, "lc-export")


def check_dynamic_size(bounds: tuple[tuple[int, int], tuple[int, int]], nominal: tuple[int, int]) -> None:
    """Fail (one line) unless the (min, max) sizes of a dynamic-size export are multiples of 8, ordered, at least
    the smallest input, at most :data:`~layercascade.manifest.MAX_PIXELS`, and hold the nominal ``nominal``."""
    low, high = (tuple(map(int, size)) for size in bounds)
    text = f"{low[0]}x{low[1]}:{high[0]}x{high[1]}"
    if any(n % SCALE for n in (*low, *high)):
        fail(f"--dynamic-size {text}: each height and width must be a multiple of {SCALE} (the stage resolution is "
             f"an {SCALE}th of the image's)")
    if min(low) < MIN_INPUT_SIZE or low[0] > high[0] or low[1] > high[1]:
        fail(f"--dynamic-size {text}: need MIN <= MAX, each side at least {MIN_INPUT_SIZE}")
    if high[0] * high[1] > MAX_PIXELS:
        fail(f"--dynamic-size {text}: the largest size is over {MAX_PIXELS:,} pixels")
    if not (low[0] <= nominal[0] <= high[0] and low[1] <= nominal[1] <= high[1]) or any(n % SCALE for n in nominal):
        fail(f"--dynamic-size {text}: the nominal input size {nominal[0]}x{nominal[1]} (--input-size, default the "
             f"checkpoint's) must be a multiple of {SCALE} within it")
