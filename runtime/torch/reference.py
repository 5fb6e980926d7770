"""The torch backend's reference path: the dense masked PyTorch reference on the CPU in fp32
(the normative region semantics of ``model/region.py``), and the small tensor helpers both of
the backend's paths share."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from layercascade.contract import CONFIDENCE, LABELS, STAGE_COUNTS, RhoVectors
from layercascade.model.checkpoint import Checkpoint
from layercascade.model.network import NUM_STAGES, LayerCascadeNet, normalize
from layercascade.model.region import confidence, fuse_scores, next_mask
from layercascade.runtime.backend import Masks, StageOutputs


def host_tensor(array: np.ndarray) -> Tensor:
    """A CPU tensor over ``array`` (a copy only when the array is read-only, e.g. an image from Pillow)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def upsample_labels(scores_nchw: Tensor, size: tuple[int, int]) -> Tensor:
    """argmax of the scores upsampled bilinearly (half-pixel centres) to ``size``, uint8 (N, H, W)."""
    upsampled = F.interpolate(scores_nchw.float(), size=size, mode="bilinear", align_corners=False)
    return upsampled.argmax(1).to(torch.uint8)


def stage_counts(mask2: Tensor, mask3: Tensor) -> Tensor:
    """Pixels decided at stages 1, 2, 3 per image, int64 (N, 3), from nested 0/1 masks of any layout."""
    pixels = mask2[0].numel()
    reach2 = (mask2 > 0).flatten(1).sum(1)
    reach3 = (mask3 > 0).flatten(1).sum(1)
    return torch.stack([pixels - reach2, reach2 - reach3, reach3], dim=1)


class ReferencePath:
    """The dense masked PyTorch reference on the CPU in fp32."""

    def __init__(self, model: LayerCascadeNet, checkpoint: Checkpoint, input_size: tuple[int, int]) -> None:
        self.model = model
        self.mean, self.std = tuple(checkpoint.mean), tuple(checkpoint.std)
        self.input_size = input_size

    @torch.inference_mode()
    def stage_outputs(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None = None) -> dict[str, Any]:
        """Scores of every stage (N, C, h, w), masks [M₂, M₃] (N, 1, h, w) at ``rho`` = (ρ₂, ρ₃), each one
        threshold or one per class, labels, counts, the fused scores' confidence (N, h, w) and per-stage ms."""
        x = normalize(host_tensor(images), self.mean, self.std)
        features, scores, masks, region, timings = x, [], [], None, {}
        for index in range(NUM_STAGES):
            started = time.perf_counter()
            features, stage_scores = self.model.forward_stage(index, features, region)
            scores.append(stage_scores)
            if index + 1 < NUM_STAGES:
                threshold = torch.as_tensor(rho[index], dtype=torch.float32)  # one, or one per class
                region = (next_mask(stage_scores, threshold, region) if forced_masks is None
                          else host_tensor(forced_masks[index]))
                masks.append(region)
            timings[f"stage{index + 1}"] = (time.perf_counter() - started) * 1e3
        fused = fuse_scores(scores, masks)
        return {"scores": scores, "masks": masks, LABELS: upsample_labels(fused, self.input_size),
                STAGE_COUNTS: stage_counts(*masks), CONFIDENCE: confidence(fused)[:, 0], "timings": timings}

    def run(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None) -> StageOutputs:
        started = time.perf_counter()
        out = self.stage_outputs(images, rho, forced_masks)
        timings = {**out["timings"], "total": (time.perf_counter() - started) * 1e3}
        mask2, mask3 = (m.float().numpy() for m in out["masks"])
        return StageOutputs(out[LABELS].numpy(), mask2, mask3, out[STAGE_COUNTS].numpy(), timings,
                            out[CONFIDENCE].numpy())

    @torch.inference_mode()
    def dense(self, images: np.ndarray) -> np.ndarray:
        x = normalize(host_tensor(images), self.mean, self.std)
        for index in range(NUM_STAGES):
            x = self.model.backbone.forward_stage(index, x)
        return upsample_labels(self.model.heads[-1](x), self.input_size).numpy()
