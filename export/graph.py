"""A small ONNX graph builder that keeps node and tensor names readable (for Netron)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper


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
