"""Latency of the cascade and of the dense network of the same weights, in one run."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def cpu_features(flags: set[str]) -> str:
    """The x86 vector extensions that decide ONNX Runtime's fp32 and int8 kernels ('' elsewhere)."""
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX-VNNI"
    return "AVX2, no VNNI" if "avx2" in flags else ""


def machine(device: str = "cpu", backend: str = "ort") -> str:
    """CPU model, core count and vector extensions (on CUDA, the GPU's name first) and the backend's
    library version."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    features = cpu_features(flags)
    host = f"{cpu}, {os.cpu_count()} CPUs" + (f" ({features})" if features else "")
    if backend == "torch":
        import torch

        gpu = f"{torch.cuda.get_device_name()}, host " if device == "cuda" else ""
        return f"{gpu}{host}, torch {torch.__version__}"
    import onnxruntime

    return f"{host}, onnxruntime {onnxruntime.__version__}"


def time_calls(run: Callable[[], object], iters: int) -> list[float]:
    samples = []
    for _ in range(iters):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


def check_iterations(iters: int, warmup: int) -> None:
    if iters < 1 or warmup < 0:
        fail("--iters must be at least 1 and --warmup at least 0")


def time_in_blocks(steps: dict[Any, Callable[[], object]], iters: int, warmup: int,
                   progress: bool) -> dict[Any, list[float]]:
    """``iters`` timed calls (ms) of every step after ``warmup`` untimed ones, the steps taking turns in blocks.

    Blocks rather than strict alternation: each step runs with its own data in cache, as it
    would in deployment, while drift of the machine still hits all alike.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[Any, list[float]] = {key: [] for key in steps}
    block = max(1, min(10, iters // 5))
    with tqdm(total=iters, desc="benchmarking", unit="iter", disable=not progress, leave=False) as bar:
        for done in range(0, iters, block):
            count = min(block, iters - done)
            for key, step in steps.items():
                samples[key] += time_calls(step, count)
            bar.update(count)
    return samples


STAGES = ("stage1", "stage2", "stage3")


def stage_medians(cascade: Cascade, images: np.ndarray, rho: float | None,
                  masks: tuple[np.ndarray, np.ndarray] | None, iters: int) -> dict[str, float]:
    """Median ms of each stage: ONNX Runtime's stage graphs run one by one (``run_stages``), other
    backends' own per-stage times (TensorRT's CUDA events, the torch reference)."""
    engine = cascade.engine
    rho = cascade.default_rho if rho is None else rho
    run = engine.run_stages if cascade.backend == "ort" else engine.run
    timings = [run(images, rho, masks).timings for _ in range(iters)]
    if not all(stage in timings[0] for stage in STAGES):
        fail(f"--per-stage: the {cascade.backend} backend does not time its stages apart here "
             f"(it reports {', '.join(sorted(timings[0]))})")
    return {stage: round(float(np.median([t[stage] for t in timings])), 3) for stage in STAGES}


# ONNX Runtime kernels (after its fusions) that compute a convolution or a region conv's row GEMM.
CONV_KERNELS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "Gemm", "FusedGemm", "QGemm",
                          "MatMulInteger"})


def check_profilable(cascade: Cascade) -> None:
    if cascade.backend != "ort":
        fail(f"--profile reads ONNX Runtime's profiler (--backend ort); the {cascade.backend} backend has none "
             "here (TensorRT: trtexec --dumpProfile on the engine's plan files)")


def op_profile(cascade: Cascade, images: np.ndarray, rho: float | None,
               masks: tuple[np.ndarray, np.ndarray] | None, iters: int, warmup: int) -> dict:
    """ONNX Runtime's profile of ``iters`` cascade runs: kernel ms per run by op type (``op_types``,
    most first) and in total, split into convolution & GEMM kernels and all other ops."""
    check_profilable(cascade)
    rho = cascade.default_rho if rho is None else rho
    ops = cascade.engine.kernel_profile(images, rho, masks, iters, warmup)
    total = sum(us for us, _ in ops.values()) / 1e3
    conv = sum(us for op, (us, _) in ops.items() if op in CONV_KERNELS) / 1e3
    op_types = sorted(({"op": op, "ms": round(us / 1e3, 4), "kernels": calls} for op, (us, calls) in ops.items()),
                      key=lambda row: -row["ms"])
    return {"runs": iters, "kernel_ms": round(total, 3), "conv_gemm_ms": round(conv, 3),
            "other_ms": round(total - conv, 3), "op_types": op_types}


def benchmark(cascade: Cascade, rho: float | None, batch: int, iters: int, warmup: int,
              active: tuple[float, float] | None = None, progress: bool = True, per_stage: bool = False,
              profile: bool = False) -> dict:
    """Median / p90 / p99 latency and FPS of cascade and dense, timed in alternating blocks in one run
    (with ``per_stage``, then the median ms of each stage, ``stages_ms``; with ``profile``, then
    ONNX Runtime's profile of the cascade, ``profile``: :func:`op_profile`)."""
    check_iterations(iters, warmup)
    if profile:
        check_profilable(cascade)
    images = sample_batch(cascade, batch)
    dense = cascade.engine.dense_runner(cascade.manifest)
    first = cascade.run_batch(images, rho)
    masks = forced_masks(first.mask2.shape, active) if active is not None else None
    samples = time_in_blocks({"cascade": lambda: cascade.run_batch(images, rho, masks),
                              "dense": lambda: dense.infer({"image": images})}, iters, warmup, progress)
    cascade_ms, dense_ms = samples["cascade"], samples["dense"]
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
    extra = {"stages_ms": stage_medians(cascade, images, rho, masks, iters)} if per_stage else {}
    if profile:
        extra["profile"] = op_profile(cascade, images, rho, masks, iters, warmup)
    return {
        "model": str(cascade.model_dir), "backbone": cascade.manifest.get("backbone"), "backend": cascade.backend,
        "size": list(cascade.input_size), "batch": batch, "rho": cascade.default_rho if rho is None else rho,
        "iters": iters, "warmup": warmup, "forced_active_fractions": list(active) if active else None,
        "cascade": vars(cascade_stats), "dense": vars(dense_stats),
        "speedup": round(float(np.median(dense_ms) / np.median(cascade_ms)), 3),
        "ideal_speedup": round(ideal, 3),
        "stage_fractions": [round(f, 4) for f in fractions],
        "machine": machine(getattr(cascade.engine, "device", "cpu"), cascade.backend),
        **extra,
    }


# -- precisions side by side (lc-bench --compare) ---------------------------------------------------
PRECISIONS = ("fp32", "fp16", "int8")


def precision_sources(model_dir: Path | None, precisions: list[str]) -> dict[str, tuple[Path, dict]]:
    """The model dir and backend options of each precision: fp32 and fp16 from the fp32 dir, int8 from the INT8 one.

    ``model_dir`` may be either: an INT8 dir names its fp32 source in its ``quantization``
    record (``lc-calibrate`` writes it), an fp32 dir cannot name an INT8 one. A ``.pt``
    checkpoint (torch backend) gives fp32 and fp16.
    """
    from layercascade.calibration.calibrate import model_hash
    from layercascade.runtime.cascade import DEMO_MODEL, read_cascade_manifest

    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or "fp32" not in precisions or len(set(precisions)) != len(precisions):
        fail(f"--compare takes fp32 and any of {', '.join(PRECISIONS[1:])}, comma-separated (got "
             f"{','.join(precisions)})")
    model_dir = DEMO_MODEL if model_dir is None else Path(model_dir)
    if model_dir.suffix == ".pt":  # a checkpoint (torch backend): fp32 and fp16 of the same weights
        if "int8" in precisions:
            fail("--compare int8 needs the INT8 model dir from lc-calibrate, not a checkpoint")
        return {p: (model_dir, {} if p == "fp32" else {"precision": p}) for p in PRECISIONS if p in precisions}
    record = read_cascade_manifest(model_dir).get("quantization")
    if record is None:
        if "int8" in precisions:
            fail(f"{model_dir} is an fp32 model; --compare int8 needs its INT8 model dir (lc-calibrate "
                 f"{model_dir} -o DIR_INT8), then: lc-bench DIR_INT8 --compare {','.join(precisions)}")
        fp32_dir = model_dir
    else:
        fp32_dir = Path(record["source"])
        if not (fp32_dir / "lc.json").is_file() or model_hash(read_cascade_manifest(fp32_dir)) != record[
                "source_model_sha256"]:
            fail(f"{model_dir}: its fp32 source {fp32_dir} is gone or was re-exported; calibrate again")
    sources = {"fp32": (fp32_dir, {}), "fp16": (fp32_dir, {"precision": "fp16"}), "int8": (model_dir, {})}
    return {p: sources[p] for p in PRECISIONS if p in precisions}  # fp32 first: the reference


def agreement_predictor(cascade: Cascade, fp32_labels: dict[tuple[float, int], np.ndarray], is_reference: bool):
    """A predictor for ``evaluate`` that keeps (``is_reference``) or checks the fp32 label maps.

    ``fp32_labels`` is keyed (ρ, image index). Returns the predictor and ``agreement``:
    ρ → [pixels labelled as fp32 labels them, pixels].
    """
    agreement: dict[float, list[int]] = {}
    seen: dict[float, int] = {}

    def predict(image: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray, int]:
        result = cascade(image, rho)
        key = (rho, seen.setdefault(rho, 0))
        seen[rho] += 1
        if is_reference:
            fp32_labels[key] = result.labels
        counts = agreement.setdefault(rho, [0, 0])
        counts[0] += int((result.labels == fp32_labels[key]).sum())
        counts[1] += result.labels.size
        return result.labels, np.asarray(result.stage_fractions), result.stage_map.size

    return predict, agreement


def compare_precisions(cascades: dict[str, Cascade], rhos: list[float], batch: int, iters: int, warmup: int,
                       dataset=None, progress: bool = True, profile: bool = False) -> dict:
    """Latency of every precision at every ρ (timed in alternating blocks, one run) and, with ``dataset``,
    mIoU and label agreement with fp32 at the same ρ; with ``profile``, each row's ONNX Runtime
    profile (``profile``: :func:`op_profile`)."""
    from layercascade.model.evaluate import evaluate

    check_iterations(iters, warmup)
    for cascade in cascades.values() if profile else ():
        check_profilable(cascade)
    images = sample_batch(cascades["fp32"], batch)
    steps = {(name, rho): (lambda c=cascade, r=rho: c.run_batch(images, r))
             for name, cascade in cascades.items() for rho in rhos}
    samples = time_in_blocks(steps, iters, warmup, progress)
    rows = []
    fp32_labels: dict[tuple[float, int], np.ndarray] = {}
    for name, cascade in cascades.items():
        accuracy = {}
        if dataset is not None:
            predict, agreement = agreement_predictor(cascade, fp32_labels, is_reference=name == "fp32")
            results = evaluate(predict, dataset, rhos, cascade.classes, progress=progress)
            accuracy = {r.rho: (r.miou, 100 * agreement[r.rho][0] / agreement[r.rho][1]) for r in results}
        for rho in rhos:
            stats = LatencyStats.of(samples[(name, rho)], batch)
            # Ratios of the unrounded medians (rounded ones are off by 1e-3 at sub-millisecond times).
            fp32_median, median = (float(np.median(samples[(p, rho)])) for p in ("fp32", name))
            row = {"precision": name, "model": str(cascade.model_dir), "rho": rho, **vars(stats),
                   "speedup_vs_fp32": round(fp32_median / median, 3)}
            if rho in accuracy:
                row["miou"], row["label_agreement"] = round(accuracy[rho][0], 2), round(accuracy[rho][1], 3)
            if profile:
                row["profile"] = op_profile(cascade, images, rho, None, iters, warmup)
            rows.append(row)
    fp32 = cascades["fp32"]
    return {"size": list(fp32.input_size), "batch": batch, "iters": iters, "warmup": warmup,
            "backend": fp32.backend, "data": None if dataset is None else f"{dataset.name} ({len(dataset)} images)",
            "rows": rows, "machine": machine(getattr(fp32.engine, "device", "cpu"), fp32.backend)}


def plot_comparison(result: dict, path: Path) -> None:
    """Speed (FPS) against mIoU, one line per precision through its ρ values (the paper's Fig. 7a)."""
    try:
        import matplotlib
    except ImportError:
        fail("--plot needs matplotlib: pip install 'layercascade[docs]'")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.2))
    for precision in dict.fromkeys(r["precision"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["precision"] == precision]
        axes.plot([r["fps"] for r in rows], [r["miou"] for r in rows], "o-", label=precision)
        for r in rows:
            axes.annotate(f"ρ={r['rho']:g}", (r["fps"], r["miou"]), textcoords="offset points", xytext=(4, 3),
                          fontsize=7)
    axes.set_xlabel("frames per second")
    axes.set_ylabel("mIoU (%)")
    axes.set_title(f"speed vs accuracy, {result['size'][0]}×{result['size'][1]}, {result['backend']}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
