"""The ``lc.json`` keys that describe the model rather than its graphs, from a checkpoint.

Needs torch but not onnx: the exporter (``export/stages.py``) writes these keys into every
model dir, and the torch backend builds its manifest from them without exporting anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from layercascade.errors import fail
from layercascade.manifest import check_model_fields, sha256_file
from layercascade.model.checkpoint import Checkpoint
from layercascade.model.config import ModelConfig
from layercascade.model.flops import stage_costs
from layercascade.model.network import NUM_STAGES, LayerCascadeNet
from layercascade.version import __version__

MIN_INPUT_SIZE = 16


def check_input_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """``input_size`` as ints, or a one-line error when it is too small to run."""
    height, width = int(input_size[0]), int(input_size[1])
    if min(height, width) < MIN_INPUT_SIZE:
        fail(f"input size {height}x{width} is too small; use at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
    return height, width


def stage_shapes(config: ModelConfig, input_size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(channels, h, w) of each stage's features, computed on the meta device."""
    with torch.device("meta"):
        twin = LayerCascadeNet(config)
    x = torch.empty(1, 3, *input_size, device="meta")
    shapes = []
    for index in range(NUM_STAGES):
        x = twin.backbone.forward_stage(index, x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def model_keys(checkpoint: Checkpoint, input_size: tuple[int, int],
               source: str | os.PathLike | None) -> dict[str, Any]:
    """Backbone, classes, palette, normalisation, input/stage sizes, default ρ, per-stage GMACs,
    the source checkpoint (with its sha256) and tool versions; ``source`` is the checkpoint's file."""
    costs = stage_costs(checkpoint.config, input_size)
    keys = {
        "backbone": checkpoint.config.backbone,
        "classes": list(checkpoint.classes),
        "palette": checkpoint.palette,
        "mean": checkpoint.mean,
        "std": checkpoint.std,
        "input_size": list(input_size),
        "stage_size": list(stage_shapes(checkpoint.config, input_size)[0][1:]),
        "default_rho": checkpoint.default_rho,
        "stage_gmacs": [{"backbone": c.backbone_macs / 1e9, "head": c.head_macs / 1e9} for c in costs],
        "source": {"checkpoint": Path(source).name if source else None,
                   "sha256": sha256_file(source) if source else None,
                   "training": {k: checkpoint.training.get(k) for k in ("mode", "data", "epochs")}},
        "tools": {"layercascade": __version__, "torch": str(torch.__version__)},
    }
    # What every runtime checks on load is checked before a model dir is written.
    return check_model_fields(keys, source or "the checkpoint", "fix it in the checkpoint (lc-train writes it)")
