"""Dilated (output stride 8) backbones split into three cascade stages.

Each backbone exposes ``stage_channels`` and ``forward_stage(index, x, mask)``; parameter
names follow timm so ImageNet state dicts load (see ``model.weights``).
"""

from __future__ import annotations

from torch import nn

from layercascade.errors import fail


def build_backbone(name: str) -> nn.Module:
    """The backbone called ``name`` ("tiny", "resnet18/34/50/101", "irnet")."""
    from layercascade.model.backbones.irnet import InceptionResNetV2
    from layercascade.model.backbones.resnet import RESNET_LAYOUTS, ResNet
    from layercascade.model.backbones.tiny import TinyNet

    if name == "tiny":
        return TinyNet()
    if name == "irnet":
        return InceptionResNetV2()
    if name in RESNET_LAYOUTS:
        return ResNet(name)
    fail(f"unknown backbone {name!r}; choose one of tiny, irnet, {', '.join(RESNET_LAYOUTS)}")
