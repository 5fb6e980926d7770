"""The stage interface every backbone implements.

A backbone lists, per cascade stage, the names of its child modules in execution order
(``stage_layout``). Running a stage and exporting it (``layercascade.export``) both walk
that list, so the split is written down once.
"""

from __future__ import annotations

from torch import Tensor, nn

# Layers that take no region mask: they may appear only in stage 1, which sees every pixel.
PLAIN_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


class CascadeBackbone(nn.Module):
    """Base class: subclasses set ``stage_layout``, ``stage_channels`` and ``output_stride``."""

    stage_layout: tuple[tuple[str, ...], ...]
    stage_channels: tuple[int, ...]
    output_stride: int = 8

    def stage_modules(self, index: int) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` pairs of stage ``index`` in execution order."""
        return [(name, getattr(self, name)) for name in self.stage_layout[index]]

    def forward_stage(self, index: int, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Run cascade stage ``index`` (0, 1, 2) over region ``mask`` (None = every pixel)."""
        for name, module in self.stage_modules(index):
            if isinstance(module, PLAIN_LAYERS):
                if mask is not None:
                    raise ValueError(f"{name} is a plain layer and cannot run on a region (stage {index + 1})")
                x = module(x)
            else:
                x = module(x, mask)
        return x
