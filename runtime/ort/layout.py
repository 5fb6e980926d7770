"""A layout fix in ONNX Runtime's optimized CPU graph that its own passes leave: the float → int8
boundary of INT8 graphs (the stem before stage 1's first int8 conv).

ONNX Runtime runs float convs in its blocked NCHWc layout ([N, C/b, H, W, b], b = 16 with
AVX-512, 8 with AVX2) and int8 convs in NHWC. Where a float conv feeds an int8 one it reorders
the conv's NCHWc output to NCHW, quantizes that and transposes the uint8 result to NHWC: two
passes over the stem's output, each as slow as the stem conv itself at 512×512. When the conv
has exactly one block of channels (C = b: the demo model's 16-channel stem on AVX-512), its
NCHWc tensor already is NHWC in memory, so the quantization can read it directly and a Reshape
(no copy) hands it to the int8 conv. :func:`fold_stem_reorders` makes that rewrite in the
graph ONNX Runtime optimized (``SessionOptions.optimized_model_filepath``), which the runtime
then loads with graph optimizations off. Values are unchanged bit for bit (the same kernels
run on the same numbers; the tests compare both sessions).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layercascade.export.graph import attributes, consumers_of, only_consumer
from layercascade.export.session import inference_session, session_options

NCHWC = "com.microsoft.nchwc"


@functools.cache
def nchwc_block_size() -> int | None:
    """ONNX Runtime's NCHWc block size on this machine (None: it does not use NCHWc here).

    Read off the graph it optimizes for a 1-output-channel conv, whose weights it pads to one block.
    """
    weight = numpy_helper.from_array(np.ones((1, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                              "block_probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [weight])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    optimized = optimize(probe, session_options())
    convs = [n for n in optimized.graph.node if (n.domain, n.op_type) == (NCHWC, "Conv")]
    weights = {t.name: t for t in optimized.graph.initializer}
    if len(convs) != 1 or convs[0].input[1] not in weights:
        return None
    return int(weights[convs[0].input[1]].dims[0])


def optimize(model: onnx.ModelProto, options: Any) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for ``model`` with ``options`` (of
    :func:`~layercascade.export.session.session_options`, all optimizations; used up here: set to
    save the result)."""
    options.log_severity_level = 3  # not its warning that the saved graph is specific to this machine
    with tempfile.TemporaryDirectory(prefix="lc-ort-") as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        inference_session(model, options)
        return onnx.load(options.optimized_model_filepath)


def fold_stem_reorders(model: onnx.ModelProto, options: Any) -> onnx.ModelProto | None:
    """ONNX Runtime's optimized graph of ``model`` (with ``options``, used up) with every NCHWc → NCHW →
    quantize → NHWC chain of a one-block conv output folded (module doc); None where there is none."""
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return None  # float graphs have no float → int8 boundary
    block = nchwc_block_size()
    if block is None:
        return None
    optimized = optimize(model, options)
    graph = optimized.graph
    consumers = consumers_of(graph.node)
    scalars = {t.name for t in graph.initializer if int(np.prod(t.dims)) == 1}
    outputs = {o.name for o in graph.output}

    shapes: dict[str, list[int | None]] | None = None
    folded: list[onnx.NodeProto] = []
    for reorder in graph.node:
        if (reorder.domain, reorder.op_type) != (NCHWC, "ReorderOutput"):
            continue
        settings = attributes(reorder)
        quantize = only_consumer(consumers, outputs, reorder.output[0], "QuantizeLinear")
        transpose = quantize and only_consumer(consumers, outputs, quantize.output[0], "Transpose")
        if (settings.get("channels") != block or settings.get("channels_last", 0) != 0 or transpose is None
                or quantize.input[1] not in scalars or attributes(transpose).get("perm") != [0, 2, 3, 1]):
            continue
        if shapes is None:  # the NCHW shapes of the original tensors, which keep their names here
            inferred = onnx.shape_inference.infer_shapes(model).graph
            shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
                      for v in [*inferred.value_info, *inferred.output]}
        shape = shapes.get(reorder.output[0])
        if not shape or len(shape) != 4 or None in shape[1:]:
            continue
        _, channels, height, width = shape
        nhwc = numpy_helper.from_array(np.array([-1, height, width, channels], np.int64),
                                       f"{transpose.name}/nhwc_shape")
        graph.initializer.append(nhwc)
        quantize.input[0] = reorder.input[0]  # per tensor: the same values in the NCHWc order, which is NHWC
        transpose.op_type = "Reshape"
        del transpose.attribute[:]
        transpose.input.append(nhwc.name)
        folded.append(reorder)
    if not folded:
        return None
    for reorder in folded:
        graph.node.remove(reorder)
    return optimized
