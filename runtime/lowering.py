"""Lower ``lc::RegionConv`` nodes to a compact form of standard ONNX ops (DESIGN §7).

The function body of a RegionConv computes the convolution on every pixel and then
zeroes the pixels outside the region. This pass rewrites a stage graph so the work
scales with the number of active pixels P instead:

* once per graph: the active-pixel list ``idx`` (NonZero of the mask, row-major over
  N·H·W), its inverse map, and one neighbour table (P, kh·kw) per kernel geometry;
* each RegionConv: gather the P rows (k×k: the P·kh·kw neighbour rows) of its input,
  one GEMM with the weights reshaped to (kh·kw·C_in, C_out), bias, optional ReLU;
* between region convs, ReLU / Add / Concat / ``⊙ M`` run on the (P, C) rows directly;
* a tensor leaves row space (scatter into zeros, back to NCHW) only where a standard op
  or a graph output needs it, which in our stage graphs is once per output.

INT8 graphs (explicit QDQ from ``calibration/``) lower the same way with int8 rows: a
per-tensor QuantizeLinear / DequantizeLinear (zero point 0, so zero stays zero) runs on
rows, a region conv whose X is DQ(int8) gathers the int8 rows (a quarter of the traffic)
and dequantizes the gathered columns, its DQ(int8, axis 0) weights become an int8
(kh·kw·C_in, C_out) matrix behind a DQ with axis 1 and its bias an int32 DQ; ONNX Runtime
fuses DQ, DQ, DQ → MatMul + Add into an int8 GEMM (QGemm).

A region conv reads its input's real values at neighbours outside the region when that
input is dense (the stage input); tensors in row space are zero outside the region by
construction, so their neighbour gathers read a zero row instead. Grouped region convs
or ops this pass does not know raise :class:`LoweringUnsupported`; the caller then runs
the function bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layercascade.export.regionconv import DOMAIN as REGION_CONV_DOMAIN
from layercascade.export.regionconv import OP_TYPE as REGION_CONV_OP

ROW_OPS = {"Relu", "Add", "Concat"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


class LoweringUnsupported(Exception):
    """The graph holds something the compact form does not cover."""


@dataclass
class _Value:
    """A tensor of the original graph: its dense name and/or its row-space name."""

    dense: str | None = None
    rows: str | None = None


class _Lowering:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.new_initializers: list[onnx.TensorProto] = []
        self.values: dict[str, _Value] = {}
        self.cache: dict[tuple, str] = {}
        self.counter = 0
        self.mask: str | None = None
        self.producers = {output: node for node in self.graph.node for output in node.output}
        inferred = onnx.shape_inference.infer_shapes(model).graph
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                       for v in [*inferred.input, *inferred.value_info, *inferred.output]}

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

    def channels(self, name: str) -> int:
        shape = self.shapes.get(name)
        if not shape or len(shape) != 4 or shape[1] is None:
            raise LoweringUnsupported(f"{name}: channel count not known statically")
        return shape[1]

    # -- the active-pixel list, once per graph ---------------------------------------------------
    # Pixels are addressed on a grid padded by the largest conv padding, so the k×k neighbour
    # table of every active pixel is one Add of constant offsets: neighbours that fall
    # outside the image land on the zero border instead of needing bounds checks.
    def prepare(self, mask: str, region_nodes: list[onnx.NodeProto]) -> None:
        shape = self.shapes.get(mask)
        if not shape or len(shape) != 4 or None in shape[2:]:
            raise LoweringUnsupported(f"{mask}: the mask's height and width are not static")
        self.mask = mask
        self.height, self.width = shape[2], shape[3]
        pads = [tuple(_attributes(n)["pads"]) for n in region_nodes]
        self.border = (max(p[0] for p in pads), max(p[1] for p in pads))
        self.padded_width = self.width + 2 * self.border[1]
        flat = self.const("flat", np.array([-1], np.int64))
        # Row-major NonZero orders the pixels alike on the plain and the padded grid.
        self.batch = shape[0]
        self.mask_flat = self.add("Reshape", [mask, flat], "mask_flat")
        self.idx = self.add("Reshape", [self.add("NonZero", [self.mask_flat], "active"), flat], "idx")
        padded_mask = self.add("Pad", [mask, self.spatial_pads()], "mask_padded")
        self.padded_flat = self.add("Reshape", [padded_mask, flat], "mask_padded_flat")
        self.padded_idx = self.add("Reshape", [self.add("NonZero", [self.padded_flat], "active_padded"), flat],
                                   "idx_padded")

    def spatial_pads(self) -> str:
        return self.once(("spatial_pads",), lambda: self.const(
            "border", np.array([0, 0, *self.border, 0, 0, *self.border], np.int64)))

    def inverse(self) -> str:
        """inverse[q] = row of padded-grid pixel q, or P (the zero row) when q is inactive or border."""
        def build() -> str:
            count = self.add("Squeeze", [self.add("Shape", [self.padded_idx], "count")], "count_scalar")
            filler = self.add("Expand", [count, self.add("Shape", [self.padded_flat], "grid_size")], "inverse_fill")
            rows = self.add("Range", [self.const("zero", np.int64(0)), count, self.const("one", np.int64(1))],
                            "row_ids")
            return self.add("ScatterElements", [filler, self.padded_idx, rows], "inverse", axis=0)
        return self.once(("inverse",), build)

    def neighbours(self, kernel: tuple[int, int], dilation: tuple[int, int], pads: tuple[int, int]) -> str:
        """Padded-grid indices (P, kh·kw) of each active pixel's taps for one kernel geometry."""
        def build() -> str:
            dy = np.repeat(np.arange(kernel[0]) * dilation[0] - pads[0], kernel[1])
            dx = np.tile(np.arange(kernel[1]) * dilation[1] - pads[1], kernel[0])
            offsets = (dy * self.padded_width + dx).astype(np.int64)[None]
            column = self.once(("padded_idx_column",), lambda: self.add(
                "Unsqueeze", [self.padded_idx, self.const("axis1", np.array([1], np.int64))], "padded_idx_column"))
            return self.add("Add", [column, self.const("offsets", offsets)], "taps_at")
        return self.once(("neighbours", kernel, dilation, pads), build)

    # -- conversions between dense (N, C, H, W) and rows (P, C) -----------------------------------
    def dense_rows(self, dense: str) -> str:
        """Every pixel of the zero-bordered padded grid of a dense tensor as a row."""
        def build() -> str:
            padded = self.add("Pad", [dense, self.spatial_pads()], "padded")
            nhwc = self.add("Transpose", [padded], "nhwc", perm=[0, 2, 3, 1])
            return self.add("Reshape", [nhwc, self.const("rows_shape", np.array([-1, self.channels(dense)], np.int64))],
                            "all_rows")
        return self.once(("dense_rows", dense), build)

    def padded_rows(self, rows: str) -> str:
        """Row-space ``rows`` plus one zero row (the neighbour outside the region or image)."""
        return self.once(("padded_rows", rows), lambda: self.add(
            "Pad", [rows, self.const("pad_row", np.array([0, 0, 1, 0], np.int64))], "rows_padded"))

    def rows_of(self, name: str) -> str:
        value = self.value(name)
        if value.rows is None:
            value.rows = self.add("Gather", [self.dense_rows(value.dense), self.padded_idx], "rows", axis=0)
        return value.rows

    def dense_of(self, name: str) -> str:
        value = self.value(name)
        if value.dense is None:
            channels = self.channels(name)
            grid = self.once(("grid_shape", channels), lambda: self.zeros_shape(channels))
            zeros = self.add("ConstantOfShape", [grid], "zeros", value=numpy_helper.from_array(np.zeros(1, np.float32)))
            index = self.once(("idx_column",), lambda: self.add(
                "Unsqueeze", [self.idx, self.const("axis1", np.array([1], np.int64))], "idx_column"))
            scattered = self.add("ScatterND", [zeros, index, value.rows], "scatter")
            nhwc = self.add("Reshape", [scattered, self.const(
                "nhwc_shape", np.array([-1, self.height, self.width, channels], np.int64))], "nhwc_dense")
            value.dense = self.add("Transpose", [nhwc], "dense", perm=[0, 3, 1, 2])
        return value.dense

    def zeros_shape(self, channels: int) -> str:
        """(N·H·W, channels): a constant when the batch is static."""
        if self.batch is not None:
            return self.const("zeros_shape", np.array([self.batch * self.height * self.width, channels], np.int64))
        return self.add("Concat", [self.add("Shape", [self.mask_flat], "pixels"),
                                   self.const("channels", np.array([channels], np.int64))], "zeros_shape", axis=0)

    # -- node rewrites ------------------------------------------------------------------------------
    def region_conv(self, node: onnx.NodeProto) -> None:
        attrs = _attributes(node)
        if attrs.get("group", 1) != 1:
            raise LoweringUnsupported(f"{node.name}: grouped region convolution")
        x, w_name, b_name, mask = node.input
        if mask != self.mask:
            raise LoweringUnsupported(f"{node.name}: a second region mask {mask!r} in one graph")
        bias = numpy_helper.to_array(self.initializers[b_name])
        matrix, (_, c_in, kh, kw), w_scale = self.weight_matrix(node.name, w_name)
        pads = tuple(attrs["pads"][:2])
        quantized = self.quantized_input(x)
        if quantized is not None:  # gather the int8 rows, dequantize the gathered columns
            x = quantized[0]
        source = self.value(x)
        if kh == kw == 1 and pads == (0, 0):
            columns = self.rows_of(x)
        else:
            taps_at = self.neighbours((kh, kw), tuple(attrs["dilations"]), pads)
            if source.dense is None:  # row space: zero outside the region, gather with a zero pad row
                row_table = self.once(("row_taps", taps_at), lambda: self.add(
                    "Gather", [self.inverse(), taps_at], "row_taps", axis=0))
                gathered = self.add("Gather", [self.padded_rows(source.rows), row_table], "taps", axis=0)
            else:  # dense input: its real values at every neighbour, zero on the border
                gathered = self.add("Gather", [self.dense_rows(source.dense), taps_at], "taps", axis=0)
            columns = self.add("Reshape", [gathered, self.const("im2col", np.array([-1, kh * kw * c_in], np.int64))],
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
        self.values[node.output[0]] = _Value(rows=out)

    def row_op(self, node: onnx.NodeProto) -> bool:
        """Run ReLU / Add / Concat(axis=1) / ``⊙ M`` in row space when an input lives there."""
        if node.op_type in QDQ_OPS:
            return self.qdq_row_op(node)
        inputs = [self.value(i) for i in node.input]
        if node.op_type == "Mul" and self.mask in node.input:
            other = node.input[0] if node.input[1] == self.mask else node.input[1]
            if self.value(other).rows is None:
                return False  # e.g. the next stage's mask, nested in this one: stays dense
            self.values[node.output[0]] = _Value(rows=self.value(other).rows)
            return True
        if node.op_type not in ROW_OPS or all(v.dense is not None for v in inputs):
            return False
        if any(v.dense is not None and v.rows is None for v in inputs):
            return False  # a dense operand: outside the region the result is not zero
        attrs = _attributes(node)
        if node.op_type == "Concat" and attrs.get("axis") != 1:
            return False
        rows = [self.rows_of(i) for i in node.input]
        out = self.add(node.op_type, rows, f"{node.name}/rows", **attrs)
        self.values[node.output[0]] = _Value(rows=out)
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
        if (dequantize is None or dequantize.op_type != "DequantizeLinear" or _attributes(dequantize).get("axis") != 0
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

    def per_tensor_zero_point_0(self, node: onnx.NodeProto) -> bool:
        """A Q or DQ with one scale and zero point 0 (so it maps zero rows to zero rows)."""
        return _per_tensor_zero_point_0(node, self.initializers)

    def quantized_input(self, name: str) -> tuple[str, str, str] | None:
        """(int8 tensor, scale, zero point) when ``name`` is a per-tensor DequantizeLinear output."""
        dequantize = self.producers.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or not self.per_tensor_zero_point_0(
                dequantize):
            return None
        return dequantize.input[0], dequantize.input[1], dequantize.input[2]

    def qdq_row_op(self, node: onnx.NodeProto) -> bool:
        """A per-tensor Q / DQ of a row-space tensor runs on its rows (zero point 0 keeps zeros zero)."""
        source = self.value(node.input[0])
        if source.rows is None or not self.per_tensor_zero_point_0(node):
            return False
        out = self.add(node.op_type, [source.rows, *node.input[1:]], f"{node.name}/rows")
        self.values[node.output[0]] = _Value(rows=out)
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
        self.prepare(region_nodes[0].input[3], region_nodes)
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
        self.nodes = _live(self.nodes, {o.name for o in self.graph.output})
        used = {i for n in self.nodes for i in n.input}
        initializers = [t for t in self.graph.initializer if t.name in used] + self.new_initializers
        graph = helper.make_graph(self.nodes, self.graph.name + "_lowered", list(self.graph.input),
                                  list(self.graph.output), initializers)
        opsets = [o for o in self.model.opset_import if o.domain != REGION_CONV_DOMAIN]
        return helper.make_model(graph, opset_imports=opsets, ir_version=self.model.ir_version,
                                 producer_name="layercascade-lowering")


def relu_as_uint8(model: onnx.ModelProto, non_negative_inputs: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """An INT8 QDQ graph for ONNX Runtime's CPU kernels: activations that cannot be negative are
    quantized as uint8 with zero point 0 instead of int8 (a copy, or ``model`` itself when it has
    no Q/DQ; the model dir keeps its int8 form, which TensorRT needs).

    A per-tensor int8 zero point 0 becomes uint8 0 when every QuantizeLinear using it reads a
    ReLU output, a ``Max(·, 0)`` output or one of ``non_negative_inputs`` (graph inputs another
    stage produced by a ReLU); its DequantizeLinears, gathers and pads follow the type. Then:

    * non-negative values below 127.5·scale get the same codes as in int8; larger ones, which
      int8 clips to 127, keep their value up to 255·scale (more range, never less);
    * a ReLU / ``Max(·, 0)`` that only feeds such Qs goes: uint8 with zero point 0 clamps
      negatives to 0 itself (symmetric int8, qmin −128, cannot, so ONNX Runtime ran DQ → ReLU
      → Q passes between its int8 convs);
    * a Conv → Q → DQ pair in front of that ReLU goes too, so the conv requantizes once, straight
      to the ReLU's scale (as TensorRT fuses Conv + ReLU);
    * ONNX Runtime runs QLinearConv / QGemm with uint8 activations, its fast x86 u8·s8 kernels
      (int8 activations take a slow path there).
    """
    if not any(node.op_type in QDQ_OPS for node in model.graph.node):
        return model  # a float graph: nothing to rewrite, no copy needed
    model = _copy(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)  # one Python object per node, so id() names it
    producers = {output: node for node in nodes for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def is_zero(name: str) -> bool:
        if name not in initializers:
            return False
        value = numpy_helper.to_array(initializers[name])
        return value.size == 1 and not value.any()

    def rectifier(name: str) -> onnx.NodeProto | None:
        """The ReLU or Max(·, 0) node producing ``name``."""
        node = producers.get(name)
        if node is not None and (node.op_type == "Relu" or (node.op_type == "Max" and len(node.input) == 2
                                                             and is_zero(node.input[1]))):
            return node
        return None

    def only_consumer(tensor: str, op_type: str) -> onnx.NodeProto | None:
        found = consumers.get(tensor, [])
        if tensor in outputs or len(found) != 1 or found[0].op_type != op_type:
            return None
        return found[0]

    def int8_zero_point_0(node: onnx.NodeProto) -> bool:
        return _per_tensor_zero_point_0(node, initializers, np.int8)

    quantizers: dict[str, list[onnx.NodeProto]] = {}  # zero point initializer → its Qs
    for node in nodes:
        if node.op_type in QDQ_OPS and len(node.input) == 3:
            quantizers.setdefault(node.input[2], [])
            if node.op_type == "QuantizeLinear":
                quantizers[node.input[2]].append(node)
    unsigned = [zero for zero, qs in quantizers.items()
                if qs and all(int8_zero_point_0(q) and (rectifier(q.input[0]) is not None
                                                       or q.input[0] in non_negative_inputs) for q in qs)
                and all(n.op_type in QDQ_OPS and int8_zero_point_0(n) for n in consumers[zero])]
    if not unsigned:
        return model
    for zero in unsigned:
        initializers[zero].CopyFrom(numpy_helper.from_array(np.uint8(0), zero))
    removed: set[int] = set()  # id() of the nodes to drop (names may be empty)
    retyped = {q.output[0] for zero in unsigned for q in quantizers[zero]}
    for node in [n for n in nodes if rectifier(n.output[0]) is n]:
        readers = consumers.get(node.output[0], [])
        if node.output[0] in outputs or not readers or not all(q.output[0] in retyped for q in readers):
            continue
        source = node.input[0]
        pair_dq = producers.get(source) if only_consumer(source, node.op_type) is node else None
        pair_q = producers.get(pair_dq.input[0]) if pair_dq is not None and pair_dq.op_type == "DequantizeLinear" else None
        if (pair_q is not None and pair_q.op_type == "QuantizeLinear" and int8_zero_point_0(pair_q)
                and only_consumer(pair_q.output[0], "DequantizeLinear") is pair_dq
                and producers.get(pair_q.input[0]) is not None and producers[pair_q.input[0]].op_type == "Conv"
                and only_consumer(pair_q.input[0], "QuantizeLinear") is pair_q):
            source = pair_q.input[0]
            removed.update([id(pair_q), id(pair_dq)])
        for reader in readers:
            reader.input[0] = source
        removed.add(id(node))
    kept = [n for n in nodes if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    kept_initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    return model


def rectified_outputs(model: onnx.ModelProto) -> frozenset[str]:
    """Graph outputs that a ReLU produces (through Identity, or a Q → DQ pair): never negative.
    The next stage may quantize them as uint8 (:func:`relu_as_uint8`)."""
    producers = {output: node for node in model.graph.node for output in node.output}

    def from_relu(name: str) -> bool:
        node = producers.get(name)
        if node is None:
            return False
        if node.op_type in ("Identity", "QuantizeLinear", "DequantizeLinear"):
            return from_relu(node.input[0])
        return node.op_type == "Relu"

    return frozenset(o.name for o in model.graph.output if from_relu(o.name))


def int8_conv_inputs(model: onnx.ModelProto) -> bool:
    """Whether a Conv of ``model`` reads a dequantized int8 activation (not a weight)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        dequantize = producers.get(node.input[0]) if node.op_type == "Conv" else None
        if (dequantize is not None and dequantize.op_type == "DequantizeLinear" and len(dequantize.input) == 3
                and dequantize.input[0] not in initializers and dequantize.input[2] in initializers
                and initializers[dequantize.input[2]].data_type == onnx.TensorProto.INT8):
            return True
    return False


def _per_tensor_zero_point_0(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                             dtype: type | None = None) -> bool:
    """A Q or DQ with one scale and zero point 0 (of ``dtype`` when given) from initializers."""
    if len(node.input) != 3 or not all(i in initializers for i in node.input[1:]):
        return False
    scale, zero = (numpy_helper.to_array(initializers[i]) for i in node.input[1:])
    return scale.size == 1 and zero.size == 1 and (dtype is None or zero.dtype == dtype) and not zero.any()


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` without those no graph output depends on (e.g. the dense DQ of an input whose
    region convs read the int8 tensor instead)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    return kept[::-1]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def lower_region_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every ``lc::RegionConv`` in compact row form (unchanged if it has none)."""
    return _Lowering(model).run()
