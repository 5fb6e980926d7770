"""Small ONNX graphs of ``lc::RegionConv`` nodes with their inputs and reference output, to check the
TensorRT plugin end to end (``tools/trt_smoke.py``, the TensorRT tests).

The nodes are written as lc-export writes them (attributes of ``export/regionconv.py``, the
model-local function body), so TensorRT's parser takes the plugin path for each; the reference is
the dense masked form of the region semantics, in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from layercascade.export import regionconv
from layercascade.export.fp16 import retype_region_conv_body

OPSET = 18
DTYPES = {"fp32": np.float32, "fp16": np.float16}


class Layer(NamedTuple):
    """One RegionConv of a chain: output channels, kernel size and dilation (an int or (height, width)),
    fused ReLU."""

    c_out: int
    kernel: int | tuple[int, int] = 3
    dilation: int | tuple[int, int] = 1
    relu: bool = True


class Example(NamedTuple):
    model: object  # onnx.ModelProto
    feeds: dict[str, np.ndarray]  # "X" (N, C, H, W) and "M" (N, 1, H, W), in the graph's dtype
    expected: np.ndarray  # "Y", float64


def region_conv_chain(precision: str, shape: tuple[int, int, int, int], layers: Sequence[Layer],
                      seed: int = 0, active: float = 0.3) -> Example:
    """``layers`` chained on one mask (share ``active`` of the pixels): X → RegionConv → … → Y."""
    import onnx
    import torch
    from onnx import helper, numpy_helper

    from layercascade.model.region import region_conv2d

    dtype = DTYPES[precision]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(seed)
    n, channels, h, w = shape
    x = rng.standard_normal(shape).astype(dtype)
    mask = (rng.random((n, 1, h, w)) < active).astype(dtype)
    nodes, initializers, value = [], [], "X"
    expected = torch.from_numpy(x.astype(np.float64))
    for k, layer in enumerate(layers):
        (kh, kw), (dh, dw) = _pair(layer.kernel), _pair(layer.dilation)
        weight = (rng.standard_normal((layer.c_out, channels, kh, kw)) / np.sqrt(channels * kh * kw)).astype(dtype)
        bias = (0.1 * rng.standard_normal(layer.c_out)).astype(dtype)
        initializers += [numpy_helper.from_array(weight, f"W{k}"), numpy_helper.from_array(bias, f"B{k}")]
        pad = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
        output = "Y" if k == len(layers) - 1 else f"Y{k}"
        nodes.append(helper.make_node(regionconv.OP_TYPE, [value, f"W{k}", f"B{k}", "M"], [output], name=f"rc{k}",
                                      domain=regionconv.DOMAIN,
                                      **regionconv.node_attributes(pad, (dh, dw), 1, layer.relu)))
        expected = region_conv2d(expected, torch.from_numpy(weight.astype(np.float64)),
                                 torch.from_numpy(bias.astype(np.float64)), torch.from_numpy(mask.astype(np.float64)),
                                 padding=pad, dilation=(dh, dw))
        expected = expected.relu() if layer.relu else expected
        value, channels = output, layer.c_out
    graph = helper.make_graph(nodes, "region_conv_chain",
                              [helper.make_tensor_value_info("X", elem, shape),
                               helper.make_tensor_value_info("M", elem, (n, 1, h, w))],
                              [helper.make_tensor_value_info("Y", elem, (n, channels, h, w))], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(regionconv.DOMAIN, regionconv.VERSION)],
                              functions=[regionconv.function_proto(OPSET)])
    if precision == "fp16":
        retype_region_conv_body(model)  # the body's float constants and casts, for ONNX consumers
    onnx.checker.check_model(model, full_check=True)
    return Example(model, {"X": x, "M": mask}, expected.numpy())


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def tolerance(precision: str, expected: np.ndarray) -> float:
    """Max abs error allowed against the float64 reference: fp32 accumulation order; fp16 one
    rounding of inputs and output on top (as the kernel check's tolerances)."""
    return {"fp32": 1e-4, "fp16": 4e-3}[precision] * max(1.0, float(np.abs(expected).max()))


def run_plan(trt: object, logger: object, plan: object, example: Example) -> np.ndarray:
    """Deserialize the TensorRT ``plan`` (``trt``: the tensorrt module), run it on ``example``'s feeds on
    torch's current CUDA stream, and return its output Y as float64 (NaN where it wrote nothing)."""
    import torch

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    tensors = {name: torch.from_numpy(value).cuda() for name, value in example.feeds.items()}
    tensors["Y"] = torch.full(example.expected.shape, float("nan"), dtype=tensors["X"].dtype, device="cuda")
    for name, tensor in tensors.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("execute_async_v3 failed")
    stream.synchronize()
    return tensors["Y"].cpu().double().numpy()

