"""The engine directory written by ``lc-build`` and read by the TensorRT backend.

An engine dir holds one serialized TensorRT engine per stage graph (``stage1.engine`` …
``stage3.engine``, and ``dense.engine`` for lc-bench's baseline), ``engines.json`` (how and
where they were built) and an ``lc.json`` that is the source model's manifest with the
engines in place of the ONNX files, so ``Cascade.load(ENGINE_DIR)`` finds classes, sizes,
batch and ρ there. Everything here is pure Python + numpy, testable without TensorRT:
the metadata checks, the optimization-profile arithmetic and the buffer plan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.contract import IMAGE, LABELS, MASKS, RHO, STAGE_COUNTS, STAGE_RHOS
from layercascade.errors import fail
from layercascade.manifest import MANIFEST, check_file_name, read_json, read_manifest, sha256_file, write_model_dir
from layercascade.version import __version__

METADATA = "engines.json"
FORMAT = "layercascade.engines"
# 2: ptx_cuda (the CUDA version the plugin's PTX needs) and each engine's data_dependent_shapes.
VERSION = 2
PRECISIONS = ("fp32", "fp16", "int8")
# Tensors that cross to or from the host in a cascade run; everything else stays on the device.
HOST_INPUTS = (IMAGE, *STAGE_RHOS)
HOST_OUTPUTS = (LABELS, STAGE_COUNTS, *MASKS)
# Stage inputs replaced by a forced mask (lc-bench --active-fraction): stage input → buffer.
FORCED = {mask: f"forced_{mask}" for mask in MASKS}
# In the stage graph contract every tensor leads with the batch, except ρ.
UNBATCHED = (RHO,)


def is_engine_dir(path: str | os.PathLike | None) -> bool:
    """True when ``path`` holds engines from lc-build (its metadata file is there)."""
    return path is not None and (Path(path) / METADATA).is_file()


# -- optimization profiles ----------------------------------------------------------------------
@dataclass(frozen=True)
class BatchRange:
    """Batch sizes an engine accepts: TensorRT's (min, opt, max) of the batch dimension."""

    min: int
    opt: int
    max: int


def batch_range(manifest: dict[str, Any], max_batch: int | None) -> BatchRange:
    """The batch range to build for: a static export's own batch, or 1 … max for a dynamic one.

    ``opt`` is the maximum: lc-bench and batched serving run full batches; batch 1 still runs,
    with kernels timed for the larger batch.
    """
    batch = manifest["batch"]
    if max_batch is not None and max_batch < 1:
        fail(f"--max-batch must be at least 1, got {max_batch}")
    if not batch["dynamic"]:
        size = int(batch["size"])
        if max_batch not in (None, size):
            fail(f"the model was exported for a static batch of {size}; re-export it with "
                 f"lc-export --dynamic-batch {max_batch} to build engines for up to {max_batch} images")
        return BatchRange(size, size, size)
    top = int(max_batch or batch.get("max") or 1)
    return BatchRange(1, top, top)


def profile_shapes(inputs: Sequence[dict[str, Any]], batch: BatchRange) -> dict[str, tuple[list[int], ...]]:
    """(min, opt, max) shapes of each input: a symbolic leading dimension is the batch."""
    shapes = {}
    for spec in inputs:
        dims = spec["shape"]
        if any(isinstance(d, str) for d in dims[1:]):
            fail(f"input {spec['name']!r} has symbolic dimensions {dims}; only the batch may be dynamic")
        if dims and isinstance(dims[0], str):
            shapes[spec["name"]] = tuple([size, *dims[1:]] for size in (batch.min, batch.opt, batch.max))
        else:
            shapes[spec["name"]] = (list(dims),) * 3
    return shapes


# -- buffer plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BufferSpec:
    """One device buffer of a cascade run, sized for the largest batch."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # at the largest batch
    batched: bool  # leading dimension is the batch

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def bytes_for(self, batch: int) -> int:
        """Bytes of the first ``batch`` samples (the whole buffer when not batched)."""
        return self.nbytes // self.shape[0] * batch if self.batched else self.nbytes

    def shape_for(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape[1:]) if self.batched else self.shape


def plan_buffers(stages: Sequence[dict[str, Any]], max_batch: int) -> dict[str, BufferSpec]:
    """One buffer per tensor name across the stages (stage k's output is stage k+1's input), except
    ``rho``: ``rho2`` and ``rho3``; plus the forced-mask buffers; fails on a tensor whose stages disagree about it."""
    plan: dict[str, BufferSpec] = {}
    for stage in stages:
        for spec in [*stage["inputs"], *stage["outputs"]]:
            dims = spec["shape"]
            batched = spec["name"] not in UNBATCHED
            shape = (max_batch, *map(int, dims[1:])) if batched else tuple(map(int, dims))
            buffer = BufferSpec(spec["name"], np.dtype(spec["dtype"]), shape, batched)
            if plan.setdefault(spec["name"], buffer) != buffer:
                fail(f"lc.json: tensor {spec['name']!r} differs between stages ({plan[spec['name']]} vs {buffer}); "
                     "re-export the model")
    if RHO in plan:  # stages 1 and 2 each take their own threshold, both named rho: a buffer each
        threshold = plan.pop(RHO)
        plan.update({name: BufferSpec(name, threshold.dtype, threshold.shape, False) for name in STAGE_RHOS})
    for stage_input, forced in FORCED.items():
        if stage_input in plan:
            plan[forced] = BufferSpec(forced, plan[stage_input].dtype, plan[stage_input].shape, True)
    return plan


def stage_bindings(stages: Sequence[dict[str, Any]], forced: bool) -> list[dict[str, str]]:
    """For each stage, its I/O tensor names → buffer names: stage 1's ``rho`` is ρ₂'s buffer, stage 2's
    ρ₃'s; forced masks feed stages 2–3."""
    bindings = []
    for index, stage in enumerate(stages):
        names = {spec["name"]: spec["name"] for spec in [*stage["inputs"], *stage["outputs"]]}
        if RHO in names:
            names[RHO] = STAGE_RHOS[index]
        if forced and index > 0:
            names.update({name: FORCED[name] for name in FORCED if name in
                          {spec["name"] for spec in stage["inputs"]}})
        bindings.append(names)
    return bindings


# -- metadata -----------------------------------------------------------------------------------
def read_metadata(engine_dir: Path) -> dict[str, Any]:
    """``engines.json`` of an engine dir, checked for shape and the sha256 of every engine."""
    path = engine_dir / METADATA
    rebuild = f"rebuild the engines with lc-build MODEL_DIR -o {engine_dir}"
    if not path.is_file():
        fail(f"{path}: missing; {engine_dir} holds no lc-build engines ({rebuild})")
    metadata = read_json(path, rebuild)
    required = ("precision", "tensorrt", "version_compatible", "gpu", "plugin_sha256", "ptx_cuda", "engines", "model")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or not isinstance(metadata.get("version"), int):
        fail(f"{path}: corrupt engine metadata (not an lc-build record); {rebuild}")
    if metadata["version"] > VERSION:
        fail(f"{path}: engine metadata version {metadata['version']} is newer than this layercascade reads "
             f"({VERSION}); upgrade layercascade")
    if metadata["version"] < VERSION:
        fail(f"{path}: engine metadata version {metadata['version']} is from an older lc-build (it lacks the driver "
             f"the plugin kernels need); {rebuild}")
    if (any(key not in metadata for key in required)
            or not isinstance(metadata["engines"], dict) or not isinstance(metadata["gpu"], dict)
            or not all(isinstance(record, dict) and {"file", "sha256", "onnx", "onnx_sha256",
                                                     "data_dependent_shapes"} <= record.keys()
                       for record in metadata["engines"].values())):
        fail(f"{path}: corrupt engine metadata (not an lc-build record); {rebuild}")
    for record in metadata["engines"].values():
        file = engine_dir / check_file_name(record["file"], path, "an engine's file")
        if not file.is_file() or file.is_symlink():
            fail(f"{file}: missing (listed in {METADATA}); {rebuild}")
        if sha256_file(file) != record["sha256"]:
            fail(f"{file}: sha256 does not match {METADATA}; the engine was changed or damaged, {rebuild}")
    return metadata


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def check_environment(metadata: dict[str, Any], environment: dict[str, Any]) -> list[str]:
    """Fail if the engines cannot run here; return warnings for what runs but was not tuned here.

    ``environment``: ``tensorrt`` (version), ``gpu`` (``name``, ``compute_capability``),
    ``plugin_sha256`` (the installed region-conv plugin's kernel source hash) and ``driver_cuda`` (the
    CUDA version of the driver, as cuda-python reports it).
    """
    built, here = metadata["tensorrt"], environment["tensorrt"]
    rebuild = "rebuild them here with lc-build"
    if metadata["version_compatible"]:
        # Version-compatible plans run on later TensorRT releases of the same major version
        # (TensorRT developer guide, "Version Compatibility").
        if _version_tuple(here)[:1] != _version_tuple(built)[:1] or _version_tuple(here) < _version_tuple(built):
            fail(f"the engines were built (version-compatible) with TensorRT {built}, which TensorRT {here} cannot "
                 f"run (needs the same major version, not older); {rebuild}")
    elif built != here:
        fail(f"the engines were built with TensorRT {built}, this is TensorRT {here}; {rebuild} "
             "(or build with --version-compatible)")
    # The plugin kernels are PTX that the driver compiles when TensorRT loads them; a driver older
    # than the PTX's ISA refuses it (CUDA_ERROR_UNSUPPORTED_PTX_VERSION) inside the first run.
    if metadata["ptx_cuda"] is not None and _version_tuple(environment["driver_cuda"]) < _version_tuple(
            metadata["ptx_cuda"]):
        fail(f"the engines' region-conv kernels are PTX for CUDA {metadata['ptx_cuda']} drivers, this driver "
             f"supports CUDA {environment['driver_cuda']}: update the NVIDIA driver, or {rebuild}")
    gpu, ours = metadata["gpu"], environment["gpu"]
    if gpu.get("compute_capability") != ours["compute_capability"]:
        fail(f"the engines were built for {gpu.get('name')} (compute capability {gpu.get('compute_capability')}), "
             f"this GPU is {ours['name']} ({ours['compute_capability']}); {rebuild}")
    warnings = []
    if gpu.get("name") != ours["name"]:
        warnings.append(f"the engines were built on {gpu.get('name')} and run on {ours['name']} (same compute "
                        "capability, so TensorRT runs them, but their kernels were timed on the other GPU; rebuild "
                        "for best speed)")
    if metadata["plugin_sha256"] is not None and metadata["plugin_sha256"] != environment["plugin_sha256"]:
        fail(f"the engines were built with another region-conv plugin (kernel source sha256 "
             f"{metadata['plugin_sha256'][:12]}…, installed {str(environment['plugin_sha256'])[:12]}…); {rebuild}")
    return warnings


def check_sources(metadata: dict[str, Any], source_manifest: dict[str, Any] | None) -> None:
    """Fail if the model dir the engines were built from has changed its ONNX graphs since.

    ``source_manifest`` is that dir's ``lc.json`` (None when the dir is gone: engines shipped
    on their own are fine).
    """
    if source_manifest is None:
        return
    files = source_manifest.get("files", {})
    for record in metadata["engines"].values():
        if files.get(record["onnx"]) != record["onnx_sha256"]:
            fail(f"the engines are stale: {record['onnx']} in {metadata['model']['dir']} changed since lc-build built "
                 f"{record['file']}; rebuild with lc-build")


# -- writing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Graph:
    """One ONNX graph of a model dir to build: ``stage1`` … ``stage3`` or ``dense``."""

    name: str
    onnx: str  # file name in the model dir
    spec: dict[str, Any]  # its lc.json entry (file, inputs, outputs)

    @property
    def engine(self) -> str:
        return f"{self.name}.engine"


def graphs_of(manifest: dict[str, Any]) -> list[Graph]:
    """The graphs of a model dir, stages first, then the dense baseline."""
    graphs = [Graph(f"stage{k + 1}", stage["file"], stage) for k, stage in enumerate(manifest["stages"])]
    return [*graphs, Graph("dense", manifest["dense"]["file"], manifest["dense"])]


@dataclass
class BuiltEngine:
    """What a builder returns for one graph: the serialized plan and the ONNX it parsed."""

    plan: Any  # bytes or a buffer (TensorRT's IHostMemory)
    built_onnx_sha256: str  # of the graph TensorRT parsed (after fp16 conversion)
    data_dependent_shapes: bool  # the graph has ops whose output shape depends on values (never CUDA-graph captured)


def check_output_dir(output_dir: str | os.PathLike, model_dir: str | os.PathLike) -> Path:
    """The resolved engine dir; never the model dir or another export (lc-build replaces the folder)."""
    output_dir = Path(output_dir).resolve()
    if output_dir == Path(model_dir).resolve() or ((output_dir / MANIFEST).is_file() and not is_engine_dir(output_dir)):
        fail(f"{output_dir}: holds an exported model, not engines; choose another -o for the engines")
    if output_dir.exists() and not output_dir.is_dir():
        fail(f"{output_dir}: exists and is not a folder; choose another -o for the engines")
    if output_dir.is_dir() and not is_engine_dir(output_dir) and any(output_dir.iterdir()):
        fail(f"{output_dir}: exists and holds other files; choose an empty or new folder for -o")
    return output_dir


def write_engine_dir(output_dir: Path, model_dir: Path, manifest: dict[str, Any],
                     build: Callable[[Graph], BuiltEngine], settings: dict[str, Any],
                     on_built: Callable[[Graph, int], None] = lambda graph, size: None) -> Path:
    """Build every graph with ``build`` straight into a staging folder that replaces ``output_dir``
    only when complete (nothing is left behind when a build fails).

    ``settings``: ``precision``, ``tensorrt``, ``gpu``, ``plugin_sha256``, ``ptx_cuda`` (the CUDA version
    the plugin's PTX needs, None without the plugin), ``batch`` (:class:`BatchRange`),
    ``version_compatible``, ``workspace_gib``.
    """
    output_dir, model_dir = check_output_dir(output_dir, model_dir), Path(model_dir).resolve()
    batch: BatchRange = settings["batch"]

    def write(staging: Path) -> dict[str, Any]:
        records = {}
        for graph in graphs_of(manifest):
            built = build(graph)
            with open(staging / graph.engine, "wb") as handle:
                handle.write(built.plan)
            size = (staging / graph.engine).stat().st_size
            on_built(graph, size)
            shapes = profile_shapes(graph.spec["inputs"], batch)
            records[graph.name] = {
                "file": graph.engine, "sha256": sha256_file(staging / graph.engine), "bytes": size,
                "onnx": graph.onnx, "onnx_sha256": manifest["files"][graph.onnx],
                "built_onnx_sha256": built.built_onnx_sha256, "data_dependent_shapes": built.data_dependent_shapes,
                "inputs": [{**spec, "profile": dict(zip(("min", "opt", "max"), shapes[spec["name"]]))}
                           for spec in graph.spec["inputs"]],
                "outputs": graph.spec["outputs"],
            }
        metadata = {
            "format": FORMAT, "version": VERSION,
            "precision": settings["precision"], "tensorrt": settings["tensorrt"], "gpu": settings["gpu"],
            "version_compatible": settings["version_compatible"], "plugin_sha256": settings["plugin_sha256"],
            "ptx_cuda": settings["ptx_cuda"],
            "batch": vars(batch), "workspace_gib": settings.get("workspace_gib"),
            "model": {"dir": str(model_dir), "manifest_sha256": sha256_file(model_dir / MANIFEST)},
            "engines": records, "tools": {"layercascade": __version__},
        }
        (staging / METADATA).write_text(json.dumps(metadata, indent=1) + "\n")
        runtime_manifest = {key: value for key, value in manifest.items() if key not in ("format", "version", "files")}
        runtime_manifest["stages"] = [{**stage, "file": f"stage{k + 1}.engine"} for k, stage in enumerate(manifest["stages"])]
        runtime_manifest["dense"] = {**manifest["dense"], "file": "dense.engine"}
        runtime_manifest["engines"] = {"metadata": METADATA, "precision": settings["precision"]}
        return runtime_manifest

    return write_model_dir(output_dir, write, "lc-build")


def read_source_manifest(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The ``lc.json`` of the model dir the engines came from, or None when that dir is gone."""
    source = Path(metadata["model"]["dir"])
    if not (source / MANIFEST).is_file():
        return None
    return read_manifest(source, verify=False)
