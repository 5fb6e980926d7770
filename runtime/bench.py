"""Latency of the cascade and of the dense network of the same weights, in one run (lc-bench).

The timing itself is ``timing.py``'s; each backend describes its own machine; the precision
comparison (``lc-bench --compare``) is ``compare.py``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from layercascade.contract import IMAGE, RhoLike, rho_value
from layercascade.cost_model import ideal_speedup
from layercascade.errors import LCError, fail
from layercascade.model.data.images import read_rgb
from layercascade.runtime.backend import Masks
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import SAMPLES
from layercascade.runtime.timing import LatencyStats, check_iterations, forced_masks, time_in_blocks

STAGES = ("stage1", "stage2", "stage3")
# Kernels (after the runtime's fusions) that compute a convolution or a region conv's row GEMM: ONNX
# Runtime's, then OpenVINO's.
CONV_KERNELS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "Gemm", "FusedGemm", "QGemm",
                          "MatMulInteger", "Convolution", "GroupConvolution", "FullyConnected"})
PROFILED = {"ort": "ONNX Runtime's profiler", "openvino": "OpenVINO's per-op counters (PERF_COUNT)"}


def sample_batch(cascade: Cascade, batch: int) -> np.ndarray:
    """``batch`` bundled sample images at the model's input size."""
    images = [cascade.prepare(read_rgb(path)) for path in sorted(SAMPLES.iterdir())]
    return np.stack([images[k % len(images)] for k in range(batch)])


def timed_blocks(steps: dict[Any, Any], iters: int, warmup: int, progress: bool) -> dict[Any, list[float]]:
    """:func:`~layercascade.runtime.timing.time_in_blocks` with a progress bar."""
    with tqdm(total=iters, desc="benchmarking", unit="iter", disable=not progress, leave=False) as bar:
        return time_in_blocks(steps, iters, warmup, on_block=bar.update)


def stage_medians(cascade: Cascade, images: np.ndarray, rho: RhoLike | None, masks: Masks | None,
                  iters: int) -> dict[str, float]:
    """Median ms of each stage, as the backend times them apart (``run_stages``: ONNX Runtime's stage
    graphs one by one, TensorRT's CUDA events, the torch reference's stages)."""
    timings = [cascade.runner.run_stages(images, cascade.rho(rho), masks).timings for _ in range(iters)]
    if not all(stage in timings[0] for stage in STAGES):
        fail(f"--per-stage: the {cascade.backend} backend does not time its stages apart here "
             f"(it reports {', '.join(sorted(timings[0]))})")
    return {stage: round(float(np.median([t[stage] for t in timings])), 3) for stage in STAGES}


def check_profilable(cascade: Cascade) -> None:
    if cascade.backend not in PROFILED:
        readers = " or ".join(f"{reader} (--backend {backend})" for backend, reader in PROFILED.items())
        fail(f"--profile reads {readers}; the {cascade.backend} backend has none here (TensorRT: trtexec "
             "--dumpProfile on the engine's plan files)")


def op_profile(cascade: Cascade, images: np.ndarray, rho: RhoLike | None, masks: Masks | None, iters: int,
               warmup: int) -> dict[str, Any]:
    """The backend's profile of ``iters`` cascade runs (:data:`PROFILED`): kernel ms per run by op type
    (``op_types``, most first) and in total, split into convolution & GEMM kernels and all other ops."""
    check_profilable(cascade)
    ops = cascade.runner.kernel_profile(images, cascade.rho(rho), masks, iters, warmup)
    total = sum(us for us, _ in ops.values()) / 1e3
    conv = sum(us for op, (us, _) in ops.items() if op in CONV_KERNELS) / 1e3
    op_types = sorted(({"op": op, "ms": round(us / 1e3, 4), "kernels": calls} for op, (us, calls) in ops.items()),
                      key=lambda row: -row["ms"])
    return {"runs": iters, "kernel_ms": round(total, 3), "conv_gemm_ms": round(conv, 3),
            "other_ms": round(total - conv, 3), "op_types": op_types}


# The runtimes a user could run the dense export on instead, each at its default precision.
PEERS = ("ort", "openvino", "torch")


def peer_runners(cascade: Cascade, threads: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    """The model's dense network on each peer runtime installed here, as a user would run it without us:
    ONNX Runtime (fp32), OpenVINO at its default precision (bf16 on CPUs with native bf16), torch eager
    (fp32, when torch is installed and the checkpoint the model was exported from is found).

    Returns (peer → (runner, precision), peer → why it is missing).
    """
    dense = cascade.model_dir / cascade.manifest["dense"]["file"] if cascade.model_dir.is_dir() else None
    runners: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for peer in PEERS:
        try:
            runners[peer] = _peer_runner(peer, cascade, dense, threads)
        except LCError as error:
            missing[peer] = str(error)
    return runners, missing


def _peer_runner(peer: str, cascade: Cascade, dense: Path | None, threads: int) -> tuple[Any, str]:
    if peer == "torch":
        from layercascade.runtime.torch.peer import dense_peer

        return dense_peer(cascade.manifest, cascade.model_dir, threads), "fp32"
    if dense is None:
        fail(f"{peer}: the dense export runs from a model dir (lc-export), not from {cascade.model_dir}")
    if peer == "ort":
        from layercascade.runtime.ort.loader import load_runner

        return load_runner(dense, lower=False, threads=threads), "fp32"
    from layercascade.runtime.openvino.loader import compile_config, compile_graph

    runner = compile_graph(dense, str(dense), compile_config(threads=threads))
    return runner, runner.inference_precision()


def stage_fractions(out: Any, masks: Masks | None, batch: int) -> list[float]:
    """Shares of pixels decided at stages 1, 2, 3: counted by the cascade, or those of the forced masks."""
    if masks is None:
        return [float(c) for c in out.stage_counts.sum(0) / (out.mask2[0].size * batch)]
    reach2, reach3 = float(masks[0].mean()), float(masks[1].mean())
    return [1.0 - reach2, reach2 - reach3, reach3]


def benchmark(cascade: Cascade, rho: RhoLike | None, batch: int, iters: int, warmup: int,
              active: tuple[float, float] | None = None, progress: bool = True, per_stage: bool = False,
              profile: bool = False, peers: bool = False, threads: int = 0) -> dict[str, Any]:
    """Median / p90 / p99 latency and FPS of cascade and dense, timed in alternating blocks in one run
    (with ``per_stage``, then the median ms of each stage, ``stages_ms``; with ``profile``, then
    ONNX Runtime's profile of the cascade, ``profile``: :func:`op_profile`; with ``peers``, the dense
    network on every peer runtime in the same blocks, ``peers``, and the cascade's speedup against the
    fastest, ``speedup_vs_best_peer``)."""
    check_iterations(iters, warmup)
    if profile:
        check_profilable(cascade)
    rho = cascade.rho(rho)
    images = sample_batch(cascade, batch)
    dense = cascade.runner.dense_runner(cascade.manifest)
    first = cascade.run_batch(images, rho)
    masks = forced_masks(first.mask2.shape, active) if active is not None else None
    steps = {"cascade": lambda: cascade.run_batch(images, rho, masks), "dense": lambda: dense.infer({IMAGE: images})}
    peer_list, missing = peer_runners(cascade, threads) if peers else ({}, {})
    for name, (runner, _) in peer_list.items():
        steps[f"peer:{name}"] = functools.partial(runner.infer, {IMAGE: images})
    samples = timed_blocks(steps, iters, warmup, progress)
    cascade_ms, dense_ms = samples["cascade"], samples["dense"]
    fractions = stage_fractions(first, masks, batch)
    gmacs = cascade.manifest["stage_gmacs"]
    reach = (fractions[1] + fractions[2], fractions[2])
    ideal = ideal_speedup([g["backbone"] for g in gmacs], [g["head"] for g in gmacs], reach)
    extra = {"stages_ms": stage_medians(cascade, images, rho, masks, iters)} if per_stage else {}
    if profile:
        extra["profile"] = op_profile(cascade, images, rho, masks, iters, warmup)
    if peers:
        extra.update(peer_report(samples, {name: precision for name, (_, precision) in peer_list.items()}, missing,
                                 cascade_ms, batch))
    return {
        "model": str(cascade.model_dir), "backbone": cascade.manifest.get("backbone"), "backend": cascade.backend,
        "size": list(cascade.input_size), "batch": batch, "rho": rho_value(rho),
        "iters": iters, "warmup": warmup, "forced_active_fractions": list(active) if active else None,
        "cascade": LatencyStats.of(cascade_ms, batch).report(), "dense": LatencyStats.of(dense_ms, batch).report(),
        # Ratios of the unrounded medians (rounded ones are off by 1e-3 at sub-millisecond times).
        "speedup": round(float(np.median(dense_ms) / np.median(cascade_ms)), 3),
        "ideal_speedup": round(ideal, 3),
        "stage_fractions": [round(f, 4) for f in fractions],
        "machine": cascade.runner.machine(),
        **extra,
    }


def peer_report(samples: dict[str, list[float]], precisions: dict[str, str], missing: dict[str, str],
                cascade_ms: list[float], batch: int) -> dict[str, Any]:
    """``peers`` (each peer's latency and precision, or why it is missing), the fastest, and the cascade's
    speedup against it (ratio of unrounded medians)."""
    report: dict[str, Any] = {name: {**LatencyStats.of(samples[f"peer:{name}"], batch).report(),
                                     "precision": precision} for name, precision in precisions.items()}
    report.update({name: {"missing": reason} for name, reason in missing.items()})
    if not precisions:
        return {"peers": report, "best_peer": None, "speedup_vs_best_peer": None}
    best = min(precisions, key=lambda name: np.median(samples[f"peer:{name}"]))
    speedup = float(np.median(samples[f"peer:{best}"]) / np.median(cascade_ms))
    return {"peers": report, "best_peer": best, "speedup_vs_best_peer": round(speedup, 3)}
