"""Per-stage FLOPs and parameter counts, measured on the meta device (no compute)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layercascade import cost_model
from layercascade.model.config import ModelConfig
from layercascade.model.network import NUM_STAGES, LayerCascadeNet


@dataclass
class StageCost:
    """Cost of one stage on every pixel: backbone part and head, in multiply-accumulates."""

    backbone_macs: int
    head_macs: int
    backbone_params: int
    head_params: int


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def stage_costs(config: ModelConfig, input_size: tuple[int, int], batch: int = 1) -> list[StageCost]:
    """Dense (ρ = 1) cost of each stage for a ``batch × 3 × H × W`` input."""
    with torch.device("meta"):
        model = LayerCascadeNet(config)
    macs: dict[nn.Module, int] = {}

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        macs[module] = macs.get(module, 0) + _conv_macs(module, output)

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(hook)
    costs = []
    x = torch.empty(batch, 3, *input_size, device="meta")
    with torch.no_grad():
        for index in range(NUM_STAGES):
            macs.clear()
            x = model.backbone.forward_stage(index, x)
            backbone_modules = dict(macs)
            macs.clear()
            model.heads[index](x)
            head = model.heads[index]
            costs.append(StageCost(
                backbone_macs=sum(backbone_modules.values()),
                head_macs=sum(macs.values()),
                backbone_params=sum(_own_params(m) for m in _param_modules(model.backbone, backbone_modules)),
                head_params=sum(p.numel() for p in head.parameters()),
            ))
    return costs


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _param_modules(backbone: nn.Module, ran: dict[nn.Module, int]) -> list[nn.Module]:
    """Modules of ``backbone`` that belong to the stage whose convs are ``ran``.

    A module belongs to the stage of its convs; a BN is owned like the conv it follows
    (same parent), so parameters are attributed without running BN hooks.
    """
    owned: list[nn.Module] = []
    for parent in backbone.modules():
        children = list(parent.children())
        if any(child in ran for child in children):
            owned += [c for c in children if not list(c.children())]
    return list(dict.fromkeys(owned))


def ideal_speedup(costs: list[StageCost], active: tuple[float, float]) -> float:
    """FLOP-ideal speedup of the cascade over the dense network at active fractions (a₂, a₃)."""
    return cost_model.ideal_speedup([c.backbone_macs for c in costs], [c.head_macs for c in costs], active)
