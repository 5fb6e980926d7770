"""The RegionConv lowering on small hand-built graphs: the row form computes what the
function bodies (dense conv ⊙ M) compute, for the graph shapes the backbones do not
produce yet (an identity residual block in a region, two regions in one graph, rows of one
region read by the convs of another)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto

from layercascade.export import regionconv
from layercascade.export.graph import GraphBuilder
from layercascade.export.lowering import lower_region_convs

SHAPE = (2, 8, 9, 11)  # N, C, H, W


class Graph:
    """A float graph with feature input ``x`` and region masks as inputs."""

    def __init__(self, masks: tuple[str, ...] = ("m",)) -> None:
        self.g = GraphBuilder("lowering_test", 18)
        self.rng = np.random.default_rng(0)
        n, c, h, w = SHAPE
        self.x = self.g.add_input("x", TensorProto.FLOAT, list(SHAPE))
        self.masks = {m: self.g.add_input(m, TensorProto.FLOAT, [n, 1, h, w]) for m in masks}

    def conv(self, x: str, mask: str, kernel: int = 3, dilation: int = 1, relu: bool = True) -> str:
        channels = SHAPE[1]
        weight = self.g.constant("w", self.rng.normal(0, 0.3, (channels, channels, kernel, kernel)).astype(np.float32))
        bias = self.g.constant("b", self.rng.normal(0, 0.1, channels).astype(np.float32))
        pad = dilation * (kernel // 2)
        self.g.domains[regionconv.DOMAIN] = regionconv.VERSION
        return self.g.node(regionconv.OP_TYPE, [x, weight, bias, self.masks[mask]], "conv", domain=regionconv.DOMAIN,
                           **regionconv.node_attributes((pad, pad), (dilation, dilation), 1, relu))

    def build(self, *outputs: str) -> onnx.ModelProto:
        for k, name in enumerate(outputs):
            out = self.g.node("Identity", [name], f"out{k}")
            self.g.add_output(out, TensorProto.FLOAT, list(SHAPE))
        return self.g.build([regionconv.function_proto(18)])


def feeds(masks: tuple[str, ...], shares: tuple[float, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    n, _, h, w = SHAPE
    ranks = rng.random((n, 1, h, w))
    out = {"x": rng.normal(0, 1, SHAPE).astype(np.float32)}
    out.update({m: (ranks < share).astype(np.float32) for m, share in zip(masks, shares)})
    return out


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def assert_lowering_matches_bodies(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> onnx.ModelProto:
    lowered = lower_region_convs(model)
    assert not any(n.domain == regionconv.DOMAIN for n in lowered.graph.node)
    for ours, reference in zip(run(lowered, inputs), run(model, inputs), strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    return lowered


@pytest.mark.parametrize("shares", [(0.0,), (0.3,), (1.0,)], ids=["none", "some", "all"])
def test_identity_residual_block_keeps_its_input_outside_the_region(shares) -> None:
    """``y = x + M ⊙ branch(x)`` equals x outside M; the next conv reads y there (the branch
    starts with a 1×1 conv, which gathers x's rows at M: they are not y's rows)."""
    graph = Graph()
    y = graph.g.node("Add", [graph.x, graph.conv(graph.conv(graph.x, "m", kernel=1), "m", relu=False)], "residual")
    z = graph.conv(y, "m", dilation=2)
    assert_lowering_matches_bodies(graph.build(y, z), feeds(("m",), shares))


@pytest.mark.parametrize("shares", [(0.5, 0.2), (0.2, 0.5), (1.0, 0.0)], ids=["nested", "crossing", "disjoint"])
def test_rows_of_one_region_feed_the_convs_of_another(shares) -> None:
    """Stage 2 → stage 3 in one graph: a conv in M₃ reads a tensor that only has rows in M₂."""
    graph = Graph(("m2", "m3"))
    feature2 = graph.conv(graph.conv(graph.x, "m2"), "m2")
    feature3 = graph.conv(feature2, "m3", dilation=2)
    pointwise = graph.conv(feature2, "m3", kernel=1, relu=False)
    joined = graph.g.node("Add", [feature3, pointwise], "joined")
    lowered = assert_lowering_matches_bodies(graph.build(feature3, joined), feeds(("m2", "m3"), shares))
    # feature2 never becomes dense: the only scatters are those of the two outputs.
    assert [n.op_type for n in lowered.graph.node].count("ScatterND") == 2


def test_masked_dense_tensor_joins_rows() -> None:
    """``pool(x) ⊙ M`` (a region stage's pooling branch) concatenated with region-conv rows."""
    graph = Graph()
    pooled = graph.g.node("MaxPool", [graph.x], "pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    masked = graph.g.node("Mul", [pooled, graph.masks["m"]], "pool/region")
    mixed = graph.g.node("Add", [masked, graph.conv(graph.x, "m")], "mixed")
    assert_lowering_matches_bodies(graph.build(graph.conv(mixed, "m")), feeds(("m",), (0.4,)))


@pytest.mark.parametrize("shares", [(0.0,), (0.3,), (1.0,)], ids=["none", "some", "all"])
def test_score_fusion_writes_the_region_rows_into_the_earlier_scores(shares) -> None:
    """Stage 3's channels-last fusion ``E · (1 − Mᵀ) + Sᵀ`` with S a region conv's output: the
    lowering writes S's rows into E with one ScatterND (no product, no zero-filled map of S)."""
    graph = Graph()
    g = graph.g

    def nhwc(name: str) -> str:
        return g.node("Transpose", [name], f"{name}/nhwc", perm=[0, 2, 3, 1])

    scores = graph.conv(graph.x, "m", relu=False)
    earlier = g.node("Relu", [graph.x], "earlier")
    outside = g.node("Sub", [g.constant("one", np.float32(1)), nhwc(graph.masks["m"])], "outside")
    fused = g.node("Add", [g.node("Mul", [nhwc(earlier), outside], "kept"), nhwc(scores)], "fuse")
    model = graph.build(g.node("Transpose", [fused], "nchw", perm=[0, 3, 1, 2]))
    lowered = assert_lowering_matches_bodies(model, feeds(("m",), shares))
    ops = [n.op_type for n in lowered.graph.node]
    assert ops.count("ScatterND") == 1 and "ConstantOfShape" not in ops and "Mul" not in ops
