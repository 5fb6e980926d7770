"""The torch backend's kernels path: the cascade and the dense network as kernel plans on a device.

The stages run as :class:`~layercascade.runtime.torch.planner.StagePlan` s on channels-last (NHWC)
rows, BN folded into the convs. Stage 1 sees every pixel and holds the strided layers: cuDNN.
Stages 2–3 run every conv as a Triton region conv (bias, ReLU and the residual add fused; one
active list per stage, its count left on the device). Thresholding, fusion, the label upsampling
and the counts run on the device too, so nothing crosses to the host until labels, masks and
counts are copied back. fp16 stores weights and activations in fp16 (the kernels accumulate in
fp32); with CUDA graphs the whole cascade is captured once per batch size and replayed.

The path also runs on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``), which is how
the tests and ``tools/gpu_check.py --dry-run`` check it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from layercascade.contract import (
    CONFIDENCE,
    LABELS,
    MASK2,
    MASK3,
    MASKS,
    SCORES1,
    SCORES2,
    STAGE_COUNTS,
    STAGE_RHOS,
    RhoVectors,
    stage_rho,
)
from layercascade.export.describe import stage_shapes
from layercascade.model.checkpoint import Checkpoint
from layercascade.model.network import NUM_STAGES, LayerCascadeNet
from layercascade.model.ops import backbone_ops, head_ops
from layercascade.runtime.backend import Masks, StageOutputs
from layercascade.runtime.torch.planner import Region, StagePlan
from layercascade.runtime.torch.reference import host_tensor, stage_counts, upsample_labels


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
        self.num_classes = model.config.num_classes
        self.stage_size = tuple(stage_shapes(model.config, input_size)[0][1:])
        self.mean = torch.tensor(checkpoint.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(checkpoint.std, dtype=torch.float32, device=device)
        with torch.no_grad():
            self.stages = [StagePlan(backbone_ops(model, k, k > 0), k > 0, dtype, device) for k in range(NUM_STAGES)]
            self.heads = [StagePlan(head_ops(model, k, k > 0), k > 0, dtype, device) for k in range(NUM_STAGES)]
        self.dense_plan: tuple[list[StagePlan], StagePlan] | None = None  # built on first use
        self.programs: dict[tuple[str, int, bool, bool], DeviceProgram] = {}
        self.rho_copied: dict[tuple[DeviceProgram, str], np.ndarray] = {}  # the thresholds on the device, by program

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (N, H, W, 3) → normalised NHWC in the compute dtype."""
        return ((images.float() - self.mean) / self.std).to(self.dtype)

    def region(self, mask: Tensor) -> Region:
        rows, count = self.kernels.active_list(mask)
        return Region(mask, rows, count)

    def threshold(self, scores: Tensor, rho: Tensor, region: Tensor | None) -> Tensor:
        """``[max softmax(scores) ≤ ρ[argmax scores]]`` (∧ the current region), 0/1 (N, h, w, 1) in the compute
        dtype; ``rho`` holds one threshold per class (``model/region.py`` ``next_mask``)."""
        confidence = torch.softmax(scores.float(), dim=-1).amax(dim=-1, keepdim=True)
        mask = (confidence <= rho[scores.argmax(dim=-1, keepdim=True)]).to(self.dtype)
        return mask if region is None else mask * region

    def cascade(self, images: Tensor, rho2: Tensor, rho3: Tensor, forced2: Tensor | None = None,
                forced3: Tensor | None = None) -> dict[str, Tensor]:
        """Labels (N, H, W) uint8, masks (N, h, w, 1), counts (N, 3), the fused scores' confidence (N, h, w)
        float32 and the NHWC stage scores, at the thresholds ``rho2`` (M₂) and ``rho3`` (M₃)."""
        features = self.normalize(images)
        features = self.stages[0](features, None)
        scores1 = self.heads[0](features, None)
        mask2 = self.threshold(scores1, rho2, None) if forced2 is None else forced2
        region2 = self.region(mask2)
        features = self.stages[1](features, region2)
        scores2 = self.heads[1](features, region2)
        mask3 = self.threshold(scores2, rho3, mask2) if forced3 is None else forced3
        region3 = self.region(mask3)
        scores3 = self.heads[2](self.stages[2](features, region3), region3)
        fused = torch.where(mask3 > 0, scores3, torch.where(mask2 > 0, scores2, scores1))
        return {LABELS: upsample_labels(fused.permute(0, 3, 1, 2), self.input_size), MASK2: mask2,
                MASK3: mask3, STAGE_COUNTS: stage_counts(mask2, mask3),
                CONFIDENCE: torch.softmax(fused.float(), dim=-1).amax(dim=-1),
                SCORES1: scores1, SCORES2: scores2, "scores3": scores3}

    def dense(self, images: Tensor) -> dict[str, Tensor]:
        """The dense network of the same weights: every stage's blocks on every pixel, final head only."""
        if self.dense_plan is None:
            with torch.no_grad():
                stages = [StagePlan(backbone_ops(self.model, k, False), False, self.dtype, self.device)
                          for k in range(NUM_STAGES)]
                head = StagePlan(head_ops(self.model, NUM_STAGES - 1, False), False, self.dtype, self.device)
                self.dense_plan = stages, head
        stages, head = self.dense_plan
        features = self.normalize(images)
        for stage in stages:
            features = stage(features, None)
        return {LABELS: upsample_labels(head(features, None).permute(0, 3, 1, 2), self.input_size)}

    def program(self, kind: str, batch: int, forced: bool = False, graph: bool | None = None) -> DeviceProgram:
        """The cached program of ``kind`` ("cascade" or "dense") for ``batch`` images, in a CUDA
        graph if ``graph`` (default: the path's ``cuda_graph`` setting)."""
        graph = self.cuda_graph if graph is None else graph
        key = (kind, batch, forced, graph)
        if key not in self.programs:
            height, width = self.input_size
            inputs = {"images": torch.zeros(batch, height, width, 3, dtype=torch.uint8, device=self.device)}
            if kind == "cascade":
                for name in STAGE_RHOS:
                    inputs[name] = torch.ones(self.num_classes, dtype=torch.float32, device=self.device)
                if forced:
                    h, w = self.stage_size
                    for name in ("forced2", "forced3"):
                        inputs[name] = torch.zeros(batch, h, w, 1, dtype=self.dtype, device=self.device)
            function = self.cascade if kind == "cascade" else self.dense
            self.programs[key] = DeviceProgram(function, inputs, graph)
        return self.programs[key]

    def run(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None) -> StageOutputs:
        started = time.perf_counter()
        program = self.program("cascade", images.shape[0], forced_masks is not None)
        for name, value in zip(STAGE_RHOS, rho):
            vector = stage_rho(value, self.num_classes)
            if not np.array_equal(self.rho_copied.get((program, name)), vector):  # 4·C bytes, when they change
                program.inputs[name].copy_(torch.from_numpy(vector))
                self.rho_copied[program, name] = vector
        if forced_masks is not None:
            for name, mask in zip(("forced2", "forced3"), forced_masks):
                program.inputs[name].copy_(host_tensor(mask).permute(0, 2, 3, 1))
        out, device_ms = self.launch(program, images)
        mask2, mask3 = (out[name].permute(0, 3, 1, 2).float().cpu().numpy() for name in MASKS)
        timings = {"device": device_ms, "total": (time.perf_counter() - started) * 1e3}
        return StageOutputs(out[LABELS].cpu().numpy(), mask2, mask3, out[STAGE_COUNTS].cpu().numpy(), timings,
                            out[CONFIDENCE].cpu().numpy())

    def dense_labels(self, images: np.ndarray) -> np.ndarray:
        out, _ = self.launch(self.program("dense", images.shape[0]), images)
        return out[LABELS].cpu().numpy()

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
