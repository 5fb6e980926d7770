"""Ahead-of-time compilation of the kernels to PTX for explicit GPU targets — no GPU needed.

This is what a TensorRT AOT plugin (``trtp.aot_impl``) hands to TensorRT: kernel name,
PTX, threads per block and shared memory; the grid is :func:`kernels.conv_grid` as
symbolic shape expressions. Run as ``python -m layercascade.plugins.ptx`` it prints one
JSON result per (kernel, dtype, arch) — :mod:`layercascade.plugins.check` runs it so in a
separate process when the kernels are interpreted (``TRITON_INTERPRET=1`` turns every
``triton.jit`` function into an interpreter object that cannot be compiled).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import NamedTuple

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from layercascade.plugins import kernels

ARCHS = {"sm_80": 80, "sm_86": 86, "sm_89": 89, "sm_90": 90}
CONV_KERNELS = {"region_conv": kernels._region_conv_rows_kernel,
                "region_conv_masked": kernels._region_conv_masked_kernel}
KERNELS = ("active_list", *CONV_KERNELS)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class Layer(NamedTuple):
    """A layer to compile; the defaults are the representative layer of the check (a dilated
    3×3 residual conv + ReLU on NHWC). ``channels_last=False`` compiles for NCHW activations
    and contiguous (C_out, C_in, KH, KW) weights, as TensorRT hands them to a plugin;
    ``config`` overrides the tiles of :func:`kernels.block_config`."""

    c_in: int = 256
    c_out: int = 256
    kernel: int | tuple[int, int] = 3
    dilation: int | tuple[int, int] = 2
    relu: bool = True
    residual: bool = True
    channels_last: bool = True
    config: kernels.BlockConfig | None = None


DEFAULT_LAYER = Layer()


class AotKernel(NamedTuple):
    """What an AOT plugin needs from one compiled kernel."""

    name: str
    ptx: str
    threads: int
    shared_bytes: int
    params: int


def _layer_source(fn: triton.runtime.JITFunction, dtype: str, layer: Layer) -> tuple[ASTSource, int]:
    """The source of a conv kernel specialised to ``layer``, and its warps per block."""
    (kh, kw), (dh, dw) = kernels._pair(layer.kernel), kernels._pair(layer.dilation)
    x_shape = (1, 64, 64, layer.c_in) if layer.channels_last else (1, layer.c_in, 64, 64)
    x = torch.empty(x_shape, dtype=DTYPES[dtype], device="meta")
    weight = torch.empty(layer.c_out, layer.c_in, kh, kw, dtype=DTYPES[dtype], device="meta")
    if layer.channels_last:
        weight = kernels.pack_weight(weight)
    config = layer.config or kernels.block_config(layer.c_in, layer.c_out, max(kh, kw), dtype)
    constexprs: dict[str, object] = kernels.layer_constexprs(
        x, weight, (dh * (kh - 1) // 2, dw * (kw - 1) // 2), (dh, dw), layer.relu, config, layer.channels_last)
    if not layer.residual:
        constexprs["res_ptr"] = None  # a None constexpr: the kernel then has no residual input
    data = f"*{dtype}"
    # A TensorRT fp16 graph carries its mask in the data type too.
    types = {"x_ptr": data, "w_ptr": data, "b_ptr": data, "mask_ptr": data, "rows_ptr": "*i32",
             "count_ptr": "*i32", "res_ptr": data, "H": "i32", "W": "i32", "P": "i32", "out_ptr": data}
    signature = {name: "constexpr" if name in constexprs else types[name] for name in fn.arg_names}
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=_aligned(signature)), config.num_warps


def _aligned(signature: dict[str, str]) -> dict[tuple[int], list]:
    """Declare every pointer 16-byte aligned, as Triton's JIT does for aligned tensors: without
    it the loads are not vectorised or pipelined. TensorRT and PyTorch buffers are 256-byte aligned."""
    return {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values()) if kind.startswith("*")}


def ptx_cuda(arch: str, driver_cuda: str | None = None) -> str:
    """The CUDA version (``"12.4"``) whose PTX ISA the kernels for ``arch`` are emitted in: the one of
    Triton's bundled ptxas, or that of a driver of CUDA ``driver_cuda`` when it is older.

    A driver rejects newer PTX when it loads the module (``CUDA_ERROR_UNSUPPORTED_PTX_VERSION``);
    for a TensorRT AOT plugin that happens at engine run time, on the machine that runs the engine
    (Torch-TensorRT caps the ISA for the same reason: ``py/torch_tensorrt/kernels/_triton.py``).
    lc-build records this version in ``engines.json``; the TensorRT backend refuses a driver older than it.
    """
    from triton.backends.nvidia.compiler import get_ptxas

    own = get_ptxas(int(arch.removeprefix("sm_"))).version
    if driver_cuda is None:
        return own
    return min(own, driver_cuda, key=lambda version: tuple(int(part) for part in version.split(".")[:2]))


def ptx_isa(arch: str, driver_cuda: str | None = None) -> int:
    """The PTX ISA version (``84`` = ``.version 8.4``) of :func:`ptx_cuda`; the mapping of CUDA versions
    to ISAs is Triton's own (``ptx_get_version``)."""
    from triton.backends.nvidia.compiler import ptx_get_version

    return ptx_get_version(ptx_cuda(arch, driver_cuda))


def compile_kernel(kernel: str, dtype: str, arch: str, layer: Layer = DEFAULT_LAYER, num_stages: int | None = None,
                   ptx_version: int | None = None) -> AotKernel:
    """Compile one kernel for ``arch`` (e.g. ``"sm_90"``; :data:`ARCHS` are the checked ones)
    through PTX to a cubin (ptxas checks it). ``num_stages`` overrides the software pipelining
    depth, ``ptx_version`` the PTX ISA (:func:`ptx_isa`)."""
    if kernel == "active_list":
        mask = {"fp32": "*fp32", "fp16": "*fp16"}[dtype]
        source = ASTSource(fn=kernels._active_list_kernel,
                           signature={"mask_ptr": mask, "rows_ptr": "*i32", "count_ptr": "*i32",
                                      "P": "i32", "BLOCK": "constexpr"},
                           constexprs={"BLOCK": kernels.ACTIVE_LIST_BLOCK})
        source.attrs = _aligned(source.signature)
        options = kernels.ACTIVE_LIST_OPTIONS
    elif kernel in CONV_KERNELS:
        source, num_warps = _layer_source(CONV_KERNELS[kernel], dtype, layer)
        options = {"num_warps": num_warps, **kernels.COMPILE_OPTIONS}
    else:
        raise ValueError(f"unknown kernel {kernel!r}; one of {KERNELS}")
    options = {**options, **({"num_stages": num_stages} if num_stages else {}),
               **({"ptx_version": ptx_version} if ptx_version else {})}
    compiled = triton.compile(source, target=GPUTarget("cuda", int(arch.removeprefix("sm_")), 32), options=options)
    ptx = compiled.asm["ptx"]
    entry = re.search(r"\.entry\s+\w+\s*\((.*?)\)", ptx, re.DOTALL)
    params = entry.group(1).count(".param") if entry else 0
    return AotKernel(compiled.metadata.name, ptx, compiled.metadata.num_warps * 32,
                     compiled.metadata.shared, params)


def check_all(kernel_names: tuple[str, ...] = KERNELS, dtypes: tuple[str, ...] = tuple(DTYPES),
              archs: tuple[str, ...] = tuple(ARCHS)) -> list[dict]:
    """Compile every combination; one ``{"case", "ok", "max_abs_err", "detail"}`` each."""
    results = []
    for kernel in kernel_names:
        for dtype in dtypes:
            for arch in archs:
                case = f"ptx:{kernel}:{dtype}:{arch}"
                try:
                    aot = compile_kernel(kernel, dtype, arch)
                    target = re.search(r"^\.target\s+(\S+)", aot.ptx, re.MULTILINE)
                    ok = aot.name in aot.ptx and target is not None and target.group(1).startswith(arch)
                    detail = (f"{len(aot.ptx)} chars, .target {target.group(1) if target else '?'}, "
                              f"{aot.threads} threads, {aot.shared_bytes} B shared, {aot.params} params")
                except Exception as error:  # noqa: BLE001 - a failed compile is a failed case, not a crash
                    ok, detail = False, f"{type(error).__name__}: {error}"
                results.append({"case": case, "ok": ok, "max_abs_err": None, "detail": detail})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    args = parser.parse_args(argv)
    results = check_all(tuple(args.kernels), tuple(args.dtypes), tuple(args.archs))
    json.dump(results, sys.stdout)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
