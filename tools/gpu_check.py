"""GPU check of the region-conv Triton kernels: correctness natively, then timings vs cuDNN.

    python tools/gpu_check.py [--out gpu-results] [--dry-run]

Runs from a plain source checkout on a machine with torch + triton + a CUDA GPU and nothing
of ours installed, without network, in a few minutes on one H100. Writes
``gpu_check.json`` and ``gpu_check.log`` into ``--out``:

* ``correctness``: every case of ``python -m layercascade.plugins.check``, run natively;
* ``benchmark``: for C = C_out ∈ {64, 256, 512} on 1×64×64 fp16 NHWC maps, 3×3 and 1×1
  (dilation 1, bias, no ReLU), at 5/10/25/50/100 % active pixels, scattered (random) and
  clustered (smooth blobs, like real cascade regions) masks: median / p90 / p99 GPU time of
  the list form (conv on a prebuilt list; building the list timed apart), the single-launch
  mask form and dense cuDNN ``conv2d`` (channels-last fp16), each over ≥ 50 CUDA-graph
  replays after warm-up, timed with CUDA events, next to the ideal speedup 1 / fraction.

``--dry-run`` does the same on the CPU with Triton's interpreter, tiny sizes and a few
iterations (wall-clock timings, meaningless as speed), so the test suite can run it.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent  # the checkout; its root is the package itself
SIZES = {"channels": (64, 256, 512), "kernels": (3, 1), "map": 64, "warmup": 10, "iters": 50}
DRY_SIZES = {"channels": (16,), "kernels": (3, 1), "map": 8, "warmup": 1, "iters": 2}
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
MASK_KINDS = ("scattered", "clustered")
# Stop starting new benchmark layers past this point so the whole run stays under 6 minutes.
DEADLINE_S = 300.0


def import_checkout() -> None:
    """Make ``import layercascade`` resolve to this checkout, whether or not a copy is installed.

    The repository root is the package directory, so its parent is not an import root of
    ``layercascade``; a temporary directory holding a ``layercascade`` symlink to the root
    is put first on ``sys.path`` (ahead of any installed or editable copy).
    """
    link_dir = Path(tempfile.mkdtemp(prefix="lc-gpu-check-"))
    link = link_dir / "layercascade"
    link.symlink_to(ROOT, target_is_directory=True)
    atexit.register(lambda: (link.unlink(), link_dir.rmdir()))
    sys.path.insert(0, str(link_dir))
    import layercascade

    if Path(layercascade.__file__).resolve().parent != ROOT:
        raise SystemExit(f"layercascade resolved to {layercascade.__file__}, not the checkout {ROOT}")


class Log:
    """Print and append to ``gpu_check.log``."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8")

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


def stats(samples: list[float]) -> dict[str, float]:
    """Median, p90, p99 (ms) of timed runs."""
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"median": statistics.median(ordered), "p90": pick(0.9), "p99": pick(0.99), "runs": len(ordered)}


def make_timer(cuda: bool, warmup: int, iters: int) -> Callable[[Callable[[], object]], dict]:
    """A timer of one call: CUDA events around CUDA-graph replays on a GPU (GPU time without
    Python launch overhead — how the runtime runs stages), wall clock on the CPU."""

    def time_eager(fn: Callable[[], object]) -> dict:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return stats(samples)

    def time_graph(fn: Callable[[], object]) -> dict:
        fn()  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        for _ in range(warmup):
            graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(iters):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return stats(samples)

    return time_graph if cuda else time_eager


def clustered_mask(fraction: float, size: int, seed: int) -> torch.Tensor:
    """Exactly round(fraction·size²) active pixels forming smooth blobs: the top of a
    bilinearly upsampled 8×8 noise field (cascade regions are objects and their borders)."""
    generator = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(1, 1, 8, 8, generator=generator), size=(size, size),
                          mode="bilinear", align_corners=False).flatten()
    mask = torch.zeros_like(field)
    mask[torch.argsort(field, descending=True)[: round(fraction * field.numel())]] = 1
    return mask.view(1, 1, size, size)


def bench_layer(c: int, k: int, side: int, device: str, time_call: Callable, log: Log) -> list[dict]:
    """One C→C k×k layer on a 1×side×side fp16 map: dense, then both forms per mask."""
    from layercascade.plugins import check, kernels
    from layercascade.plugins.reference import region_conv_reference

    gen = torch.Generator().manual_seed(c * 10 + k)
    x = torch.randn(1, side, side, c, generator=gen).to(device, torch.float16)
    weight = (torch.randn(c, c, k, k, generator=gen) / (c * k * k) ** 0.5).to(device, torch.float16)
    bias = torch.randn(c, generator=gen).to(device, torch.float16)
    packed = kernels.pack_weight(weight)
    pad = (k - 1) // 2
    # x.permute is the NCHW view of NHWC memory, i.e. a channels-last tensor.
    x_cl = x.permute(0, 3, 1, 2)
    w_cl = weight.contiguous(memory_format=torch.channels_last)
    dense = time_call(functools.partial(F.conv2d, x_cl, w_cl, bias, padding=pad))
    log(f"C={c} k={k}: dense conv2d {dense['median']:.4f} ms")
    rows = []
    for kind in MASK_KINDS:
        for fraction in FRACTIONS:
            seed = int(fraction * 1000) + c
            mask = (check.make_mask((1, side, side), fraction, seed) if kind == "scattered"
                    else clustered_mask(fraction, side, seed)).to(device, torch.float16)
            active, count = kernels.active_list(mask)
            list_call = functools.partial(kernels.region_conv, x, packed, bias, active, count, padding=pad)
            masked_call = functools.partial(kernels.region_conv_masked, x, packed, bias, mask, padding=pad)
            ref = region_conv_reference(x, weight, bias, mask, padding=pad).double()
            err_list = (list_call().double() - ref).abs().max().item()
            err_masked = (masked_call().double() - ref).abs().max().item()
            timing = {"active_list_ms": time_call(functools.partial(kernels.active_list, mask)),
                      "list_ms": time_call(list_call), "masked_ms": time_call(masked_call)}
            list_ms, build_ms, masked_ms = (timing[key]["median"] for key in ("list_ms", "active_list_ms",
                                                                                "masked_ms"))
            row = {
                "c": c, "kernel": k, "mask": kind, "fraction": fraction,
                "active_pixels": int(mask.sum().item()), "dense_ms": dense, **timing,
                "speedup_list": dense["median"] / list_ms,
                "speedup_list_with_build": dense["median"] / (list_ms + build_ms),
                "speedup_masked": dense["median"] / masked_ms,
                "ideal_speedup": 1.0 / fraction,
                "max_abs_err_list": err_list, "max_abs_err_masked": err_masked,
                "ok": max(err_list, err_masked) <= check.TOLERANCE["fp16"] * max(1.0, ref.abs().max().item()),
            }
            rows.append(row)
            log(f"  {kind:9s} {fraction:5.0%}: list {list_ms:.4f} ms (+ build {build_ms:.4f}) "
                f"×{row['speedup_list']:.2f}, masked {masked_ms:.4f} ms ×{row['speedup_masked']:.2f}, "
                f"ideal ×{row['ideal_speedup']:.1f}, {'ok' if row['ok'] else 'WRONG'}")
    return rows


def benchmark(sizes: dict, cuda: bool, log: Log, started: float) -> dict:
    """Region conv (list and mask forms) vs dense conv2d over channels and kernel sizes."""
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True  # give the dense baseline its best algorithm
    time_call = make_timer(cuda, sizes["warmup"], sizes["iters"])
    rows, truncated = [], False
    for c in sizes["channels"]:
        for k in sizes["kernels"]:
            if time.perf_counter() - started > DEADLINE_S:
                truncated = True
                log(f"# deadline: skipping C={c} k={k}")
                continue
            try:
                rows += bench_layer(c, k, sizes["map"], device, time_call, log)
            except Exception as error:  # noqa: BLE001 - one failing layer must not lose the other results
                log(f"C={c} k={k}: FAILED {type(error).__name__}: {error}")
                rows.append({"c": c, "kernel": k, "ok": False, "error": f"{type(error).__name__}: {error}"})
    settings = {"batch": 1, "map": [sizes["map"]] * 2, "dtype": "fp16", "layout": "NHWC / channels_last",
                "dilation": 1, "bias": True, "relu": False, "warmup": sizes["warmup"], "iters": sizes["iters"],
                "timing": "CUDA events around CUDA-graph replays" if cuda else "wall clock (interpreter)",
                "dense": "torch.nn.functional.conv2d (cuDNN on a GPU), cudnn.benchmark on",
                "list_ms": "region_conv on a prebuilt list (zero-fill + one kernel); active_list_ms apart"}
    return {"settings": settings, "rows": rows, "truncated": truncated}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"), help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import_checkout()
    import triton

    cuda = torch.cuda.is_available() and not args.dry_run
    if not (cuda or args.dry_run):
        print("gpu_check: no CUDA GPU visible to torch; use --dry-run to exercise the script on the CPU",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "gpu_check.log")
    device = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter)"
    log(f"# {device}; python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}")

    from layercascade.plugins import check

    log("# correctness")
    correctness = check.run_checks(quick=args.dry_run, with_ptx=False, report=log)
    log(f"# correctness: {sum(r['ok'] for r in correctness)}/{len(correctness)} ok "
        f"({time.perf_counter() - started:.0f} s so far)")
    log("# benchmark")
    bench = benchmark(DRY_SIZES if args.dry_run else SIZES, cuda, log, started)
    results = {
        "schema": 1,
        "dry_run": args.dry_run,
        "device": device,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
                     "cuda": torch.version.cuda},
        "correctness": correctness,
        "correctness_ok": all(r["ok"] for r in correctness),
        "benchmark": bench,
        "end_to_end": "not implemented in this script yet",
        "elapsed_s": time.perf_counter() - started,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    ok = results["correctness_ok"] and all(row["ok"] for row in bench["rows"])
    log(f"# {'all ok' if ok else 'FAILURES'}; {results['elapsed_s']:.0f} s; results in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
