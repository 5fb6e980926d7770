"""A static check of the graphs lc-build hands TensorRT's ONNX parser, without TensorRT or a GPU.

``lc-build DIR --check`` (and every ``lc-build`` before it builds) looks at each graph as the parser
will get it (``build.tensorrt_graph``: fp16-converted, int8 weights of the plugin folded, uint8 only
at the I/O) and reports, one line per problem, what the parser or TensorRT would reject:

* an op missing from the operator support matrix of TensorRT's ONNX parser, or an input type it
  does not list there (``onnx_operators.json``: onnx-tensorrt's ``docs/operators.md``, the version
  it names), or a restriction it states (constant ``axes``, zero points of 0, TopK's K and sorting,
  Resize modes…);
* uint8 anywhere but at the graph's inputs and outputs next to a Cast, int8 anywhere but into a
  DequantizeLinear (TensorRT's quantized types come only from Q/DQ);
* ``lc::RegionConv`` nodes whose attributes are not the plugin's fields, or types it does not take;
* any other custom op (no plugin for it);

and, as warnings, the data-dependent shapes (NonZero) that keep a stage out of a CUDA graph
(:func:`data_dependent_shapes`, which lc-build records per engine).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from layercascade.errors import LCError
from layercascade.export import regionconv
from layercascade.export.graph import attributes, consumers_of, producers_of
from layercascade.plugins import trt_plugin

TABLE = Path(__file__).resolve().parent / "onnx_operators.json"
TYPE_NAMES = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
              TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8",
              TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL", TensorProto.DOUBLE: "DOUBLE",
              TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.INT4: "INT4"}
# Ops whose every input is data of the listed types (elementwise and concatenation); elsewhere
# the table's types are those of the first input, the others being indices, shapes or scales.
ALL_INPUTS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Mod", "Equal", "Greater",
                        "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Concat"})
# Ops whose listed types are their output's (their inputs are shapes).
OUTPUT_TYPED = frozenset({"ConstantOfShape", "Range"})
# Restrictions of the table that name a constant input ("axes must be an initializer" / "resolvable to a
# constant"): op → input index.
CONSTANT_INPUTS = {op: 1 for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                    "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                                    "Squeeze", "Unsqueeze")}
TOPK_MAX_K = 3840  # the table: "`K` input must be less than 3840"
RESIZE = {"mode": {"nearest", "linear"},
          "coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                             "asymmetric", "align_corners"}}
PLUGIN_TYPES = {"FP32", "FP16"}  # the plugin's autotune combinations
# Ops whose output shape depends on tensor values (TensorRT's INonZeroLayer and INMSLayer): TensorRT
# sizes them at run time, on the host, so a stage holding one is never captured in a CUDA graph.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression"})
DATA_DEPENDENT_COST = ("data-dependent output shape: TensorRT sizes it at run time (it may synchronise the stream "
                "there), so the TensorRT backend never captures this stage in a CUDA graph (it runs eagerly "
                "under --cuda-graph)")


@dataclass(frozen=True)
class Finding:
    """One problem (``error``) or cost (``warning``) of one node of one graph."""

    graph: str
    node: str
    op: str
    level: str
    reason: str

    def line(self) -> str:
        return f"{self.level}: {self.graph}: {self.node} ({self.op}): {self.reason}"


@cache
def operator_table() -> dict[str, Any]:
    """The operator support matrix (``onnx_operators.json``)."""
    return json.loads(TABLE.read_text())


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor: graph I/O, initializers and (shape inference) intermediates."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def check_graph(model: onnx.ModelProto, graph: str) -> list[Finding]:
    """Every finding of ``model`` (named ``graph`` in the lines)."""
    table = operator_table()
    types = _types(model)
    constants = _constants(model)
    consumers, producers = consumers_of(model.graph.node), producers_of(model.graph.node)
    inputs, outputs = {v.name for v in model.graph.input}, {v.name for v in model.graph.output}
    findings: list[Finding] = []

    def report(node: onnx.NodeProto, reason: str, level: str = "error") -> None:
        findings.append(Finding(graph, node.name or "(unnamed)", f"{node.domain}::{node.op_type}" if node.domain
                                else node.op_type, level, reason))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    low, high = table["opset_range"]
    if opset is None or not low <= opset <= high:
        findings.append(Finding(graph, "(graph)", "opset", "error",
                                f"opset {opset}: TensorRT {table['tensorrt_version']}'s parser takes {low}–{high}"))
    for node in model.graph.node:
        if node.domain == regionconv.DOMAIN and node.op_type == regionconv.OP_TYPE:
            _check_region_conv(node, types, report)
            continue
        if node.domain not in ("", "ai.onnx"):
            report(node, f"custom op {node.domain}::{node.op_type} has no TensorRT plugin here")
            continue
        row = table["operators"].get(node.op_type)
        if row is None or not row["supported"]:
            report(node, f"TensorRT {table['tensorrt_version']}'s ONNX parser does not support {node.op_type}")
            continue
        for name in _typed_tensors(node):
            kind = TYPE_NAMES.get(types.get(name), "unknown")
            if kind not in row["types"]:
                report(node, f"{kind} {'output' if node.op_type in OUTPUT_TYPED else 'input'} {name!r}: TensorRT's "
                             f"{node.op_type} takes {', '.join(row['types'])}")
        _check_restrictions(node, constants, report)
        if node.op_type in DATA_DEPENDENT_OPS:
            report(node, DATA_DEPENDENT_COST, "warning")
    for name, kind in types.items():
        if kind == TensorProto.UINT8 and not _uint8_at_io(name, inputs, outputs, consumers, producers):
            findings.append(Finding(graph, producers[name].name if name in producers else name,
                                    producers[name].op_type if name in producers else "tensor", "error",
                                    f"uint8 tensor {name!r} inside the graph: TensorRT takes uint8 only as a network "
                                    "input or output, next to a Cast"))
        if kind == TensorProto.INT8 and not all(_reads_quantized(c, name) for c in consumers.get(name, [])):
            findings.append(Finding(graph, name, "tensor", "error", f"int8 tensor {name!r} read by another op than "
                                    "DequantizeLinear: TensorRT's int8 comes only from Q/DQ"))
    return findings


def data_dependent_shapes(model: onnx.ModelProto) -> bool:
    """True when the graph (or a model-local function TensorRT inlines) has an op of :data:`DATA_DEPENDENT_OPS`."""
    nodes = [*model.graph.node, *(node for function in model.functions for node in function.node)]
    return any(node.op_type in DATA_DEPENDENT_OPS and node.domain in ("", "ai.onnx") for node in nodes)


def _typed_tensors(node: onnx.NodeProto) -> list[str]:
    """The tensors whose type the operator table constrains."""
    if node.op_type in OUTPUT_TYPED:
        return list(node.output[:1])
    if node.op_type in ALL_INPUTS:
        return [name for name in node.input if name]
    if node.op_type == "Where":
        return [name for name in node.input[1:] if name]
    return list(node.input[:1])


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto | None]:
    """The tensors the parser imports as weights: initializers, Constant nodes' outputs and (values not
    computed here: None) the outputs of nodes that read only such tensors, as its constant folding gets them."""
    constants: dict[str, onnx.TensorProto | None] = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and not node.domain:
            constants[node.output[0]] = attributes(node).get("value")
        elif node.input and all(not name or name in constants for name in node.input):
            constants.update((name, None) for name in node.output)
    return constants


def _check_restrictions(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto | None], report: Any) -> None:
    """The restrictions of the operator table that our graphs could run into."""
    settings = attributes(node)
    index = CONSTANT_INPUTS.get(node.op_type)
    if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
        report(node, f"input {node.input[index]!r} must be a constant for TensorRT")
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero_point = constants.get(node.input[2], False)
        if zero_point is False:
            report(node, "zero point must be a constant (of zeros) for TensorRT")
        elif zero_point is not None and np.any(numpy_helper.to_array(zero_point) != 0):
            report(node, "zero point must be 0 for TensorRT (symmetric quantization)")
    if node.op_type == "TopK":
        if settings.get("sorted", 1) != 1:
            report(node, "TopK with sorted=0: TensorRT takes sorted=1")
        k = constants.get(node.input[1]) if len(node.input) > 1 else None
        if k is not None and int(numpy_helper.to_array(k).max()) >= TOPK_MAX_K:
            report(node, f"TopK K={int(numpy_helper.to_array(k).max())}: TensorRT takes K < {TOPK_MAX_K}")
    if node.op_type == "ScatterND" and settings.get("reduction", b"none") not in (b"none", "none"):
        report(node, "ScatterND reduction other than none is not supported by TensorRT")
    if node.op_type == "Resize":
        for name, allowed in RESIZE.items():
            value = settings.get(name, b"nearest" if name == "mode" else b"half_pixel")
            value = value.decode() if isinstance(value, bytes) else value
            if value not in allowed:
                report(node, f"Resize {name} {value!r}: TensorRT supports {', '.join(sorted(allowed))}")
    if node.op_type in ("MaxPool", "AveragePool") and any(d != 1 for d in settings.get("dilations", [])):
        report(node, "dilated pooling is not supported by TensorRT")


def _reads_quantized(node: onnx.NodeProto, name: str) -> bool:
    """``node`` reads int8 ``name`` as Q/DQ do: the data of a DequantizeLinear, or a zero point."""
    return (node.op_type == "DequantizeLinear" or
            (node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] == name))


def _uint8_at_io(name: str, inputs: set[str], outputs: set[str], consumers: dict, producers: dict) -> bool:
    """A uint8 graph input that only Casts read, or a uint8 graph output a Cast writes."""
    if name in inputs:
        return all(node.op_type == "Cast" for node in consumers.get(name, []))
    if name in outputs:
        return name in producers and producers[name].op_type == "Cast"
    return False


def _check_region_conv(node: onnx.NodeProto, types: dict[str, int], report: Any) -> None:
    """An ``lc::RegionConv`` against the plugin: its fields, the parser's own attributes, its types."""
    settings = attributes(node)
    fields = set(trt_plugin.plugin_fields())
    unknown = sorted(set(settings) - fields - trt_plugin.PARSER_ATTRIBUTES)
    missing = sorted(fields - set(settings))
    if unknown or missing:
        report(node, f"attributes do not match the plugin's fields {sorted(fields)}: unknown {unknown}, "
                     f"missing {missing}")
        return
    if settings.get("plugin_namespace") != regionconv.PLUGIN_NAMESPACE.encode():
        report(node, f"plugin_namespace must be {regionconv.PLUGIN_NAMESPACE!r} for the parser to take the plugin")
    try:
        trt_plugin.check_attributes(settings["pads"], settings["dilations"], settings["group"], settings["activation"])
    except LCError as error:  # the plugin's own check names the problem
        report(node, str(error))
    kinds = [TYPE_NAMES.get(types.get(name), "unknown") for name in node.input]
    if len(node.input) != len(trt_plugin.INPUTS) or len(set(kinds)) != 1 or kinds[0] not in PLUGIN_TYPES:
        report(node, f"inputs {list(node.input)} are {kinds}: the plugin takes {len(trt_plugin.INPUTS)} inputs, all "
                     f"{' or all '.join(sorted(PLUGIN_TYPES))}")
    if settings["group"] != 1:
        report(node, "grouped: the AOT kernel lc-build uses has no groups (only the JIT plugin has, with Python at "
                     "run time)")


def summary(findings: list[Finding], graphs: int) -> str:
    errors = sum(f.level == "error" for f in findings)
    return f"{errors} error(s), {len(findings) - errors} warning(s) in {graphs} graph(s)"


def as_json(findings: list[Finding]) -> list[dict[str, str]]:
    return [asdict(f) for f in findings]
