"""PyTorch backend: runs a checkpoint's three stages itself, not the ONNX graphs of a model dir.

``Cascade.load(CHECKPOINT.pt, backend="torch", device=...)`` (``None``: the bundled demo
checkpoint). Two paths over the same weights:

* **reference** (``device="cpu"``): the dense masked reference of DESIGN §4 — the network's
  own modules, ``next_mask`` thresholding and ``fuse_scores`` fusion — in fp32.
* **kernels** (``device="cuda"``): the stages as a plan of kernel calls on channels-last
  (NHWC) rows, BN folded into the convs. Stage 1 sees every pixel and holds the strided
  layers: cuDNN. Stages 2–3 run every conv as a Triton region conv (bias, ReLU and the
  residual add fused; one active list per stage, its count left on the device). Thresholding,
  fusion, the label upsampling and the counts run on the device too, so nothing crosses to
  the host until labels, masks and counts are copied back. ``precision="fp16"`` stores
  weights and activations in fp16 (the kernels accumulate in fp32); ``cuda_graph=True``
  captures the whole cascade once per batch size and replays it.

The kernels path also runs on CPU tensors in Triton's interpreter (``kernels=True`` with
``TRITON_INTERPRET=1``), which is how the tests and ``tools/gpu_check.py --dry-run`` check it.

The model's manifest is built from the checkpoint with the exporter's ``lc.json`` keys (``export/describe.py``).
Input size: the checkpoint's recorded training/export size unless ``input_size=(H, W)`` is
given. Batches of any size are accepted (``batch.dynamic``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.errors import fail
from layercascade.runtime.backend import StagedBackend, StageOutputs

# OpenMP threads that spin while idle steal the cores the next layer needs as soon as anything
# else runs on the machine; like the ONNX Runtime backend, wait passively. OpenMP reads this when torch loads it,
# so it applies when this module is what imports torch (the CLIs); a user's setting stays.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:
    import torch
    import torch.nn.functional as F
    from torch import Tensor, nn
except ImportError:
    fail("the torch backend needs PyTorch: pip install 'layercascade[torch]', or use --backend ort")

from layercascade.export.describe import check_input_size, model_keys, stage_shapes
from layercascade.manifest import MANIFEST
from layercascade.model.backbones.irnet import Mixed5b, Mixed6a, Mixed7a, _Residual
from layercascade.model.backbones.resnet import BasicBlock, Bottleneck
from layercascade.model.checkpoint import DEMO_CHECKPOINT, Checkpoint, load_checkpoint
from layercascade.model.layers import ConvBnAct, RegionPool, RegionSequential, StageHead, fold_batchnorm
from layercascade.model.network import NUM_STAGES, LayerCascadeNet, normalize
from layercascade.model.region import fuse_scores, next_mask

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


# -- shared by both paths ---------------------------------------------------------------------
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


# -- the reference path -----------------------------------------------------------------------
class ReferencePath:
    """The dense masked PyTorch reference on the CPU in fp32 (DESIGN §4)."""

    def __init__(self, model: LayerCascadeNet, checkpoint: Checkpoint, input_size: tuple[int, int]) -> None:
        self.model = model
        self.mean, self.std = tuple(checkpoint.mean), tuple(checkpoint.std)
        self.input_size = input_size

    @torch.inference_mode()
    def stage_outputs(self, images: np.ndarray, rho: float,
                      forced_masks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
        """Scores of every stage (N, C, h, w), masks [M₂, M₃] (N, 1, h, w), labels and per-stage ms."""
        x = normalize(host_tensor(images), self.mean, self.std)
        features, scores, masks, region, timings = x, [], [], None, {}
        for index in range(NUM_STAGES):
            started = time.perf_counter()
            features, stage_scores = self.model.forward_stage(index, features, region)
            scores.append(stage_scores)
            if index + 1 < NUM_STAGES:
                region = (next_mask(stage_scores, rho, region) if forced_masks is None
                          else host_tensor(forced_masks[index]))
                masks.append(region)
            timings[f"stage{index + 1}"] = (time.perf_counter() - started) * 1e3
        labels = upsample_labels(fuse_scores(scores, masks), self.input_size)
        return {"scores": scores, "masks": masks, "labels": labels, "stage_counts": stage_counts(*masks),
                "timings": timings}

    def run(self, images: np.ndarray, rho: float,
            forced_masks: tuple[np.ndarray, np.ndarray] | None) -> StageOutputs:
        started = time.perf_counter()
        out = self.stage_outputs(images, rho, forced_masks)
        timings = {**out["timings"], "total": (time.perf_counter() - started) * 1e3}
        mask2, mask3 = (m.float().numpy() for m in out["masks"])
        return StageOutputs(out["labels"].numpy(), mask2, mask3, out["stage_counts"].numpy(), timings)

    @torch.inference_mode()
    def dense(self, images: np.ndarray) -> np.ndarray:
        x = normalize(host_tensor(images), self.mean, self.std)
        for index in range(NUM_STAGES):
            x = self.model.backbone.forward_stage(index, x)
        return upsample_labels(self.model.heads[-1](x), self.input_size).numpy()


# -- the kernels path: a network's layers as kernel calls on NHWC rows ----------------------------
@dataclass
class Region:
    """The pixels a region stage computes: the mask (N, h, w, 1) 0/1 in the compute dtype and
    its active list with the list's device-side count."""

    mask: Tensor
    rows: Tensor
    count: Tensor


# An op of a plan: NHWC contiguous input (and the stage's region, None = every pixel) → output.
Op = Callable[[Tensor, "Region | None"], Tensor]


class FoldedConv:
    """conv (+ folded BN, × scale) (+ ReLU) [+ residual] on NHWC.

    In a region stage a Triton region conv (stride 1): ``residual + act(conv) ⊙ M``. Elsewhere
    cuDNN on the channels-last view, with the same epilogue.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, relu: bool, region: bool,
                 dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> None:
        weight, bias = fold_batchnorm(conv, bn, scale)
        self.region = region
        self.relu = relu
        self.stride, self.padding, self.dilation = tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)
        self.groups = conv.groups
        self.bias = bias.to(device, dtype)
        weight = weight.to(device, dtype)
        if region:
            import triton

            from layercascade.plugins import kernels

            if self.stride != (1, 1):
                raise ValueError(f"region convolutions have stride 1, got {self.stride}")
            self.kernels = kernels
            self.weight = kernels.pack_weight(weight)
            # Triton's interpreter costs per op, not per flop: on the CPU one tile spans the channels.
            c_out, c_in = weight.shape[:2]
            self.tiles = None if device.type == "cuda" else kernels.BlockConfig(
                64, triton.next_power_of_2(max(16, c_out)), triton.next_power_of_2(max(16, c_in)), 4)
        else:
            self.weight = weight.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: Tensor, region: Region | None, residual: Tensor | None = None) -> Tensor:
        if self.region:
            return self.kernels.region_conv(x, self.weight, self.bias, region.rows, region.count,
                                            padding=self.padding, dilation=self.dilation, relu=self.relu,
                                            residual=residual, groups=self.groups, config=self.tiles)
        y = F.conv2d(x.permute(0, 3, 1, 2), self.weight, self.bias, self.stride, self.padding, self.dilation,
                     self.groups)
        # cuDNN keeps channels-last, so this is a view; contiguous() copies only otherwise.
        y = y.permute(0, 2, 3, 1).contiguous()
        if self.relu:
            y = torch.relu_(y)
        return y if residual is None else y.add_(residual)


def _pool(pool: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()


class Planner:
    """Turns the modules of one stage into :data:`Op` closures, mirroring each block's ``forward``
    (and ``export/emit.py``'s emitters): ``region`` says whether convs are region convs."""

    def __init__(self, region: bool, dtype: torch.dtype, device: torch.device) -> None:
        self.region = region
        self.dtype = dtype
        self.device = device

    def conv(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, relu: bool, scale: float = 1.0) -> FoldedConv:
        return FoldedConv(conv, bn, relu, self.region, self.dtype, self.device, scale)

    def sequence(self, named: list[tuple[str, nn.Module]]) -> Op:
        """Modules in order; a plain Conv2d directly followed by its BatchNorm2d (and ReLU) is folded."""
        ops: list[Op] = []
        index = 0
        while index < len(named):
            module = named[index][1]
            if isinstance(module, nn.Conv2d):
                following = named[index + 1][1] if index + 1 < len(named) else None
                bn = following if isinstance(following, nn.BatchNorm2d) else None
                relu = bn is not None and index + 2 < len(named) and isinstance(named[index + 2][1], nn.ReLU)
                ops.append(self.conv(module, bn, relu))
                index += 1 + (bn is not None) + relu
                continue
            ops.append(self.module(module))
            index += 1

        def run(x: Tensor, region: Region | None) -> Tensor:
            for op in ops:
                x = op(x, region)
            return x

        return run

    def module(self, module: nn.Module) -> Op:
        """The op of any supported block."""
        if isinstance(module, ConvBnAct):
            return self.conv(module.conv, module.bn, isinstance(module.relu, nn.ReLU))
        if isinstance(module, (RegionSequential, nn.Sequential)):
            return self.sequence(list(module.named_children()))
        if isinstance(module, RegionPool):
            pool = _pool(module.pool)
            return lambda x, region: pool(x) if region is None else pool(x) * region.mask
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            pool = _pool(module)
            return lambda x, region: pool(x)
        if isinstance(module, nn.ReLU):
            return lambda x, region: torch.relu(x)
        if isinstance(module, (BasicBlock, Bottleneck)):
            return self.resnet_block(module)
        if isinstance(module, _Residual):
            return self.inception_residual(module)
        if isinstance(module, (Mixed5b, Mixed6a, Mixed7a)):
            return self.concat([getattr(module, name) for name in ("branch0", "branch1", "branch2", "branch3")
                                if hasattr(module, name)])
        if isinstance(module, StageHead):
            hidden, classifier = self.module(module.conv), self.conv(module.classifier, None, relu=False)
            return lambda x, region: classifier(hidden(x, region), region)
        raise TypeError(f"the torch backend has no kernel plan for {type(module).__name__}")

    def concat(self, branches: list[nn.Module]) -> Op:
        ops = [self.module(branch) for branch in branches]
        return lambda x, region: torch.cat([op(x, region) for op in ops], dim=-1)

    def resnet_block(self, block: BasicBlock | Bottleneck) -> Op:
        """``relu(M ⊙ branch(x) + shortcut)``; the add is fused into the last conv of the branch."""
        pairs = [("conv1", "bn1"), ("conv2", "bn2")] + ([("conv3", "bn3")] if isinstance(block, Bottleneck) else [])
        convs = [self.conv(getattr(block, conv), getattr(block, bn), relu=k < len(pairs) - 1)
                 for k, (conv, bn) in enumerate(pairs)]
        shortcut = (None if block.downsample is None
                    else self.conv(block.downsample[0], block.downsample[1], relu=False))

        def run(x: Tensor, region: Region | None) -> Tensor:
            out = x
            for conv in convs[:-1]:
                out = conv(out, region)
            identity = x if shortcut is None else shortcut(x, region)
            return torch.relu_(convs[-1](out, region, residual=identity))

        return run

    def inception_residual(self, block: _Residual) -> Op:
        """``act(x + M ⊙ scale·conv2d(cat(branches)))``; the scale is folded, the add fused."""
        mixed = self.concat([getattr(block, name) for name in block.branches])
        up = self.conv(block.conv2d, None, relu=False, scale=block.scale)
        relu = isinstance(block.act, nn.ReLU)

        def run(x: Tensor, region: Region | None) -> Tensor:
            y = up(mixed(x, region), region, residual=x)
            return torch.relu_(y) if relu else y

        return run


class KernelPath:
    """The cascade and the dense network as kernel plans on ``device``; device tensors in and out.

    :meth:`cascade` and :meth:`dense` are pure functions of their (fixed-shape) inputs with no
    host synchronisation, so :class:`DeviceProgram` can capture them in a CUDA graph.
    """

    def __init__(self, model: LayerCascadeNet, checkpoint: Checkpoint, input_size: tuple[int, int],
                 dtype: torch.dtype, device: torch.device, cuda_graph: bool = False) -> None:
        from layercascade.plugins import kernels

        self.kernels = kernels
        self.model = model
        self.dtype = dtype
        self.device = device
        self.cuda_graph = cuda_graph
        self.input_size = input_size
        self.stage_size = tuple(stage_shapes(model.config, input_size)[0][1:])
        self.mean = torch.tensor(checkpoint.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(checkpoint.std, dtype=torch.float32, device=device)
        with torch.no_grad():
            plans = [Planner(index > 0, dtype, device) for index in range(NUM_STAGES)]
            self.stages = [plan.sequence(model.backbone.stage_modules(index)) for index, plan in enumerate(plans)]
            self.heads = [plan.module(model.heads[index]) for index, plan in enumerate(plans)]
        self.dense_plan: tuple[list[Op], Op] | None = None  # built on first use
        self.programs: dict[tuple[str, int, bool, bool], DeviceProgram] = {}

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (N, H, W, 3) → normalised NHWC in the compute dtype."""
        return ((images.float() - self.mean) / self.std).to(self.dtype)

    def region(self, mask: Tensor) -> Region:
        rows, count = self.kernels.active_list(mask)
        return Region(mask, rows, count)

    def threshold(self, scores: Tensor, rho: Tensor, region: Tensor | None) -> Tensor:
        """``[max softmax(scores) ≤ ρ]`` (∧ the current region), 0/1 (N, h, w, 1) in the compute dtype."""
        confidence = torch.softmax(scores.float(), dim=-1).amax(dim=-1, keepdim=True)
        mask = (confidence <= rho).to(self.dtype)
        return mask if region is None else mask * region

    def cascade(self, images: Tensor, rho: Tensor, forced2: Tensor | None = None,
                forced3: Tensor | None = None) -> dict[str, Tensor]:
        """Labels (N, H, W) uint8, masks (N, h, w, 1), counts (N, 3) and the NHWC stage scores."""
        features = self.normalize(images)
        features = self.stages[0](features, None)
        scores1 = self.heads[0](features, None)
        mask2 = self.threshold(scores1, rho, None) if forced2 is None else forced2
        region2 = self.region(mask2)
        features = self.stages[1](features, region2)
        scores2 = self.heads[1](features, region2)
        mask3 = self.threshold(scores2, rho, mask2) if forced3 is None else forced3
        region3 = self.region(mask3)
        scores3 = self.heads[2](self.stages[2](features, region3), region3)
        fused = torch.where(mask3 > 0, scores3, torch.where(mask2 > 0, scores2, scores1))
        return {"labels": upsample_labels(fused.permute(0, 3, 1, 2), self.input_size), "mask2": mask2,
                "mask3": mask3, "stage_counts": stage_counts(mask2, mask3),
                "scores1": scores1, "scores2": scores2, "scores3": scores3}

    def dense(self, images: Tensor) -> dict[str, Tensor]:
        """The dense network of the same weights: every stage's blocks on every pixel, final head only."""
        if self.dense_plan is None:
            with torch.no_grad():
                plan = Planner(False, self.dtype, self.device)
                self.dense_plan = ([plan.sequence(self.model.backbone.stage_modules(index))
                                    for index in range(NUM_STAGES)], plan.module(self.model.heads[-1]))
        stages, head = self.dense_plan
        features = self.normalize(images)
        for stage in stages:
            features = stage(features, None)
        return {"labels": upsample_labels(head(features, None).permute(0, 3, 1, 2), self.input_size)}

    def program(self, kind: str, batch: int, forced: bool = False, graph: bool | None = None) -> DeviceProgram:
        """The cached program of ``kind`` ("cascade" or "dense") for ``batch`` images, in a CUDA
        graph if ``graph`` (default: the path's ``cuda_graph`` setting)."""
        graph = self.cuda_graph if graph is None else graph
        key = (kind, batch, forced, graph)
        if key not in self.programs:
            height, width = self.input_size
            inputs = {"images": torch.zeros(batch, height, width, 3, dtype=torch.uint8, device=self.device)}
            if kind == "cascade":
                inputs["rho"] = torch.ones(1, dtype=torch.float32, device=self.device)
                if forced:
                    h, w = self.stage_size
                    for name in ("forced2", "forced3"):
                        inputs[name] = torch.zeros(batch, h, w, 1, dtype=self.dtype, device=self.device)
            function = self.cascade if kind == "cascade" else self.dense
            self.programs[key] = DeviceProgram(function, inputs, graph)
        return self.programs[key]

    def run(self, images: np.ndarray, rho: float,
            forced_masks: tuple[np.ndarray, np.ndarray] | None) -> StageOutputs:
        started = time.perf_counter()
        program = self.program("cascade", images.shape[0], forced_masks is not None)
        program.inputs["rho"].fill_(rho)
        if forced_masks is not None:
            for name, mask in zip(("forced2", "forced3"), forced_masks):
                program.inputs[name].copy_(host_tensor(mask).permute(0, 2, 3, 1))
        out, device_ms = self.launch(program, images)
        mask2, mask3 = (out[name].permute(0, 3, 1, 2).float().cpu().numpy() for name in ("mask2", "mask3"))
        timings = {"device": device_ms, "total": (time.perf_counter() - started) * 1e3}
        return StageOutputs(out["labels"].cpu().numpy(), mask2, mask3, out["stage_counts"].cpu().numpy(), timings)

    def dense_labels(self, images: np.ndarray) -> np.ndarray:
        out, _ = self.launch(self.program("dense", images.shape[0]), images)
        return out["labels"].cpu().numpy()

    def launch(self, program: DeviceProgram, images: np.ndarray) -> tuple[dict[str, Tensor], float]:
        """Copy ``images`` in, run ``program``; its outputs (still on the device) and their device ms."""
        program.inputs["images"].copy_(host_tensor(images))
        if self.device.type != "cuda":
            started = time.perf_counter()
            out = program()
            return out, (time.perf_counter() - started) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = program()
        end.record()
        end.synchronize()  # the one wait of the run, after the last stage
        return out, start.elapsed_time(end)


class DeviceProgram:
    """``function(**inputs)`` over fixed device input buffers (fill ``inputs``, then call).

    With ``graph`` the function runs once on a side stream (Triton compiles, cuDNN picks its
    algorithms), is then captured in a CUDA graph and every call replays it; the outputs are
    the graph's static tensors, overwritten by the next call.
    """

    def __init__(self, function: Callable[..., dict[str, Tensor]], inputs: dict[str, Tensor],
                 graph: bool) -> None:
        self.function = function
        self.inputs = inputs
        self.graph: torch.cuda.CUDAGraph | None = None
        if graph:
            # Warm-up and capture on one stream: libraries that create per-stream handles or
            # workspaces lazily then do it before the capture, not inside it.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                function(**inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=side), torch.inference_mode():
                self.outputs = function(**inputs)

    def __call__(self) -> dict[str, Tensor]:
        if self.graph is None:
            with torch.inference_mode():
                return self.function(**self.inputs)
        self.graph.replay()
        return self.outputs


# -- the backend --------------------------------------------------------------------------------
class DenseRunner:
    """The dense network of the backend's weights: ``infer({"image": ...}) -> {"labels": ...}``."""

    def __init__(self, dense: Callable[[np.ndarray], np.ndarray]) -> None:
        self.dense = dense
        self.last_ms = 0.0

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        labels = self.dense(feeds["image"])
        self.last_ms = (time.perf_counter() - started) * 1e3
        return {"labels": labels}


def _check_device(device: str, precision: str, cuda_graph: bool, kernels: bool) -> None:
    if device not in ("cpu", "cuda"):
        fail(f"unknown device {device!r}; choose cpu or cuda")
    if precision not in PRECISIONS:
        fail(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            fail(f"--device cuda: no CUDA device visible to PyTorch (torch {torch.__version__}, {build}); "
                 "use --device cpu")
        return
    if precision != "fp32":
        fail(f"--precision {precision} runs on CUDA only; the torch backend's CPU path is the fp32 reference "
             "(use --device cuda, or drop --precision)")
    if cuda_graph:
        fail("--cuda-graph needs --device cuda")
    if kernels and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        fail("the region-conv kernels run on the CPU only in Triton's interpreter: set TRITON_INTERPRET=1")


class TorchBackend(StagedBackend):
    """A checkpoint's cascade in PyTorch: the reference on the CPU, Triton kernels on CUDA.

    Args:
        checkpoint: the weights and their metadata.
        device: "cpu" or "cuda".
        precision: "fp32" or "fp16" (CUDA only).
        cuda_graph: capture the cascade (and the dense network) in CUDA graphs (CUDA only).
        input_size: (H, W) the model runs at (default: the checkpoint's).
        threads: intra-op threads on the CPU (0 = PyTorch's default).
        kernels: run the kernels path (default: on CUDA); on the CPU it needs TRITON_INTERPRET=1.
        source: the checkpoint's file, recorded with its sha256 in the manifest.
    """

    name = "torch"

    def __init__(self, checkpoint: Checkpoint, device: str = "cpu", precision: str = "fp32",
                 cuda_graph: bool = False, input_size: tuple[int, int] | None = None, threads: int = 0,
                 kernels: bool | None = None, source: Path | None = None) -> None:
        kernels = device == "cuda" if kernels is None else kernels
        _check_device(device, precision, cuda_graph, kernels)
        self.input_size = check_input_size(input_size or checkpoint.input_size)
        if threads:
            torch.set_num_threads(threads)
        model = checkpoint.build_model()
        self.manifest = {"kind": "cascade", **model_keys(checkpoint, self.input_size, source),
                         "batch": {"dynamic": True, "max": None}}
        self.device = device
        self.precision = precision
        self.stages = []  # the stages run inside ``run``, not as separate runners
        if kernels:
            try:
                import triton  # noqa: F401 - only to give a clear error before the kernels import it
            except ImportError:
                fail("the torch backend's kernels need triton: pip install 'layercascade[kernels]'")
            self.path: ReferencePath | KernelPath = KernelPath(model, checkpoint, self.input_size,
                                                               PRECISIONS[precision], torch.device(device),
                                                               cuda_graph)
        else:
            self.path = ReferencePath(model, checkpoint, self.input_size)

    def run(self, images: np.ndarray, rho: float,
            forced_masks: tuple[np.ndarray, np.ndarray] | None = None) -> StageOutputs:
        return self.path.run(images, rho, forced_masks)

    def dense_runner(self, manifest: dict[str, Any]) -> DenseRunner:
        dense = self.path.dense_labels if isinstance(self.path, KernelPath) else self.path.dense
        return DenseRunner(dense)

    def device_program(self, kind: str, batch: int, forced: bool = False,
                       graph: bool | None = None) -> DeviceProgram:
        """The on-device program of the cascade or the dense network, for timing with CUDA events
        (kernels path only): fill its ``inputs`` buffers, then call it. See :meth:`KernelPath.program`."""
        if not isinstance(self.path, KernelPath):
            fail("device programs exist on the kernels path only (--device cuda)")
        return self.path.program(kind, batch, forced, graph)


def load_torch_cascade(path: str | os.PathLike | None, device: str = "cpu", threads: int = 0,
                       **options: Any) -> tuple[Path, dict[str, Any], TorchBackend]:
    """(checkpoint path, manifest, backend) for ``Cascade``; ``None`` is the bundled demo checkpoint.

    A model directory is refused with the name of the checkpoint it was exported from: the
    torch backend runs checkpoints (locating the file by the recorded hash would mean
    searching the disk).
    """
    known = {"precision", "cuda_graph", "input_size", "kernels"}
    unknown = sorted(set(options) - known)
    if unknown:
        names = ", ".join("--" + name.replace("_", "-") for name in unknown)
        fail(f"{names}: not a setting of the torch backend")
    path = Path(path) if path is not None else DEMO_CHECKPOINT
    if path.is_dir():
        source = _exported_from(path)
        fail(f"{path}: an exported model directory; the torch backend runs a checkpoint: pass the .pt file"
             f"{f' it was exported from ({source})' if source else ''}, or use --backend ort")
    checkpoint = load_checkpoint(path)
    backend = TorchBackend(checkpoint, device, threads=threads, source=path, **options)
    return path, backend.manifest, backend


def _exported_from(model_dir: Path) -> str | None:
    """The checkpoint name an ``lc.json`` records, if it can be read."""
    import json

    try:
        return json.loads((model_dir / MANIFEST).read_text())["source"]["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
