"""Calibrate an fp32 model dir into an INT8 one: statistics (cached), QDQ graphs, ``lc.json`` record."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.calibration.quantize import quantize_graph
from layercascade.calibration.statistics import METHODS, Statistics, collect, float_convs, graph_files
from layercascade.contract import RhoLike, check_rho, rho_or_default, rho_value
from layercascade.errors import fail
from layercascade.export.graph import load_onnx
from layercascade.export.session import import_onnxruntime
from layercascade.manifest import check_model_dir_target, model_hash, read_cascade_manifest, write_model_dir
from layercascade.model.data.placement import Sizes, pad_colour, place, to_input

# The fields of the statistics' ``meta`` that must match for a cached file to be reused.
CACHE_KEY_FIELDS = ("model", "data", "split", "seed", "limit", "images", "rho", "cascade_aware")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "layercascade" / "calibration"


def calibration_images(dataset: Any, size: tuple[int, int], batch: int, mean: list[float]) -> Iterator[np.ndarray]:
    """The images of ``dataset`` as (batch, H, W, 3) uint8 arrays at the model's (nominal) input size, placed as a
    fixed-size export runs them by default (``fit``: aspect ratio kept, padded with the ``mean`` colour).

    A static batch above 1 is filled up at the end with the first images again.
    """
    count = -(-len(dataset) // batch) * batch
    images = []
    sizes, colour = Sizes(size), pad_colour(mean)
    for index in range(count):
        image, _ = dataset[index % len(dataset)]
        images.append(to_input(image, place(image.shape[:2], sizes, "fit"), colour))
        if len(images) == batch:
            yield np.stack(images)
            images = []


def load_statistics(model_dir: Path, manifest: dict[str, Any], dataset: Any, meta: dict[str, Any], cache: Path,
                    progress: bool) -> tuple[Statistics, bool]:
    """The statistics of ``meta`` from ``cache`` when it holds them, else collected and written there."""
    if cache.exists():
        statistics = Statistics.load(cache)
        if statistics.meta.get("model") != meta["model"]:
            fail(f"{cache}: statistics of another model (model hash {str(statistics.meta.get('model'))[:12]}…, "
                 f"this one {meta['model'][:12]}…); delete the file or choose another --cache")
        differing = [k for k in CACHE_KEY_FIELDS if statistics.meta.get(k) != meta[k]]
        if differing:
            fail(f"{cache}: statistics collected with other settings ({', '.join(differing)} differ); "
                 "delete the file or choose another --cache")
        return statistics, True
    batch = 1 if manifest["batch"]["dynamic"] else int(manifest["batch"]["size"])
    images = calibration_images(dataset, tuple(manifest["input_size"]), batch, manifest["mean"])
    statistics = collect(model_dir, manifest, images, -(-len(dataset) // batch), check_rho(meta["rho"]),
                         meta["cascade_aware"], meta, progress)
    statistics.save(cache)
    return statistics, False


def calibrate(model_dir: Path, output: Path, data: str = "synthetic", split: str = "train", seed: int = 0,
              limit: int | None = None, method: str = "percentile", rho: RhoLike | None = None,
              cascade_aware: bool = True, cache: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the INT8 model dir ``output`` for the fp32 ``model_dir``; returns its ``quantization`` record.

    Args:
        data, split, seed, limit: the calibration images (``open_dataset`` spec).
        method: "minmax", "percentile" or "entropy" (activation ranges; weights are always min-max).
        rho: calibration ρ deciding which pixels reach stages 2–3: one for both, or (ρ₂, ρ₃) (default: the
            model's). Recorded as reports write it (``contract.rho_value``), so one ρ keys caches as before.
        cascade_aware: stage 2–3 statistics from the pixels that reach them (False: all pixels).
        cache: statistics file (default: one per model, data and ρ under ``default_cache_dir()``).
    """
    import onnx

    from layercascade.model.data import open_dataset

    if method not in METHODS:
        fail(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    manifest = read_cascade_manifest(model_dir)
    if "quantization" in manifest:
        record = manifest["quantization"]
        fail(f"{model_dir}: already an INT8 model ({record.get('method')} calibration on {record.get('data')}); "
             "calibrate the fp32 model dir it came from")
    if output.resolve() == model_dir.resolve():
        fail(f"-o {output}: is the model dir itself; write the INT8 model to another directory")
    check_model_dir_target(output.resolve(), "lc-calibrate")  # before minutes of statistics, not after
    dataset = open_dataset(data, split, seed=seed, limit=limit)
    if len(dataset) == 0:
        fail(f"no calibration images in {data!r} split {split!r}; point --data at a data set with images")
    if len(dataset.classes) != len(manifest["classes"]):
        fail(f"calibration data {data!r} has {len(dataset.classes)} classes, the model {len(manifest['classes'])}: "
             "calibrate on images of the kind the model was trained on")
    meta = {"model": model_hash(manifest), "data": data, "split": split, "seed": seed, "limit": limit,
            "images": len(dataset), "rho": rho_value(rho_or_default(rho, manifest["default_rho"])),
            "cascade_aware": cascade_aware}
    if cache is None:
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
        cache = default_cache_dir() / f"{key}.npz"
    statistics, reused = load_statistics(model_dir, manifest, dataset, meta, cache, progress)
    models = {name: load_onnx(model_dir / name) for name in graph_files(manifest)}
    record = {
        "precision": "int8",
        "method": method,
        "data": data, "split": split, "seed": seed, "images": len(dataset),
        "rho": meta["rho"],
        "cascade_aware": cascade_aware,
        "statistics_sha256": statistics.digest(),
        "weights": "int8, symmetric, per output channel",
        "activations": "int8, symmetric, per tensor",
        "float_convs": sorted({name for model in models.values() for name in float_convs(model)}),
        "source_model_sha256": meta["model"],
        "source": str(model_dir.resolve()),  # lc-bench --compare finds the fp32 model here
        "onnxruntime": import_onnxruntime().__version__,
    }

    def write(staging: Path) -> dict[str, Any]:
        for name, model in models.items():
            onnx.save(quantize_graph(model, statistics.ranges(method, name)), str(staging / name))
        kept = {k: v for k, v in manifest.items() if k not in ("format", "version", "files")}
        return {**kept, "quantization": record}

    write_model_dir(output, write, "lc-calibrate")
    return {**record, "statistics_cache": str(cache), "statistics_reused": reused}
