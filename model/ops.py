"""The network as plain folded ops: the one walk over the blocks that every consumer reads.

:func:`backbone_ops` and :func:`head_ops` turn one stage's modules into a flat list of
:data:`Op` records — convs with BN (and a residual scale) folded into fp32 weights, pooling,
``⊙ M``, ReLU, residual adds and concats — in the order the blocks' ``forward`` runs them. The
ONNX emitter (``export/emit.py``) and the torch backend's kernel planner
(``runtime/torch/planner.py``) both consume these lists, so a new block type is taught here
once, and the two fast paths cannot disagree about what a block computes.

Each op names its output value (its dotted module path, or ``{path}/add`` and the like, which
are also the exported node names) and the values it reads; :data:`INPUT` is the list's input.
In a regional stage (stages 2–3 of the cascade) the consumer runs every :class:`Conv` as a
region conv and the :class:`Mask` ops apply the region (docs/architecture.md, region semantics);
outside one there are no :class:`Mask` ops.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from layercascade.model.backbones.irnet import Mixed5b, Mixed6a, Mixed7a, _Residual
from layercascade.model.backbones.resnet import BasicBlock, Bottleneck
from layercascade.model.layers import ConvBnAct, RegionPool, RegionSequential, StageHead, fold_batchnorm
from layercascade.model.network import LayerCascadeNet

INPUT = "input"


@dataclass(frozen=True, eq=False)
class Conv:
    """``act(conv(x, weight, bias))`` with BN and any residual scale folded into the fp32 weights."""

    name: str
    source: str
    weight: Tensor  # (C_out, C_in / groups, kh, kw)
    bias: Tensor  # (C_out,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    relu: bool

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])


@dataclass(frozen=True)
class Pool:
    """Max or average pooling (floor mode, undilated)."""

    name: str
    source: str
    kind: str  # "max" or "avg"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    count_include_pad: bool = True


@dataclass(frozen=True)
class Mask:
    """``x ⊙ M``: the region of a regional stage (after pooling, which is computed densely)."""

    name: str
    source: str


@dataclass(frozen=True)
class Relu:
    name: str
    source: str


@dataclass(frozen=True)
class Add:
    """A residual add, ``sources[0] + sources[1]`` (the branch's last conv is one of them)."""

    name: str
    sources: tuple[str, str]


@dataclass(frozen=True)
class Concat:
    """Channel concatenation (zero stays zero: needs no mask)."""

    name: str
    sources: tuple[str, ...]


Op = Conv | Pool | Mask | Relu | Add | Concat


def backbone_ops(model: LayerCascadeNet, index: int, regional: bool, source: str = INPUT) -> list[Op]:
    """The backbone blocks of stage ``index`` (0, 1, 2) as ops reading ``source``; ``regional``:
    the stage runs on a region (region convs, ``⊙ M`` after pooling)."""
    walk = _Walk(regional)
    walk.sequence("backbone.", model.backbone.stage_modules(index), source)
    return walk.ops


def head_ops(model: LayerCascadeNet, index: int, regional: bool, source: str = INPUT) -> list[Op]:
    """The head of stage ``index`` (3×3 conv–BN–ReLU, 1×1 classifier) as ops reading ``source``."""
    walk = _Walk(regional)
    walk.module(f"heads.{index}", model.heads[index], source)
    return walk.ops


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _Walk:
    """Appends the ops of modules to ``ops``; each method returns the name of its output value."""

    def __init__(self, regional: bool) -> None:
        self.regional = regional
        self.ops: list[Op] = []

    def emit(self, op: Op) -> str:
        self.ops.append(op)
        return op.name

    def conv(self, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, x: str, relu: bool,
             scale: float = 1.0) -> str:
        if self.regional and tuple(conv.stride) != (1, 1):
            raise ValueError(f"{name}: region convolutions have stride 1 (got {conv.stride})")
        weight, bias = fold_batchnorm(conv, bn, scale)
        return self.emit(Conv(name, x, weight, bias, _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation),
                              conv.groups, relu))

    def mask(self, name: str, x: str) -> str:
        """``x ⊙ M`` in a regional stage (nothing elsewhere)."""
        return self.emit(Mask(f"{name}/region", x)) if self.regional else x

    def pool(self, name: str, pool: nn.Module, x: str) -> str:
        if isinstance(pool, nn.MaxPool2d):
            if pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
                raise ValueError(f"{name}: only undilated, floor-mode max pooling is supported")
            return self.emit(Pool(name, x, "max", _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)))
        if isinstance(pool, nn.AvgPool2d):
            if pool.ceil_mode or pool.divisor_override is not None:
                raise ValueError(f"{name}: only floor-mode average pooling without a divisor override is supported")
            return self.emit(Pool(name, x, "avg", _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding),
                                  bool(pool.count_include_pad)))
        raise TypeError(f"{name}: no folded form of pooling layer {type(pool).__name__}")

    def sequence(self, prefix: str, named: list[tuple[str, nn.Module]], x: str) -> str:
        """Modules in order; a plain Conv2d directly followed by its BatchNorm2d (and ReLU) is folded."""
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
        """Any supported block; ``name`` is its dotted path."""
        if isinstance(module, ConvBnAct):
            return self.conv(name, module.conv, module.bn, x, isinstance(module.relu, nn.ReLU))
        if isinstance(module, (RegionSequential, nn.Sequential)):
            return self.sequence(f"{name}.", list(module.named_children()), x)
        if isinstance(module, RegionPool):
            return self.mask(name, self.pool(f"{name}.pool", module.pool, x))
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(name, module, x)
        if isinstance(module, nn.ReLU):
            return self.emit(Relu(name, x))
        if isinstance(module, (BasicBlock, Bottleneck)):
            return self.resnet_block(name, module, x)
        if isinstance(module, _Residual):
            return self.inception_residual(name, module, x)
        if isinstance(module, (Mixed5b, Mixed6a, Mixed7a)):
            branches = tuple(self.module(f"{name}.{child}", getattr(module, child), x)
                             for child in ("branch0", "branch1", "branch2", "branch3") if hasattr(module, child))
            return self.emit(Concat(f"{name}/concat", branches))
        if isinstance(module, StageHead):
            hidden = self.module(f"{name}.conv", module.conv, x)
            return self.conv(f"{name}.classifier", module.classifier, None, hidden, relu=False)
        raise TypeError(f"{name}: no folded form of {type(module).__name__}")

    def resnet_block(self, name: str, block: BasicBlock | Bottleneck, x: str) -> str:
        """``relu(M ⊙ branch(x) + shortcut(x))`` (a region conv is already 0 outside M)."""
        convs = [("conv1", "bn1"), ("conv2", "bn2")] + ([("conv3", "bn3")] if isinstance(block, Bottleneck) else [])
        out = x
        for k, (conv, bn) in enumerate(convs):
            out = self.conv(f"{name}.{conv}", getattr(block, conv), getattr(block, bn), out, relu=k < len(convs) - 1)
        shortcut = x
        if block.downsample is not None:
            shortcut = self.conv(f"{name}.downsample", block.downsample[0], block.downsample[1], x, relu=False)
        added = self.emit(Add(f"{name}/add", (out, shortcut)))
        return self.emit(Relu(f"{name}/relu", added))

    def inception_residual(self, name: str, block: _Residual, x: str) -> str:
        """``act(x + M ⊙ scale·conv2d(cat(branches)))``; the scale is folded into conv2d."""
        branches = tuple(self.module(f"{name}.{child}", getattr(block, child), x) for child in block.branches)
        mixed = self.emit(Concat(f"{name}/concat", branches))
        up = self.conv(f"{name}.conv2d", block.conv2d, None, mixed, relu=False, scale=block.scale)
        added = self.emit(Add(f"{name}/add", (x, up)))
        return self.emit(Relu(f"{name}/relu", added)) if isinstance(block.act, nn.ReLU) else added
