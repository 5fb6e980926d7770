"""FP16 stage graphs: fp16 compute with fp32 I/O, for strongly typed TensorRT builds (docs/build.md).

TensorRT 11 has no FP16 builder flag; a strongly typed network runs each layer in the types
the ONNX graph gives it, so precision has to be written into the graph. We tried
``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)`` (1.16.0), the
well-kept converter: on our stage graphs it (1) leaves ``Cast(to=FLOAT)`` nodes as they are
while retyping their outputs to fp16, so ONNX Runtime rejects the graph, (2) never visits
model-local functions, so the ``lc::RegionConv`` body keeps its fp32 ``Cast``/``Constant`` and
clashes with fp16 inputs, and (3) converts every op, including the softmax-threshold and the
pixel counts that must stay exact. ModelOpt AutoCast needs ModelOpt and a GPU stack. Hence
this focused pass, on ``onnx`` alone, with an allow list instead of a block list:

* Convolutions (``Conv``, ``lc::RegionConv`` — X, W, B and M all fp16, the plugin's fp16
  path), ``MatMul`` and pooling run in fp16; their float inputs get a Cast (one per tensor).
* Pointwise and data-movement ops (:data:`FOLLOW_OPS`) run in fp16 when one of their
  computed float inputs is fp16, else stay fp32 — so the preprocessing, the mask nesting and
  the pixel counts (fp32 masks, counts up to h·w > 2048, which fp16 cannot count exactly)
  stay fp32, while residual adds and concats between convolutions stay fp16.
* Everything else (softmax, reductions, comparisons, ArgMax, Resize, ScatterND, …) runs in
  fp32: the threshold ``max softmax ≤ ρ`` is compared at fp32 resolution, as in the
  reference, and ρ stays an fp32 input.
* Graph inputs and outputs keep their types; initializers used in fp16 get an fp16 copy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from layercascade.errors import fail
from layercascade.export import regionconv

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0

# (domain, op_type) computed in fp16 whatever their inputs are.
FP16_OPS = {("", "Conv"), ("", "MatMul"), ("", "Gemm"), ("", "MaxPool"), ("", "AveragePool"),
            (regionconv.DOMAIN, regionconv.OP_TYPE)}
# Ops whose float inputs and outputs share one type; they follow their computed inputs.
FOLLOW_OPS = {"Relu", "Add", "Sub", "Mul", "Div", "Max", "Min", "Neg", "Abs", "Clip", "Concat", "Transpose",
              "Reshape", "Slice", "Pad", "Gather", "Expand", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Where",
              "Split"}


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose convolutions compute in fp16; inputs/outputs keep their types."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    if FLOAT16 in types.values():
        fail(f"graph {model.graph.name!r} already holds fp16 tensors; convert the fp32 export, not a converted graph")
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    _Pass(converted, types).run()
    del converted.graph.value_info[:]
    retype_region_conv_body(converted)
    # A failure here is a bug of this pass, not a user error: let it raise.
    onnx.checker.check_model(converted, full_check=True)
    return onnx.shape_inference.infer_shapes(converted, strict_mode=True)


class _Pass:
    """Walks the nodes in order, choosing each node's precision and inserting casts."""

    def __init__(self, model: onnx.ModelProto, types: dict[str, int]) -> None:
        self.graph = model.graph
        self.types = types  # tensor name → elem type after conversion (updated as we go)
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.casts: dict[tuple[str, int], str] = {}  # (tensor, target type) → cast tensor
        self.nodes: list[onnx.NodeProto] = []

    def run(self) -> None:
        outputs = {value.name for value in self.graph.output}
        for node in self.graph.node:
            target = self.precision(node)
            if target is not None:
                for index, name in enumerate(node.input):
                    if name and self.types.get(name) in (FLOAT, FLOAT16):
                        node.input[index] = self.as_type(name, target)
                for name in node.output:
                    if self.types.get(name) in (FLOAT, FLOAT16):
                        self.types[name] = target
            self.nodes.append(node)
        # Graph outputs keep their declared (fp32) type.
        for value in self.graph.output:
            declared = value.type.tensor_type.elem_type
            if declared == FLOAT and self.types.get(value.name) == FLOAT16:
                cast_output(self.nodes, value.name, f"{value.name}/fp16", FLOAT, f"{value.name}/to_fp32")
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        self.drop_unused_initializers(outputs)

    def precision(self, node: onnx.NodeProto) -> int | None:
        """fp16 / fp32 for a node computing in float, None for nodes that take any type (Cast, Shape)."""
        if (node.domain, node.op_type) in FP16_OPS:
            return FLOAT16
        if node.domain == "" and node.op_type in FOLLOW_OPS:
            computed = [n for n in node.input if n and n not in self.initializers]
            return FLOAT16 if any(self.types.get(n) == FLOAT16 for n in computed) else FLOAT
        if node.domain == "" and node.op_type in ("Cast", "Shape", "Size", "NonZero", "Constant"):
            return None
        return FLOAT

    def as_type(self, name: str, target: int) -> str:
        """``name`` as a tensor of ``target`` type: itself, an fp16 initializer copy, or a Cast."""
        if self.types[name] == target:
            return name
        key = (name, target)
        if key not in self.casts:
            if name in self.initializers and target == FLOAT16:
                self.casts[key] = self.fp16_initializer(name)
            else:
                cast = f"{name}/to_{'fp16' if target == FLOAT16 else 'fp32'}"
                self.nodes.append(helper.make_node("Cast", [name], [cast], name=cast, to=target))
                self.casts[key] = cast
            self.types[self.casts[key]] = target
        return self.casts[key]

    def fp16_initializer(self, name: str) -> str:
        values = numpy_helper.to_array(self.initializers[name])
        peak = float(abs(values).max()) if values.size else 0.0
        if peak > FP16_MAX:
            fail(f"initializer {name!r} holds {peak:g}, beyond the fp16 range (±{FP16_MAX:g}); build in fp32")
        copy = numpy_helper.from_array(values.astype("float16"), f"{name}.fp16")
        self.graph.initializer.append(copy)
        return copy.name

    def drop_unused_initializers(self, outputs: set[str]) -> None:
        used = {n for node in self.graph.node for n in node.input} | outputs
        kept = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)


def cast_output(nodes: list[onnx.NodeProto], name: str, inner: str, to: int, cast_name: str) -> None:
    """Let the producer (and consumers) of graph output ``name`` use ``inner``; append a Cast ``inner`` → ``name``."""
    for node in nodes:
        node.input[:] = [inner if n == name else n for n in node.input]
        node.output[:] = [inner if n == name else n for n in node.output]
    nodes.append(helper.make_node("Cast", [inner], [name], name=cast_name, to=to))


def retype_region_conv_body(model: onnx.ModelProto) -> None:
    """The RegionConv function body in fp16: its ``Cast(to=FLOAT)`` and float ``Constant`` retyped."""
    for function in model.functions:
        if (function.domain, function.name) != (regionconv.DOMAIN, regionconv.OP_TYPE):
            continue
        for node in function.node:
            if node.op_type == "Cast":
                for attribute in node.attribute:
                    if attribute.name == "to" and attribute.i == FLOAT:
                        attribute.i = FLOAT16
            elif node.op_type == "Constant" and [a.name for a in node.attribute] == ["value_float"]:
                value = np.array(node.attribute[0].f, np.float16)
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))
