"""Triton kernels for region convolution on channels-last (NHWC) rows (region semantics: docs/architecture.md).

One op, ``y = [residual +] act(conv2d(x, W, b)) ⊙ M`` (stride 1, "same" padding,
groups = 1), as an implicit GEMM over pixel rows: fp32 or fp16 data, fp32 accumulation.
Neighbours are read at their real values, also outside M; outside M the output is exactly
0, or exactly the residual. Two forms:

* **list form** — :func:`active_list` compacts M into ascending active pixel indices and a
  device-side count (one launch, once per stage); :func:`region_conv` then computes only
  the gathered rows. Its grid is an upper bound from shapes; programs whose row block
  starts past the count exit at once, so there is no host sync and the launches are
  CUDA-graph safe. Inactive pixels get their value from a fill of the output beforehand.
* **mask form** — :func:`region_conv_masked` reads M itself, skips the GEMM for row tiles
  without an active pixel and writes zeros (or the residual) for inactive pixels: a single
  launch whose grid and scalar arguments are functions of shapes only, the shape of a
  TensorRT AOT plugin kernel (``tensorrt.plugin``'s argument order: inputs, then int32 scalars,
  then outputs).

Layer parameters (channels, kernel size, padding, dilation, ReLU, weight strides) are
``constexpr``: TensorRT's AOT path serialises no attributes, so they must be baked into
the compiled kernel; the JIT path compiles one specialisation per layer the same way.
``CHANNELS_LAST = 0`` compiles the same kernels for NCHW activations and outputs, the layout
TensorRT hands its plugins (``plugins/trt_plugin.py``); the launchers here are NHWC.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

# Compile options of every conv launch. Pipelining depth 3 of the K loop (cp.async on
# sm_80+) fits shared memory for every table entry below on sm_80..sm_90; FMA fusion is
# named explicitly because Triton's default for it is changing.
COMPILE_OPTIONS = {"num_stages": 3, "enable_fp_fusion": True}
# Mask elements scanned per step of the single-program active-list scan.
ACTIVE_LIST_BLOCK = 1024
ACTIVE_LIST_OPTIONS = {"num_warps": 4, "enable_fp_fusion": True}


class BlockConfig(NamedTuple):
    """Tile sizes of the implicit GEMM: pixel rows × output channels × reduction."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int


# (C_in, C_out, kernel size, dtype) → tiles, for the layer shapes we benchmark; chosen by
# hand (no autotune at import). fp16 uses tensor-core tiles; BLOCK_M = 32 for C = 64 so
# that a 64×64 map still gives ~128 programs on a 132-SM H100.
BLOCK_TABLE: dict[tuple[int, int, int, str], BlockConfig] = {
    (64, 64, 1, "fp16"): BlockConfig(32, 64, 64, 4),
    (64, 64, 3, "fp16"): BlockConfig(32, 64, 64, 4),
    (256, 256, 1, "fp16"): BlockConfig(64, 128, 64, 4),
    (256, 256, 3, "fp16"): BlockConfig(64, 128, 64, 4),
    (512, 512, 1, "fp16"): BlockConfig(64, 128, 64, 4),
    (512, 512, 3, "fp16"): BlockConfig(64, 128, 64, 4),
    (64, 64, 1, "fp32"): BlockConfig(32, 64, 32, 4),
    (64, 64, 3, "fp32"): BlockConfig(32, 64, 32, 4),
    (256, 256, 1, "fp32"): BlockConfig(32, 64, 32, 4),
    (256, 256, 3, "fp32"): BlockConfig(32, 64, 32, 4),
    (512, 512, 1, "fp32"): BlockConfig(32, 64, 32, 4),
    (512, 512, 3, "fp32"): BlockConfig(32, 64, 32, 4),
}

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16"}


def _pow2_clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(value)))


def block_config(c_in: int, c_out: int, kernel: int, dtype: str) -> BlockConfig:
    """Tiles for a layer: the :data:`BLOCK_TABLE` entry, else a rule of thumb.

    Every size is a power of two ≥ 16 (``tl.dot``'s minimum) and no larger than the
    channel count needs, so tiny layers do not compute mostly padding.
    """
    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"dtype must be 'fp32' or 'fp16', got {dtype!r}")
    entry = BLOCK_TABLE.get((c_in, c_out, kernel, dtype))
    if entry is not None:
        return entry
    wide = dtype == "fp16"
    return BlockConfig(
        block_m=64 if wide else 32,
        block_n=_pow2_clamp(c_out, 16, 128 if wide else 64),
        block_k=_pow2_clamp(c_in, 16, 64 if wide else 32),
        num_warps=4,
    )


def conv_grid(num_pixels: int, c_out: int, config: BlockConfig) -> tuple[int, int]:
    """Launch grid of both conv kernels: (row blocks, output-channel blocks).

    A function of shapes only — the upper bound ``N·H·W`` rows for the list form — so a
    CUDA graph or a TensorRT AOT plugin can fix it before any mask is known.
    """
    return triton.cdiv(num_pixels, config.block_m), triton.cdiv(c_out, config.block_n)


@triton.jit
def _active_list_kernel(mask_ptr, rows_ptr, count_ptr, P, BLOCK: tl.constexpr):
    # One program scans the mask in chunks: an in-chunk prefix sum gives each active
    # pixel its slot, so the list comes out ascending and the count is exact, in one
    # launch with no atomics.
    base = 0
    for start in range(0, P, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        flags = (tl.load(mask_ptr + offs, mask=offs < P, other=0) != 0).to(tl.int32)
        slots = base + tl.cumsum(flags, 0) - flags
        tl.store(rows_ptr + slots, offs, mask=flags != 0)
        base += tl.sum(flags, 0)
    tl.store(count_ptr, base)


@triton.jit
def _conv_tile(x_ptr, w_ptr, pix, rows_ok, H, W, pid_n,
               C_IN: tl.constexpr, C_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
               PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
               WS_O: tl.constexpr, WS_I: tl.constexpr, WS_H: tl.constexpr, WS_W: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               CHANNELS_LAST: tl.constexpr):
    """fp32 accumulator [BLOCK_M, BLOCK_N] of conv2d at pixels ``pix`` (rows_ok: rows to read).

    ``x`` is NHWC when CHANNELS_LAST, else NCHW (TensorRT's LINEAR layout, read in place)."""
    img = pix // (H * W)
    oh = (pix // W) % H
    ow = pix % W
    cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cn < C_OUT
    rk = tl.arange(0, BLOCK_K)
    # One flat loop over taps × channel blocks (instead of nested loops) so the
    # pipeliner sees a single long K loop.
    K_BLOCKS: tl.constexpr = (C_IN + BLOCK_K - 1) // BLOCK_K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for step in range(KH * KW * K_BLOCKS):
        tap = step // K_BLOCKS
        kh = tap // KW
        kw = tap % KW
        ck = (step % K_BLOCKS) * BLOCK_K + rk
        k_ok = ck < C_IN
        ih = oh + kh * DIL_H - PAD_H
        iw = ow + kw * DIL_W - PAD_W
        # Zero outside the image ("same" zero padding); real values everywhere inside it.
        inside = rows_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        if CHANNELS_LAST:
            src = ((img * H + ih) * W + iw).to(tl.int64) * C_IN
            a_offs = src[:, None] + ck[None, :]
        else:
            src = img.to(tl.int64) * C_IN * H * W + ih * W + iw
            a_offs = src[:, None] + ck.to(tl.int64)[None, :] * (H * W)
        a = tl.load(x_ptr + a_offs, mask=inside[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptr + kh * WS_H + kw * WS_W + ck[:, None] * WS_I + cn[None, :] * WS_O,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        # fp32 data: exact products ("ieee"), not TF32, to match the fp32 reference.
        if x_ptr.dtype.element_ty == tl.float32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _store_tile(acc, b_ptr, res_ptr, out_ptr, pix, active, store_ok, pid_n, HW,
                C_OUT: tl.constexpr, RELU: tl.constexpr, BLOCK_N: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Epilogue: ``[res +] (act(acc + b) where active else 0)``, stored at rows ``store_ok``
    (NHWC output when CHANNELS_LAST, else NCHW; ``HW`` = H·W)."""
    cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cn < C_OUT
    y = acc
    if b_ptr is not None:
        y += tl.load(b_ptr + cn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        y = tl.maximum(y, 0.0)
    y = tl.where(active[:, None], y, 0.0)
    if CHANNELS_LAST:
        offs = pix.to(tl.int64)[:, None] * C_OUT + cn[None, :]
    else:
        img = pix.to(tl.int64) // HW
        offs = (img * C_OUT * HW + pix % HW)[:, None] + cn.to(tl.int64)[None, :] * HW
    ok = store_ok[:, None] & n_ok[None, :]
    if res_ptr is not None:
        y += tl.load(res_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _region_conv_rows_kernel(x_ptr, w_ptr, b_ptr, rows_ptr, count_ptr, res_ptr, H, W, out_ptr,
                             C_IN: tl.constexpr, C_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                             PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                             DIL_H: tl.constexpr, DIL_W: tl.constexpr, RELU: tl.constexpr,
                             WS_O: tl.constexpr, WS_I: tl.constexpr, WS_H: tl.constexpr, WS_W: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             CHANNELS_LAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    count = tl.load(count_ptr)
    # The grid covers every pixel; blocks past the device-side count have no rows.
    if pid_m * BLOCK_M >= count:
        return
    offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs < count
    pix = tl.load(rows_ptr + offs, mask=row_ok, other=0)
    acc = _conv_tile(x_ptr, w_ptr, pix, row_ok, H, W, pid_n, C_IN, C_OUT, KH, KW, PAD_H, PAD_W,
                     DIL_H, DIL_W, WS_O, WS_I, WS_H, WS_W, BLOCK_M, BLOCK_N, BLOCK_K, CHANNELS_LAST)
    _store_tile(acc, b_ptr, res_ptr, out_ptr, pix, row_ok, row_ok, pid_n, H * W, C_OUT, RELU, BLOCK_N,
                CHANNELS_LAST)


@triton.jit
def _region_conv_masked_kernel(x_ptr, w_ptr, b_ptr, mask_ptr, res_ptr, H, W, P, out_ptr,
                               C_IN: tl.constexpr, C_OUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                               PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                               DIL_H: tl.constexpr, DIL_W: tl.constexpr, RELU: tl.constexpr,
                               WS_O: tl.constexpr, WS_I: tl.constexpr, WS_H: tl.constexpr, WS_W: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               CHANNELS_LAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = pix < P
    active = tl.load(mask_ptr + pix, mask=in_range, other=0) != 0
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # Tile skipping: the GEMM runs only for tiles with an active pixel, and reads only
    # the active rows; every tile still writes all its rows (0 / residual outside M).
    if tl.max(active.to(tl.int32), 0) > 0:
        acc = _conv_tile(x_ptr, w_ptr, pix, active, H, W, pid_n, C_IN, C_OUT, KH, KW, PAD_H, PAD_W,
                         DIL_H, DIL_W, WS_O, WS_I, WS_H, WS_W, BLOCK_M, BLOCK_N, BLOCK_K, CHANNELS_LAST)
    _store_tile(acc, b_ptr, res_ptr, out_ptr, pix, active, in_range, pid_n, H * W, C_OUT, RELU, BLOCK_N,
                CHANNELS_LAST)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _flat_mask(mask: Tensor) -> Tensor:
    """The mask as a flat per-pixel vector the kernels can read (bool viewed as uint8)."""
    flat = mask.reshape(-1)
    return flat.view(torch.uint8) if flat.dtype == torch.bool else flat


def pack_weight(weight: Tensor) -> Tensor:
    """``weight`` (C_out, C_in, KH, KW) stored HWIO: same shape, output channels contiguous.

    The kernels accept any strides, but this layout makes each weight tile load coalesced;
    pack once per layer and reuse.
    """
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


def layer_constexprs(x: Tensor, weight: Tensor, padding: int | tuple[int, int],
                     dilation: int | tuple[int, int], relu: bool, config: BlockConfig,
                     channels_last: bool = True) -> dict[str, int]:
    """The compile-time parameters of one layer, shared by the launchers and AOT compilation.

    ``channels_last=False``: ``x`` and the output are NCHW, as TensorRT hands a plugin its
    LINEAR tensors (the launchers here are NHWC; the TensorRT plugin launches NCHW).
    """
    c_out, c_in, kh, kw = weight.shape
    pad, dil = _pair(padding), _pair(dilation)
    if x.shape[-1 if channels_last else 1] != c_in:
        raise ValueError(f"x must be {'NHWC' if channels_last else 'NCHW'} with {c_in} channels, "
                         f"got shape {tuple(x.shape)}")
    if 2 * pad[0] != dil[0] * (kh - 1) or 2 * pad[1] != dil[1] * (kw - 1):
        raise ValueError(f"region conv needs 'same' padding: kernel {kh}x{kw}, dilation {dil}, padding {pad}")
    ws_o, ws_i, ws_h, ws_w = weight.stride()
    return {"C_IN": c_in, "C_OUT": c_out, "KH": kh, "KW": kw, "PAD_H": pad[0], "PAD_W": pad[1],
            "DIL_H": dil[0], "DIL_W": dil[1], "RELU": int(relu),
            "WS_O": ws_o, "WS_I": ws_i, "WS_H": ws_h, "WS_W": ws_w,
            "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "BLOCK_K": config.block_k,
            "CHANNELS_LAST": int(channels_last)}


def _prepare(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None,
             padding: int | tuple[int, int], dilation: int | tuple[int, int], relu: bool,
             config: BlockConfig | None) -> tuple[tuple[int, int], dict[str, int]]:
    """Check the tensors of an NHWC conv call; its grid and the kernel's keyword arguments
    (warps, :data:`COMPILE_OPTIONS`, :func:`layer_constexprs`)."""
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"x must be NHWC and weight (C_out, C_in, KH, KW), "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.dtype not in DTYPE_NAMES or weight.dtype != x.dtype:
        raise ValueError(f"x and weight must both be fp32 or fp16, got {x.dtype} and {weight.dtype}")
    if not x.is_contiguous():
        raise ValueError("x must be a contiguous NHWC tensor")
    n, h, w, _ = x.shape
    c_out = weight.shape[0]
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias.shape)}")
    if residual is not None and (residual.shape != (n, h, w, c_out) or residual.dtype != x.dtype
                                 or not residual.is_contiguous()):
        raise ValueError(f"residual must be a contiguous ({n}, {h}, {w}, {c_out}) {x.dtype} tensor")
    config = config or block_config(weight.shape[1], c_out, weight.shape[2], DTYPE_NAMES[x.dtype])
    options = {"num_warps": config.num_warps, **COMPILE_OPTIONS,
               **layer_constexprs(x, weight, padding, dilation, relu, config)}
    return conv_grid(n * h * w, c_out, config), options


def active_list(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Ascending int32 indices of the active pixels of ``mask`` and their int32 count, shape (1,).

    ``mask``: (N, 1, H, W) or flat (N·H·W,), float or bool; nonzero = active. The list
    buffer has the upper-bound size N·H·W; only its first ``count`` entries are written.
    One launch; the count stays on the device.
    """
    flat = _flat_mask(mask)
    rows = torch.empty(flat.numel(), dtype=torch.int32, device=mask.device)
    count = torch.empty(1, dtype=torch.int32, device=mask.device)
    _active_list_kernel[(1,)](flat, rows, count, flat.numel(), BLOCK=ACTIVE_LIST_BLOCK, **ACTIVE_LIST_OPTIONS)
    return rows, count


def region_conv(x_nhwc: Tensor, weight: Tensor, bias: Tensor | None, mask_or_list: Tensor,
                count: Tensor | None = None, *, padding: int | tuple[int, int],
                dilation: int | tuple[int, int] = 1, relu: bool = False, residual: Tensor | None = None,
                groups: int = 1, config: BlockConfig | None = None) -> Tensor:
    """List form: ``[residual +] act(conv2d(x, W, b)) ⊙ M`` on NHWC, computed on active rows only.

    ``mask_or_list``: the mask (then ``count`` is None and the list is built here) or the
    list from :func:`active_list` with its ``count``. ``weight`` is (C_out, C_in, KH, KW)
    with any strides (:func:`pack_weight` is fastest). groups ≠ 1 falls back to the
    PyTorch reference. Inactive pixels: the output is zero-filled (or a copy of the
    residual) first — one bandwidth-bound pass, cheaper than a second kernel and the
    only way without reading the mask again.
    """
    if groups != 1:
        from layercascade.plugins.reference import region_conv_reference

        mask = mask_or_list if count is None else _list_to_mask(mask_or_list, count, x_nhwc)
        return region_conv_reference(x_nhwc, weight, bias, mask, padding=padding, dilation=dilation,
                                     relu=relu, residual=residual, groups=groups)
    grid, options = _prepare(x_nhwc, weight, bias, residual, padding, dilation, relu, config)
    rows, count = active_list(mask_or_list) if count is None else (mask_or_list, count)
    n, h, w, _ = x_nhwc.shape
    if residual is None:
        out = torch.zeros((n, h, w, weight.shape[0]), dtype=x_nhwc.dtype, device=x_nhwc.device)
    else:
        out = residual.clone()
    _region_conv_rows_kernel[grid](x_nhwc, weight, bias, rows, count, residual, h, w, out, **options)
    return out


def region_conv_masked(x_nhwc: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor, *,
                       padding: int | tuple[int, int], dilation: int | tuple[int, int] = 1,
                       relu: bool = False, residual: Tensor | None = None, groups: int = 1,
                       config: BlockConfig | None = None) -> Tensor:
    """Mask form, one launch: the same op as :func:`region_conv`, reading ``mask`` directly.

    Row tiles with no active pixel skip the GEMM; every output element is written by the
    kernel (no fill beforehand). groups ≠ 1 falls back to the PyTorch reference.
    """
    if groups != 1:
        from layercascade.plugins.reference import region_conv_reference

        return region_conv_reference(x_nhwc, weight, bias, mask, padding=padding, dilation=dilation,
                                     relu=relu, residual=residual, groups=groups)
    grid, options = _prepare(x_nhwc, weight, bias, residual, padding, dilation, relu, config)
    n, h, w, _ = x_nhwc.shape
    flat = _flat_mask(mask)
    if flat.numel() != n * h * w:
        raise ValueError(f"mask must have N·H·W = {n * h * w} elements, got {flat.numel()}")
    out = torch.empty((n, h, w, weight.shape[0]), dtype=x_nhwc.dtype, device=x_nhwc.device)
    _region_conv_masked_kernel[grid](x_nhwc, weight, bias, flat, residual, h, w, n * h * w, out, **options)
    return out


def _list_to_mask(rows: Tensor, count: Tensor, x_nhwc: Tensor) -> Tensor:
    """The (N, 1, H, W) mask a list and its count describe, without reading the count back."""
    n, h, w, _ = x_nhwc.shape
    slots = torch.arange(n * h * w, device=rows.device)
    valid = slots < count
    # Entries past the count are unwritten memory: send them to index 0 with weight 0.
    index = torch.where(valid, rows.long(), 0)
    mask = torch.zeros(n * h * w, dtype=x_nhwc.dtype, device=x_nhwc.device)
    return mask.index_add_(0, index, valid.to(mask.dtype)).view(n, 1, h, w)
