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

from layercascade.contract import IMAGE, RhoClassLike, RhoLike, rho_class_value, rho_value
from layercascade.cost_model import ideal_speedup
from layercascade.errors import LCError, fail
from layercascade.manifest import model_hash, read_cascade_manifest
from layercascade.model.data.images import read_rgb, resize_image
from layercascade.runtime.backend import Masks, precision_class
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import SAMPLES
from layercascade.runtime.registry import BACKENDS, profilers
from layercascade.runtime.timing import LatencyStats, check_iterations, forced_masks, time_in_blocks

STAGES = ("stage1", "stage2", "stage3")
# Kernels (after the runtime's fusions) that compute a convolution or a region conv's row GEMM: ONNX
# Runtime's, then OpenVINO's.
CONV_KERNELS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "Gemm", "FusedGemm", "QGemm",
                          "MatMulInteger", "Convolution", "GroupConvolution", "FullyConnected"})


def sample_batch(cascade: Cascade, batch: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """``batch`` bundled sample images at ``size`` (default: the model's input size)."""
    images = [resize_image(read_rgb(path), size or cascade.input_size) for path in sorted(SAMPLES.iterdir())]
    return np.stack([images[k % len(images)] for k in range(batch)])


def bench_size(cascade: Cascade, size: tuple[int, int] | None) -> tuple[int, int]:
    """The size to time the model at: ``size`` (lc-bench ``--size``), one it takes as it is (a fixed-size export:
    its input size; a dynamic-size one: a multiple of 8 within its bounds); default: its input size."""
    if size is None or cascade.takes(size):
        return tuple(size or cascade.input_size)
    height, width = size
    if not cascade.sizes.dynamic:
        fail(f"--size {height}x{width}: {cascade.model_dir} takes {cascade.input_size[0]}x{cascade.input_size[1]} "
             f"images only; export it for {height}x{width} (lc-export --input-size {height}x{width}) or with "
             f"--dynamic-size")
    fail(f"--size {height}x{width}: {cascade.model_dir} takes {cascade.sizes.describe()}")


def timed_blocks(steps: dict[Any, Any], iters: int, warmup: int, progress: bool) -> dict[Any, list[float]]:
    """:func:`~layercascade.runtime.timing.time_in_blocks` with a progress bar."""
    with tqdm(total=iters, desc="benchmarking", unit="iter", disable=not progress, leave=False) as bar:
        return time_in_blocks(steps, iters, warmup, on_block=bar.update)


def stage_medians(cascade: Cascade, images: np.ndarray, rho: RhoLike | None, masks: Masks | None,
                  iters: int, rho_class: RhoClassLike | None = None) -> dict[str, float]:
    """Median ms of each stage, as the backend times them apart (``run_stages``: ONNX Runtime's stage
    graphs one by one, TensorRT's CUDA events, the torch reference's stages)."""
    thresholds = cascade.thresholds(rho, rho_class)
    timings = [cascade.runner.run_stages(images, thresholds, masks).timings for _ in range(iters)]
    if not all(stage in timings[0] for stage in STAGES):
        fail(f"--per-stage: the {cascade.backend} backend does not time its stages apart here "
             f"(it reports {', '.join(sorted(timings[0]))})")
    return {stage: round(float(np.median([t[stage] for t in timings])), 3) for stage in STAGES}


def check_profilable(cascade: Cascade) -> None:
    readers = profilers()
    if cascade.backend not in readers:
        listed = " or ".join(f"{reader} (--backend {backend})" for backend, reader in readers.items())
        fail(f"--profile reads {listed}; the {cascade.backend} backend has none")


def op_profile(cascade: Cascade, images: np.ndarray, rho: RhoLike | None, masks: Masks | None, iters: int,
               warmup: int, rho_class: RhoClassLike | None = None) -> dict[str, Any]:
    """The backend's profile of ``iters`` cascade runs (its spec's ``profiler``): kernel ms per run by op type
    (``op_types``, most first) and in total, split into convolution & GEMM kernels and all other ops."""
    check_profilable(cascade)
    ops = cascade.runner.kernel_profile(images, cascade.thresholds(rho, rho_class), masks, iters, warmup)
    total = sum(us for us, _ in ops.values()) / 1e3
    conv = sum(us for op, (us, _) in ops.items() if op in CONV_KERNELS) / 1e3
    op_types = sorted(({"op": op, "ms": round(us / 1e3, 4), "kernels": calls} for op, (us, calls) in ops.items()),
                      key=lambda row: -row["ms"])
    return {"runs": iters, "kernel_ms": round(total, 3), "conv_gemm_ms": round(conv, 3),
            "other_ms": round(total - conv, 3), "op_types": op_types}


# The runtimes a user could run the dense export on instead, each at its default precision: the float peers'
# names (an int8 peer is named "<backend>-int8").
PEERS = tuple(spec.name for spec in BACKENDS if spec.peer)


def fp32_source(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """The fp32 model dir an INT8 dir was calibrated from (its ``quantization`` record names it); one line when it is
    gone or was re-exported since."""
    record = manifest["quantization"]
    if not isinstance(record.get("source"), str):
        fail(f"{model_dir}: its quantization record names no fp32 source dir; calibrate again")
    source = Path(record["source"])
    if not (source / "lc.json").is_file() or model_hash(read_cascade_manifest(source)) != record.get(
            "source_model_sha256"):
        fail(f"{model_dir}: its fp32 source {source} is gone or was re-exported; calibrate again")
    return source


def peer_sources(cascade: Cascade) -> dict[str, tuple[Path, dict[str, Any]] | str]:
    """Precision class → the model dir (or checkpoint) whose dense network that class's peers run, and its manifest;
    or why there is none. An fp32 dir: itself for the float class; an INT8 dir: itself for int8 (its
    ``dense.onnx``, quantized by lc-calibrate with the statistics of the stages), its fp32 source for float."""
    own = (cascade.model_dir, cascade.manifest)
    if "quantization" not in cascade.manifest:
        return {"float": own, "int8": f"{cascade.model_dir} is not an INT8 dir; the int8 peers run an INT8 dir's "
                                      f"dense.onnx: lc-calibrate DIR -o DIR_INT8, then lc-bench DIR_INT8 --peers"}
    try:
        source = fp32_source(cascade.model_dir, cascade.manifest)
        float_peers: tuple[Path, dict[str, Any]] | str = (source, read_cascade_manifest(source))
    except LCError as error:
        float_peers = str(error)
    return {"float": float_peers, "int8": own}


def peer_runners(cascade: Cascade, threads: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    """The model's dense network on each peer runtime installed here (each backend's ``peer``), as a user would run
    it without us: ONNX Runtime (fp32), OpenVINO at its default precision (bf16 on CPUs with native bf16), torch
    eager (fp32, when torch is installed and the checkpoint the model was exported from is found); and at int8
    (:func:`peer_sources`), ONNX Runtime and OpenVINO.

    Returns (peer → (runner, backend, precision), peer → why it is missing).
    """
    runners: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for kind, source in peer_sources(cascade).items():
        for spec in BACKENDS:
            if spec.peer is None or (kind == "int8" and not spec.peer_int8):
                continue
            name = spec.name if kind == "float" else f"{spec.name}-int8"
            try:
                if isinstance(source, str):
                    fail(source)
                runner, precision = spec.dense_peer(*source, threads)
                runners[name] = (runner, spec.name, precision)
            except LCError as error:
                missing[name] = str(error)
    return runners, missing


def stage_fractions(out: Any, masks: Masks | None, batch: int) -> list[float]:
    """Shares of pixels decided at stages 1, 2, 3: counted by the cascade, or those of the forced masks."""
    if masks is None:
        return [float(c) for c in out.stage_counts.sum(0) / (out.mask2[0].size * batch)]
    reach2, reach3 = float(masks[0].mean()), float(masks[1].mean())
    return [1.0 - reach2, reach2 - reach3, reach3]


def benchmark(cascade: Cascade, rho: RhoLike | None, batch: int, iters: int, warmup: int,
              active: tuple[float, float] | None = None, progress: bool = True, per_stage: bool = False,
              profile: bool = False, peers: bool = False, threads: int = 0,
              size: tuple[int, int] | None = None, rho_class: RhoClassLike | None = None) -> dict[str, Any]:
    """Median / p90 / p99 latency and FPS of cascade and dense at ``size`` (:func:`bench_size`; default: the
    model's input size), timed in alternating blocks in one run, and the backend and precision that ran (with
    ``per_stage``, then the median ms of each stage, ``stages_ms``; with
    ``profile``, then the backend's profile of the cascade, ``profile``: :func:`op_profile`; with ``peers``, the
    dense network on every peer runtime at every precision in the same blocks, and the cascade's speedup against
    the fastest and the fastest of its precision class: :func:`peer_report`). ``rho`` and ``rho_class``: the
    thresholds (``Cascade.thresholds``)."""
    check_iterations(iters, warmup)
    if profile:
        check_profilable(cascade)
    rho, rho_class = cascade.rho(rho), cascade.rho_class(rho_class)
    size = bench_size(cascade, size)
    images = sample_batch(cascade, batch, size)
    dense = cascade.runner.dense_runner(cascade.manifest)
    first = cascade.run_batch(images, rho, rho_class=rho_class)
    masks = forced_masks(first.mask2.shape, active) if active is not None else None
    steps = {"cascade": lambda: cascade.run_batch(images, rho, masks, rho_class),
             "dense": lambda: dense.infer({IMAGE: images})}
    peer_list, missing = peer_runners(cascade, threads) if peers else ({}, {})
    for name, (runner, *_) in peer_list.items():
        steps[f"peer:{name}"] = functools.partial(runner.infer, {IMAGE: images})
    # At least one untimed call: what a runner prepares on first use (OpenVINO: a compile per size) goes untimed.
    samples = timed_blocks(steps, iters, max(warmup, 1), progress)
    cascade_ms, dense_ms = samples["cascade"], samples["dense"]
    fractions = stage_fractions(first, masks, batch)
    gmacs = cascade.manifest["stage_gmacs"]
    reach = (fractions[1] + fractions[2], fractions[2])
    ideal = ideal_speedup([g["backbone"] for g in gmacs], [g["head"] for g in gmacs], reach)
    extra = {"stages_ms": stage_medians(cascade, images, rho, masks, iters, rho_class)} if per_stage else {}
    if profile:
        extra["profile"] = op_profile(cascade, images, rho, masks, iters, warmup, rho_class)
    if peers:
        extra.update(peer_report(samples, {name: tuple(peer[1:]) for name, peer in peer_list.items()}, missing,
                                 cascade_ms, cascade.precision, batch))
    return {
        "model": str(cascade.model_dir), "backbone": cascade.manifest.get("backbone"), "backend": cascade.backend,
        "precision": cascade.precision,
        "size": list(size), "batch": batch, "rho": rho_value(rho),
        "rho_class": rho_class_value(rho_class, cascade.classes),
        "iters": iters, "warmup": warmup, "forced_active_fractions": list(active) if active else None,
        "cascade": LatencyStats.of(cascade_ms, batch).report(), "dense": LatencyStats.of(dense_ms, batch).report(),
        # Ratios of the unrounded medians (rounded ones are off by 1e-3 at sub-millisecond times).
        "speedup": round(float(np.median(dense_ms) / np.median(cascade_ms)), 3),
        "ideal_speedup": round(ideal, 3),
        "stage_fractions": [round(f, 4) for f in fractions],
        "machine": cascade.runner.machine(),
        **extra,
    }


def peer_report(samples: dict[str, list[float]], peers: dict[str, tuple[str, str]], missing: dict[str, str],
                cascade_ms: list[float], precision: str | None, batch: int) -> dict[str, Any]:
    """``peers`` (each timed peer's latency, backend, precision and precision class, or why it is missing), the
    fastest of them (``best_peer``) and the cascade's speedup against it; ``precision_class``, the cascade's
    (float: fp32, fp16, bf16; int8), and the fastest peer of that class and the speedup against it
    (``best_peer_same_class``, ``speedup_vs_best_peer_same_class``). ``peers``: name → (backend, precision);
    ``precision``: the cascade's (None: unknown, no same-class comparison). Speedups are ratios of unrounded
    medians."""
    report: dict[str, Any] = {
        name: {**LatencyStats.of(samples[f"peer:{name}"], batch).report(), "backend": backend, "precision": peer,
               "precision_class": precision_class(peer)} for name, (backend, peer) in peers.items()}
    report.update({name: {"missing": reason} for name, reason in missing.items()})
    cascade_class = precision_class(precision) if precision else None
    result: dict[str, Any] = {"peers": report, "precision_class": cascade_class}
    for suffix, names in (("", list(peers)),
                          ("_same_class", [n for n in peers if report[n]["precision_class"] == cascade_class])):
        best = min(names, key=lambda name: np.median(samples[f"peer:{name}"])) if names else None
        speedup = None if best is None else round(float(np.median(samples[f"peer:{best}"]) / np.median(cascade_ms)), 3)
        result.update({f"best_peer{suffix}": best, f"speedup_vs_best_peer{suffix}": speedup})
    return result
