"""Kernel check: every region-conv kernel against the PyTorch reference, plus AOT PTX builds.

``python -m layercascade.plugins.check [--json] [--quick]``. On a machine with a CUDA GPU
the kernels run natively; without one they run in Triton's interpreter on the CPU
(``TRITON_INTERPRET=1``, set here before Triton is imported), fp16 included. Every kernel
is also compiled ahead of time to PTX for sm_80/86/89/90 (:mod:`layercascade.plugins.ptx`).
One row per case; ``--json`` prints ``[{"case", "ok", "max_abs_err"}, ...]`` on stdout
(rows then go to stderr). Exit status 1 if any case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch

# Native on a CUDA GPU unless the interpreter is asked for explicitly.
NATIVE = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not NATIVE:
    # triton.jit reads this when a kernel is decorated, i.e. when kernels.py is imported.
    os.environ["TRITON_INTERPRET"] = "1"

import triton

from layercascade.plugins import kernels, ptx
from layercascade.plugins.kernels import BlockConfig
from layercascade.plugins.reference import active_list_reference, region_conv_reference

DEVICE = "cuda" if NATIVE else "cpu"
INTERPRETED = not isinstance(kernels._active_list_kernel, triton.runtime.JITFunction)
FRACTIONS = (0.0, 0.01, 0.1, 0.5, 1.0)
# Relative tolerances on max|ref| (at least 1): fp32 accumulation order vs the fp64
# reference; fp16 adds one rounding of the output (2^-10) on either side.
TOLERANCE = {"fp32": 1e-4, "fp16": 4e-3}
SMALL_TILES = BlockConfig(16, 16, 16, 4)  # several row, channel and K blocks at tiny sizes
GEOMETRIES = ((1, 1), (3, 1), (3, 2), (3, 4))  # (kernel size, dilation)
QUICK_MASKS = {(3, 2): (0.1,), (1, 1): ("border",), (3, 4): (0.0,)}
QUICK_PTX = {"kernels": list(ptx.KERNELS), "dtypes": ["fp16"], "archs": ["sm_90"]}


class ConvCase(NamedTuple):
    """One region-conv comparison; ``mask`` is an active fraction or ``"border"``."""

    kernel_name: str  # "region_conv" (list form) or "region_conv_masked"
    dtype: str
    size: int
    dilation: int
    mask: float | str
    relu: bool
    residual: bool
    bias: bool
    channels: tuple[int, int]
    config: BlockConfig | None
    shape: tuple[int, int, int] = (2, 7, 9)

    @property
    def name(self) -> str:
        extras = [label for flag, label in ((self.relu, "relu"), (self.residual, "res"), (not self.bias, "nobias"))
                  if flag]
        tiles = "" if self.config is None else ":tiles" + "x".join(map(str, self.config[:3]))
        return (f"{self.kernel_name}:{self.dtype}:k{self.size}d{self.dilation}:{_mask_label(self.mask)}"
                f":{'+'.join(extras) or 'plain'}:{self.channels[0]}to{self.channels[1]}"
                f":{'x'.join(map(str, self.shape))}{tiles}")


def _mask_label(mask: float | str) -> str:
    return mask if isinstance(mask, str) else f"frac{mask:.2f}"


def make_mask(shape: tuple[int, int, int], mask: float | str, seed: int = 0) -> torch.Tensor:
    """(N, 1, H, W) 0/1 float mask: exactly round(fraction·N·H·W) random pixels, or the
    one-pixel frame of every image (``"border"``: the zero-padding taps all get used)."""
    n, h, w = shape
    if mask == "border":
        frame = torch.ones(n, 1, h, w)
        frame[:, :, 1:-1, 1:-1] = 0
        return frame
    flat = torch.zeros(n * h * w)
    count = round(float(mask) * flat.numel())
    flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:count]] = 1
    return flat.view(n, 1, h, w)


def _result(case: str, ok: bool, err: float | None) -> dict:
    return {"case": case, "ok": bool(ok), "max_abs_err": err}


def active_list_name(shape: tuple[int, int, int], mask: float | str, mask_dtype: torch.dtype) -> str:
    return f"active_list:{str(mask_dtype).removeprefix('torch.')}:{_mask_label(mask)}:{'x'.join(map(str, shape))}"


def check_active_list(shape: tuple[int, int, int], mask: float | str, mask_dtype: torch.dtype) -> dict:
    """List and count exactly equal to ``nonzero`` (ascending), count left on the device."""
    m = make_mask(shape, mask).to(DEVICE, mask_dtype)
    rows, count = kernels.active_list(m)
    ref_rows, ref_count = active_list_reference(m)
    n = int(ref_count.item())
    ok = (count.device == m.device and count.dtype == torch.int32 and rows.numel() == m.numel()
          and torch.equal(count.cpu(), ref_count.cpu()) and torch.equal(rows[:n].cpu(), ref_rows.cpu()))
    return _result(active_list_name(shape, mask, mask_dtype), ok, 0.0 if ok else None)


def check_conv(case: ConvCase, seed: int = 0) -> dict:
    """Kernel vs reference: max error within tolerance, and exactly 0 / residual outside M."""
    gen = torch.Generator().manual_seed(seed)
    dtype = ptx.DTYPES[case.dtype]
    (n, h, w), (c_in, c_out) = case.shape, case.channels

    def rand(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*size, generator=gen) * scale).to(DEVICE, dtype)

    x = rand(n, h, w, c_in)
    weight = rand(c_out, c_in, case.size, case.size, scale=(c_in * case.size**2) ** -0.5)
    bias = rand(c_out) if case.bias else None
    residual = rand(n, h, w, c_out) if case.residual else None
    mask = make_mask(case.shape, case.mask, seed).to(DEVICE)
    padding = case.dilation * (case.size - 1) // 2
    args = {"padding": padding, "dilation": case.dilation, "relu": case.relu, "residual": residual}
    packed = kernels.pack_weight(weight)
    if case.kernel_name == "region_conv":
        rows, count = kernels.active_list(mask)
        out = kernels.region_conv(x, packed, bias, rows, count, config=case.config, **args)
    else:
        out = kernels.region_conv_masked(x, packed, bias, mask, config=case.config, **args)
    ref = region_conv_reference(x, weight, bias, mask, **args)
    err = (out.double() - ref.double()).abs().max().item()
    inactive = (mask.view(n, h, w) == 0)
    outside = out[inactive]
    exact = torch.equal(outside, residual[inactive]) if residual is not None else bool((outside == 0).all())
    ok = exact and err <= TOLERANCE[case.dtype] * max(1.0, ref.double().abs().max().item())
    return _result(case.name, ok, err)


def conv_cases(quick: bool) -> list[ConvCase]:
    """The region-conv matrix: both forms × fp32/fp16 × {1×1, 3×3 at dilation 1, 2, 4} ×
    {0, 1, 10, 50, 100 % active, border frame}, on odd 7×9 maps.

    ReLU / residual / bias and the channel and tile shapes vary with (dtype, kernel
    geometry), not with the mask, so every mask meets all eight flag combinations while a
    native run compiles only one specialisation per (dtype, geometry): 8 per form.
    """
    cases = []
    for kernel_name in ("region_conv", "region_conv_masked"):
        for d, dtype in enumerate(("fp32", "fp16")):
            for g, (size, dilation) in enumerate(GEOMETRIES):
                masks = QUICK_MASKS.get((size, dilation), ()) if quick else (*FRACTIONS, "border")
                flags = g + 4 * d
                small = g % 2 == 0
                cases += [ConvCase(kernel_name, dtype, size, dilation, mask, relu=flags % 2 == 0,
                                   residual=(flags // 2) % 2 == 0, bias=flags < 4,
                                   channels=(24, 20) if small else (16, 32),
                                   config=SMALL_TILES if small else None) for mask in masks]
    return cases


def active_list_cases(quick: bool) -> list[tuple[tuple[int, int, int], float | str, torch.dtype]]:
    """Fractions and the border frame on 2×7×9; bool and fp16 masks; a map larger than one scan chunk."""
    cases = [((2, 7, 9), m, torch.float32) for m in ((0.1, "border") if quick else (*FRACTIONS, "border"))]
    cases += [((2, 7, 9), 0.5, torch.bool), ((2, 7, 9), 0.5, torch.float16), ((3, 33, 37), 0.1, torch.float32)]
    return cases


def ptx_results(quick: bool) -> list[dict]:
    """AOT PTX builds; in a fresh process when this one runs interpreted kernels."""
    selection = QUICK_PTX if quick else {"kernels": list(ptx.KERNELS), "dtypes": list(ptx.DTYPES),
                                         "archs": list(ptx.ARCHS)}
    if not INTERPRETED:
        return ptx.check_all(*(tuple(v) for v in selection.values()))
    command = [sys.executable, "-m", "layercascade.plugins.ptx"]
    for key, values in selection.items():
        command += [f"--{key}", *values]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return [_result("ptx:subprocess", False, None) | {"detail": done.stderr[-2000:]}]


def run_checks(quick: bool = False, with_ptx: bool = True,
               report: Callable[[str], None] = print) -> list[dict]:
    """Run every case, reporting one row each; returns the results."""
    if not (NATIVE or INTERPRETED):
        raise RuntimeError("no CUDA GPU and the kernels were compiled for one: set TRITON_INTERPRET=1 "
                           "before anything imports layercascade.plugins.kernels")
    mode = (f"native on {torch.cuda.get_device_name()}" if NATIVE else
            "Triton interpreter on the CPU; fp16 runs there too (numpy float16 data, float32 dot accumulation)")
    report(f"# kernels: {mode}")
    results = []

    def record(result: dict) -> None:
        results.append(result)
        err = "-" if result["max_abs_err"] is None else f"{result['max_abs_err']:.2e}"
        detail = f"  {result['detail']}" if "detail" in result else ""
        report(f"{'ok  ' if result['ok'] else 'FAIL'}  {result['case']}  max_abs_err {err}{detail}")

    def attempt(name: str, run: Callable[[], dict]) -> None:
        try:
            result = run()
        except Exception as error:  # noqa: BLE001 - a case that raises is a failed case, not a crash
            result = _result(name, False, None) | {"detail": f"{type(error).__name__}: {error}"}
        record(result)

    for shape, mask, mask_dtype in active_list_cases(quick):
        attempt(active_list_name(shape, mask, mask_dtype), partial(check_active_list, shape, mask, mask_dtype))
    for seed, case in enumerate(conv_cases(quick)):
        attempt(case.name, partial(check_conv, case, seed))
    if with_ptx:
        for result in ptx_results(quick):
            record(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--quick", action="store_true", help="a small subset (what the test suite runs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def report(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    results = run_checks(quick=args.quick, report=report)
    failed = [r["case"] for r in results if not r["ok"]]
    report(f"# {len(results) - len(failed)}/{len(results)} cases ok in {time.perf_counter() - start:.1f} s")
    if args.json:
        print(json.dumps([{k: r[k] for k in ("case", "ok", "max_abs_err")} for r in results], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
