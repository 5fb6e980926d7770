"""Timing, with numpy only: latency statistics (one percentile definition), timing calls in
interleaved blocks, and forced region masks for benchmarks at chosen active fractions.

Shared by ``lc-bench`` (``runtime/bench.py``) and ``tools/gpu_check.py``, which passes its CUDA-event
clock; nothing here imports torch, tqdm or a backend, so the GPU check runs it from a bare checkout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from layercascade.errors import fail

# Times one call of a function, in milliseconds.
Clock = Callable[[Callable[[], object]], float]


def wall_ms(call: Callable[[], object]) -> float:
    """Wall-clock milliseconds of one ``call()``."""
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1e3


@dataclass(frozen=True)
class LatencyStats:
    """Median, 90th and 99th percentile (numpy's linear interpolation) in ms, images per second at
    the median, and the number of timed runs; unrounded (ratios of µs-scale medians need every digit)."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    fps: float
    runs: int

    @classmethod
    def of(cls, samples_ms: list[float], batch: int = 1) -> LatencyStats:
        values = np.asarray(samples_ms, dtype=np.float64)
        median = float(np.median(values))
        p90, p99 = (float(p) for p in np.percentile(values, [90, 99]))
        return cls(median, p90, p99, batch * 1e3 / median, len(values))

    def report(self) -> dict[str, float]:
        """The statistics for a report: ms to the µs, FPS to the hundredth."""
        return {"median_ms": round(self.median_ms, 3), "p90_ms": round(self.p90_ms, 3),
                "p99_ms": round(self.p99_ms, 3), "fps": round(self.fps, 2), "runs": self.runs}


def check_iterations(iters: int, warmup: int) -> None:
    if iters < 1 or warmup < 0:
        fail("--iters must be at least 1 and --warmup at least 0")


def time_calls(call: Callable[[], object], iters: int, clock: Clock = wall_ms) -> list[float]:
    """``iters`` timed calls, ms each."""
    return [clock(call) for _ in range(iters)]


def time_in_blocks(steps: dict[Hashable, Callable[[], object]], iters: int, warmup: int, clock: Clock = wall_ms,
                   on_block: Callable[[int], None] | None = None) -> dict[Hashable, list[float]]:
    """``iters`` timed calls (ms) of every step after ``warmup`` untimed ones, the steps taking turns in blocks.

    Blocks rather than strict alternation: each step runs with its own data in cache, as it
    would in deployment, while drift of the machine still hits all alike. ``on_block(count)``
    after each block (a progress bar).
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[Hashable, list[float]] = {key: [] for key in steps}
    block = max(1, min(10, iters // 5))
    for done in range(0, iters, block):
        count = min(block, iters - done)
        for key, step in steps.items():
            samples[key] += time_calls(step, count, clock)
        if on_block is not None:
            on_block(count)
    return samples


def forced_masks(shape: tuple[int, ...], active: tuple[float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random nested float32 0/1 masks with shares ``active = (a₂, a₃)`` of pixels in M₂ and M₃ (M₃ ⊆ M₂)."""
    a2, a3 = active
    if not 0.0 <= a3 <= a2 <= 1.0:
        fail(f"active fractions must satisfy 0 ≤ f3 ≤ f2 ≤ 1, got {a2},{a3}")
    ranks = np.random.default_rng(seed).random(shape)
    return (ranks < a2).astype(np.float32), (ranks < a3).astype(np.float32)
