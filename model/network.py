"""The Layer Cascade network: a backbone split in three stages, a head per stage, and
cascade inference with the region semantics of docs/architecture.md."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layercascade.contract import RhoClass, RhoLike, check_rho, rho_vectors
from layercascade.model.backbones import build_backbone
from layercascade.model.config import ModelConfig
from layercascade.model.layers import StageHead
from layercascade.model.region import fuse_scores, next_mask, stage_fractions

NUM_STAGES = 3


@dataclass
class CascadeOutput:
    """What one cascade pass produces.

    Attributes:
        scores: per-stage class scores ``(N, C, h, w)`` at the stage resolution; stages
            2–3 are 0 outside their region.
        masks: ``[M₂, M₃]``, float 0/1 ``(N, 1, h, w)``.
        fused: L¹ / L² / L³ chosen per pixel by the masks, ``(N, C, h, w)``.
        labels: argmax of the fused scores upsampled to the input size, ``(N, H, W)`` int64.
        stage_fractions: share of pixels decided at each stage, ``(N, 3)``.
    """

    scores: list[Tensor]
    masks: list[Tensor]
    fused: Tensor
    labels: Tensor
    stage_fractions: Tensor


class LayerCascadeNet(nn.Module):
    """Backbone (``self.backbone``, timm names) + one :class:`StageHead` per stage."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone)
        self.heads = nn.ModuleList(
            StageHead(channels, config.head_channels, config.num_classes)
            for channels in self.backbone.stage_channels
        )

    def forward_stage(self, index: int, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Features and head scores of stage ``index`` over region ``mask`` (None = all)."""
        features = self.backbone.forward_stage(index, x, mask)
        return features, self.heads[index](features, mask)

    def run_stages(self, image: Tensor, rho: RhoLike = 1.0,
                   rho_class: RhoClass | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Per-stage scores and the regions ``[M₂, M₃]`` at ``rho``: one threshold for both stages, or
        (ρ₂, ρ₃); ``rho_class`` (class index → ρ_c) overrides both for the pixels a stage gives that class.

        Masks come from the current predictions without gradient. ρ = 1 sends every pixel
        through every stage (the dense network): a stage whose region is then all ones skips
        the masked multiplications.
        """
        thresholds: tuple[float, float] | list[Tensor] = check_rho(rho)
        if rho_class:
            thresholds = [torch.from_numpy(v) for v in rho_vectors(thresholds, rho_class, self.config.num_classes)]
        features, scores, masks = image, [], []
        region: Tensor | None = None
        for index in range(NUM_STAGES):
            dense = all(bool((r >= 1.0).all()) if isinstance(r, Tensor) else r >= 1.0
                        for r in thresholds[:index])  # every pixel reaches this stage
            features, stage_scores = self.forward_stage(index, features, None if dense else region)
            scores.append(stage_scores)
            if index + 1 < NUM_STAGES:
                region = next_mask(stage_scores, thresholds[index], region)
                masks.append(region)
        return scores, masks

    def forward(self, image: Tensor, rho: RhoLike = 1.0, rho_class: RhoClass | None = None) -> CascadeOutput:
        """Cascade inference on a normalised ``(N, 3, H, W)`` batch at ``rho`` (one ρ, or (ρ₂, ρ₃)) and
        ``rho_class`` (per-class thresholds by class index)."""
        scores, masks = self.run_stages(image, rho, rho_class)
        fused = fuse_scores(scores, masks)
        upsampled = F.interpolate(fused, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return CascadeOutput(scores, masks, fused, upsampled.argmax(1), stage_fractions(masks))


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 ``(N, H, W, 3)`` RGB → float ``(N, 3, H, W)`` normalised with ``mean``/``std`` (0–255 scale)."""
    x = images.permute(0, 3, 1, 2).float()
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
