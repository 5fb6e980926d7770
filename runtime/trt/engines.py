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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.contract import (
    CONFIDENCE,
    DYNAMIC_DIMS,
    DYNAMIC_STAGE_DIMS,
    IMAGE,
    LABELS,
    MASKS,
    RHO,
    STAGE_COUNTS,
    STAGE_RHOS,
)
from layercascade.errors import fail
from layercascade.manifest import (
    MANIFEST,
    MAX_BATCH,
    check_file_name,
    read_json,
    read_manifest,
    sha256_file,
    write_model_dir,
)
from layercascade.model.data.placement import SCALE
from layercascade.version import __version__

METADATA = "engines.json"
FORMAT = "layercascade.engines"
# 2: ptx_cuda (the CUDA version the plugin's PTX needs) and each engine's data_dependent_shapes.
# 3: size, the image sizes of a dynamic-size export's optimization profile (version 2 records are all fixed-size
# exports, read as such).
VERSION = 3
OLDEST = 2
PRECISIONS = ("fp32", "fp16", "int8")
# Tensors that cross to or from the host in a cascade run; everything else stays on the device. ``confidence``
# only where the export has it (lc.json version 3 on).
HOST_INPUTS = (IMAGE, *STAGE_RHOS)
HOST_OUTPUTS = (LABELS, STAGE_COUNTS, CONFIDENCE, *MASKS)
# Stage inputs replaced by a forced mask (lc-bench --active-fraction): stage input → buffer.
FORCED = {mask: f"forced_{mask}" for mask in MASKS}


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


Size = tuple[int, int]  # (height, width) of the image


# The sizes a dynamic-size export takes are multiples of 8 (lc.json's dynamic_size "multiple"), and its stage
# tensors are an eighth of the image (contract.DYNAMIC_STAGE_DIMS = DYNAMIC_DIMS / 8): placement's SCALE.
MULTIPLE = SCALE
# Symbolic dimension of the stage graph contract → (axis of the image size, divisor).
SPATIAL_DIMS = {DYNAMIC_DIMS[0]: (0, 1), DYNAMIC_DIMS[1]: (1, 1),
                DYNAMIC_STAGE_DIMS[0]: (0, MULTIPLE), DYNAMIC_STAGE_DIMS[1]: (1, MULTIPLE)}


def size_text(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass(frozen=True)
class SizeRange:
    """Image sizes (H, W) an engine accepts: TensorRT's (min, opt, max) of the image's height and width, and of
    the stage tensors' (an eighth of them). Built only for a dynamic-size export (lc-export --dynamic-size)."""

    min: Size
    opt: Size
    max: Size

    def __contains__(self, size: Size) -> bool:
        return all(low <= n <= high and n % MULTIPLE == 0 for n, low, high in zip(size, self.min, self.max))

    def text(self) -> str:
        return ":".join(size_text(size) for size in (self.min, self.opt, self.max))

    def record(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def size_range(manifest: dict[str, Any], shapes: Sequence[Size] | None) -> SizeRange | None:
    """The image sizes to build for (``lc-build --shapes MIN:OPT:MAX``), or None for a fixed-size export.

    A dynamic-size export defaults to its own bounds with its nominal input size as ``opt`` (what lc-bench
    times and ``fit`` aims at); given sizes must be multiples of 8, ordered, and within the export's bounds.
    A fixed-size export takes only its own size.
    """
    dynamic = manifest.get("dynamic_size")
    nominal = tuple(manifest["input_size"])
    if dynamic is None:
        if shapes is not None and any(tuple(size) != nominal for size in shapes):
            fail(f"--shapes {':'.join(size_text(s) for s in shapes)}: the model was exported at a fixed "
                 f"{size_text(nominal)}; re-export it with lc-export --dynamic-size to build engines for other sizes")
        return None
    low, high = tuple(dynamic["min"]), tuple(dynamic["max"])
    if shapes is None:
        return SizeRange(low, nominal, high)
    if len(shapes) != 3:
        fail(f"--shapes takes MINxMIN:OPTxOPT:MAXxMAX (three sizes), got {len(shapes)}")
    given = SizeRange(*(tuple(int(n) for n in size) for size in shapes))
    text = f"--shapes {given.text()}"
    if any(n % MULTIPLE for size in (given.min, given.opt, given.max) for n in size):
        fail(f"{text}: every height and width must be a multiple of {MULTIPLE} (the stage resolution is an "
             "eighth of the image's)")
    if not all(a <= b <= c for a, b, c in zip(given.min, given.opt, given.max)):
        fail(f"{text}: need MIN <= OPT <= MAX in height and in width")
    if not all(low[k] <= given.min[k] and given.max[k] <= high[k] for k in (0, 1)):
        fail(f"{text}: outside the sizes the model was exported for ({size_text(low)} to {size_text(high)}, "
             "lc-export --dynamic-size); choose sizes within them, or re-export with wider bounds")
    return given


def concrete_shape(name: str, dims: Sequence[int | str], batch: int | None, size: Size | None) -> tuple[int, ...]:
    """``dims`` of tensor ``name`` as lc.json lists them, with its symbols filled in: a symbolic leading dimension
    is the batch, ``height``/``width`` the image's (``size``), ``stage_height``/``stage_width`` an eighth of it."""
    shape = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int):
            shape.append(dim)
        elif axis == 0 and batch is not None and dim not in SPATIAL_DIMS:
            shape.append(batch)
        elif dim in SPATIAL_DIMS and size is not None:
            index, divisor = SPATIAL_DIMS[dim]
            shape.append(size[index] // divisor)
        else:
            fail(f"tensor {name!r} has the symbolic dimension {dim!r} ({list(dims)}), which no optimization "
                 "profile covers (only the batch and the stage contract's image and stage sizes are dynamic); "
                 "re-export the model with lc-export")
    return tuple(shape)


def profile_shapes(inputs: Sequence[dict[str, Any]], batch: BatchRange,
                   size: SizeRange | None = None) -> dict[str, tuple[list[int], ...]]:
    """(min, opt, max) shapes of each input: a symbolic leading dimension is the batch, the symbolic image and
    stage sizes follow ``size``."""
    shapes = {}
    for spec in inputs:
        sizes = (size.min, size.opt, size.max) if size is not None else (None,) * 3
        shapes[spec["name"]] = tuple(list(concrete_shape(spec["name"], spec["shape"], n, s))
                                     for n, s in zip((batch.min, batch.opt, batch.max), sizes))
    return shapes


def engine_sizes(metadata: dict[str, Any], manifest: dict[str, Any], where: Path) -> SizeRange | None:
    """The image sizes the engines were built for (``engines.json`` ``size``; None: the export's fixed size),
    checked against the engine dir's ``lc.json``, whose ``dynamic_size`` lc-build wrote as the same bounds (so
    :class:`~layercascade.runtime.cascade.Cascade` pads and tiles images to sizes the engines take)."""
    record, dynamic = metadata.get("size"), manifest.get("dynamic_size")
    rebuild = f"{where}: engines.json and lc.json disagree about the image sizes; rebuild the engines with lc-build"
    if record is None and dynamic is None:
        return None
    if not (isinstance(record, dict) and isinstance(dynamic, dict)
            and [record.get("min"), record.get("max")] == [dynamic["min"], dynamic["max"]]
            and isinstance(record.get("opt"), list) and len(record["opt"]) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in record["opt"])):
        fail(rebuild)
    sizes = SizeRange(tuple(record["min"]), tuple(record["opt"]), tuple(record["max"]))
    if sizes.opt not in sizes:
        fail(rebuild)
    return sizes


# -- buffer plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BufferSpec:
    """One device buffer of a cascade run, sized for the largest batch and image size; a run uses its first
    :meth:`bytes_for` bytes, holding the tensor at that run's shape."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str, ...]  # as lc.json lists them (symbolic batch and sizes)
    shape: tuple[int, ...]  # at the largest batch and size

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def shape_for(self, batch: int, size: Size | None = None) -> tuple[int, ...]:
        return concrete_shape(self.name, self.dims, batch, size)

    def bytes_for(self, batch: int, size: Size | None = None) -> int:
        return int(np.prod(self.shape_for(batch, size), dtype=np.int64)) * self.dtype.itemsize


def plan_buffers(stages: Sequence[dict[str, Any]], max_batch: int, max_size: Size | None = None) -> dict[str, BufferSpec]:
    """One buffer per tensor name across the stages (stage k's output is stage k+1's input), except
    ``rho``: ``rho2`` and ``rho3``; plus the forced-mask buffers; fails on a tensor whose stages disagree about it.

    Every buffer holds its tensor at ``max_batch`` and (a dynamic-size export) ``max_size``, the largest the
    engines' optimization profile takes: allocated once, so the addresses bound to the engines (and captured in
    CUDA graphs) never change, and device memory is bounded by the profile's maximum."""
    plan: dict[str, BufferSpec] = {}
    for stage in stages:
        for spec in [*stage["inputs"], *stage["outputs"]]:
            dims = tuple(spec["shape"])
            buffer = BufferSpec(spec["name"], np.dtype(spec["dtype"]), dims,
                                concrete_shape(spec["name"], dims, max_batch, max_size))
            if plan.setdefault(spec["name"], buffer) != buffer:
                fail(f"lc.json: tensor {spec['name']!r} differs between stages ({plan[spec['name']]} vs {buffer}); "
                     "re-export the model")
    if RHO in plan:  # stages 1 and 2 each take their own threshold, both named rho: a buffer each
        threshold = plan.pop(RHO)
        plan.update({name: replace(threshold, name=name) for name in STAGE_RHOS})
    for stage_input, forced in FORCED.items():
        if stage_input in plan:
            plan[forced] = replace(plan[stage_input], name=forced)
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
    if metadata["version"] < OLDEST:
        fail(f"{path}: engine metadata version {metadata['version']} is from an older lc-build (it lacks the driver "
             f"the plugin kernels need); {rebuild}")
    batch = metadata.get("batch")
    if (any(key not in metadata for key in required)
            or not (isinstance(batch, dict) and all(_batch_size(batch.get(k)) for k in ("min", "opt", "max"))
                    and batch["min"] <= batch["opt"] <= batch["max"])
            or not isinstance(metadata["engines"], dict) or not isinstance(metadata["gpu"], dict)
            or not (metadata["ptx_cuda"] is None or isinstance(metadata["ptx_cuda"], str)
                    and re.fullmatch(r"\d+\.\d+", metadata["ptx_cuda"]))
            or not all(isinstance(record, dict) and {"file", "sha256", "onnx", "onnx_sha256",
                                                     "data_dependent_shapes"} <= record.keys()
                       and isinstance(record["data_dependent_shapes"], bool)
                       for record in metadata["engines"].values())):
        fail(f"{path}: corrupt engine metadata (not an lc-build record); {rebuild}")
    for record in metadata["engines"].values():
        file = engine_dir / check_file_name(record["file"], path, "an engine's file")
        if not file.is_file() or file.is_symlink():
            fail(f"{file}: missing (listed in {METADATA}); {rebuild}")
        if sha256_file(file) != record["sha256"]:
            fail(f"{file}: sha256 does not match {METADATA}; the engine was changed or damaged, {rebuild}")
    return metadata


def _batch_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BATCH


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
    the plugin's PTX needs, None without the plugin), ``batch`` (:class:`BatchRange`), ``size``
    (:class:`SizeRange`, None or absent for a fixed-size export), ``version_compatible``, ``workspace_gib``.

    The engine dir's ``lc.json`` of a dynamic-size export takes the built sizes as its own: ``dynamic_size``
    is the profile's min and max, ``input_size`` its opt, so the runtime pads, tiles and times images at
    sizes the engines take.
    """
    output_dir, model_dir = check_output_dir(output_dir, model_dir), Path(model_dir).resolve()
    batch: BatchRange = settings["batch"]
    sizes: SizeRange | None = settings.get("size")

    def write(staging: Path) -> dict[str, Any]:
        records = {}
        for graph in graphs_of(manifest):
            built = build(graph)
            with open(staging / graph.engine, "wb") as handle:
                handle.write(built.plan)
            size = (staging / graph.engine).stat().st_size
            on_built(graph, size)
            shapes = profile_shapes(graph.spec["inputs"], batch, sizes)
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
            "batch": vars(batch), "size": sizes.record() if sizes is not None else None,
            "workspace_gib": settings.get("workspace_gib"),
            "model": {"dir": str(model_dir), "manifest_sha256": sha256_file(model_dir / MANIFEST)},
            "engines": records, "tools": {"layercascade": __version__},
        }
        (staging / METADATA).write_text(json.dumps(metadata, indent=1) + "\n")
        runtime_manifest = {key: value for key, value in manifest.items() if key not in ("format", "version", "files")}
        runtime_manifest["stages"] = [{**stage, "file": f"stage{k + 1}.engine"} for k, stage in enumerate(manifest["stages"])]
        runtime_manifest["dense"] = {**manifest["dense"], "file": "dense.engine"}
        runtime_manifest["engines"] = {"metadata": METADATA, "precision": settings["precision"]}
        if sizes is not None:
            runtime_manifest["dynamic_size"] = {"min": list(sizes.min), "max": list(sizes.max), "multiple": MULTIPLE}
            runtime_manifest["input_size"] = list(sizes.opt)
            runtime_manifest["stage_size"] = [n // MULTIPLE for n in sizes.opt]
        return runtime_manifest

    return write_model_dir(output_dir, write, "lc-build")


def read_source_manifest(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The ``lc.json`` of the model dir the engines came from, or None when that dir is gone."""
    source = Path(metadata["model"]["dir"])
    if not (source / MANIFEST).is_file():
        return None
    return read_manifest(source, verify=False)
