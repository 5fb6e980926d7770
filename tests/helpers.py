"""Shared test helpers: small models and inputs."""

from __future__ import annotations

import sys
import types

import numpy as np
import torch

from layercascade.model.checkpoint import Checkpoint
from layercascade.model.config import get_config
from layercascade.model.network import LayerCascadeNet


def sharpened_checkpoint(name: str, size: tuple[int, int], seed: int = 0) -> Checkpoint:
    """A random model whose heads are confident enough for ρ ∈ RHOS to split the pixels,
    with non-trivial BN statistics so folding is exercised."""
    torch.manual_seed(seed)
    config = get_config(name)
    model = LayerCascadeNet(config)
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    with torch.no_grad():
        for head, gain in zip(model.heads, (60.0, 40.0, 1.0)):
            head.classifier.weight.mul_(gain)
    return Checkpoint(config, model.state_dict(), [f"c{k}" for k in range(21)],
                      [[k * 12, 255 - k * 12, k] for k in range(21)], input_size=list(size))


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *size, 3)) * 255).astype(np.uint8)


def synthetic_images(count: int, size: tuple[int, int] = (160, 160)) -> np.ndarray:
    """The first ``count`` synthetic val images, (count, H, W, 3) uint8."""
    from layercascade.model.data.synthetic import SyntheticSegmentation

    data = SyntheticSegmentation("val", size=size, length=count)
    return np.stack([data[i][0] for i in range(count)])


def install_fake_tensorrt(monkeypatch, tensorrt: types.ModuleType, cudart: types.ModuleType) -> None:
    """Make ``import tensorrt`` and ``from cuda.bindings import runtime`` give these stand-ins."""
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
