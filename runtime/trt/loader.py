"""TensorRT backend, the loader: check an lc-build engine dir against this machine, then
register the plugin and deserialize the stage engines.

Written against NVIDIA's documented Python APIs (TensorRT ≥ 10.9 / 11.x); nothing here has run
on a real TensorRT yet (docs/build.md).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from layercascade.errors import fail
from layercascade.manifest import MANIFEST, check_cascade_fields, read_manifest
from layercascade.plugins.nvidia import create_trt, driver_cuda_version, gpu_info, import_cudart, import_tensorrt
from layercascade.plugins.trt_plugin import plugin_source_sha256, register_plugins
from layercascade.runtime.trt.engines import (
    METADATA,
    check_environment,
    check_sources,
    engine_sizes,
    read_metadata,
    read_source_manifest,
)
from layercascade.runtime.trt.runner import TrtBackend, deserialize

WHO = "the TensorRT backend"


def load(engine_dir: str | Path | None, device: str = "cuda", lower: bool = True, threads: int = 0,
         precision: str | None = None, cuda_graph: bool = False) -> tuple[Path, dict[str, Any], TrtBackend]:
    """``Cascade.load(..., backend="trt")``: (engine dir, its manifest, the backend).

    Order: engine metadata (missing / corrupt / damaged engines, image sizes as lc.json's) → TensorRT (≥ the floor) and
    cuda-python present → a GPU → TensorRT version, GPU, a driver that loads the plugin's PTX and
    the plugin hash as built → source ONNX unchanged
    → register the plugin → deserialize. Each failure is one line. TensorRT engines run on the
    current CUDA device with the precision they were built with; ``lower`` and ``threads`` do
    not apply to them.
    """
    del device, lower, threads
    if engine_dir is None:
        fail("the trt backend runs engines built by lc-build: lc-build MODEL_DIR --precision fp16 -o ENGINES, "
             "then pass ENGINES (lc-run --model ENGINES)")
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        fail(f"{engine_dir}: no such engine directory (build one with lc-build MODEL_DIR -o {engine_dir})")
    metadata = read_metadata(engine_dir)
    if precision is not None and precision != metadata["precision"]:
        fail(f"{engine_dir}: the engines are {metadata['precision']} (TensorRT engines carry the precision they were "
             f"built with); build {precision} ones with lc-build --precision {precision}")
    # read_metadata has hashed the engines it lists; lc.json's graphs must be exactly those (an engine it does not
    # list would be deserialized unhashed), and the fields are checked before any engine is loaded.
    manifest = check_cascade_fields(read_manifest(engine_dir, verify=False), engine_dir / MANIFEST)
    listed = {record["file"] for record in metadata["engines"].values()}
    named = {entry["file"] for entry in [*manifest["stages"], *([manifest["dense"]] if "dense" in manifest else [])]}
    if named != listed:
        fail(f"{engine_dir / MANIFEST}: its engines {sorted(named)} are not the ones {METADATA} hashed "
             f"{sorted(listed)}; rebuild the engines with lc-build")
    sizes = engine_sizes(metadata, manifest, engine_dir)
    trt = import_tensorrt(WHO)
    cudart = import_cudart(WHO)
    gpu = gpu_info(WHO)
    with_plugin = metadata["plugin_sha256"] is not None
    for warning in check_environment(metadata, {"tensorrt": trt.__version__, "gpu": gpu,
                                                "plugin_sha256": plugin_source_sha256() if with_plugin else None,
                                                "driver_cuda": driver_cuda_version(WHO)}):
        warnings.warn(warning, stacklevel=1)
    check_sources(metadata, read_source_manifest(metadata))
    if with_plugin:
        register_plugins()  # before deserializing: the stage 2–3 engines hold lc::RegionConv
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = create_trt(trt, "Runtime", logger, WHO)
    if metadata["version_compatible"]:
        # A version-compatible plan embeds its lean runtime: host code TensorRT must be
        # allowed to load (TensorRT developer guide, "Version Compatibility").
        runtime.engine_host_code_allowed = True
    engines = [deserialize(runtime, engine_dir / stage["file"]) for stage in manifest["stages"]]
    backend = TrtBackend(engine_dir, manifest, metadata, trt, cudart, gpu, (runtime, logger), engines, cuda_graph,
                         sizes)
    return engine_dir, manifest, backend
