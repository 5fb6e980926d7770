"""Emit ONNX nodes for the blocks of a :class:`LayerCascadeNet`, with BN folded into convs.

Each block type has one emitter that mirrors its PyTorch ``forward``; in a region stage
(``mask`` given) every conv becomes an ``lc::RegionConv`` node, pooling is followed by
``⊙ M``, and residual blocks add ``M ⊙ branch`` (DESIGN §4). The parity tests hold the
two forms together.
"""

from __future__ import annotations

from torch import nn

from layercascade.export import regionconv
from layercascade.export.graph import GraphBuilder
from layercascade.model.backbones.irnet import Mixed5b, Mixed6a, Mixed7a, _Residual
from layercascade.model.backbones.resnet import BasicBlock, Bottleneck
from layercascade.model.layers import ConvBnAct, RegionPool, RegionSequential, StageHead, fold_batchnorm


class StageEmitter:
    """Emits the modules of one stage into ``builder``; ``mask`` names the region (None = all)."""

    def __init__(self, builder: GraphBuilder, mask: str | None) -> None:
        self.g = builder
        self.mask = mask

    # -- primitives -------------------------------------------------------------------
    def conv(self, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, x: str, relu: bool,
             scale: float = 1.0) -> str:
        """conv (+ folded BN, × scale) (+ ReLU); a RegionConv node in a region stage."""
        weight, bias = fold_batchnorm(conv, bn, scale)
        w = self.g.constant(f"{name}.weight", weight.numpy())
        b = self.g.constant(f"{name}.bias", bias.numpy())
        padding, dilation = tuple(conv.padding), tuple(conv.dilation)
        if self.mask is not None:
            if conv.stride != (1, 1):
                raise ValueError(f"{name}: region convolutions have stride 1 (got {conv.stride})")
            self.g.domains[regionconv.DOMAIN] = regionconv.VERSION
            return self.g.node(regionconv.OP_TYPE, [x, w, b, self.mask], name, domain=regionconv.DOMAIN,
                               **regionconv.node_attributes(padding, dilation, conv.groups, relu))
        y = self.g.node("Conv", [x, w, b], name, pads=[*padding, *padding], dilations=list(dilation),
                        strides=list(conv.stride), group=conv.groups, kernel_shape=list(conv.kernel_size))
        return self.g.node("Relu", [y], f"{name}/relu") if relu else y

    def region(self, name: str, x: str) -> str:
        """``x ⊙ M`` (nothing outside a region stage)."""
        return x if self.mask is None else self.g.node("Mul", [x, self.mask], f"{name}/region")

    def pool(self, name: str, pool: nn.Module, x: str) -> str:
        kernel = [pool.kernel_size] * 2 if isinstance(pool.kernel_size, int) else list(pool.kernel_size)
        stride = [pool.stride] * 2 if isinstance(pool.stride, int) else list(pool.stride)
        padding = [pool.padding] * 4 if isinstance(pool.padding, int) else [*pool.padding, *pool.padding]
        if isinstance(pool, nn.MaxPool2d):
            if pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
                raise ValueError(f"{name}: only undilated, floor-mode max pooling is exported")
            return self.g.node("MaxPool", [x], name, kernel_shape=kernel, strides=stride, pads=padding)
        if isinstance(pool, nn.AvgPool2d):
            return self.g.node("AveragePool", [x], name, kernel_shape=kernel, strides=stride, pads=padding,
                               count_include_pad=int(pool.count_include_pad))
        raise TypeError(f"{name}: cannot export pooling layer {type(pool).__name__}")

    # -- blocks ---------------------------------------------------------------------------
    def sequence(self, prefix: str, named: list[tuple[str, nn.Module]], x: str) -> str:
        """Modules in order; a plain Conv2d directly followed by its BatchNorm2d is folded."""
        index = 0
        while index < len(named):
            name, module = named[index]
            path = f"{prefix}{name}"
            if isinstance(module, nn.Conv2d):
                following = named[index + 1][1] if index + 1 < len(named) else None
                bn = following if isinstance(following, nn.BatchNorm2d) else None
                relu = bn is not None and index + 2 < len(named) and isinstance(named[index + 2][1], nn.ReLU)
                x = self.conv(path, module, bn, x, relu)
                index += 1 + (bn is not None) + relu
                continue
            x = self.module(path, module, x)
            index += 1
        return x

    def module(self, name: str, module: nn.Module, x: str) -> str:
        """Emit any supported block; ``name`` is its dotted path (also its node-name prefix)."""
        if isinstance(module, ConvBnAct):
            return self.conv(name, module.conv, module.bn, x, isinstance(module.relu, nn.ReLU))
        if isinstance(module, (RegionSequential, nn.Sequential)):
            return self.sequence(f"{name}.", list(module.named_children()), x)
        if isinstance(module, RegionPool):
            return self.region(name, self.pool(f"{name}.pool", module.pool, x))
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(name, module, x)
        if isinstance(module, nn.ReLU):
            return self.g.node("Relu", [x], name)
        if isinstance(module, (BasicBlock, Bottleneck)):
            return self.resnet_block(name, module, x)
        if isinstance(module, _Residual):
            return self.inception_residual(name, module, x)
        if isinstance(module, (Mixed5b, Mixed6a, Mixed7a)):
            branches = [self.module(f"{name}.{child}", getattr(module, child), x)
                        for child in ("branch0", "branch1", "branch2", "branch3") if hasattr(module, child)]
            return self.g.node("Concat", branches, f"{name}/concat", axis=1)
        if isinstance(module, StageHead):
            hidden = self.module(f"{name}.conv", module.conv, x)
            return self.conv(f"{name}.classifier", module.classifier, None, hidden, relu=False)
        raise TypeError(f"{name}: no ONNX emitter for {type(module).__name__}")

    def resnet_block(self, name: str, block: BasicBlock | Bottleneck, x: str) -> str:
        convs = [("conv1", "bn1"), ("conv2", "bn2")] + ([("conv3", "bn3")] if isinstance(block, Bottleneck) else [])
        out = x
        for k, (conv, bn) in enumerate(convs):
            out = self.conv(f"{name}.{conv}", getattr(block, conv), getattr(block, bn), out,
                            relu=k < len(convs) - 1)
        shortcut = x
        if block.downsample is not None:
            shortcut = self.conv(f"{name}.downsample", block.downsample[0], block.downsample[1], x, relu=False)
        added = self.g.node("Add", [out, shortcut], f"{name}/add")
        return self.g.node("Relu", [added], f"{name}/relu")

    def inception_residual(self, name: str, block: _Residual, x: str) -> str:
        branches = [self.module(f"{name}.{child}", getattr(block, child), x) for child in block.branches]
        mixed = self.g.node("Concat", branches, f"{name}/concat", axis=1)
        # The residual scale is folded into conv2d's weights and bias.
        up = self.conv(f"{name}.conv2d", block.conv2d, None, mixed, relu=False, scale=block.scale)
        added = self.g.node("Add", [x, up], f"{name}/add")
        return self.g.node("Relu", [added], f"{name}/relu") if isinstance(block.act, nn.ReLU) else added
