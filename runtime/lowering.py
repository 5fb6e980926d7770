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
        self.tables: dict[tuple, tuple[str, str]] = {}
        self.gather_sources: dict[tuple[str, str], str] = {}
        self.counter = 0
        self.mask: str | None = None

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

    def value(self, name: str) -> _Value:
        return self.values.setdefault(name, _Value(dense=name))

    # -- the active-pixel list, once per graph ---------------------------------------------------
    def prepare(self, mask: str) -> None:
        self.mask = mask
        shape = self.add("Shape", [mask], "mask_shape")
        dims = [self.add("Gather", [shape, self.const(f"dim{k}", np.int64(k))], f"dim{k}") for k in (0, 2, 3)]
        self.n, self.h, self.w = dims
        self.hw = self.add("Mul", [self.h, self.w], "hw")
        self.nhw = self.add("Mul", [self.n, self.hw], "nhw")
        flat = self.add("Reshape", [mask, self.const("flat", np.array([-1], np.int64))], "mask_flat")
        nonzero = self.add("NonZero", [flat], "active")
        self.idx = self.add("Reshape", [nonzero, self.const("flat", np.array([-1], np.int64))], "idx")
        self.idx_column = self.add("Unsqueeze", [self.idx, self.const("axis1", np.array([1], np.int64))],
                                   "idx_column")
        self.count = self.add("Shape", [self.idx], "count")
        offset_in_image = self.add("Mod", [self.idx, self.hw], "pos_in_image")
        self.image_base = self.add("Sub", [self.idx, offset_in_image], "image_base")
        self.y = self.add("Div", [offset_in_image, self.w], "y")
        self.x = self.add("Mod", [self.idx, self.w], "x")
        column = self.const("axis1", np.array([1], np.int64))
        self.y_column = self.add("Unsqueeze", [self.y, column], "y_col")
        self.x_column = self.add("Unsqueeze", [self.x, column], "x_col")
        self.base_column = self.add("Unsqueeze", [self.image_base, column], "base_col")
        # inverse[q] = row of dense pixel q, or P (the zero row) when q is inactive or the pad slot.
        slots = self.add("Add", [self.nhw, self.const("one", np.int64(1))], "slots")
        slots_1d = self.add("Unsqueeze", [slots, self.const("axis0", np.array([0], np.int64))], "slots_1d")
        count_scalar = self.add("Squeeze", [self.count], "count_scalar")
        filler = self.add("Expand", [count_scalar, slots_1d], "inverse_fill")
        rows = self.add("Range", [self.const("zero", np.int64(0)), count_scalar, self.const("one", np.int64(1))],
                        "row_ids")
        self.inverse = self.add("ScatterElements", [filler, self.idx, rows], "inverse", axis=0)

    def neighbours(self, kernel: tuple[int, int], dilation: tuple[int, int], pads: tuple[int, int]) -> tuple[str, str]:
        """(dense, row) neighbour tables (P, kh·kw) for one kernel geometry; pad index for outside."""
        key = (kernel, dilation, pads)
        if key not in self.tables:
            dy = np.repeat(np.arange(kernel[0]) * dilation[0] - pads[0], kernel[1]).astype(np.int64)
            dx = np.tile(np.arange(kernel[1]) * dilation[1] - pads[1], kernel[0]).astype(np.int64)
            yy = self.add("Add", [self.y_column, self.const("dy", dy[None])], "yy")
            xx = self.add("Add", [self.x_column, self.const("dx", dx[None])], "xx")
            zero = self.const("zero", np.int64(0))
            inside = self.add("And", [
                self.add("And", [self.add("GreaterOrEqual", [yy, zero], "y_ge0"),
                                 self.add("Less", [yy, self.h], "y_lt_h")], "y_in"),
                self.add("And", [self.add("GreaterOrEqual", [xx, zero], "x_ge0"),
                                 self.add("Less", [xx, self.w], "x_lt_w")], "x_in"),
            ], "inside")
            flat = self.add("Add", [self.base_column, self.add("Add", [self.add("Mul", [yy, self.w], "yy_w"), xx], "yx")], "nbr")
            dense = self.add("Where", [inside, flat, self.nhw], "dense_nbr")
            rows = self.add("Gather", [self.inverse, dense], "row_nbr", axis=0)
            self.tables[key] = (dense, rows)
        return self.tables[key]

    # -- conversions between dense (N, C, H, W) and rows (P, C) -----------------------------------
    def dense_rows(self, dense: str, pad_value: float = 0.0) -> str:
        """All N·H·W pixels of a dense tensor as rows, plus one pad row: (N·H·W + 1, C)."""
        key = (dense, str(pad_value))
        if key not in self.gather_sources:
            nhwc = self.add("Transpose", [dense], "nhwc", perm=[0, 2, 3, 1])
            shape = self.add("Concat", [self.add("Unsqueeze", [self.nhw, self.const("axis0", np.array([0], np.int64))],
                                                 "nhw_1d"), self.const("minus1", np.array([-1], np.int64))],
                             "rows_shape", axis=0)
            table = self.add("Reshape", [nhwc, shape], "all_rows")
            pads = self.const("pad_row", np.array([0, 0, 1, 0], np.int64))
            self.gather_sources[key] = self.add("Pad", [table, pads, self.const("pad_value", np.float32(pad_value))],
                                                "padded_rows")
        return self.gather_sources[key]

    def padded_rows(self, rows: str) -> str:
        """Row-space ``rows`` plus one zero row (the neighbour outside the region or image)."""
        key = (rows, "padded")
        if key not in self.gather_sources:
            pads = self.const("pad_row", np.array([0, 0, 1, 0], np.int64))
            self.gather_sources[key] = self.add("Pad", [rows, pads], "rows_padded")
        return self.gather_sources[key]

    def rows_of(self, name: str) -> str:
        value = self.value(name)
        if value.rows is None:
            value.rows = self.add("Gather", [self.dense_rows(value.dense), self.idx], "rows", axis=0)
        return value.rows

    def dense_of(self, name: str) -> str:
        value = self.value(name)
        if value.dense is None:
            channels = self.add("Slice", [self.add("Shape", [value.rows], "rows_shape"),
                                          self.const("one_1d", np.array([1], np.int64)),
                                          self.const("two_1d", np.array([2], np.int64))], "channels")
            nhw = self.add("Unsqueeze", [self.nhw, self.const("axis0", np.array([0], np.int64))], "nhw_1d")
            zeros = self.add("ConstantOfShape", [self.add("Concat", [nhw, channels], "zeros_shape", axis=0)], "zeros",
                             value=numpy_helper.from_array(np.zeros(1, np.float32)))
            scattered = self.add("ScatterND", [zeros, self.idx_column, value.rows], "scatter")
            as_1d = self.const("axis0", np.array([0], np.int64))
            shape = self.add("Concat", [self.add("Unsqueeze", [d, as_1d], "dim_1d") for d in (self.n, self.h, self.w)]
                             + [channels], "nhwc_shape", axis=0)
            value.dense = self.add("Transpose", [self.add("Reshape", [scattered, shape], "nhwc_dense")], "dense",
                                   perm=[0, 3, 1, 2])
        return value.dense

    # -- node rewrites ------------------------------------------------------------------------------
    def region_conv(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("group", 1) != 1:
            raise LoweringUnsupported(f"{node.name}: grouped region convolution")
        x, w_name, b_name, mask = node.input
        if mask != self.mask:
            raise LoweringUnsupported(f"{node.name}: a second region mask {mask!r} in one graph")
        weight = numpy_helper.to_array(self.initializers[w_name])
        bias = numpy_helper.to_array(self.initializers[b_name])
        c_out, c_in, kh, kw = weight.shape
        pads = tuple(attrs["pads"][:2])
        matrix = self.const(f"{node.name}.matrix", weight.transpose(2, 3, 1, 0).reshape(kh * kw * c_in, c_out))
        source = self.value(x)
        if kh == kw == 1 and pads == (0, 0):
            columns = self.rows_of(x)
        else:
            dense_table, row_table = self.neighbours((kh, kw), tuple(attrs["dilations"]), pads)
            if source.dense is None:  # row space: zero outside the region, gather with a zero pad row
                gathered = self.add("Gather", [self.padded_rows(source.rows), row_table], "taps", axis=0)
            else:  # dense input: its real values at every neighbour
                gathered = self.add("Gather", [self.dense_rows(source.dense), dense_table], "taps", axis=0)
            columns = self.add("Reshape", [gathered, self.const("im2col", np.array([-1, kh * kw * c_in], np.int64))],
                               "im2col")
        out = self.add("Add", [self.add("MatMul", [columns, matrix], f"{node.name}/gemm"),
                               self.const(f"{node.name}.bias", bias)], f"{node.name}/bias")
        if attrs["activation"] == 1:
            out = self.add("Relu", [out], f"{node.name}/relu")
        self.values[node.output[0]] = _Value(rows=out)

    def row_op(self, node: onnx.NodeProto) -> bool:
        """Run ReLU / Add / Concat(axis=1) / ``⊙ M`` in row space when an input lives there."""
        inputs = [self.value(i) for i in node.input]
        if node.op_type == "Mul" and self.mask in node.input:
            other = node.input[0] if node.input[1] == self.mask else node.input[1]
            self.values[node.output[0]] = _Value(rows=self.rows_of(other))
            return True
        if node.op_type not in ROW_OPS or all(v.dense is not None for v in inputs):
            return False
        if any(v.dense is not None and v.rows is None for v in inputs):
            return False  # a dense operand: outside the region the result is not zero
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Concat" and attrs.get("axis") != 1:
            return False
        rows = [self.rows_of(i) for i in node.input]
        out = self.add(node.op_type, rows, f"{node.name}/rows", **attrs)
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
        self.prepare(region_nodes[0].input[3])
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
        used = {i for n in self.nodes for i in n.input}
        initializers = [t for t in self.graph.initializer if t.name in used] + self.new_initializers
        graph = helper.make_graph(self.nodes, self.graph.name + "_lowered", list(self.graph.input),
                                  list(self.graph.output), initializers)
        opsets = [o for o in self.model.opset_import if o.domain != REGION_CONV_DOMAIN]
        return helper.make_model(graph, opset_imports=opsets, ir_version=self.model.ir_version,
                                 producer_name="layercascade-lowering")


def lower_region_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every ``lc::RegionConv`` in compact row form (unchanged if it has none)."""
    return _Lowering(model).run()
