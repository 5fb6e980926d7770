"""Region semantics (docs/architecture.md, normative) as the dense masked PyTorch reference.

Every fast path (compact rows, Triton kernels, TensorRT plugin, ONNX Runtime lowering)
reproduces what these functions compute. A region mask ``M`` is a float tensor of 0/1
with shape ``(N, 1, H, W)``; ``None`` means "every pixel" (stage 1, or ρ = 1) and skips
the multiplications.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring ``mask`` to spatial ``size``.

    Going down, a low-resolution pixel is in the region if any of its high-resolution
    children is (adaptive max pooling); going up, children inherit their parent's value.
    """
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if size[0] <= mask.shape[-2] and size[1] <= mask.shape[-1]:
        return F.adaptive_max_pool2d(mask, size)
    return F.interpolate(mask, size=size, mode="nearest")


def apply_region(y: Tensor, mask: Tensor | None) -> Tensor:
    """``y ⊙ M``: zero outside the region. The identity when ``mask`` is None."""
    if mask is None:
        return y
    return y * resize_mask(mask, tuple(y.shape[-2:])).to(y.dtype)


def region_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    *,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Tensor:
    """``RegionConv(X, W, b; M) = conv2d(X, W, b) ⊙ M`` (stride 1).

    The convolution reads X at every neighbour, also outside M; only the output is
    restricted to the region.
    """
    y = F.conv2d(x, weight, bias, stride=1, padding=padding, dilation=dilation, groups=groups)
    return apply_region(y, mask)


def confidence(scores: Tensor) -> Tensor:
    """Max softmax probability over classes, shape ``(N, 1, H, W)``."""
    return torch.softmax(scores.float(), dim=1).amax(dim=1, keepdim=True)


def next_mask(scores: Tensor, rho: float | Tensor, region: Tensor | None) -> Tensor:
    """The region of the next stage: pixels of ``region`` whose confidence is ≤ their threshold.

    ``rho`` is this stage's threshold: one number, or one per class (a (C,) tensor), and then a pixel's
    threshold is that of its winner here, ``rho[argmax(scores)]`` (the first of tied classes).
    ``M₂ = [max softmax(L¹) ≤ ρ₂[argmax L¹]]``, ``M₃ = M₂ ∧ [max softmax(L²) ≤ ρ₃[argmax L²]]``. No
    gradient flows through a mask.
    """
    with torch.no_grad():
        if isinstance(rho, Tensor) and rho.numel() > 1:
            rho = rho.to(scores.device, torch.float32)[scores.argmax(dim=1, keepdim=True)]
        mask = (confidence(scores) <= rho).to(scores.dtype)
        if region is not None:
            mask = mask * resize_mask(region, tuple(mask.shape[-2:]))
    return mask


def fuse_scores(scores: list[Tensor], masks: list[Tensor]) -> Tensor:
    """Final scores: L¹ where ¬M₂, L² where M₂∧¬M₃, L³ where M₃.

    ``masks[k]`` is the region of stage ``k + 2``; regions are nested (M₃ ⊆ M₂).
    """
    fused = scores[0]
    for stage_scores, mask in zip(scores[1:], masks):
        m = resize_mask(mask, tuple(stage_scores.shape[-2:])) > 0
        fused = torch.where(m, stage_scores, fused)
    return fused


def stage_fractions(masks: list[Tensor]) -> Tensor:
    """Share of pixels decided at each stage, per image: shape ``(N, len(masks) + 1)``."""
    active = [torch.ones_like(masks[0]).flatten(1).mean(1)]
    active += [m.flatten(1).float().mean(1) for m in masks]
    active.append(torch.zeros_like(active[0]))
    return torch.stack([active[k] - active[k + 1] for k in range(len(masks) + 1)], dim=1)
