"""ONNX Runtime's INT8 rewrites of a QDQ graph, applied when the ORT backend loads it.

The model dir keeps the int8 QDQ form lc-calibrate writes (TensorRT needs it); these rewrites
suit ONNX Runtime's CPU int8 kernels (docs/calibration.md):

* :func:`relu_as_uint8`: activations that cannot be negative quantized as uint8, so ONNX Runtime
  fuses Conv + ReLU + Q and runs its fast u8·s8 kernels;
* :func:`mean_as_zero_point`: the image normalisation as one DequantizeLinear;
* :func:`rectified_outputs` tells the next stage which of its inputs a ReLU produced, and
  :func:`int8_conv_inputs` whether a graph's convs read int8 activations (the u8·u8 setting).

Float graphs pass through unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layercascade.export.graph import (
    QDQ_OPS,
    attributes,
    consumers_of,
    copy_model,
    drop_unused_initializers,
    only_consumer,
    per_tensor_zero_point_0,
    producers_of,
    scalar_value,
)


def relu_as_uint8(model: onnx.ModelProto, non_negative_inputs: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """An INT8 QDQ graph for ONNX Runtime's CPU kernels: activations that cannot be negative are
    quantized as uint8 with zero point 0 instead of int8 (a copy, or ``model`` itself when it has
    no Q/DQ; the model dir keeps its int8 form, which TensorRT needs).

    A per-tensor int8 zero point 0 becomes uint8 0 when every QuantizeLinear using it reads a
    ReLU output, a ``Max(·, 0)`` output or one of ``non_negative_inputs`` (graph inputs another
    stage produced by a ReLU), directly or through Identity / Q / DQ with zero point 0 (the
    joined cascade's stage boundaries); its DequantizeLinears, gathers and pads follow the type.
    Then:

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
    model = copy_model(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)  # one Python object per node, so id() names it
    producers = producers_of(nodes)
    consumers = consumers_of(nodes)
    outputs = {o.name for o in graph.output}

    def rectifier(name: str) -> onnx.NodeProto | None:
        """The ReLU or Max(·, 0) node producing ``name``."""
        node = producers.get(name)
        if node is not None and (node.op_type == "Relu" or (node.op_type == "Max" and len(node.input) == 2
                                                             and scalar_value(initializers, node.input[1]) == 0.0)):
            return node
        return None

    def int8_zero_point_0(node: onnx.NodeProto) -> bool:
        return per_tensor_zero_point_0(node, initializers, np.int8)

    quantizers: dict[str, list[onnx.NodeProto]] = {}  # zero point initializer → its Qs
    for node in nodes:
        if node.op_type in QDQ_OPS and len(node.input) == 3:
            quantizers.setdefault(node.input[2], [])
            if node.op_type == "QuantizeLinear":
                quantizers[node.input[2]].append(node)
    def non_negative(name: str) -> bool:
        """Produced by a rectifier, or by Identity / Q / DQ (zero point 0) of a non-negative tensor."""
        node = producers.get(name)
        if name in non_negative_inputs or rectifier(name) is not None:
            return True
        passes = node is not None and (node.op_type == "Identity" or (
            node.op_type in QDQ_OPS and per_tensor_zero_point_0(node, initializers)))
        return passes and non_negative(node.input[0])

    unsigned = [zero for zero, qs in quantizers.items()
                if qs and all(int8_zero_point_0(q) and non_negative(q.input[0]) for q in qs)
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
        only_reader = only_consumer(consumers, outputs, source, node.op_type) is node
        pair_dq = producers.get(source) if only_reader else None
        pair_q = producers.get(pair_dq.input[0]) if pair_dq is not None and pair_dq.op_type == "DequantizeLinear" else None
        if (pair_q is not None and pair_q.op_type == "QuantizeLinear" and int8_zero_point_0(pair_q)
                and only_consumer(consumers, outputs, pair_q.output[0], "DequantizeLinear") is pair_dq
                and producers.get(pair_q.input[0]) is not None and producers[pair_q.input[0]].op_type == "Conv"
                and only_consumer(consumers, outputs, pair_q.input[0], "QuantizeLinear") is pair_q):
            source = pair_q.input[0]
            removed.update([id(pair_q), id(pair_dq)])
        for reader in readers:
            reader.input[0] = source
        removed.add(id(node))
    kept = [n for n in nodes if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph)
    return model


def mean_as_zero_point(model: onnx.ModelProto) -> onnx.ModelProto:
    """An INT8 graph's image normalisation in one pass for ONNX Runtime: ``Cast(uint8) → Sub(mean)``
    becomes a DequantizeLinear with the mean, rounded, as its per-channel zero point, and every
    conv reading it takes the rounding (mean − round(mean)) into its bias (a copy; ``model``
    itself when nothing matches or it has no Q/DQ: float graphs stay exact).

    Inside the image the conv's output is unchanged. Its zero padding now stands for the rounded
    mean instead of the mean: taps outside the image (with our stems, output row 0 and column
    0) are off by at most 0.5 / std of an input step, about 1/115 of the stem's 0–255 input range
    per channel, far below int8's quantization error (the INT8 accuracy tables measure all of it).
    """
    if not any(node.op_type in QDQ_OPS for node in model.graph.node):
        return model
    original, model = model, copy_model(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = producers_of(graph.node)
    consumers = consumers_of(graph.node)
    uint8_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8}

    def is_uint8(name: str) -> bool:
        node = producers.get(name)
        if node is None:
            return name in uint8_inputs
        return node.op_type in ("Transpose", "Identity") and is_uint8(node.input[0])

    def float_convs(name: str) -> list[onnx.NodeProto] | None:
        convs = consumers.get(name, [])
        ok = convs and all(c.op_type == "Conv" and c.input[0] == name and attributes(c).get("group", 1) == 1
                           and all(i in initializers for i in c.input[1:]) and initializers[c.input[1]].dims
                           and len(initializers[c.input[1]].dims) == 4 for c in convs)
        return convs if ok else None

    outputs = {o.name for o in graph.output}
    rewritten = False
    for cast in list(graph.node):
        if (cast.op_type != "Cast" or attributes(cast).get("to") != onnx.TensorProto.FLOAT
                or not is_uint8(cast.input[0])):
            continue
        # The export casts, then transposes to NCHW, then subtracts; a Transpose may also come first.
        transpose = only_consumer(consumers, outputs, cast.output[0], "Transpose")
        sub = only_consumer(consumers, outputs, (transpose or cast).output[0], "Sub")
        if sub is None or sub.input[0] != (transpose or cast).output[0] or sub.input[1] not in initializers:
            continue
        mean = numpy_helper.to_array(initializers[sub.input[1]]).astype(np.float64)
        convs = float_convs(sub.output[0])
        if convs is None or mean.ndim not in (3, 4) or mean.size != mean.shape[-3] or not (0 <= mean).all() \
                or not (mean <= 255).all():
            continue
        mean = mean.reshape(-1)
        zero_point = np.round(mean).astype(np.uint8)
        for conv in convs:
            weight = numpy_helper.to_array(initializers[conv.input[1]]).astype(np.float64)
            shift = np.einsum("ochw,c->o", weight, zero_point - mean)
            bias_name = conv.input[2] if len(conv.input) > 2 else ""
            bias = numpy_helper.to_array(initializers[bias_name]) if bias_name else np.zeros(len(shift), np.float32)
            name = f"{conv.name}/bias_at_rounded_mean"
            graph.initializer.append(numpy_helper.from_array((bias + shift).astype(np.float32), name))
            conv.input[2:] = [name]
        scale, zero = f"{sub.name}/unit_scale", f"{sub.name}/rounded_mean"
        graph.initializer.extend([numpy_helper.from_array(np.ones(len(mean), np.float32), scale),
                                  numpy_helper.from_array(zero_point, zero)])
        source = cast.input[0]
        if transpose is not None:  # transposed while uint8: the DequantizeLinear's channel axis is 1
            transpose.input[0] = source
            source = transpose.output[0]
        sub.CopyFrom(helper.make_node("DequantizeLinear", [source, scale, zero], [sub.output[0]],
                                      name=f"{sub.name}/as_dequantize", axis=1))
        graph.node.remove(cast)
        rewritten = True
    if not rewritten:
        return original
    drop_unused_initializers(graph)
    return model


def rectified_outputs(model: onnx.ModelProto) -> frozenset[str]:
    """Graph outputs that a ReLU produces (through Identity, or a Q → DQ pair): never negative.
    The next stage may quantize them as uint8 (:func:`relu_as_uint8`)."""
    producers = producers_of(model.graph.node)

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
    producers = producers_of(model.graph.node)
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        dequantize = producers.get(node.input[0]) if node.op_type == "Conv" else None
        if (dequantize is not None and dequantize.op_type == "DequantizeLinear" and len(dequantize.input) == 3
                and dequantize.input[0] not in initializers and dequantize.input[2] in initializers
                and initializers[dequantize.input[2]].data_type == onnx.TensorProto.INT8):
            return True
    return False
