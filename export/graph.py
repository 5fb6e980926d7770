"""ONNX graph helpers: a builder that keeps node and tensor names readable (for Netron), and the
small queries and edits every graph pass shares (the lowering, the cascade join, the calibration,
ONNX Runtime's INT8 rewrites and layout fold, lc-build's graph loading).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layercascade.errors import fail

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class GraphBuilder:
    """Collects nodes, initializers and I/O; every node's output is named after the node."""

    def __init__(self, name: str, opset: int) -> None:
        self.name = name
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.domains: dict[str, int] = {"": opset}
        self._used: Counter[str] = Counter()

    def unique(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``, … if already taken."""
        self._used[name] += 1
        count = self._used[name]
        return name if count == 1 else f"{name}_{count}"

    def constant(self, name: str, value: np.ndarray | float | int | list) -> str:
        """Add an initializer; returns its (unique) name."""
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type: str, inputs: list[str], name: str, domain: str = "", num_outputs: int = 1,
             **attributes) -> str:
        """Add a node named ``name`` whose output tensor has the same name; returns it."""
        name = self.unique(name)
        outputs = [name] if num_outputs == 1 else [f"{name}:{k}" for k in range(num_outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attributes))
        return name

    def rename_output(self, tensor: str, name: str) -> str:
        """Give the graph output ``tensor`` the public name ``name`` (an Identity node)."""
        return self.node("Identity", [tensor], name)

    def add_input(self, name: str, elem_type: int, shape: list) -> str:
        self._used[name] += 1
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def build(self, functions: list[onnx.FunctionProto] = (), doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers,
                                  doc_string=doc)
        opsets = [helper.make_opsetid(domain, version) for domain, version in self.domains.items()]
        # The oldest IR version that knows these opsets: newer IRs than needed lock out older consumers.
        ir_version = max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 8)
        return helper.make_model(graph, opset_imports=opsets, functions=list(functions),
                                 producer_name="layercascade", ir_version=ir_version)


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """The ONNX model at ``path``, or one line naming the damaged file."""
    try:
        return onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf raises several types on damaged files
        fail(f"{path}: corrupt or truncated ONNX file ({str(error).splitlines()[0][:120]}); re-export the model")


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def producers_of(nodes: Iterable[onnx.NodeProto]) -> dict[str, onnx.NodeProto]:
    """Tensor name → the node that writes it."""
    return {output: node for node in nodes for output in node.output}


def consumers_of(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name → the nodes that read it."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def only_consumer(consumers: dict[str, list[onnx.NodeProto]], outputs: set[str], name: str,
                  op_type: str) -> onnx.NodeProto | None:
    """The one node reading ``name``, when it is a standard ``op_type`` and ``name`` no graph output."""
    found = consumers.get(name, [])
    if name in outputs or len(found) != 1 or (found[0].domain, found[0].op_type) != ("", op_type):
        return None
    return found[0]


def scalar_value(initializers: dict[str, onnx.TensorProto], name: str) -> float | None:
    """The value of a one-element initializer, else None."""
    if name not in initializers:
        return None
    value = numpy_helper.to_array(initializers[name])
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def per_tensor_zero_point_0(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                            dtype: type | None = None) -> bool:
    """A Q or DQ with one scale and zero point 0 (of ``dtype`` when given) from initializers."""
    if len(node.input) != 3 or not all(i in initializers for i in node.input[1:]):
        return False
    scale, zero = (numpy_helper.to_array(initializers[i]) for i in node.input[1:])
    return scale.size == 1 and zero.size == 1 and (dtype is None or zero.dtype == dtype) and not zero.any()


def live_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` without those no graph output depends on (e.g. the dense DQ of an input whose
    region convs read the int8 tensor instead, or the form of a tensor no one reads)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    return kept[::-1]


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads."""
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied
