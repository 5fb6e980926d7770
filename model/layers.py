"""Building blocks shared by the backbones; every block's forward is ``(x, mask=None)``.

A block run with a mask follows the region semantics (docs/architecture.md): each conv (with its
BN and activation) is a region conv, pooling is computed then masked, and a residual
block adds ``M ⊙ branch(x)`` so it is the identity outside the region.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from layercascade.model.region import apply_region


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class ConvBnAct(nn.Module):
    """Conv (no bias) → BN → optional ReLU, masked as one region conv.

    Attribute names ``conv``/``bn`` match timm's ``BasicConv2d`` (Inception-ResNet-v2)
    so ImageNet weights load. ``padding=None`` gives "same" padding for the dilation.

    Args:
        in_chs, out_chs: channel counts.
        kernel_size: int or (kh, kw).
        stride: kept for stage-1 layers only; dilated layers use stride 1.
        dilation: dilation of the kernel.
        bn_eps: 1e-3 for Inception-ResNet-v2 weights, 1e-5 elsewhere.
        act: apply ReLU.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        dilation: int = 1,
        padding: int | tuple[int, int] | None = None,
        bn_eps: float = 1e-5,
        act: bool = True,
    ) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        if padding is None:
            padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        self.conv = nn.Conv2d(in_chs, out_chs, (kh, kw), stride, padding, dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return apply_region(self.relu(self.bn(self.conv(x))), mask)


class RegionSequential(nn.Sequential):
    """``nn.Sequential`` that hands the region mask to every child (names stay ``0``, ``1``, …)."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for module in self:
            x = module(x, mask)
        return x


class RegionPool(nn.Module):
    """A pooling layer made regional: computed densely, then ``⊙ M``."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return apply_region(self.pool(x), mask)


class StageHead(nn.Module):
    """The classifier added after each stage: 3×3 conv–BN–ReLU, then 1×1 conv to classes.

    In stages 2–3 both convs are region convs, so scores are 0 outside the region.
    """

    def __init__(self, in_chs: int, mid_chs: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBnAct(in_chs, mid_chs, 3)
        self.classifier = nn.Conv2d(mid_chs, num_classes, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return apply_region(self.classifier(self.conv(x, mask)), mask)


def concat(tensors: list[Tensor]) -> Tensor:
    """Channel concatenation (zero stays zero: needs no mask)."""
    return torch.cat(tensors, dim=1)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """fp32 weight and bias of ``scale · bn(conv(x))`` as one conv (eval BN statistics, folded in fp64).

    Shared by the ONNX exporter and the torch backend's kernels path, so both fold alike.
    """
    weight = conv.weight.detach().double()
    bias = (conv.bias.detach().double() if conv.bias is not None
            else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device))
    if bn is not None:
        factor = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * factor.view(-1, 1, 1, 1)
        bias = (bias - bn.running_mean.double()) * factor + bn.bias.detach().double()
    return (weight * scale).float(), (bias * scale).float()
