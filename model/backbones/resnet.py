"""ResNet-18/34/50/101 with output stride 8 and timm / torchvision parameter names.

Stage split (the paper's three stages applied to ResNet): stage 1 = stem + layer1 + layer2, stage 2 =
layer3, stage 3 = layer4. Dilation follows timm's ``make_blocks``: once the network
stride reaches the output stride, ``dilation *= stride`` and ``stride = 1``; the first
block of a dilated layer uses the previous dilation. ``fc`` is dropped, so an ImageNet
state dict loads with only ``fc.*`` unexpected.
"""

from __future__ import annotations

from torch import Tensor, nn

from layercascade.model.backbones.base import CascadeBackbone
from layercascade.model.layers import RegionSequential
from layercascade.model.region import apply_region


class BasicBlock(nn.Module):
    """Two 3×3 convs; names ``conv1 bn1 conv2 bn2 downsample.{0,1}`` as in timm."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        out = apply_region(self.act1(self.bn1(self.conv1(x))), mask)
        out = apply_region(self.bn2(self.conv2(out)), mask)
        shortcut = x if self.downsample is None else apply_region(self.downsample(x), mask)
        return self.act2(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1; names ``conv1..3 bn1..3 downsample.{0,1}`` as in timm."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int = 1,
    ) -> None:
        super().__init__()
        del dilation  # the only 3×3 conv is the first after the stride: it takes first_dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        out = apply_region(self.act1(self.bn1(self.conv1(x))), mask)
        out = apply_region(self.act2(self.bn2(self.conv2(out))), mask)
        out = apply_region(self.bn3(self.conv3(out)), mask)
        shortcut = x if self.downsample is None else apply_region(self.downsample(x), mask)
        return self.act3(out + shortcut)


RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(CascadeBackbone):
    """Dilated ResNet trunk (no classifier) split into three cascade stages.

    Args:
        variant: a key of ``RESNET_LAYOUTS``.
        output_stride: 8 (the paper's setting) or 16/32.
    """

    stage_layout = (("conv1", "bn1", "act1", "maxpool", "layer1", "layer2"), ("layer3",), ("layer4",))

    def __init__(self, variant: str, output_stride: int = 8) -> None:
        super().__init__()
        block, repeats = RESNET_LAYOUTS[variant]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, net_stride, dilation, prev_dilation = 64, 4, 1, 1
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), repeats)):
            stride = 1 if index == 0 else 2
            if net_stride >= output_stride:
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            blocks = [block(inplanes, planes, stride, downsample, dilation, prev_dilation)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1, None, dilation, dilation) for _ in range(count - 1)]
            self.add_module(f"layer{index + 1}", RegionSequential(*blocks))
            prev_dilation = dilation
        width = block.expansion
        self.stage_channels = (128 * width, 256 * width, 512 * width)
        self.output_stride = output_stride
