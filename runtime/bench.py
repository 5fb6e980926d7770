"""Latency of the cascade and of the dense network of the same weights, in one run (lc-bench).

The timing itself is ``timing.py``'s; each backend describes its own machine; the precision
comparison (``lc-bench --compare``) is ``compare.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from layercascade.contract import IMAGE
from layercascade.cost_model import ideal_speedup
from layercascade.errors import fail
from layercascade.model.data.images import read_rgb
from layercascade.runtime.backend import Masks
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import SAMPLES
from layercascade.runtime.timing import LatencyStats, check_iterations, forced_masks, time_in_blocks

STAGES = ("stage1", "stage2", "stage3")
# ONNX Runtime kernels (after its fusions) that compute a convolution or a region conv's row GEMM.
CONV_KERNELS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "Gemm", "FusedGemm", "QGemm",
                          "MatMulInteger"})


def sample_batch(cascade: Cascade, batch: int) -> np.ndarray:
    """``batch`` bundled sample images at the model's input size."""
    images = [cascade.prepare(read_rgb(path)) for path in sorted(SAMPLES.iterdir())]
    return np.stack([images[k % len(images)] for k in range(batch)])


def timed_blocks(steps: dict[Any, Any], iters: int, warmup: int, progress: bool) -> dict[Any, list[float]]:
    """:func:`~layercascade.runtime.timing.time_in_blocks` with a progress bar."""
    with tqdm(total=iters, desc="benchmarking", unit="iter", disable=not progress, leave=False) as bar:
        return time_in_blocks(steps, iters, warmup, on_block=bar.update)


def stage_medians(cascade: Cascade, images: np.ndarray, rho: float | None, masks: Masks | None,
                  iters: int) -> dict[str, float]:
    """Median ms of each stage, as the backend times them apart (``run_stages``: ONNX Runtime's stage
    graphs one by one, TensorRT's CUDA events, the torch reference's stages)."""
    timings = [cascade.runner.run_stages(images, cascade.rho(rho), masks).timings for _ in range(iters)]
    if not all(stage in timings[0] for stage in STAGES):
        fail(f"--per-stage: the {cascade.backend} backend does not time its stages apart here "
             f"(it reports {', '.join(sorted(timings[0]))})")
    return {stage: round(float(np.median([t[stage] for t in timings])), 3) for stage in STAGES}


def check_profilable(cascade: Cascade) -> None:
    if cascade.backend != "ort":
        fail(f"--profile reads ONNX Runtime's profiler (--backend ort); the {cascade.backend} backend has none "
             "here (TensorRT: trtexec --dumpProfile on the engine's plan files)")


def op_profile(cascade: Cascade, images: np.ndarray, rho: float | None, masks: Masks | None, iters: int,
               warmup: int) -> dict[str, Any]:
    """ONNX Runtime's profile of ``iters`` cascade runs: kernel ms per run by op type (``op_types``,
    most first) and in total, split into convolution & GEMM kernels and all other ops."""
    check_profilable(cascade)
    ops = cascade.runner.kernel_profile(images, cascade.rho(rho), masks, iters, warmup)
    total = sum(us for us, _ in ops.values()) / 1e3
    conv = sum(us for op, (us, _) in ops.items() if op in CONV_KERNELS) / 1e3
    op_types = sorted(({"op": op, "ms": round(us / 1e3, 4), "kernels": calls} for op, (us, calls) in ops.items()),
                      key=lambda row: -row["ms"])
    return {"runs": iters, "kernel_ms": round(total, 3), "conv_gemm_ms": round(conv, 3),
            "other_ms": round(total - conv, 3), "op_types": op_types}


def stage_fractions(out: Any, masks: Masks | None, batch: int) -> list[float]:
    """Shares of pixels decided at stages 1, 2, 3: counted by the cascade, or those of the forced masks."""
    if masks is None:
        return [float(c) for c in out.stage_counts.sum(0) / (out.mask2[0].size * batch)]
    reach2, reach3 = float(masks[0].mean()), float(masks[1].mean())
    return [1.0 - reach2, reach2 - reach3, reach3]


def benchmark(cascade: Cascade, rho: float | None, batch: int, iters: int, warmup: int,
              active: tuple[float, float] | None = None, progress: bool = True, per_stage: bool = False,
              profile: bool = False) -> dict[str, Any]:
    """Median / p90 / p99 latency and FPS of cascade and dense, timed in alternating blocks in one run
    (with ``per_stage``, then the median ms of each stage, ``stages_ms``; with ``profile``, then
    ONNX Runtime's profile of the cascade, ``profile``: :func:`op_profile`)."""
    check_iterations(iters, warmup)
    if profile:
        check_profilable(cascade)
    rho = cascade.rho(rho)
    images = sample_batch(cascade, batch)
    dense = cascade.runner.dense_runner(cascade.manifest)
    first = cascade.run_batch(images, rho)
    masks = forced_masks(first.mask2.shape, active) if active is not None else None
    samples = timed_blocks({"cascade": lambda: cascade.run_batch(images, rho, masks),
                            "dense": lambda: dense.infer({IMAGE: images})}, iters, warmup, progress)
    cascade_ms, dense_ms = samples["cascade"], samples["dense"]
    fractions = stage_fractions(first, masks, batch)
    gmacs = cascade.manifest["stage_gmacs"]
    reach = (fractions[1] + fractions[2], fractions[2])
    ideal = ideal_speedup([g["backbone"] for g in gmacs], [g["head"] for g in gmacs], reach)
    extra = {"stages_ms": stage_medians(cascade, images, rho, masks, iters)} if per_stage else {}
    if profile:
        extra["profile"] = op_profile(cascade, images, rho, masks, iters, warmup)
    return {
        "model": str(cascade.model_dir), "backbone": cascade.manifest.get("backbone"), "backend": cascade.backend,
        "size": list(cascade.input_size), "batch": batch, "rho": rho,
        "iters": iters, "warmup": warmup, "forced_active_fractions": list(active) if active else None,
        "cascade": LatencyStats.of(cascade_ms, batch).report(), "dense": LatencyStats.of(dense_ms, batch).report(),
        # Ratios of the unrounded medians (rounded ones are off by 1e-3 at sub-millisecond times).
        "speedup": round(float(np.median(dense_ms) / np.median(cascade_ms)), 3),
        "ideal_speedup": round(ideal, 3),
        "stage_fractions": [round(f, 4) for f in fractions],
        "machine": cascade.runner.machine(),
        **extra,
    }
