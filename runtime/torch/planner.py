"""The network's folded ops (``model/ops.py``) as kernel calls on channels-last (NHWC) tensors.

A :class:`StagePlan` runs one op list: in a region stage every conv is a Triton region conv
(stride 1; bias, ReLU and a residual add fused) over the stage's active list, elsewhere cuDNN
on the channels-last view with the same epilogue. A residual add whose one operand is a conv
read by nothing else runs inside that conv (the conv waits for the add's other operand), and
each value is dropped after its last use, so a stage holds only the tensors still needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from layercascade.model import ops
from layercascade.model.ops import INPUT


@dataclass
class Region:
    """The pixels a region stage computes: the mask (N, h, w, 1) 0/1 in the compute dtype and
    its active list with the list's device-side count."""

    mask: Tensor
    rows: Tensor
    count: Tensor


class KernelConv:
    """A folded conv on NHWC: ``residual + act(conv) ⊙ M`` as a Triton region conv in a region
    stage, cuDNN on the channels-last view elsewhere."""

    def __init__(self, op: ops.Conv, region: bool, dtype: torch.dtype, device: torch.device) -> None:
        self.region = region
        self.relu = op.relu
        self.stride, self.padding, self.dilation, self.groups = op.stride, op.padding, op.dilation, op.groups
        self.bias = op.bias.to(device, dtype)
        weight = op.weight.to(device, dtype)
        if region:
            import triton

            from layercascade.plugins import kernels

            if self.stride != (1, 1):
                raise ValueError(f"{op.name}: region convolutions have stride 1, got {self.stride}")
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


# One step of a plan: (the values it reads) × region → its value.
Kernel = Callable[..., Tensor]


@dataclass
class _Step:
    kernel: Kernel
    sources: tuple[str, ...]
    output: str
    done: tuple[str, ...] = ()  # values read for the last time here


def _pool(op: ops.Pool) -> Kernel:
    def pool(x: Tensor, region: Region | None) -> Tensor:
        nchw = x.permute(0, 3, 1, 2)
        if op.kind == "max":
            y = F.max_pool2d(nchw, op.kernel, op.stride, op.padding)
        else:
            y = F.avg_pool2d(nchw, op.kernel, op.stride, op.padding, count_include_pad=op.count_include_pad)
        return y.permute(0, 2, 3, 1).contiguous()

    return pool


def _relu(x: Tensor, region: Region | None) -> Tensor:
    return torch.relu(x)


def _relu_in_place(x: Tensor, region: Region | None) -> Tensor:
    return torch.relu_(x)


def _fused_add(conv: KernelConv) -> Kernel:
    return lambda x, residual, region: conv(x, region, residual=residual)


class StagePlan:
    """An op list as kernel calls: ``plan(x, region)`` → the value of the last op (``region``:
    None = every pixel). ``region``: whether the plan's convs are region convs."""

    def __init__(self, op_list: list[ops.Op], region: bool, dtype: torch.dtype, device: torch.device) -> None:
        readers: dict[str, int] = {}
        for op in op_list:
            for name in _sources(op):
                readers[name] = readers.get(name, 0) + 1
        producers = {op.name: op for op in op_list}
        # Residual adds fused into the conv that is one of their operands (the first that can be).
        fused: dict[str, tuple[ops.Conv, str]] = {}
        for op in op_list:
            if isinstance(op, ops.Add):
                for own, other in (op.sources, op.sources[::-1]):
                    conv = producers.get(own)
                    if isinstance(conv, ops.Conv) and not conv.relu and readers[own] == 1:
                        fused[op.name] = (conv, other)
                        break
        deferred = {conv.name for conv, _ in fused.values()}
        steps = []
        for op in op_list:
            if op.name in deferred:
                continue
            if op.name in fused:
                conv, residual = fused[op.name]
                steps.append(_Step(_fused_add(KernelConv(conv, region, dtype, device)), (conv.source, residual),
                                   op.name))
            else:
                steps.append(_Step(self.kernel(op, region, dtype, device), _sources(op), op.name))
        last_read = {name: index for index, step in enumerate(steps) for name in step.sources}
        for index, step in enumerate(steps):
            step.done = tuple(sorted({name for name in step.sources if last_read[name] == index}))
            if step.kernel is _relu and step.sources[0] in step.done and step.sources[0] != INPUT:
                step.kernel = _relu_in_place  # its source is read no more: overwrite it
        self.steps = steps
        self.output = op_list[-1].name if op_list else INPUT

    @staticmethod
    def kernel(op: ops.Op, region: bool, dtype: torch.dtype, device: torch.device) -> Kernel:
        if isinstance(op, ops.Conv):
            return KernelConv(op, region, dtype, device)
        if isinstance(op, ops.Pool):
            return _pool(op)
        if isinstance(op, ops.Mask):
            return lambda x, region: x * region.mask
        if isinstance(op, ops.Relu):
            return _relu
        if isinstance(op, ops.Add):
            return lambda a, b, region: a + b
        if isinstance(op, ops.Concat):
            return lambda *tensors: torch.cat(tensors[:-1], dim=-1)
        raise TypeError(f"{op.name}: the torch backend has no kernel plan for {type(op).__name__}")

    def __call__(self, x: Tensor, region: Region | None) -> Tensor:
        values = {INPUT: x}
        for step in self.steps:
            out = step.kernel(*(values[name] for name in step.sources), region)
            for name in step.done:
                del values[name]
            values[step.output] = out
        return values[self.output]


def _sources(op: ops.Op) -> tuple[str, ...]:
    return op.sources if isinstance(op, (ops.Add, ops.Concat)) else (op.source,)
