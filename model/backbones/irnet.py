"""Inception-ResNet-v2 ("IRNet", the paper's backbone) with output stride 8.

Parameter names follow timm's ``inception_resnet_v2`` so ImageNet weights load. For dense
prediction the 3×3 convs and pools of the stem get padding 1 (as segmentation_models_pytorch
does) and the strides of ``mixed_6a``/``mixed_7a`` become dilation: the reduction block
itself runs at the previous dilation with stride 1, the blocks after it at twice that
(the reduction max pools stay undilated 3×3: PyTorch pads a pool by at most half its kernel).
Every conv block is ``.conv`` (no bias) + ``.bn`` with eps 1e-3; the residual ``conv2d``
of Block35/17/8 has a bias.

Stage split as in the paper: stage 1 = stem + mixed_5b + Block35×10, stage 2 = mixed_6a +
Block17×20, stage 3 = mixed_7a + Block8×9 + block8 + conv2d_7b.
"""

from __future__ import annotations

from torch import Tensor, nn

from layercascade.model.backbones.base import CascadeBackbone
from layercascade.model.layers import ConvBnAct, RegionPool, RegionSequential, concat
from layercascade.model.region import apply_region


def _conv(in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], dilation: int = 1,
          stride: int = 1) -> ConvBnAct:
    return ConvBnAct(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, bn_eps=1e-3)


class Mixed5b(nn.Module):
    """Stage-1 inception block 192 → 320 channels (runs on every pixel)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _conv(192, 96, 1)
        self.branch1 = RegionSequential(_conv(192, 48, 1), _conv(48, 64, 5))
        self.branch2 = RegionSequential(_conv(192, 64, 1), _conv(64, 96, 3), _conv(96, 96, 3))
        self.branch3 = RegionSequential(
            RegionPool(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)),
            _conv(192, 64, 1),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return concat([self.branch0(x, mask), self.branch1(x, mask), self.branch2(x, mask),
                       self.branch3(x, mask)])


class _Residual(nn.Module):
    """``y = act(x + M ⊙ scale·conv2d(cat(branches)))``: the identity outside M (x ≥ 0)."""

    scale: float
    act: nn.Module
    branches: tuple[str, ...]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        out = concat([getattr(self, name)(x, mask) for name in self.branches])
        out = apply_region(self.conv2d(out), mask)
        return self.act(x + out * self.scale)


class Block35(_Residual):
    """Inception-ResNet-A, 320 channels."""

    branches = ("branch0", "branch1", "branch2")

    def __init__(self, scale: float = 0.17, dilation: int = 1) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = _conv(320, 32, 1)
        self.branch1 = RegionSequential(_conv(320, 32, 1), _conv(32, 32, 3, dilation))
        self.branch2 = RegionSequential(_conv(320, 32, 1), _conv(32, 48, 3, dilation),
                                        _conv(48, 64, 3, dilation))
        self.conv2d = nn.Conv2d(128, 320, 1)
        self.act = nn.ReLU(inplace=True)


class Mixed6a(nn.Module):
    """Reduction-A 320 → 1088, stride replaced by dilation (stride 1 at ``dilation``)."""

    def __init__(self, dilation: int = 1) -> None:
        super().__init__()
        self.branch0 = _conv(320, 384, 3, dilation)
        self.branch1 = RegionSequential(_conv(320, 256, 1), _conv(256, 256, 3, dilation),
                                        _conv(256, 384, 3, dilation))
        self.branch2 = RegionPool(nn.MaxPool2d(3, stride=1, padding=1))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return concat([self.branch0(x, mask), self.branch1(x, mask), self.branch2(x, mask)])


class Block17(_Residual):
    """Inception-ResNet-B, 1088 channels, 1×7 and 7×1 convs."""

    branches = ("branch0", "branch1")

    def __init__(self, scale: float = 0.10, dilation: int = 1) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = _conv(1088, 192, 1)
        self.branch1 = RegionSequential(_conv(1088, 128, 1), _conv(128, 160, (1, 7), dilation),
                                        _conv(160, 192, (7, 1), dilation))
        self.conv2d = nn.Conv2d(384, 1088, 1)
        self.act = nn.ReLU(inplace=True)


class Mixed7a(nn.Module):
    """Reduction-B 1088 → 2080, stride replaced by dilation."""

    def __init__(self, dilation: int = 1) -> None:
        super().__init__()
        self.branch0 = RegionSequential(_conv(1088, 256, 1), _conv(256, 384, 3, dilation))
        self.branch1 = RegionSequential(_conv(1088, 256, 1), _conv(256, 288, 3, dilation))
        self.branch2 = RegionSequential(_conv(1088, 256, 1), _conv(256, 288, 3, dilation),
                                        _conv(288, 320, 3, dilation))
        self.branch3 = RegionPool(nn.MaxPool2d(3, stride=1, padding=1))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return concat([self.branch0(x, mask), self.branch1(x, mask), self.branch2(x, mask),
                       self.branch3(x, mask)])


class Block8(_Residual):
    """Inception-ResNet-C, 2080 channels, 1×3 and 3×1 convs; ``no_relu`` for the last one."""

    branches = ("branch0", "branch1")

    def __init__(self, scale: float = 0.20, no_relu: bool = False, dilation: int = 1) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = _conv(2080, 192, 1)
        self.branch1 = RegionSequential(_conv(2080, 192, 1), _conv(192, 224, (1, 3), dilation),
                                        _conv(224, 256, (3, 1), dilation))
        self.conv2d = nn.Conv2d(448, 2080, 1)
        self.act = nn.Identity() if no_relu else nn.ReLU(inplace=True)


class InceptionResNetV2(CascadeBackbone):
    """Dilated Inception-ResNet-v2 trunk (output stride 8) split into three cascade stages."""

    stage_channels = (320, 1088, 1536)
    stage_layout = (
        ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a",
         "mixed_5b", "repeat"),
        ("mixed_6a", "repeat_1"),
        ("mixed_7a", "repeat_2", "block8", "conv2d_7b"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.conv2d_1a = _conv(3, 32, 3, stride=2)
        self.conv2d_2a = _conv(32, 32, 3)
        self.conv2d_2b = _conv(32, 64, 3)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2d_3b = _conv(64, 80, 1)
        self.conv2d_4a = _conv(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2, padding=1)
        self.mixed_5b = Mixed5b()
        self.repeat = RegionSequential(*[Block35() for _ in range(10)])
        self.mixed_6a = Mixed6a(dilation=1)
        self.repeat_1 = RegionSequential(*[Block17(dilation=2) for _ in range(20)])
        self.mixed_7a = Mixed7a(dilation=2)
        self.repeat_2 = RegionSequential(*[Block8(dilation=4) for _ in range(9)])
        self.block8 = Block8(scale=1.0, no_relu=True, dilation=4)
        # 1536 = timm's num_features; the name exists for weight compatibility.
        self.conv2d_7b = _conv(2080, 1536, 1)
