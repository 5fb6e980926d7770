"""The ONNX Runtime backend's rewrites of INT8 graphs around the stem: the image normalisation as
one DequantizeLinear (``runtime/ort/int8.py``'s ``mean_as_zero_point``) and the reorders folded in ONNX Runtime's
optimized graph (``runtime/ort/layout.py``'s ``fold_stem_reorders``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto

from layercascade.export.graph import GraphBuilder
from layercascade.runtime.ort.int8 import mean_as_zero_point

IMAGE = (2, 8, 10, 3)  # N, H, W, C: uint8 NHWC
MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # ImageNet's, not whole numbers


def stem_graph(quantized: bool, cast_first: bool = True) -> onnx.ModelProto:
    """image → float → NCHW (``cast_first``, as the export does; else NCHW → float) → − mean → 3×3
    stride-2 conv (zero padding), its output and (``quantized``) its Q → DQ."""
    rng = np.random.default_rng(0)
    g = GraphBuilder("stem_test", 18)
    image = g.add_input("image", TensorProto.UINT8, list(IMAGE))
    if cast_first:
        x = g.node("Transpose", [g.node("Cast", [image], "cast", to=TensorProto.FLOAT)], "nchw", perm=[0, 3, 1, 2])
    else:
        x = g.node("Cast", [g.node("Transpose", [image], "nchw", perm=[0, 3, 1, 2])], "cast", to=TensorProto.FLOAT)
    x = g.node("Sub", [x, g.constant("mean", MEAN.reshape(1, 3, 1, 1))], "sub_mean")
    weight = g.constant("w", rng.normal(0, 0.02, (4, 3, 3, 3)).astype(np.float32))
    conv = g.node("Conv", [x, weight, g.constant("b", rng.normal(0, 0.1, 4).astype(np.float32))], "stem",
                  kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    out = g.node("Identity", [conv], "conv_out")
    g.add_output(out, TensorProto.FLOAT, None)
    if quantized:
        scale, zero = g.constant("scale", np.float32(0.05)), g.constant("zero", np.int8(0))
        q = g.node("QuantizeLinear", [conv, scale, zero], "q")
        g.add_output(g.node("DequantizeLinear", [q, scale, zero], "dq"), TensorProto.FLOAT, None)
    return g.build()


def run(model: onnx.ModelProto, image: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})


@pytest.mark.parametrize("cast_first", [True, False], ids=["cast-transpose-sub", "transpose-cast-sub"])
def test_mean_as_zero_point_is_exact_inside_the_image(cast_first: bool) -> None:
    model = stem_graph(quantized=True, cast_first=cast_first)
    rewritten = mean_as_zero_point(model)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops[:2] == ["Transpose", "DequantizeLinear"] and "Cast" not in ops and "Sub" not in ops
    assert ops.count("DequantizeLinear") == 2
    image = np.random.default_rng(1).integers(0, 256, IMAGE, dtype=np.uint8)
    before, after = run(model, image)[0], run(rewritten, image)[0]
    # Stride 2, padding 1: output row 0 and column 0 read the padding, no other output does.
    np.testing.assert_allclose(after[:, :, 1:, 1:], before[:, :, 1:, 1:], rtol=1e-5, atol=1e-5)
    weights = np.abs(onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name.startswith("w"))))
    bound = (weights.sum(axis=(1, 2, 3)) * 0.5).reshape(1, -1, 1, 1)  # every tap off by ≤ 0.5 of an input step
    assert (np.abs(after - before) <= bound + 1e-5).all()
    assert np.abs(after[:, :, 0, :] - before[:, :, 0, :]).max() > 1e-4  # the padding now stands for round(mean)


def test_mean_as_zero_point_leaves_float_graphs_exact() -> None:
    model = stem_graph(quantized=False)
    assert mean_as_zero_point(model) is model
