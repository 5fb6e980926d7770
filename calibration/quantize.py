"""Explicit-QDQ INT8 stage graphs: int8 weights per output channel, int8 activations per tensor, both symmetric.

This is the form TensorRT's strongly typed INT8 parses and ONNX Runtime's CPU int8 kernels
run (docs/calibration.md). The heads' classifiers and the stem (``statistics.float_convs``) stay float.

* standard graphs (stage 1, the dense graph): ONNX Runtime's ``QDQQuantizer`` puts Q/DQ on
  every Conv input and output (ONNX Runtime fuses DQ → Conv → Q into QLinearConv) with
  int32 biases;
* ``lc::RegionConv`` graphs (stages 2–3): inserted here. ``QDQQuantizer`` knows only its
  registry's op types (its ``QDQConv`` asserts ``op_type == "Conv"``) and would make the
  bias int32 at the input scale; the row lowering (export/lowering.py) and the TensorRT
  plugin want a float bias added after the int8 GEMM. So X gets Q → DQ (one pair per
  tensor, shared by every RegionConv reading it), W becomes an int8 initializer behind a
  DQ with ``axis = 0``, B stays float, and the output goes on in float. Scales come from
  ONNX Runtime's own ``compute_scale_zp`` / ``quantize_data``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layercascade.calibration.statistics import REGION_CONV, float_convs

Ranges = dict[str, tuple[np.float32, np.float32]]


def is_region_graph(model: Any) -> bool:
    return any((n.domain, n.op_type) == REGION_CONV for n in model.graph.node)


def quantize_graph(model: Any, ranges: Ranges) -> Any:
    """``model`` (an fp32 stage or dense graph) with QDQ nodes at the ``ranges`` of its tensors."""
    return quantize_region_graph(model, ranges) if is_region_graph(model) else quantize_standard_graph(model, ranges)


def quantize_standard_graph(model: Any, ranges: Ranges) -> Any:
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    tensors_range = TensorsData(CalibrationMethod.MinMax,
                                {name: TensorData(lowest=low, highest=high) for name, (low, high) in ranges.items()})
    quantizer = QDQQuantizer(onnx.shape_inference.infer_shapes(model), per_channel=True, reduce_range=False,
                             weight_qType=QuantType.QInt8, activation_qType=QuantType.QInt8,
                             tensors_range=tensors_range, nodes_to_quantize=None,
                             nodes_to_exclude=sorted(float_convs(model)),
                             op_types_to_quantize=["Conv"],
                             extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # the quantizer appends its Q/DQ nodes at the end (its save sorts too)
    quantized = quantizer.model.model
    del quantized.graph.value_info[:]  # shape inference's by-products; the exported graphs carry none
    return quantized


def activation_scale(low: np.float32, high: np.float32) -> np.float32:
    """Symmetric per-tensor int8 scale of the range (low, high)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=True)
    _, scale = compute_scale_zp(np.float32(low), np.float32(high), qmin, qmax, symmetric=True)
    return np.float32(scale)


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (axis 0) symmetric int8 weights → (int8 weights, float32 scales)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    channels = [quantize_data(w.reshape(-1), TensorProto.INT8, symmetric=True) for w in weight]
    scales = np.array([c[1] for c in channels], np.float32).reshape(-1)
    values = np.stack([np.asarray(c[2], np.int8).reshape(weight.shape[1:]) for c in channels])
    return values, scales


def quantize_region_graph(model: Any, ranges: Ranges) -> Any:
    """``model`` with Q → DQ on every RegionConv X and DQ(int8) weights (rewritten in place)."""
    import onnx
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    new_initializers: list[onnx.TensorProto] = []
    dequantized: dict[str, str] = {}  # float tensor → its DQ output
    nodes: list[onnx.NodeProto] = []

    def activation(name: str) -> str:
        if name not in dequantized:
            scale, zero = f"{name}/x_scale", f"{name}/x_zero_point"
            new_initializers.extend([numpy_helper.from_array(activation_scale(*ranges[name]), scale),
                                     numpy_helper.from_array(np.int8(0), zero)])
            nodes.append(helper.make_node("QuantizeLinear", [name, scale, zero], [f"{name}/q"], name=f"{name}/Q"))
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}/q", scale, zero], [f"{name}/dq"],
                                          name=f"{name}/DQ"))
            dequantized[name] = f"{name}/dq"
        return dequantized[name]

    def weight(name: str) -> str:
        values, scales = quantize_weight(numpy_helper.to_array(initializers[name]))
        quantized, scale, zero = f"{name}/int8", f"{name}/w_scale", f"{name}/w_zero_point"
        new_initializers.extend([numpy_helper.from_array(values, quantized), numpy_helper.from_array(scales, scale),
                                 numpy_helper.from_array(np.zeros(len(scales), np.int8), zero)])
        nodes.append(helper.make_node("DequantizeLinear", [quantized, scale, zero], [f"{name}/dq"],
                                      name=f"{name}/DQ", axis=0))
        return f"{name}/dq"

    kept_float = float_convs(model)
    quantized_convs = [n for n in model.graph.node if (n.domain, n.op_type) == REGION_CONV and n.name not in kept_float]
    quantized_names = {n.name for n in quantized_convs}
    for node in model.graph.node:
        if node.name in quantized_names:
            x, w, *rest = node.input
            rewritten = onnx.NodeProto()
            rewritten.CopyFrom(node)
            rewritten.input[:] = [activation(x), weight(w), *rest]
            nodes.append(rewritten)
        else:
            nodes.append(node)
    quantized_weights = {n.input[1] for n in quantized_convs}
    graph = model.graph
    kept = [t for t in graph.initializer if t.name not in quantized_weights]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)
    return model
