"""Latency of the cascade and of the dense network of the same weights, in one run."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from layercascade.cost_model import ideal_speedup
from layercascade.errors import fail
from layercascade.model.data.images import read_rgb
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import SAMPLES



@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    p99_ms: float
    fps: float

    @classmethod
    def of(cls, samples_ms: list[float], batch: int) -> LatencyStats:
        values = np.asarray(samples_ms)
        median = float(np.median(values))
        return cls(round(median, 3), round(float(np.percentile(values, 90)), 3),
                   round(float(np.percentile(values, 99)), 3), round(batch * 1e3 / median, 2))


def sample_batch(cascade: Cascade, batch: int) -> np.ndarray:
    """``batch`` bundled sample images at the model's input size."""
    images = [cascade.prepare(read_rgb(path)) for path in sorted(SAMPLES.iterdir())]
    return np.stack([images[k % len(images)] for k in range(batch)])


def forced_masks(shape: tuple[int, ...], active: tuple[float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random nested masks with shares ``active = (a₂, a₃)`` of pixels in M₂ and M₃ (M₃ ⊆ M₂)."""
    a2, a3 = active
    if not 0.0 <= a3 <= a2 <= 1.0:
        fail(f"active fractions must satisfy 0 ≤ f3 ≤ f2 ≤ 1, got {a2},{a3}")
    ranks = np.random.default_rng(seed).random(shape)
    return (ranks < a2).astype(np.float32), (ranks < a3).astype(np.float32)


def machine() -> str:
    """CPU model, core count, Python and ONNX Runtime versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return f"{cpu}, {os.cpu_count()} CPUs, onnxruntime {onnxruntime.__version__}"


def time_calls(run: Callable[[], object], iters: int) -> list[float]:
    samples = []
    for _ in range(iters):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


def benchmark(cascade: Cascade, rho: float | None, batch: int, iters: int, warmup: int,
              active: tuple[float, float] | None = None, progress: bool = True) -> dict:
    """Median / p90 / p99 latency and FPS of cascade and dense, timed in alternating blocks in one run."""
    if iters < 1 or warmup < 0:
        fail("--iters must be at least 1 and --warmup at least 0")
    images = sample_batch(cascade, batch)
    dense = cascade.engine.dense_runner(cascade.manifest)
    first = cascade.run_batch(images, rho)
    masks = forced_masks(first.mask2.shape, active) if active is not None else None
    cascade_step = lambda: cascade.run_batch(images, rho, masks)  # noqa: E731
    dense_step = lambda: dense.infer({"image": images})  # noqa: E731
    for _ in range(warmup):
        cascade_step()
        dense_step()
    cascade_ms, dense_ms = [], []
    # Blocks rather than strict alternation: each network runs with its own data in cache,
    # as it would in deployment, while drift of the machine still hits both alike.
    block = max(1, min(10, iters // 5))
    with tqdm(total=iters, desc="benchmarking", unit="iter", disable=not progress, leave=False) as bar:
        while len(cascade_ms) < iters:
            count = min(block, iters - len(cascade_ms))
            cascade_ms += time_calls(cascade_step, count)
            dense_ms += time_calls(dense_step, count)
            bar.update(count)
    if masks is None:
        counts = first.stage_counts.sum(0) / (first.mask2[0].size * batch)
        fractions = [float(c) for c in counts]
    else:
        reach2, reach3 = float(masks[0].mean()), float(masks[1].mean())
        fractions = [1.0 - reach2, reach2 - reach3, reach3]
    gmacs = cascade.manifest["stage_gmacs"]
    cascade_stats, dense_stats = LatencyStats.of(cascade_ms, batch), LatencyStats.of(dense_ms, batch)
    reach = (fractions[1] + fractions[2], fractions[2])
    ideal = ideal_speedup([g["backbone"] for g in gmacs], [g["head"] for g in gmacs], reach)
    return {
        "model": str(cascade.model_dir), "backbone": cascade.manifest.get("backbone"), "backend": cascade.backend,
        "size": list(cascade.input_size), "batch": batch, "rho": cascade.default_rho if rho is None else rho,
        "iters": iters, "warmup": warmup, "forced_active_fractions": list(active) if active else None,
        "cascade": vars(cascade_stats), "dense": vars(dense_stats),
        "speedup": round(dense_stats.median_ms / cascade_stats.median_ms, 3),
        "ideal_speedup": round(ideal, 3),
        "stage_fractions": [round(f, 4) for f in fractions],
        "machine": machine(),
    }
