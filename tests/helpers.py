"""Shared test helpers: small models and inputs."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

from layercascade.contract import CONFIDENCE
from layercascade.export.graph import live_nodes
from layercascade.manifest import read_manifest, write_model_dir
from layercascade.model.checkpoint import Checkpoint
from layercascade.model.config import get_config
from layercascade.model.network import LayerCascadeNet
from layercascade.runtime.inputs import DEMO_MODEL

# The shared model dirs of conftest.py.
TINY_SIZE = (72, 88)  # not a square: both axes of the label upsampling are checked apart
DYNAMIC_SIZE, DYNAMIC_MAX = (64, 64), 3
DYNAMIC_SIZE_BOUNDS = ((16, 16), (96, 128))  # conftest.py's dynamic_size_model: lc-export --dynamic-size 16x16:96x128
CALIBRATION_IMAGES = 3


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


def copy_demo_model(target: Path, convert=None, **extra) -> Path:
    """The demo model dir at ``target``, its graphs passed through ``convert``, manifest fields added."""
    manifest = read_manifest(DEMO_MODEL)

    def write(folder: Path) -> dict:
        for name in manifest["files"]:
            model = onnx.load(DEMO_MODEL / name)
            onnx.save(convert(model) if convert else model, folder / name)
        return {**{k: v for k, v in manifest.items() if k not in ("format", "version", "files")}, **extra}

    return write_model_dir(target, write, "lc-export")


def png_claiming(width: int, height: int) -> bytes:
    """A 4×4 grayscale PNG whose header claims ``width`` × ``height``: what a decompression bomb looks like
    before its pixels are decoded (an all-zero 13000² PNG is a few hundred KB)."""
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def single_threshold_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A stage graph as lc-export wrote it before per-class thresholds: ``rho`` of shape (1,), multiplied in as it
    is (no ArgMax and Gather of the winner's threshold)."""
    gathers = {n.output[0]: n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == "rho"}
    winners = {n.input[1] for n in gathers.values()}
    kept = [n for n in model.graph.node if n.output[0] not in gathers and n.output[0] not in winners]
    for node in kept:
        node.input[:] = ["rho" if name in gathers else name for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    for graph_input in model.graph.input:
        if graph_input.name == "rho":
            graph_input.type.tensor_type.shape.dim[0].dim_value = 1
    return model


def without_confidence_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A stage graph as lc-export wrote it before the confidence: stage 3 without that output (others as they are)."""
    if not any(output.name == CONFIDENCE for output in model.graph.output):
        return model
    kept = [output for output in model.graph.output if output.name != CONFIDENCE]
    nodes = live_nodes(list(model.graph.node), {output.name for output in kept})
    del model.graph.output[:], model.graph.node[:]
    model.graph.output.extend(kept)
    model.graph.node.extend(nodes)
    return model


def version2_copy(target: Path, version: int = 2, **extra) -> Path:
    """The demo model dir as layercascade exported it before lc.json version 3 (lc.json ``version``): the stage
    graphs' ``rho`` of shape [1] (before per-class thresholds) and stage 3 without ``confidence``."""
    manifest = read_manifest(DEMO_MODEL)
    stages = [{**stage, "inputs": [{**spec, "shape": [1]} if spec["name"] == "rho" else spec
                                   for spec in stage["inputs"]],
               "outputs": [spec for spec in stage["outputs"] if spec["name"] != CONFIDENCE]}
              for stage in manifest["stages"]]
    folder = copy_demo_model(target, lambda model: without_confidence_graph(single_threshold_graph(model)),
                             stages=stages, **extra)
    written = json.loads((folder / "lc.json").read_text())
    (folder / "lc.json").write_text(json.dumps({**written, "version": version}))
    return folder
