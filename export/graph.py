"""ONNX graph helpers: a builder that keeps node and tensor names readable (for Netron), and the
small queries and edits every graph pass shares (the lowering, the cascade join, the calibration,
ONNX Runtime's INT8 rewrites and layout fold, lc-build's graph loading).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from layercascade.contract import (
    DTYPES,
    DYNAMIC_DIMS,
    IMAGE,
    LABELS,
    OPTIONAL_OUTPUTS,
    SCORES1,
    SCORES2,
    STAGE_INPUTS,
    STAGE_OUTPUTS,
)
from layercascade.errors import fail
from layercascade.manifest import MANIFEST, is_plain_file_name

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
    """The ONNX model at ``path``, or one line naming the damaged file.

    Tensors stored as external data are read only from plain files beside ``path`` (the model dir's
    rule for names: ``manifest.check_file_name``); any other location is refused, naming it."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises several types on damaged files
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        fail(f"{path}: corrupt or truncated ONNX file ({first[:300]}); re-export the model")
    external = [t for t in all_tensors(model) if external_data_helper.uses_external_data(t)]
    for tensor in external:
        location = external_data_helper.ExternalDataInfo(tensor).location
        file = path.parent / location
        if not is_plain_file_name(location) or not file.is_file() or file.resolve().parent != path.parent.resolve():
            fail(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a file beside it "
                 "(external data is read only from files in the model's own folder); re-export the model")
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as error:  # noqa: BLE001 - a short or unreadable data file
            fail(f"{path}: its external data cannot be read ({str(error)[:200]}); re-export the model")
    return model


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a model holds: the initializers and the attribute tensors of every node, in subgraphs
    and model-local functions too."""
    def of_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    yield from of_graph(graph)

    def of_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        yield from of_nodes(graph.node)

    yield from of_graph(model.graph)
    for function in model.functions:
        yield from of_nodes(function.node)


def io_spec(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """A graph's inputs and outputs as ``lc.json`` lists them: name, numpy dtype, shape (a symbolic
    dimension by its name)."""
    def describe(values: Iterable[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
        return [{"name": v.name,
                 "dtype": helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def check_stage_graphs(model_dir: Path, manifest: dict[str, Any], graphs: Sequence[onnx.ModelProto]) -> None:
    """Fail (one line naming the file and the field) unless the three stage ``graphs`` are the ones
    ``lc.json`` describes and form the stage contract: each graph's inputs and outputs are the
    contract's names with the dtypes and shapes ``lc.json`` lists, each stage reads what the stage
    before wrote, the image and label maps are ``input_size`` and the scores have one channel per class.

    A hash recomputed after swapping a file, or an edited ``lc.json``, fails here instead of giving
    wrong labels or a runtime's error per image.
    """
    lc_json = model_dir / MANIFEST
    # A dynamic-size export's image and label maps have the symbolic height and width of the contract.
    height, width = DYNAMIC_DIMS if "dynamic_size" in manifest else manifest["input_size"]
    classes = len(manifest["classes"])
    written: dict[str, tuple[str, dict[str, Any]]] = {}
    for graph, entry, *contract in zip(graphs, manifest["stages"], STAGE_INPUTS, STAGE_OUTPUTS, strict=True):
        file = model_dir / entry["file"]
        spec = io_spec(graph)
        for side, names in zip(("inputs", "outputs"), contract, strict=True):
            found = {t["name"]: t for t in spec[side]}
            # An output of :data:`OPTIONAL_OUTPUTS` that an earlier export did not write is left out.
            names = tuple(n for n in names if n in found or n not in OPTIONAL_OUTPUTS)
            missing, extra = [n for n in names if n not in found], [n for n in found if n not in names]
            if missing or extra:
                fail(f"{file}: its {side} are not the stage contract's {list(names)} (missing {missing}, extra "
                     f"{extra}); re-export the model")
            listed = {t.get("name"): t for t in entry.get(side, []) if isinstance(t, dict)}
            for name in names:
                tensor = found[name]
                if listed.get(name) != tensor:
                    fail(f"{file}: {side[:-1]} {name} is {_described(tensor)}, {lc_json} lists "
                         f"{_described(listed.get(name))}; the file does not belong to this model dir, re-export it")
                if name in DTYPES and tensor["dtype"] != DTYPES[name]:
                    fail(f"{file}: {side[:-1]} {name} is {tensor['dtype']}, the stage contract says "
                         f"{DTYPES[name]}; re-export the model")
                if side == "inputs" and name in written and written[name][1] != tensor:
                    fail(f"{file}: input {name} is {_described(tensor)}, but {written[name][0]} writes "
                         f"{_described(written[name][1])}; re-export the model")
            if side == "outputs":
                written.update((name, (file.name, found[name])) for name in names)
        for tensor in spec["inputs"] + spec["outputs"]:
            name, shape = tensor["name"], tensor["shape"]
            if name in (IMAGE, LABELS) and shape[1:3] != [height, width]:
                fail(f"{lc_json}: input_size {[height, width]} does not match {file.name}'s {name} "
                     f"{_described(tensor)}; fix input_size or re-export the model")
            if name in (SCORES1, SCORES2) and shape[1] != classes:
                fail(f"{lc_json}: {classes} classes (and palette colours), but {file.name}'s {name} has {shape[1]} "
                     "channels; fix classes and palette or re-export the model")


def _described(tensor: dict[str, Any] | None) -> str:
    return "missing" if tensor is None else f"{tensor.get('dtype')} {tensor.get('shape')}"


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
