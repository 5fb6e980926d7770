"""Layout rewrites for OpenVINO's CPU plugin (:func:`openvino_layouts`), each exact: the same operations
on the same numbers.

**The image normalised channels-last.** Our graphs take the uint8 image NHWC and normalise it as
``Cast → Transpose(NCHW) → Sub(mean)`` (export/stages.py). OpenVINO runs its convolutions
channels-last, so it transposes the image to NCHW and then reorders it back for the stem conv: two
passes over the full-size image. With the Sub moved above the Transpose (``Cast → Sub(mean) →
Transpose``) it fuses Cast and Sub into one kernel and folds the Transpose into the stem conv's
input layout (a stem-only graph at 512², bf16: 0.26 ms instead of 0.37 ms; fp32: 0.30 instead of 0.71).

**Zero borders padded before the transpose to rows.** The lowering (``export/lowering.py``) turns a
dense feature map into rows as ``Transpose(NHWC) → Pad → Reshape``, the order ONNX Runtime folds into
its conv's output reorder. OpenVINO runs that Transpose in a reference kernel (0.2 ms for stage 1's
64×64×32 features at 512²) and reorders the padded map once more; padded first (``Pad → Transpose``)
the transpose folds into the conv's channels-last output and both passes go (0.40 → 0.13 ms).

**ArgMax off the last axis.** OpenVINO reads ONNX's ArgMax as a stable TopK, which over the last axis
is several times slower than over a middle one. The 8× label path reduces a middle axis already
(``export/stages.py``); the Resize path of other input sizes takes the argmax of the full-size
channels-last scores (the order ONNX Runtime runs fastest), 10 ms of 16 at 500×372: here it
becomes a Transpose to classes-first and an ArgMax over axis 1.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from layercascade.export.graph import attributes, consumers_of, only_consumer

TO_NCHW = [0, 3, 1, 2]


def openvino_layouts(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every rewrite of this module (in place; returned for chaining)."""
    return argmax_off_last_axis(pad_before_transpose(normalise_channels_last(model)))


def normalise_channels_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ``Transpose(NCHW) → Sub(per-channel constant)`` of a Cast graph input turned
    into ``Sub(the constant, channels last) → Transpose`` (in place; returned for chaining)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers = consumers_of(graph.node)
    outputs = {v.name for v in graph.output}
    inputs = {v.name for v in graph.input}
    casts = {n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] in inputs}
    for transpose in list(graph.node):
        if (transpose.op_type != "Transpose" or transpose.input[0] not in casts
                or attributes(transpose).get("perm") != TO_NCHW):
            continue
        subtract = only_consumer(consumers, outputs, transpose.output[0], "Sub")
        if subtract is None or subtract.input[0] != transpose.output[0]:
            continue
        mean = initializers.get(subtract.input[1])
        if mean is None or len(mean.dims) != 4 or list(mean.dims[:1]) + list(mean.dims[2:]) != [1, 1, 1]:
            continue
        channels_last = numpy_helper.from_array(numpy_helper.to_array(mean).reshape(-1).astype(np.float32),
                                                f"{mean.name}/channels_last")
        graph.initializer.append(channels_last)
        swap(transpose, subtract, [transpose.input[0], channels_last.name])
    return model


def swap(first: onnx.NodeProto, second: onnx.NodeProto, second_inputs: list[str]) -> None:
    """``first → second`` (``second`` ``first``'s only reader) as ``second → first``, in place: ``second``'s
    operation, on ``second_inputs`` (the first of them ``first``'s old input), moves to ``first``'s place in
    the node list and writes a new tensor, which ``first``'s operation reads, writing ``second``'s output."""
    between = f"{second.output[0]}/before_{first.op_type.lower()}"
    moved_up = onnx.NodeProto()
    moved_up.CopyFrom(second)
    moved_up.input[:] = second_inputs
    moved_up.output[:] = [between]
    moved_down = onnx.NodeProto()
    moved_down.CopyFrom(first)
    moved_down.input[0] = between
    moved_down.output[:] = list(second.output)
    first.CopyFrom(moved_up)
    second.CopyFrom(moved_down)


def pad_before_transpose(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ``Transpose → Pad(constant pads, zeros)`` that is the Transpose's only reader
    turned into ``Pad(the pads permuted back) → Transpose`` (in place; returned for chaining)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers = consumers_of(graph.node)
    outputs = {v.name for v in graph.output}
    for transpose in list(graph.node):
        pad = only_consumer(consumers, outputs, transpose.output[0], "Pad")
        if transpose.op_type != "Transpose" or pad is None:
            continue
        value = pad.input[2] if len(pad.input) > 2 else ""
        if (attributes(pad).get("mode", b"constant") != b"constant" or len(pad.input) > 3
                or pad.input[1] not in initializers
                or value and (value not in initializers or np.any(numpy_helper.to_array(initializers[value])))):
            continue  # not a zero pad of all axes with constant pads
        perm = attributes(transpose)["perm"]
        pads = numpy_helper.to_array(initializers[pad.input[1]]).reshape(2, len(perm))
        before_transpose = np.empty_like(pads)
        before_transpose[:, perm] = pads  # output axis i is input axis perm[i]
        permuted = numpy_helper.from_array(before_transpose.reshape(-1), f"{pad.input[1]}/{transpose.output[0]}")
        graph.initializer.append(permuted)
        swap(transpose, pad, [transpose.input[0], permuted.name, *pad.input[2:]])
    return model


def argmax_off_last_axis(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ``ArgMax(axis = last, keepdims = 0)`` of a tensor of known rank ≥ 3 turned into
    ``Transpose(last axis to 1) → ArgMax(axis = 1)``, the same indices (in place; returned for chaining)."""
    graph = model.graph
    if not any(n.op_type == "ArgMax" and attributes(n).get("axis", 0) not in (0, 1) for n in graph.node):
        return model  # nothing to move (the 8× label path): no shape inference of the whole graph at load
    inferred = onnx.shape_inference.infer_shapes(model).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.input, *inferred.value_info]
             if v.type.tensor_type.HasField("shape")}
    nodes, transposed = [], {}
    for node in graph.node:
        rank = ranks.get(node.input[0], 0) if node.op_type == "ArgMax" else 0
        settings = attributes(node)
        if rank >= 3 and settings.get("keepdims", 1) == 0 and settings.get("axis", 0) % rank == rank - 1:
            if node.input[0] not in transposed:  # one Transpose for every such ArgMax of the tensor
                transposed[node.input[0]] = f"{node.input[0]}/classes_first"
                nodes.append(onnx.helper.make_node("Transpose", [node.input[0]], [transposed[node.input[0]]],
                                                   name=transposed[node.input[0]],
                                                   perm=[0, rank - 1, *range(1, rank - 1)]))
            node.input[0] = transposed[node.input[0]]
            for attribute in node.attribute:
                if attribute.name == "axis":
                    attribute.i = 1
        nodes.append(onnx.NodeProto.FromString(node.SerializeToString()))
    del graph.node[:]
    graph.node.extend(nodes)
    return model
