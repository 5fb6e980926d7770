"""Lower ``lc::RegionConv`` nodes to a compact form of standard ONNX ops (docs/export.md).

Backend-neutral: the result is plain ONNX (no custom domain), which ONNX Runtime runs here and
any other ONNX consumer (OpenVINO, Triton's ONNX backends) can run unchanged.

The function body of a RegionConv computes the convolution on every pixel and then
zeroes the pixels outside the region. This pass rewrites a graph so the work scales
with the number of active pixels P instead:

* once per region mask: the active-pixel list ``idx`` (NonZero of the mask, row-major
  over N·H·W), its inverse map, and one neighbour table (P, kh·kw) per kernel geometry;
* each RegionConv: gather the P rows (k×k: the P·kh·kw neighbour rows) of its input,
  one GEMM with the weights reshaped to (kh·kw·C_in, C_out), bias, optional ReLU;
* between region convs, ReLU / Add / Concat / ``⊙ M`` run on the (P, C) rows directly;
* a tensor leaves row space (scatter into zeros, back to NCHW) only where a standard op
  or a graph output needs it.

A graph may hold several regions (the whole cascade as one graph, ``cascade_graph.py``:
M₂ for stage 2, M₃ for stage 3). All of them address pixels on one zero-bordered grid, so
stage 2's rows feed stage 3's region convs directly: a row tensor is zero outside its
region, so the rows of M₂ plus one zero row hold its real value at every neighbour an M₃
pixel reads.

INT8 graphs (explicit QDQ from ``calibration/``) lower the same way with int8 rows: a
per-tensor QuantizeLinear / DequantizeLinear (zero point 0, so zero stays zero) runs on
rows, a region conv whose X is DQ(int8) gathers the int8 rows (a quarter of the traffic)
and dequantizes the gathered columns, its DQ(int8, axis 0) weights become an int8
(kh·kw·C_in, C_out) matrix behind a DQ with axis 1 and its bias an int32 DQ; ONNX Runtime
fuses DQ, DQ, DQ → MatMul + Add into an int8 GEMM (QGemm).

A region conv reads its input's real values at neighbours outside the region: from the
dense tensor when there is one, else from the rows with a zero row. Grouped region convs
or ops this pass does not know raise :class:`LoweringUnsupported`; the caller then runs
the function bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layercascade.export.graph import (
    QDQ_OPS,
    attributes,
    live_nodes,
    per_tensor_zero_point_0,
    producers_of,
    scalar_value,
)
from layercascade.export.regionconv import DOMAIN as REGION_CONV_DOMAIN
from layercascade.export.regionconv import OP_TYPE as REGION_CONV_OP

ROW_OPS = {"Relu", "Add", "Concat"}


class LoweringUnsupported(Exception):
    """The graph holds something the compact form does not cover."""


@dataclass(eq=False)
class _Region:
    """The active pixels of one mask, row-major over N·H·W, on the plain and the padded grid."""

    key: str  # the mask's name, for readable node names
    mask_flat: str  # the mask, flat
    idx: str  # (P,) flat plain-grid index of each active pixel
    padded_idx: str  # (P,) flat padded-grid index of each active pixel
    padded_flat: str  # the padded mask, flat


@dataclass
class _Value:
    """A tensor of the original graph: its dense (N, C, H, W) name and/or its rows.

    ``rows`` (P, C) hold the tensor at the active pixels of ``region``, and the tensor is 0
    at every other pixel: a row tensor is always exact, never a mere gather of a dense one.
    """

    dense: str | None = None
    rows: str | None = None
    region: _Region | None = None
    channels_last: bool = False  # the tensor is (N, H, W, C): a Transpose of a row tensor


class _Lowering:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.new_initializers: list[onnx.TensorProto] = []
        self.values: dict[str, _Value] = {}
        self.cache: dict[tuple, str] = {}
        self.regions: dict[str, _Region] = {}
        self.counter = 0
        self.producers = producers_of(self.graph.node)
        inferred = onnx.shape_inference.infer_shapes(model).graph
        infos = [*inferred.input, *inferred.value_info, *inferred.output]
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                       for v in infos}
        self.types = {v.name: v.type.tensor_type.elem_type for v in infos}

    # -- helpers ----------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        self.counter += 1
        return f"lowered/{hint}_{self.counter}"

    def add(self, op: str, inputs: list[str], hint: str, **attributes) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attributes))
        return out

    def const(self, hint: str, value) -> str:
        name = self.name(hint)
        self.new_initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def once(self, key: tuple, build) -> str:
        """The tensor ``build()`` adds, built the first time ``key`` is asked for."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    def value(self, name: str) -> _Value:
        return self.values.setdefault(name, _Value(dense=name))

    def channels(self, name: str, axis: int = 1) -> int:
        shape = self.shapes.get(name)
        if not shape or len(shape) != 4 or shape[axis] is None:
            raise LoweringUnsupported(f"{name}: channel count not known statically")
        return shape[axis]

    def column(self, vector: str) -> str:
        """(P,) → (P, 1)."""
        return self.once(("column", vector), lambda: self.add(
            "Unsqueeze", [vector, self.const("axis1", np.array([1], np.int64))], "column"))

    # -- the padded pixel grid every region shares -----------------------------------------------
    # Pixels are addressed on a grid padded by the largest conv padding, so the k×k neighbour
    # table of every active pixel is one Add of constant offsets: neighbours that fall
    # outside the image land on the zero border instead of needing bounds checks.
    def prepare(self, region_nodes: list[onnx.NodeProto]) -> None:
        grids = {tuple(self.shapes.get(n.input[3]) or ()) for n in region_nodes}
        shape = next(iter(grids))
        if len(grids) != 1 or len(shape) != 4:
            raise LoweringUnsupported(f"region masks of shapes {sorted(grids, key=str)}: need one grid of N, 1, H, W")
        # A dynamic-size export's H and W are symbolic: the sizes that follow from them are then computed
        # from a mask's shape at run time (a constant for a fixed-size graph).
        self.batch, self.height, self.width = shape[0], shape[2], shape[3]
        self.grid_mask = region_nodes[0].input[3]
        pads = [tuple(attributes(n)["pads"]) for n in region_nodes]
        self.border = (max(p[0] for p in pads), max(p[1] for p in pads))
        self.flat = self.const("flat", np.array([-1], np.int64))

    def static_grid(self) -> bool:
        return self.height is not None and self.width is not None

    def grid_size(self) -> str:
        """(2,) int64: the grid's H, W, from a mask's shape (for a dynamic-size graph)."""
        return self.once(("grid_size",), lambda: self.add("Shape", [self.dense_of(self.grid_mask)], "grid_hw",
                                                          start=2, end=4))

    def padded_width(self) -> int | str:
        """The padded grid's width: a number, or a (1,) int64 tensor for a dynamic-size graph."""
        if self.static_grid():
            return self.width + 2 * self.border[1]
        return self.once(("padded_width",), lambda: self.add(
            "Add", [self.add("Shape", [self.dense_of(self.grid_mask)], "grid_w", start=3, end=4),
                    self.const("border_w", np.array([2 * self.border[1]], np.int64))], "padded_w"))

    def region(self, mask: str) -> _Region:
        """The region of ``mask``, its active lists built where it is first needed."""
        if mask not in self.regions:
            dense = self.dense_of(mask)
            key = mask.replace("/", ".")
            # Row-major NonZero orders the pixels alike on the plain and the padded grid.
            mask_flat = self.add("Reshape", [dense, self.flat], f"{key}/mask_flat")
            idx = self.add("Reshape", [self.add("NonZero", [mask_flat], f"{key}/active"), self.flat], f"{key}/idx")
            padded = self.add("Pad", [dense, self.border_pads("nchw")], f"{key}/mask_padded")
            padded_flat = self.add("Reshape", [padded, self.flat], f"{key}/mask_padded_flat")
            padded_idx = self.add("Reshape", [self.add("NonZero", [padded_flat], f"{key}/active_padded"), self.flat],
                                  f"{key}/idx_padded")
            self.regions[mask] = _Region(key, mask_flat, idx, padded_idx, padded_flat)
        return self.regions[mask]

    def border_pads(self, layout: str) -> str:
        by, bx = self.border
        pads = [0, 0, by, bx, 0, 0, by, bx] if layout == "nchw" else [0, by, bx, 0, 0, by, bx, 0]
        return self.once(("border", layout), lambda: self.const(f"border_{layout}", np.array(pads, np.int64)))

    def inverse(self, region: _Region) -> str:
        """inverse[q] = row of padded-grid pixel q, or P (the zero row) when q is inactive or border."""
        def build() -> str:
            count = self.add("Squeeze", [self.add("Shape", [region.padded_idx], f"{region.key}/count")],
                             f"{region.key}/count_scalar")
            grid = self.add("Shape", [region.padded_flat], f"{region.key}/grid_size")
            filler = self.add("Expand", [count, grid], f"{region.key}/inverse_fill")
            rows = self.add("Range", [self.const("zero", np.int64(0)), count, self.const("one", np.int64(1))],
                            f"{region.key}/row_ids")
            return self.add("ScatterElements", [filler, region.padded_idx, rows], f"{region.key}/inverse", axis=0)
        return self.once(("inverse", region.key), build)

    def taps_at(self, region: _Region, kernel: tuple[int, int], dilation: tuple[int, int],
                pads: tuple[int, int]) -> str:
        """Padded-grid indices of each active pixel's taps: (P,) for a 1×1 conv, else (P, kh·kw)."""
        if kernel == (1, 1) and pads == (0, 0):
            return region.padded_idx

        def build() -> str:
            dy = np.repeat(np.arange(kernel[0]) * dilation[0] - pads[0], kernel[1]).astype(np.int64)[None]
            dx = np.tile(np.arange(kernel[1]) * dilation[1] - pads[1], kernel[0]).astype(np.int64)[None]
            width = self.padded_width()
            if isinstance(width, int):
                offsets = self.const("offsets", dy * width + dx)
            else:
                offsets = self.add("Add", [self.add("Mul", [self.const("offset_rows", dy), width], "offset_rows"),
                                           self.const("offset_columns", dx)], "offsets")
            return self.add("Add", [self.column(region.padded_idx), offsets], f"{region.key}/taps_at")
        return self.once(("taps_at", region.key, kernel, dilation, pads), build)

    def row_table(self, rows_region: _Region, positions: str) -> str:
        """The row of ``rows_region`` (or its zero row) at each padded-grid position."""
        return self.once(("row_table", rows_region.key, positions), lambda: self.add(
            "Gather", [self.inverse(rows_region), positions], f"{rows_region.key}/row_taps", axis=0))

    # -- conversions between dense (N, C, H, W) and rows (P, C) -----------------------------------
    def dense_rows(self, dense: str) -> str:
        """Every pixel of the zero-bordered padded grid of a dense tensor as a row."""
        def build() -> str:
            # Transposed first: ONNX Runtime then folds the transpose into the producing conv's
            # NCHWc → NCHW reorder.
            nhwc = self.add("Transpose", [dense], "nhwc", perm=[0, 2, 3, 1])
            padded = self.add("Pad", [nhwc, self.border_pads("nhwc")], "padded")
            return self.add("Reshape", [padded, self.rows_shape(self.channels(dense))], "all_rows")
        return self.once(("dense_rows", dense), build)

    def padded_rows(self, rows: str) -> str:
        """Row-space ``rows`` plus one zero row (the neighbour outside the region or image)."""
        return self.once(("padded_rows", rows), lambda: self.add(
            "Pad", [rows, self.const("pad_row", np.array([0, 0, 1, 0], np.int64))], "rows_padded"))

    def gather(self, value: _Value, region: _Region, positions: str) -> str:
        """``value`` at padded-grid ``positions`` of ``region``'s pixels: its own rows, its dense
        tensor, or the rows of another region (zero outside it, so with a zero row exact)."""
        if value.rows is not None and value.region is region:
            if positions == region.padded_idx:
                return value.rows
            return self.add("Gather", [self.padded_rows(value.rows), self.row_table(region, positions)], "taps", axis=0)
        if value.dense is not None:
            return self.add("Gather", [self.dense_rows(value.dense), positions], "taps", axis=0)
        return self.add("Gather", [self.padded_rows(value.rows), self.row_table(value.region, positions)], "taps",
                        axis=0)

    def dense_of(self, name: str) -> str:
        value = self.value(name)
        if value.dense is None:
            channels = self.channels(name, axis=3 if value.channels_last else 1)
            dtype = helper.tensor_dtype_to_np_dtype(self.types.get(name) or onnx.TensorProto.FLOAT)
            nhwc = self.once(("nhwc_dense", value.rows), lambda: self.nhwc_dense(value, channels, dtype))
            value.dense = nhwc if value.channels_last else self.add("Transpose", [nhwc], "dense", perm=[0, 3, 1, 2])
        return value.dense

    def nhwc_dense(self, value: _Value, channels: int, dtype: np.dtype) -> str:
        """Row tensor ``value`` as an (N, H, W, C) map, zero outside its region."""
        grid = self.once(("grid_shape", channels), lambda: self.zeros_shape(channels, value.region))
        zeros = self.add("ConstantOfShape", [grid], "zeros", value=numpy_helper.from_array(np.zeros(1, dtype)))
        scattered = self.add("ScatterND", [zeros, self.column(value.region.idx), value.rows], "scatter")
        return self.add("Reshape", [scattered, self.nhwc_shape(channels)], "nhwc_dense")

    def rows_shape(self, channels: int) -> str:
        return self.once(("rows_shape", channels), lambda: self.const(
            "rows_shape", np.array([-1, channels], np.int64)))

    def nhwc_shape(self, channels: int) -> str:
        if self.static_grid():
            return self.once(("nhwc_shape", channels), lambda: self.const(
                "nhwc_shape", np.array([-1, self.height, self.width, channels], np.int64)))
        return self.once(("nhwc_shape", channels), lambda: self.add(
            "Concat", [self.const("batch_dim", np.array([-1], np.int64)), self.grid_size(),
                       self.const("channels", np.array([channels], np.int64))], "nhwc_shape", axis=0))

    def zeros_shape(self, channels: int, region: _Region) -> str:
        """(N·H·W, channels): a constant when the batch and the grid are static."""
        if self.batch is not None and self.static_grid():
            return self.const("zeros_shape", np.array([self.batch * self.height * self.width, channels], np.int64))
        return self.add("Concat", [self.add("Shape", [region.mask_flat], "pixels"),
                                   self.const("channels", np.array([channels], np.int64))], "zeros_shape", axis=0)

    # -- node rewrites ------------------------------------------------------------------------------
    def region_conv(self, node: onnx.NodeProto) -> None:
        attrs = attributes(node)
        if attrs.get("group", 1) != 1:
            raise LoweringUnsupported(f"{node.name}: grouped region convolution")
        x, w_name, b_name, mask = node.input
        region = self.region(mask)
        bias = numpy_helper.to_array(self.initializers[b_name])
        matrix, (_, c_in, kh, kw), w_scale = self.weight_matrix(node.name, w_name)
        quantized = self.quantized_input(x)
        if quantized is not None:  # gather the int8 rows, dequantize the gathered columns
            x = quantized[0]
        positions = self.taps_at(region, (kh, kw), tuple(attrs["dilations"]), tuple(attrs["pads"][:2]))
        columns = self.gather(self.value(x), region, positions)
        if positions != region.padded_idx:
            columns = self.add("Reshape", [columns, self.const("im2col", np.array([-1, kh * kw * c_in], np.int64))],
                               "im2col")
        if quantized is not None:
            columns = self.add("DequantizeLinear", [columns, *quantized[1:]], "im2col_dq")
        int8_gemm = quantized is not None and w_scale is not None
        if int8_gemm:
            bias_name = self.quantized_bias(node.name, bias, quantized[1], w_scale)
        else:
            bias_name = self.const(f"{node.name}.bias", bias)
        out = self.add("Add", [self.add("MatMul", [columns, matrix], f"{node.name}/gemm"), bias_name],
                       f"{node.name}/bias")
        if attrs["activation"] == 1 and int8_gemm:
            # ReLU as Max(·, 0): ONNX Runtime fuses Gemm + Relu into a float FusedGemm before its
            # QDQ fusion would make the int8 GEMM.
            zero = self.once(("zero_float",), lambda: self.const("zero", np.float32(0)))
            out = self.add("Max", [out, zero], f"{node.name}/relu")
        elif attrs["activation"] == 1:
            out = self.add("Relu", [out], f"{node.name}/relu")
        self.values[node.output[0]] = _Value(rows=out, region=region)

    def row_op(self, node: onnx.NodeProto) -> bool:
        """Run Identity / ReLU / Add / Concat(axis=1) / ``⊙ M`` / Q / DQ on rows when its inputs have them."""
        if node.op_type == "Identity":
            self.values[node.output[0]] = self.value(node.input[0])
            return True
        if node.op_type in QDQ_OPS:
            return self.qdq_row_op(node)
        if node.op_type == "Mul" and len(node.input) == 2 and any(i in self.masks for i in node.input):
            return self.masked(node)
        if node.op_type == "Transpose" and attributes(node).get("perm") == [0, 2, 3, 1]:
            source = self.value(node.input[0])
            if source.rows is None or source.channels_last:
                return False
            self.values[node.output[0]] = _Value(rows=source.rows, region=source.region, channels_last=True)
            return True
        if node.op_type == "Add" and self.region_select(node):
            return True
        inputs = [self.value(i) for i in node.input]
        if node.op_type not in ROW_OPS or any(v.rows is None or v.region is not inputs[0].region or v.channels_last
                                              for v in inputs):
            return False  # a dense operand, or rows of two regions: the result is not zero outside one
        attrs = attributes(node)
        if node.op_type == "Concat" and attrs.get("axis") != 1:
            return False
        out = self.add(node.op_type, [v.rows for v in inputs], f"{node.name}/rows", **attrs)
        self.values[node.output[0]] = _Value(rows=out, region=inputs[0].region)
        return True

    def region_select(self, node: onnx.NodeProto) -> bool:
        """Stage 3's score fusion ``E · (1 − Mᵀ) + Sᵀ``, channels-last (Mᵀ, Sᵀ: M and S transposed to
        NHWC), where S is a row tensor of M's region: E with S's rows written in (a ScatterND on a
        copy of E instead of a subtract, a product, a sum and S's own scatter into zeros).

        Exact for finite E: S is 0 outside M, and inside M the sum is 0 · E + S.
        """
        for kept, selected in (node.input, node.input[::-1]):
            scores, product = self.value(selected), self.producers.get(kept)
            if scores.rows is None or not scores.channels_last or product is None or product.op_type != "Mul":
                continue
            for earlier, outside in (product.input, product.input[::-1]):
                complement = self.producers.get(outside)
                if (complement is None or complement.op_type != "Sub"
                        or scalar_value(self.initializers, complement.input[0]) != 1.0):
                    continue
                transpose = self.producers.get(complement.input[1])
                shape = self.shapes.get(node.output[0])
                if (transpose is None or transpose.op_type != "Transpose"
                        or attributes(transpose).get("perm") != [0, 2, 3, 1]
                        or self.regions.get(transpose.input[0]) is not scores.region
                        or not shape or len(shape) != 4 or shape[3] is None or self.shapes.get(earlier) != shape
                        or self.types.get(earlier) != self.types.get(selected)):
                    continue
                channels = shape[3]
                flat = self.add("Reshape", [self.dense_of(earlier), self.rows_shape(channels)], f"{node.name}/flat")
                written = self.add("ScatterND", [flat, self.column(scores.region.idx), scores.rows],
                                   f"{node.name}/written")
                self.values[node.output[0]] = _Value(dense=self.add(
                    "Reshape", [written, self.nhwc_shape(channels)], f"{node.name}/nhwc"))
                return True
        return False

    def masked(self, node: onnx.NodeProto) -> bool:
        """``x ⊙ M``: zero outside the region, so its rows are exact; dense ``x`` keeps a dense form
        too (e.g. the next stage's mask, nested in this one), and what no one reads is dropped."""
        mask = node.input[1] if node.input[1] in self.masks else node.input[0]
        x = node.input[0] if mask == node.input[1] else node.input[1]
        shape = self.shapes.get(x)
        if not shape or shape != self.shapes.get(node.output[0]):
            return False  # ⊙ M broadcasts x: not a per-pixel product of a feature map
        other = self.value(x)
        region = self.region(mask)
        if other.rows is not None and other.region is region:
            self.values[node.output[0]] = _Value(rows=other.rows, region=region)
            return True
        result = _Value(rows=self.gather(other, region, region.padded_idx), region=region)
        if other.dense is not None:
            result.dense = self.add("Mul", [other.dense, self.dense_of(mask)], f"{node.name}/dense")
        self.values[node.output[0]] = result
        return True

    # -- INT8: explicit QDQ graphs (calibration/quantize.py) ----------------------------------------
    def weight_matrix(self, conv: str, w_name: str) -> tuple[str, tuple[int, int, int, int], np.ndarray | None]:
        """The (kh·kw·C_in, C_out) GEMM matrix of a region conv's weights, the weights' shape and their scales.

        Float weights give a float matrix (scales None); DQ(int8 initializer, axis 0) weights an
        int8 matrix behind a DQ whose per-channel axis moves to 1 (the output channels are now columns).
        """
        def as_matrix(weight: np.ndarray) -> np.ndarray:
            c_out, c_in, kh, kw = weight.shape
            return weight.transpose(2, 3, 1, 0).reshape(kh * kw * c_in, c_out)

        if w_name in self.initializers:
            weight = numpy_helper.to_array(self.initializers[w_name])
            return self.const(f"{conv}.matrix", as_matrix(weight)), weight.shape, None
        dequantize = self.producers.get(w_name)
        if (dequantize is None or dequantize.op_type != "DequantizeLinear" or attributes(dequantize).get("axis") != 0
                or not all(i in self.initializers for i in dequantize.input)):
            raise LoweringUnsupported(f"{conv}: weights are neither an initializer nor DQ(int8, axis 0) of one")
        weight, scale, zero = (numpy_helper.to_array(self.initializers[i]) for i in dequantize.input)
        matrix = self.add("DequantizeLinear", [self.const(f"{conv}.matrix_int8", as_matrix(weight)),
                                               self.const(f"{conv}.matrix_scale", scale),
                                               self.const(f"{conv}.matrix_zero_point", zero)], f"{conv}.matrix",
                          axis=1)
        return matrix, weight.shape, scale

    def quantized_bias(self, conv: str, bias: np.ndarray, x_scale: str, w_scale: np.ndarray) -> str:
        """The bias as DQ(int32, x_scale·w_scale, axis 0). With a float bias ONNX Runtime first
        fuses MatMul + Add into a float Gemm; with this DQ it fuses DQ, DQ, DQ → MatMul + Add into QGemm."""
        scale = (numpy_helper.to_array(self.initializers[x_scale]) * w_scale).astype(np.float32)
        return self.add("DequantizeLinear", [self.const(f"{conv}.bias_int32", np.round(bias / scale).astype(np.int32)),
                                             self.const(f"{conv}.bias_scale", scale),
                                             self.const(f"{conv}.bias_zero_point", np.zeros_like(scale, np.int32))],
                        f"{conv}.bias", axis=0)

    def quantized_input(self, name: str) -> tuple[str, str, str] | None:
        """(int8 tensor, scale, zero point) when ``name`` is a per-tensor DequantizeLinear output."""
        dequantize = self.producers.get(name)
        if (dequantize is None or dequantize.op_type != "DequantizeLinear"
                or not per_tensor_zero_point_0(dequantize, self.initializers)):
            return None
        return dequantize.input[0], dequantize.input[1], dequantize.input[2]

    def qdq_row_op(self, node: onnx.NodeProto) -> bool:
        """A per-tensor Q / DQ of a row-space tensor runs on its rows (zero point 0 keeps zeros zero)."""
        source = self.value(node.input[0])
        if source.rows is None or not per_tensor_zero_point_0(node, self.initializers):
            return False
        out = self.add(node.op_type, [source.rows, *node.input[1:]], f"{node.name}/rows")
        self.values[node.output[0]] = _Value(rows=out, region=source.region)
        return True

    def copy(self, node: onnx.NodeProto) -> None:
        inputs = [self.dense_of(i) if i else i for i in node.input]
        self.nodes.append(helper.make_node(node.op_type, inputs, list(node.output), name=node.name,
                                           domain=node.domain, **{a.name: helper.get_attribute_value(a)
                                                                  for a in node.attribute}))
        for output in node.output:
            self.values[output] = _Value(dense=output)

    def run(self) -> onnx.ModelProto:
        region_nodes = [n for n in self.graph.node if n.domain == REGION_CONV_DOMAIN and n.op_type == REGION_CONV_OP]
        if not region_nodes:
            return self.model
        self.masks = {n.input[3] for n in region_nodes}
        self.prepare(region_nodes)
        for node in self.graph.node:
            if node.domain == REGION_CONV_DOMAIN and node.op_type == REGION_CONV_OP:
                self.region_conv(node)
            elif node.domain:
                raise LoweringUnsupported(f"{node.name}: custom op {node.domain}::{node.op_type}")
            elif not self.row_op(node):
                self.copy(node)
        for output in self.graph.output:
            value = self.value(output.name)
            if value.dense != output.name:
                self.nodes.append(helper.make_node("Identity", [self.dense_of(output.name)], [output.name],
                                                   name=f"{output.name}/out"))
        self.nodes = live_nodes(self.nodes, {o.name for o in self.graph.output})
        used = {i for n in self.nodes for i in n.input}
        initializers = [t for t in self.graph.initializer if t.name in used] + [
            t for t in self.new_initializers if t.name in used]
        graph = helper.make_graph(self.nodes, self.graph.name + "_lowered", list(self.graph.input),
                                  list(self.graph.output), initializers)
        opsets = [o for o in self.model.opset_import if o.domain != REGION_CONV_DOMAIN]
        return helper.make_model(graph, opset_imports=opsets, ir_version=self.model.ir_version,
                                 producer_name="layercascade-lowering")


def lower_region_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every ``lc::RegionConv`` in compact row form (unchanged if it has none)."""
    return _Lowering(model).run()
