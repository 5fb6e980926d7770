"""Precisions side by side (lc-bench --compare): latency of each precision at each ρ, timed in
alternating blocks in one run, and with a data set mIoU and label agreement with fp32; the
speed-vs-accuracy plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from layercascade.contract import Rho, RhoLike, check_rho, format_rho, rho_value
from layercascade.errors import fail
from layercascade.manifest import read_cascade_manifest, write_atomic
from layercascade.model.data import SegmentationDataset
from layercascade.model.evaluate import Predictor, evaluate
from layercascade.runtime.backend import PRECISIONS
from layercascade.runtime.bench import check_profilable, fp32_source, op_profile, sample_batch, timed_blocks
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import DEMO_MODEL
from layercascade.runtime.registry import AUTO, BACKENDS, auto_backend, backend_spec
from layercascade.runtime.timing import LatencyStats, check_iterations


def precision_sources(model_dir: Path | None, precisions: list[str],
                      backend: str = AUTO) -> dict[str, tuple[Path, dict]]:
    """The model dir and ``Cascade.load`` settings of each precision (the backend, and the precision asked for by
    name): fp32, fp16 and bf16 from the fp32 dir, int8 from the INT8 one.

    ``model_dir`` may be either: an INT8 dir names its fp32 source in its ``quantization``
    record (``lc-calibrate`` writes it), an fp32 dir cannot name an INT8 one. A ``.pt``
    checkpoint (torch backend) gives fp32 and fp16. Every precision runs on one backend: ``backend``, or the
    one ``--backend auto`` tries first for the dir (where that one lacks a precision asked for, the first installed
    backend that has them all; all precisions are asked of it by name: OpenVINO's default is bf16 where the CPU
    has it, so fp32 must be); a precision it does not have is one line.
    """
    if set(precisions) - set(PRECISIONS) or "fp32" not in precisions or len(set(precisions)) != len(precisions):
        fail(f"--compare takes fp32 and any of {', '.join(PRECISIONS[1:])}, comma-separated (got "
             f"{','.join(precisions)})")
    model_dir = DEMO_MODEL if model_dir is None else Path(model_dir)
    spec = backend_spec(auto_backend(model_dir) if backend == AUTO else backend)
    if backend == AUTO and not set(precisions) <= set(spec.precisions):  # e.g. bf16 of a model auto runs on ort
        spec = next((s for s in BACKENDS if s.claims is None and s.installed() and set(precisions) <= set(s.precisions)),
                    spec)
    if model_dir.suffix == ".pt" and "int8" in precisions:
        fail("--compare int8 needs the INT8 model dir from lc-calibrate, not a checkpoint")
    for precision in precisions:
        if precision not in spec.precisions:
            having = ", ".join(s.name for s in BACKENDS if precision in s.precisions)
            fail(f"--compare {precision}: the {spec.name} backend has no {precision} (backends that have it: {having})")
    if model_dir.suffix == ".pt":  # a checkpoint (torch backend): fp32 and fp16 of the same weights
        fp32_dir = model_dir
    else:
        manifest = read_cascade_manifest(model_dir)
        if "quantization" not in manifest:
            if "int8" in precisions:
                fail(f"{model_dir} is an fp32 model; --compare int8 needs its INT8 model dir (lc-calibrate "
                     f"{model_dir} -o DIR_INT8), then: lc-bench DIR_INT8 --compare {','.join(precisions)}")
            fp32_dir = model_dir
        else:
            fp32_dir = fp32_source(model_dir, manifest)
    # fp32 first: the reference.
    return {p: (model_dir if p == "int8" else fp32_dir, {"backend": spec.name, "precision": p}) for p in PRECISIONS
            if p in precisions}


def agreement_predictor(cascade: Cascade, fp32_labels: dict[tuple[Rho, int], np.ndarray],
                        is_reference: bool) -> tuple[Predictor, dict[Rho, list[int]]]:
    """A predictor for ``evaluate`` that keeps (``is_reference``) or checks the fp32 label maps.

    ``fp32_labels`` is keyed (ρ, image index). Returns the predictor and ``agreement``:
    ρ → [pixels labelled as fp32 labels them, pixels].
    """
    agreement: dict[Rho, list[int]] = {}
    seen: dict[Rho, int] = {}

    def predict(image: np.ndarray, rho: Rho) -> tuple[np.ndarray, np.ndarray, int]:
        labels, fractions, pixels = cascade.predict(image, rho)
        key = (rho, seen.setdefault(rho, 0))
        seen[rho] += 1
        if is_reference:
            fp32_labels[key] = labels
        counts = agreement.setdefault(rho, [0, 0])
        counts[0] += int((labels == fp32_labels[key]).sum())
        counts[1] += labels.size
        return labels, fractions, pixels

    return predict, agreement


def compare_precisions(cascades: dict[str, Cascade], rhos: list[RhoLike], batch: int, iters: int, warmup: int,
                       dataset: SegmentationDataset | None = None, progress: bool = True,
                       profile: bool = False) -> dict[str, Any]:
    """Latency of every precision at every ρ (timed in alternating blocks, one run) and, with ``dataset``,
    mIoU and label agreement with fp32 at the same ρ; with ``profile``, each row's profile by the backend's
    profiler (``profile``: :func:`op_profile`)."""
    check_iterations(iters, warmup)
    rhos = [check_rho(rho) for rho in rhos]
    for cascade in cascades.values() if profile else ():
        check_profilable(cascade)
    images = sample_batch(cascades["fp32"], batch)
    steps = {(name, rho): (lambda c=cascade, r=rho: c.run_batch(images, r))
             for name, cascade in cascades.items() for rho in rhos}
    samples = timed_blocks(steps, iters, warmup, progress)
    rows = []
    fp32_labels: dict[tuple[Rho, int], np.ndarray] = {}
    for name, cascade in cascades.items():
        accuracy = {}
        if dataset is not None:
            predict, agreement = agreement_predictor(cascade, fp32_labels, is_reference=name == "fp32")
            results = evaluate(predict, dataset, rhos, cascade.classes, progress=progress)
            accuracy = {rho: (r.miou, 100 * agreement[rho][0] / agreement[rho][1]) for rho, r in zip(rhos, results)}
        for rho in rhos:
            stats = LatencyStats.of(samples[(name, rho)], batch)
            # Ratios of the unrounded medians (rounded ones are off by 1e-3 at sub-millisecond times).
            fp32_median, median = (float(np.median(samples[(p, rho)])) for p in ("fp32", name))
            row = {"precision": name, "model": str(cascade.model_dir), "rho": rho_value(rho), **stats.report(),
                   "speedup_vs_fp32": round(fp32_median / median, 3)}
            if rho in accuracy:
                row["miou"], row["label_agreement"] = round(accuracy[rho][0], 2), round(accuracy[rho][1], 3)
            if profile:
                row["profile"] = op_profile(cascade, images, rho, None, iters, warmup)
            rows.append(row)
    fp32 = cascades["fp32"]
    return {"size": list(fp32.input_size), "batch": batch, "iters": iters, "warmup": warmup,
            "backend": fp32.backend, "data": None if dataset is None else f"{dataset.name} ({len(dataset)} images)",
            "rows": rows, "machine": fp32.runner.machine()}


def pyplot(what: str) -> Any:
    """matplotlib's ``pyplot`` drawing to files (the Agg backend), or one line saying ``what`` needs it and how to
    install it."""
    try:
        import matplotlib
    except ImportError:
        fail(f"{what} needs matplotlib: pip install 'layercascade[docs]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# The PNG text chunk that marks a plot as layercascade's: an existing file at a --plot path is replaced only if it
# carries it (an earlier plot of the command), never a user's picture or any other file.
PLOT_SOFTWARE = "layercascade {command} plot"


def check_plot_target(path: Path, command: str) -> None:
    """Fail (one line, before any measuring) unless ``command``'s plot can be written at ``path``: its folder
    exists, and nothing is there but an earlier plot of ``command`` (which is replaced)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.parent.is_dir():
        fail(f"--plot {path}: the folder {path.parent} does not exist; create it or choose another --plot")
    if not path.exists() and not path.is_symlink():
        return
    software = None
    if path.is_file() and not path.is_symlink():
        try:
            with Image.open(path) as picture:
                software = picture.format == "PNG" and picture.info.get("Software")
        except (OSError, UnidentifiedImageError, ValueError):
            software = None
    if software != PLOT_SOFTWARE.format(command=command):
        fail(f"--plot {path}: exists and is not a plot {command} wrote; choose another --plot")


def save_plot(figure: Any, path: Path, command: str) -> None:
    """Write ``figure`` as ``command``'s PNG plot at ``path`` (marked as such, atomically)."""
    write_atomic(path, lambda temporary: figure.savefig(
        temporary, dpi=120, metadata={"Software": PLOT_SOFTWARE.format(command=command)}))


def plot_comparison(result: dict[str, Any], path: Path) -> None:
    """Speed (FPS) against mIoU, one line per precision through its ρ values (the paper's Fig. 7a)."""
    plt = pyplot("--plot")
    figure, axes = plt.subplots(figsize=(6, 4.2))
    for precision in dict.fromkeys(r["precision"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["precision"] == precision]
        axes.plot([r["fps"] for r in rows], [r["miou"] for r in rows], "o-", label=precision)
        for r in rows:
            axes.annotate(f"ρ={format_rho(r['rho'])}", (r["fps"], r["miou"]), textcoords="offset points",
                          xytext=(4, 3), fontsize=7)
    axes.set_xlabel("frames per second")
    axes.set_ylabel("mIoU (%)")
    axes.set_title(f"speed vs accuracy, {result['size'][0]}×{result['size'][1]}, {result['backend']}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_plot(figure, path, "lc-bench")
    plt.close(figure)
