"""Loading ImageNet backbone weights (timm / torchvision names) from a local file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from layercascade.errors import fail
from layercascade.model.checkpoint import read_weights_file


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a module."""

    loaded: int
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def summary(self, limit: int = 5) -> str:
        def names(keys: list[str]) -> str:
            shown = ", ".join(keys[:limit])
            return f"{len(keys)}" + (f" ({shown}{', …' if len(keys) > limit else ''})" if keys else "")

        return (f"loaded {self.loaded} tensors; missing {names(self.missing)}; "
                f"unexpected {names(self.unexpected)}; shape mismatch {names(self.mismatched)}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state dict from ``.safetensors`` or ``.pth``/``.pt`` (never executing code).

    A dict nesting the weights under ``state_dict`` or ``model`` is unwrapped, and a
    ``module.`` prefix (DataParallel) is stripped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            fail("reading .safetensors needs the safetensors package: pip install safetensors")
        if not path.is_file():
            fail(f"{path}: no such file")
        try:
            data = load_file(str(path))
        except (SafetensorError, OSError) as error:
            fail(f"{path}: corrupt or truncated safetensors file ({error})")
    else:
        data = read_weights_file(path)
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        fail(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load an ImageNet state dict into ``backbone`` by name, skipping what does not fit.

    Classifier keys (``fc.*``, ``classif.*``) show up as unexpected, which is normal.
    """
    weights = read_state_dict(path)
    own = backbone.state_dict()
    fitting = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        fail(f"{path}: none of its {len(weights)} tensors match this backbone's parameter names; "
             "is it for another architecture?")
    backbone.load_state_dict(fitting, strict=False)
    return LoadReport(
        loaded=len(fitting),
        missing=[k for k in own if k not in weights],
        unexpected=[k for k in weights if k not in own],
        mismatched=[k for k in weights if k in own and own[k].shape != weights[k].shape],
    )
