"""Emit ONNX nodes for the folded ops of a stage (``model/ops.py``).

In a region stage (``mask`` given) every conv becomes an ``lc::RegionConv`` node and the
``Mask`` ops multiply by the region; elsewhere convs are plain ``Conv`` (+ ``Relu``) nodes.
Node names are the ops' names (dotted module paths), so the graphs read like the network.
"""

from __future__ import annotations

from layercascade.export import regionconv
from layercascade.export.graph import GraphBuilder
from layercascade.model.ops import INPUT, Add, Concat, Conv, Mask, Op, Pool, Relu


class StageEmitter:
    """Emits op lists into ``builder``; ``mask`` names the region (None = every pixel)."""

    def __init__(self, builder: GraphBuilder, mask: str | None) -> None:
        self.g = builder
        self.mask = mask

    def emit(self, ops: list[Op], x: str) -> str:
        """Add the nodes of ``ops`` reading tensor ``x``; returns the tensor of the last op (``x`` if none)."""
        tensors = {INPUT: x}
        for op in ops:
            tensors[op.name] = self.node(op, tensors)
        return tensors[ops[-1].name] if ops else x

    def node(self, op: Op, tensors: dict[str, str]) -> str:
        if isinstance(op, Conv):
            return self.conv(op, tensors[op.source])
        if isinstance(op, Pool):
            return self.pool(op, tensors[op.source])
        if isinstance(op, Mask):
            return self.g.node("Mul", [tensors[op.source], self.mask], op.name)
        if isinstance(op, Relu):
            return self.g.node("Relu", [tensors[op.source]], op.name)
        if isinstance(op, Add):
            return self.g.node("Add", [tensors[name] for name in op.sources], op.name)
        if isinstance(op, Concat):
            return self.g.node("Concat", [tensors[name] for name in op.sources], op.name, axis=1)
        raise TypeError(f"{op.name}: no ONNX emitter for {type(op).__name__}")

    def conv(self, op: Conv, x: str) -> str:
        """conv (+ ReLU); a RegionConv node in a region stage."""
        w = self.g.constant(f"{op.name}.weight", op.weight.numpy())
        b = self.g.constant(f"{op.name}.bias", op.bias.numpy())
        if self.mask is not None:
            self.g.domains[regionconv.DOMAIN] = regionconv.VERSION
            return self.g.node(regionconv.OP_TYPE, [x, w, b, self.mask], op.name, domain=regionconv.DOMAIN,
                               **regionconv.node_attributes(op.padding, op.dilation, op.groups, op.relu))
        y = self.g.node("Conv", [x, w, b], op.name, pads=[*op.padding, *op.padding], dilations=list(op.dilation),
                        strides=list(op.stride), group=op.groups, kernel_shape=list(op.kernel))
        return self.g.node("Relu", [y], f"{op.name}/relu") if op.relu else y

    def pool(self, op: Pool, x: str) -> str:
        pads = [*op.padding, *op.padding]
        if op.kind == "max":
            return self.g.node("MaxPool", [x], op.name, kernel_shape=list(op.kernel), strides=list(op.stride),
                               pads=pads)
        return self.g.node("AveragePool", [x], op.name, kernel_shape=list(op.kernel), strides=list(op.stride),
                           pads=pads, count_include_pad=int(op.count_include_pad))
