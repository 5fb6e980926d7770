"""A layout rewrite for OpenVINO's CPU plugin: normalise the image channels-last.

Our graphs take the uint8 image NHWC and normalise it as ``Cast → Transpose(NCHW) → Sub(mean)``,
the order ONNX Runtime runs fastest (export/stages.py). OpenVINO runs its convolutions channels-last, so it
transposes the image to NCHW and then reorders it back for the stem conv: two passes over the
full-size image. With the Sub moved above the Transpose (``Cast → Sub(mean) → Transpose``) it
fuses Cast and Sub into one kernel and folds the Transpose into the stem conv's input layout
(at 512², bf16: 0.26 ms instead of 0.37 ms; fp32: 0.30 instead of 0.71). The values are the same
operations on the same numbers, so unchanged bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from layercascade.export.graph import attributes, consumers_of

TO_NCHW = [0, 3, 1, 2]


def normalise_channels_last(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ``Transpose(NCHW) → Sub(per-channel constant)`` of a Cast graph input turned
    into ``Sub(the constant, channels last) → Transpose`` (in place; returned for chaining)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers = consumers_of(graph.node)
    inputs = {v.name for v in graph.input}
    casts = {n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] in inputs}
    for transpose in list(graph.node):
        if (transpose.op_type != "Transpose" or transpose.input[0] not in casts
                or attributes(transpose).get("perm") != TO_NCHW):
            continue
        readers = consumers.get(transpose.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Sub" or list(readers[0].input[:1]) != [transpose.output[0]]:
            continue
        subtract = readers[0]
        mean = initializers.get(subtract.input[1])
        if mean is None or len(mean.dims) != 4 or list(mean.dims[:1]) + list(mean.dims[2:]) != [1, 1, 1]:
            continue
        channels_last = numpy_helper.from_array(numpy_helper.to_array(mean).reshape(-1).astype(np.float32),
                                                f"{mean.name}/channels_last")
        graph.initializer.append(channels_last)
        # Sub reads the Cast and writes a new tensor; the Transpose reads that and writes the Sub's old output.
        normalised_nhwc = f"{subtract.output[0]}/nhwc"
        subtract.input[:] = [transpose.input[0], channels_last.name]
        transpose.input[0], transpose.output[0], subtract.output[0] = (normalised_nhwc, subtract.output[0],
                                                                       normalised_nhwc)
        nodes = list(graph.node)
        nodes.remove(subtract)
        nodes.insert(nodes.index(transpose), subtract)
        del graph.node[:]
        graph.node.extend(nodes)
    return model
