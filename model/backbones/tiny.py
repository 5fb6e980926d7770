"""A small dilated residual backbone for the demo model and the tests.

Shaped like the big ones: a stride-8 stem, then three stages at 1/8 resolution whose
width and dilation grow (1, 2, 4), so most FLOPs sit in stages 2–3 as in IRNet and
region convolution has something to save. Blocks are ResNet ``BasicBlock``s.
"""

from __future__ import annotations

from torch import nn

from layercascade.model.backbones.base import CascadeBackbone
from layercascade.model.backbones.resnet import BasicBlock
from layercascade.model.layers import ConvBnAct, RegionSequential


class TinyNet(CascadeBackbone):
    """Args:
        widths: channels of stages 1, 2, 3.
        depths: residual blocks per stage.
        stem_width: channels of the first stem conv.
    """

    stage_layout = (("stem", "layer1"), ("layer2",), ("layer3",))

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 96),
                 depths: tuple[int, int, int] = (1, 2, 2), stem_width: int = 16) -> None:
        super().__init__()
        self.stem = RegionSequential(
            ConvBnAct(3, stem_width, 3, stride=2),
            ConvBnAct(stem_width, widths[0], 3, stride=2),
            ConvBnAct(widths[0], widths[0], 3, stride=2),
        )
        inplanes, prev_dilation = widths[0], 1
        for index, (planes, depth) in enumerate(zip(widths, depths)):
            dilation = 2**index
            downsample = None
            if inplanes != planes:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes))
            blocks = [BasicBlock(inplanes, planes, 1, downsample, dilation, prev_dilation)]
            blocks += [BasicBlock(planes, planes, 1, None, dilation, dilation) for _ in range(depth - 1)]
            self.add_module(f"layer{index + 1}", RegionSequential(*blocks))
            inplanes, prev_dilation = planes, dilation
        self.stage_channels = tuple(widths)
