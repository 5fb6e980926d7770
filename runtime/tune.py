"""Thresholds for a budget (lc-tune): mIoU and latency of the cascade at a grid of (ρ₂, ρ₃) on this machine and
backend, their Pareto frontier, the setting that meets a budget, and a copy of the model dir with that setting as
its default.

What is measured (docs/tune.md):

* **the grid**: every (ρ₂, ρ₃) with ρ₃ ≥ ρ₂ of the values :data:`GRID` (or the caller's), plus the model's own
  default pair. ρ₃ ≥ ρ₂ only: on the demo model 29 of the 30 points of the two-threshold frontier had ρ₃ ≥ ρ₂
  (docs/results.md), and it halves the settings to measure;
* **accuracy**: mIoU on the given images, every setting run on each image in one pass over the data
  (``model.evaluate``), so each image is read once;
* **latency**: the median ms of a cascade run of the model's batch at each setting, timed as lc-bench times
  (``timed_blocks``: all settings take turns in blocks, so the machine's drift hits them alike), on batches of the
  data's own images (the pixels that reach stages 2–3, and so the time, depend on the images), every setting on
  the same images in the same order;
* **the mIoU drop** is measured against the model's current default thresholds (not ρ = 1: a cascade-trained
  model is often less accurate with every pixel sent through every stage, the demo model by 18 points).

With ``tune_class`` (lc-tune --tune-class NAME) the grid is one class's threshold ρ_c instead: every value of
:data:`GRID` (or the caller's), the other classes at the model's default (ρ₂, ρ₃) and per-class defaults, plus
the model's own default; the same measurements, budgets and choice, and the tuned copy records the chosen ρ_c in
``default_rho_class``.

The choice: with a latency budget (``target_ms``: median ms per run; ``target_fps``: images per second at the
median, i.e. ≤ batch × 1000 / F ms per run) the most accurate setting that meets it (ties: the faster); with an
accuracy budget (``max_miou_drop``) the fastest setting within it (ties: the more accurate). The model's default
meets every accuracy budget; a latency budget no setting meets is an error naming the fastest setting.
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.contract import (
    Rho,
    check_rho,
    check_threshold,
    format_rho,
    format_rho_class,
    rho_class_value,
    rho_value,
)
from layercascade.errors import fail
from layercascade.manifest import check_model_dir_target, read_cascade_manifest, write_model_dir
from layercascade.model.data import SegmentationDataset
from layercascade.model.evaluate import evaluate
from layercascade.runtime.bench import timed_blocks
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.compare import pyplot, save_plot
from layercascade.runtime.inputs import DEMO_MODEL
from layercascade.runtime.timing import LatencyStats, check_iterations
from layercascade.version import __version__

# The thresholds of the default grid, for ρ₂ and ρ₃ alike.
GRID = (1.0, 0.995, 0.99, 0.985, 0.97, 0.95, 0.9)
# Latency is timed on up to this many batches of the data's images, cycled.
TIMING_BATCHES = 16
BUDGETS = ("target_ms", "target_fps", "max_miou_drop")


@dataclass(frozen=True)
class Budget:
    """What the chosen setting must meet: ``target_ms`` (median ms per run at most ``value``), ``target_fps``
    (images per second at the median at least ``value``) or ``max_miou_drop`` (mIoU at most ``value`` points
    below the model's default thresholds')."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGETS:
            fail(f"unknown budget {self.kind!r}; choose one of {', '.join(BUDGETS)}")
        # An mIoU drop of 0 is a budget (as accurate as the default, as fast as possible); 0 ms or 0 FPS is not.
        low_ok = self.kind == "max_miou_drop"
        if not (math.isfinite(self.value) and (self.value >= 0 if low_ok else self.value > 0)):
            fail(f"--{self.kind.replace('_', '-')} must be a finite number {'of 0 or more' if low_ok else 'above 0'}, "
                 f"got {self.value}")

    def met_by(self, point: dict[str, Any]) -> bool:
        """Whether a measured ``point`` (:func:`measure_grid`'s) meets the budget."""
        if self.kind == "target_ms":
            return point["median_ms"] <= self.value
        if self.kind == "target_fps":
            return point["fps"] >= self.value
        return point["miou_drop"] <= self.value

    def describe(self) -> str:
        """The budget in words, e.g. ``median ≤ 5 ms per run``."""
        if self.kind == "target_ms":
            return f"median ≤ {self.value:g} ms per run"
        if self.kind == "target_fps":
            return f"≥ {self.value:g} images/s at the median"
        return f"mIoU at most {self.value:g} below the default's"

    def record(self) -> dict[str, float]:
        return {self.kind: self.value}


def grid_pairs(values: Sequence[float]) -> list[Rho]:
    """Every (ρ₂, ρ₃) of ``values`` (each checked to lie in (0, 1]) with ρ₃ ≥ ρ₂, highest ρ₂ first."""
    ordered = sorted({check_threshold(v) for v in values}, reverse=True)
    return [(rho2, rho3) for rho2 in ordered for rho3 in ordered if rho3 >= rho2]


def pareto_front(rows: Sequence[dict[str, Any]], cost: str, value: str) -> list[dict[str, Any]]:
    """The rows no other row beats (none as cheap or cheaper with a higher ``value``), cheapest first."""
    front: list[dict[str, Any]] = []
    for row in sorted(rows, key=lambda r: (r[cost], -r[value])):
        if not front or row[value] > front[-1][value]:
            front.append(row)
    return front


def data_batches(cascade: Cascade, dataset: SegmentationDataset, batch: int) -> list[np.ndarray]:
    """Up to :data:`TIMING_BATCHES` batches of ``batch`` of the data's images at the model's input size (the
    images repeated when there are fewer than one batch)."""
    count = max(1, min(TIMING_BATCHES, len(dataset) // batch))
    images = [cascade.prepare(dataset[k][0]) for k in range(min(len(dataset), count * batch))]
    return [np.stack([images[(b * batch + k) % len(images)] for k in range(batch)]) for b in range(count)]


# A setting measured: (ρ₂, ρ₃) and the per-class thresholds by class index.
Setting = tuple[Rho, tuple[tuple[int, float], ...]]


def cycling_run(cascade: Cascade, batches: list[np.ndarray], setting: Setting) -> Callable[[], object]:
    """One cascade run at ``setting`` per call, on the next of ``batches`` each time."""
    turn = itertools.cycle(batches)
    rho, rho_class = setting
    return lambda: cascade.run_batch(next(turn), rho, rho_class=dict(rho_class))


def grid_settings(cascade: Cascade, values: Sequence[float], tune_class: int | None) -> tuple[list[Setting], Setting]:
    """The settings to measure and the model's default among them: every pair of :func:`grid_pairs` at the model's
    per-class defaults, or (``tune_class``) the model's default pair with that class's threshold at each of
    ``values``; the default added where the grid misses it."""
    default_rho_class = cascade.default_rho_class
    default: Setting = (cascade.default_rho, tuple(sorted(default_rho_class.items())))
    if tune_class is None:
        settings = [(pair, default[1]) for pair in grid_pairs(values)]
    else:
        settings = [(default[0], tuple(sorted({**default_rho_class, tune_class: value}.items())))
                    for value in sorted({check_threshold(v) for v in values}, reverse=True)]
    if default not in settings:
        settings.append(default)
    return settings, default


def measure_grid(cascade: Cascade, dataset: SegmentationDataset, values: Sequence[float] = GRID, iters: int = 30,
                 warmup: int = 5, progress: bool = True, tune_class: int | None = None) -> dict[str, Any]:
    """mIoU and latency of ``cascade`` at every (ρ₂, ρ₃) of :func:`grid_pairs` (``values``) and at its default;
    with ``tune_class`` (a class index) at every value of that class's threshold instead (:func:`grid_settings`).

    Returns ``points`` (each ``rho``, ``rho_class`` (per-class thresholds by name), ``default`` (whether it is the
    model's default), the latency statistics of ``LatencyStats.report``, ``miou``, ``miou_drop`` (against the
    default's, in points), ``stage_fractions`` and ``on_frontier``), ``reference`` (the default's point),
    ``frontier`` (latency against mIoU, fastest first) and what was measured how: ``model``, ``backbone``,
    ``backend``, ``size``, ``batch``, ``data``, ``grid``, ``tune_class`` (its name, or None), ``iters``, ``warmup``,
    ``timing_images``, ``machine``.
    """
    check_iterations(iters, warmup)
    if len(dataset) == 0:
        fail("no images to tune on; point --data at a data set with images")
    if len(dataset.classes) != len(cascade.classes):
        fail(f"the data set has {len(dataset.classes)} classes, the model {len(cascade.classes)}: tune on images of "
             "the kind the model was trained on")
    settings, default = grid_settings(cascade, values, tune_class)
    batch = cascade.batch_size or 1

    def predict(image: np.ndarray, setting: Setting) -> tuple[np.ndarray, np.ndarray, int]:
        return cascade.predict(image, setting[0], rho_class=dict(setting[1]))

    results = evaluate(predict, dataset, settings, cascade.classes, progress=progress, rho_of=lambda s: s[0])
    batches = data_batches(cascade, dataset, batch)
    samples = timed_blocks({setting: cycling_run(cascade, batches, setting) for setting in settings}, iters, warmup,
                           progress)
    reference_miou = results[settings.index(default)].miou
    points = [{"rho": rho_value(setting[0]), "rho_class": rho_class_value(dict(setting[1]), cascade.classes),
               "default": setting == default, **LatencyStats.of(samples[setting], batch).report(),
               "miou": result.miou, "miou_drop": round(reference_miou - result.miou, 4),
               "stage_fractions": result.stage_fractions}
              for setting, result in zip(settings, results)]
    frontier = pareto_front(points, "median_ms", "miou")
    on_frontier = {id(point) for point in frontier}
    for point in points:
        point["on_frontier"] = id(point) in on_frontier
    return {
        "model": str(cascade.model_dir), "backbone": cascade.manifest.get("backbone"), "backend": cascade.backend,
        "size": list(cascade.input_size), "batch": batch, "data": f"{dataset.name} ({len(dataset)} images)",
        "grid": sorted({check_threshold(v) for v in values}, reverse=True),
        "tune_class": None if tune_class is None else cascade.classes[tune_class], "iters": iters, "warmup": warmup,
        "timing_images": len(batches) * batch, "machine": cascade.runner.machine(),
        "points": points, "reference": points[settings.index(default)], "frontier": frontier,
    }


def setting_text(point: dict[str, Any]) -> str:
    """A measured point's thresholds in words: ``ρ = 0.985``, with its per-class ones ``ρ = 0.985, person=0.9``."""
    per_class = point.get("rho_class") or {}
    return f"ρ = {format_rho(point['rho'])}" + (f", {format_rho_class(per_class)}" if per_class else "")


def choose_setting(points: Sequence[dict[str, Any]], budget: Budget) -> dict[str, Any]:
    """The point the budget picks (module docstring): the most accurate within a latency budget, the fastest
    within an accuracy budget; a latency budget none meets is a one-line error naming the fastest point."""
    meeting = [p for p in points if budget.met_by(p)]
    if budget.kind == "max_miou_drop":  # the default itself meets it
        return min(meeting, key=lambda p: (p["median_ms"], -p["miou"]))
    if not meeting:
        fastest = min(points, key=lambda p: (p["median_ms"], -p["miou"]))
        fail(f"no setting of the {len(points)} measured meets --{budget.kind.replace('_', '-')} {budget.value:g} "
             f"({budget.describe()}); the closest is the fastest, {setting_text(fastest)}: "
             f"{fastest['median_ms']:.2f} ms per run, {fastest['fps']:.1f} images/s, mIoU {fastest['miou']:.2f}; "
             "nothing was written")
    return max(meeting, key=lambda p: (p["miou"], -p["median_ms"]))


def default_output(model_dir: Path) -> Path:
    """Where the tuned copy goes unless told: ``MODEL_tuned`` beside the model dir; for the bundled demo model
    ``demo_model_tuned`` in the current folder (never inside the installed package)."""
    model_dir = Path(model_dir).resolve()
    if model_dir == DEMO_MODEL.resolve():
        return Path.cwd() / f"{model_dir.name}_tuned"
    return model_dir.with_name(f"{model_dir.name}_tuned")


def check_tuned_target(model_dir: Path, output: Path) -> None:
    """Fail (one line, nothing written) unless ``output`` can take the tuned copy of ``model_dir``: not the model
    dir, not inside it, not a folder holding it (replacing it would delete the model), and able to become a model
    dir (``manifest.check_model_dir_target``)."""
    model_dir, output = Path(model_dir).resolve(), Path(output).resolve()
    if output == model_dir or model_dir in output.parents or output in model_dir.parents:
        fail(f"-o {output}: would overwrite the model dir {model_dir}; write the tuned copy to another folder")
    check_model_dir_target(output, "lc-tune")


def tuning_record(result: dict[str, Any], chosen: dict[str, Any], budget: Budget, data: dict[str, Any],
                  precision: str | None = None) -> dict[str, Any]:
    """What the tuned dir's ``lc.json`` records under ``tuning``: the budget, the chosen point, the default it
    replaced, the frontier (each point's ``rho``, ``median_ms``, ``p90_ms``, ``miou``, fastest first: what
    lc-serve ``--target-ms`` and lc-run ``--target-fps`` move along, ``runtime/control.py``; none for a grid over one
    class's threshold, ``tune_class``), how and where it was measured, and when."""
    reference = result["reference"]
    frontier = [{key: point[key] for key in ("rho", "median_ms", "p90_ms", "miou")} for point in result["frontier"]]
    return {
        "budget": budget.record(),
        "chosen": {key: chosen[key] for key in ("rho", "rho_class", "median_ms", "p90_ms", "fps", "miou", "miou_drop",
                                                "stage_fractions")},
        "previous_default": {key: reference[key] for key in ("rho", "rho_class", "median_ms", "fps", "miou")},
        # Only a grid over (ρ₂, ρ₃) is a frontier the controllers can move along: one over ρ_c holds one pair.
        **({} if result["tune_class"] else {"frontier": frontier}),
        "grid": result["grid"], "tune_class": result["tune_class"], "settings": len(result["points"]),
        "data": data, "backend": result["backend"], "precision": precision, "batch": result["batch"],
        "size": result["size"],
        "iters": result["iters"], "timing_images": result["timing_images"], "machine": result["machine"],
        "source": str(Path(result["model"]).resolve()), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "layercascade": __version__,
    }


def write_tuned_dir(model_dir: Path, output: Path, rho: Rho, tuning: dict[str, Any],
                    rho_class: dict[str, float] | None = None) -> Path:
    """Copy the model dir (lc-export's, lc-calibrate's INT8 one, an lc-build engine dir) to ``output`` with ``rho``
    as its ``default_rho``, ``rho_class`` (class name → ρ_c; None or empty: none) as its ``default_rho_class`` and
    the ``tuning`` record in ``lc.json``, written atomically and re-hashed; every other field (an INT8 dir's
    ``quantization`` record, an engine dir's ``engines``) is kept as it is."""
    model_dir = Path(model_dir).resolve()
    check_tuned_target(model_dir, output)
    manifest = read_cascade_manifest(model_dir)
    rho = check_rho(rho)

    def write(staging: Path) -> dict[str, Any]:
        for name in manifest["files"]:
            shutil.copy2(model_dir / name, staging / name)
        kept = {key: value for key, value in manifest.items()
                if key not in ("format", "version", "files", "default_rho_class")}
        return {**kept, "default_rho": list(rho), **({"default_rho_class": rho_class} if rho_class else {}),
                "tuning": tuning}

    return write_model_dir(output, write, "lc-tune")


def plot_frontier(result: dict[str, Any], chosen: dict[str, Any], budget: Budget, path: Path) -> None:
    """mIoU against median latency: every setting, the frontier, the default and the chosen point, the budget's
    line; cropped below at the fastest frontier point's mIoU (every point under it is beaten by that one)."""
    plt = pyplot("the frontier plot (skip it with --no-plot)")
    front, reference = result["frontier"], result["reference"]
    low, high = front[0]["miou"], max(p["miou"] for p in result["points"])
    margin = max(0.2, 0.05 * (high - low))
    points = [p for p in result["points"] if p["miou"] >= low - margin]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    axes.scatter([p["median_ms"] for p in points], [p["miou"] for p in points], s=12, color="0.65",
                 label=f"{'ρ_' + result['tune_class'] if result.get('tune_class') else '(ρ₂, ρ₃)'} measured "
                       "(those below the chart are beaten)")
    axes.step([p["median_ms"] for p in front], [p["miou"] for p in front], "s--", where="post", markersize=3,
              color="tab:orange", label="frontier")
    axes.plot([reference["median_ms"]], [reference["miou"]], "D", color="tab:blue", markersize=7,
              label=f"previous default {setting_text(reference)}")
    axes.plot([chosen["median_ms"]], [chosen["miou"]], "*", color="tab:red", markersize=14,
              label=f"chosen {setting_text(chosen)}")
    if budget.kind == "max_miou_drop":
        axes.axhline(reference["miou"] - budget.value, color="tab:red", linestyle=":", linewidth=1,
                     label=budget.describe())
    else:
        limit = budget.value if budget.kind == "target_ms" else result["batch"] * 1e3 / budget.value
        axes.axvline(limit, color="tab:red", linestyle=":", linewidth=1, label=budget.describe())
        # A budget far beyond every setting would squeeze them into a corner: the line then leaves the chart.
        slowest = max(p["median_ms"] for p in points)
        axes.set_xlim(0, 1.05 * max(slowest, min(limit, 1.5 * slowest)))
    axes.set_ylim(low - margin, high + margin)
    axes.set_xlabel(f"median ms per run (batch {result['batch']})")
    axes.set_ylabel("mIoU (%)")
    axes.set_title(f"lc-tune: {Path(result['model']).name}, {result['size'][0]}×{result['size'][1]}, "
                   f"{result['backend']}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    save_plot(figure, path, "lc-tune")
    plt.close(figure)
