"""PyTorch references for the calls of :mod:`layercascade.plugins.kernels`.

Same arguments, same NHWC layout, computed the normative way (docs/architecture.md): dense
``conv2d ⊙ M`` on NCHW through :func:`layercascade.model.region.region_conv2d`, in fp64
(so no TF32 path can creep in on a GPU) and rounded once to the input dtype — what the
kernels' fp32 accumulation should reproduce to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from layercascade.model.region import region_conv2d


def active_list_reference(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Ascending int32 indices of the nonzero pixels of ``mask`` and their count, shape (1,)."""
    rows = torch.nonzero(mask.reshape(-1) != 0).reshape(-1).to(torch.int32)
    return rows, torch.tensor([rows.numel()], dtype=torch.int32, device=mask.device)


def region_conv_reference(x_nhwc: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor, *,
                          padding: int | tuple[int, int], dilation: int | tuple[int, int] = 1,
                          relu: bool = False, residual: Tensor | None = None, groups: int = 1) -> Tensor:
    """``[residual +] act(conv2d(x, W, b)) ⊙ M`` on NHWC; ``mask`` (N, 1, H, W) or flat."""
    n, h, w, _ = x_nhwc.shape
    region = (mask.reshape(n, 1, h, w) != 0).double()
    x = x_nhwc.permute(0, 3, 1, 2).double()
    y = region_conv2d(x, weight.double(), None if bias is None else bias.double(), region,
                      padding=padding, dilation=dilation, groups=groups)
    if relu:
        y = torch.relu(y)  # 0 stays 0 outside M, so no second ⊙ M is needed
    y = y.permute(0, 2, 3, 1)
    if residual is not None:
        y = residual.double() + y
    return y.to(x_nhwc.dtype).contiguous()
