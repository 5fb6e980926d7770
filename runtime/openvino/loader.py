"""The OpenVINO backend's loader: a model dir into a backend, each graph into a compiled model.

OpenVINO takes the graphs ONNX Runtime takes: the three stage graphs joined into one
(``export/cascade_graph.py``) with RegionConv lowered to row form (``export/lowering.py``), INT8
dirs in their QDQ form (OpenVINO fuses Q/DQ into its int8 kernels itself).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from layercascade.contract import DYNAMIC_DIMS, DYNAMIC_STAGE_DIMS
from layercascade.errors import fail
from layercascade.export.graph import load_onnx
from layercascade.manifest import read_cascade_manifest
from layercascade.model.data.placement import SCALE
from layercascade.runtime.backend import BackendCannotRun, dense_file, lowered_graph, model_precision
from layercascade.runtime.inputs import DEMO_MODEL
from layercascade.runtime.openvino.layout import openvino_layouts
from layercascade.runtime.openvino.runner import OvRunner, SizedRunner

if TYPE_CHECKING:
    from layercascade.runtime.openvino.backend import OvBackend

# --precision → OpenVINO's inference precision for the float parts of the graph (None: its default,
# bf16 on CPUs with native bf16, fp32 elsewhere). "int8" takes an INT8 dir and leaves the rest at
# the default.
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": None, None: None}
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
# The symbolic dimensions of a dynamic-size export's graph inputs: the image's height and width, the stage maps'.
SIZE_DIMS = (*DYNAMIC_DIMS, *DYNAMIC_STAGE_DIMS)
INSTALL = "pip install 'layercascade[cpu]' (or pip install openvino)"


def import_openvino() -> Any:
    """The ``openvino`` module, or one line saying how to install it."""
    try:
        import openvino
    except ImportError as error:
        raise BackendCannotRun(f"the openvino backend needs OpenVINO, which is not installed ({error}): "
                               f"{INSTALL}") from None
    return openvino


def openvino_version() -> str:
    """OpenVINO's release (``openvino.__version__`` carries the build hash too)."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return import_openvino().__version__.split("-")[0]


@cache
def core() -> Any:
    """The process's one ``openvino.Core`` (it holds the plugins; creating one costs ~50 ms)."""
    return import_openvino().Core()


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can compute natively here: e.g. FP32, BF16, INT8."""
    return list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_config(precision: str | None = None, threads: int = 0, performance_hint: str = "latency") -> dict[str, Any]:
    """The CPU plugin's settings for ``precision`` (see INFERENCE_PRECISIONS), threads (0: OpenVINO's
    choice) and the performance hint; bf16 where the CPU has no native bf16 is one line."""
    if precision not in INFERENCE_PRECISIONS:
        fail(f"--precision {precision}: the openvino backend runs fp32, bf16 or int8 (an INT8 dir)")
    if performance_hint not in PERFORMANCE_HINTS:
        fail(f"--performance-hint {performance_hint}: choose {' or '.join(PERFORMANCE_HINTS)}")
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        fail("--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX); OpenVINO would emulate it "
             "slowly, use fp32")
    config: dict[str, Any] = {"PERFORMANCE_HINT": PERFORMANCE_HINTS[performance_hint]}
    if INFERENCE_PRECISIONS[precision] is not None:
        config["INFERENCE_PRECISION_HINT"] = INFERENCE_PRECISIONS[precision]
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def compile_graph(model: onnx.ModelProto | Path, label: str, config: dict[str, Any], lower: bool = False,
                  layouts: bool = False, nominal: tuple[int, int] | None = None) -> OvRunner | SizedRunner:
    """An :class:`OvRunner` of ``model`` (an ONNX model or file; ``lower``: RegionConv in row form first;
    ``layouts``: then the layout rewrites of ``layout.py``); OpenVINO's errors become one line naming
    ``label`` with its first line whole.

    ``nominal``: the input size (H, W) of a dynamic-size export, whose graphs' height and width are symbolic: then
    a :class:`SizedRunner` that compiles the graph for each size it runs at, for ``nominal`` at once.
    """
    if isinstance(model, Path):
        model = load_onnx(model)
    if lower:
        model, _ = lowered_graph(model, Path(label).name)
    if layouts:
        model = openvino_layouts(model)
    read = openvino_call(label, lambda: core().read_model(model.SerializeToString()))
    # Only the names are kept of the ONNX graph (not a second copy of its weights beside OpenVINO's).
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    sized = sized_axes(model)
    if nominal is None or not sized:
        return compiled_runner(read, names, label, config)
    return SizedRunner(functools.partial(compile_sized, read, names, label, config, sized), sized, implied_dimensions,
                       label, size_dimensions(nominal))


def openvino_call(label: str, call: Callable[[], Any]) -> Any:
    """``call()``, OpenVINO's errors as one line naming ``label``."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - OpenVINO reports every failure as RuntimeError or its own types
        raise BackendCannotRun(f"{label}: OpenVINO cannot compile it ({openvino_reason(error)})") from None


def compiled_runner(read: Any, names: tuple[list[str], list[str]], label: str, config: dict[str, Any]) -> OvRunner:
    """An :class:`OvRunner` of ``read`` (an ONNX graph with these input and output ``names`` as OpenVINO read it)
    compiled for the CPU with ``config``."""
    compiled = openvino_call(label, lambda: core().compile_model(read, "CPU", config))
    # OpenVINO drops inputs nothing reads (ρ, with forced masks); a port may carry other names as well.
    taken = {name for port in compiled.inputs for name in port.get_names()}
    inputs, outputs = names
    return OvRunner(compiled, label, [name for name in inputs if name in taken], outputs)


def sized_axes(model: onnx.ModelProto) -> list[tuple[str, int, str]]:
    """(input, axis, dimension name) of every input axis of ``model`` named as a symbolic image or stage size
    (``contract.DYNAMIC_DIMS``, ``DYNAMIC_STAGE_DIMS``): those of a dynamic-size export."""
    return [(tensor.name, axis, dim.dim_param) for tensor in model.graph.input
            for axis, dim in enumerate(tensor.type.tensor_type.shape.dim) if dim.dim_param in SIZE_DIMS]


def size_dimensions(size: tuple[int, int]) -> dict[str, int]:
    """The symbolic size dimensions of a dynamic-size export's graphs for an input of ``size`` (H, W)."""
    height, width = size
    return dict(zip(SIZE_DIMS, (height, width, height // SCALE, width // SCALE)))


def implied_dimensions(dims: dict[str, int]) -> dict[str, int]:
    """The size dimensions that follow from ``dims``: with the image's height and width, all of them."""
    height, width = DYNAMIC_DIMS
    return size_dimensions((dims[height], dims[width])) if height in dims and width in dims else {}


def compile_sized(read: Any, names: tuple[list[str], list[str]], label: str, config: dict[str, Any],
                  sized: list[tuple[str, int, str]], dims: dict[str, int]) -> OvRunner:
    """``read`` (:func:`compiled_runner`'s) reshaped to ``dims`` (each of the ``sized`` input axes set to its
    dimension's value; the batch axis stays as it is) and compiled."""
    ov = import_openvino()
    shapes: dict[str, list[Any]] = {}
    for name, axis, dim in sized:
        shapes.setdefault(name, list(read.input(name).get_partial_shape()))[axis] = ov.Dimension(dims[dim])
    label = f"{label} at " + ", ".join(f"{name} {value}" for name, value in dims.items())
    reshaped = read.clone()
    openvino_call(label, lambda: reshaped.reshape({name: ov.PartialShape(shape) for name, shape in shapes.items()}))
    return compiled_runner(reshaped, names, label, config)


def openvino_reason(error: Exception) -> str:
    """The informative part of an OpenVINO error, on one line: its conversion summary ("No conversion
    rule found for operations: …") when there is one, else its first line that is not a source location."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Summary:" in lines:
        summary = [line.removeprefix("-- ") for line in lines[lines.index("Summary:") + 1:] if line.startswith("--")]
        if summary:
            return "; ".join(summary)
    plain = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (plain or lines or [type(error).__name__])[0]


def load(model_dir: str | Path | None, device: str = "cpu", lower: bool = True, threads: int = 0,
         precision: str | None = None, performance_hint: str = "latency") -> tuple[Path, dict[str, Any], OvBackend]:
    """``Cascade.load(..., backend="openvino")``: (model dir, its verified manifest, the backend);
    ``None`` is the bundled demo model."""
    from layercascade.runtime.openvino.backend import OvBackend  # it compiles its graphs through this module

    if device != "cpu":
        fail(f"--device {device}: the openvino backend runs on the CPU here (NVIDIA GPUs: --backend trt)")
    model_dir = Path(model_dir) if model_dir is not None else DEMO_MODEL
    manifest = read_cascade_manifest(model_dir)
    if precision == "int8" and "quantization" not in manifest:
        fail(f"{model_dir}: --precision int8 runs an INT8 dir; make one with lc-calibrate {model_dir} -o DIR_INT8")
    config = compile_config(precision, threads, performance_hint)
    return model_dir, manifest, OvBackend(model_dir, manifest, config, lower)


def dense_peer(source: Path, manifest: dict[str, Any], threads: int) -> tuple[OvRunner | SizedRunner, str]:
    """lc-bench's OpenVINO peer: the model dir's ``dense.onnx`` compiled as it is, at OpenVINO's default precision
    (an INT8 dir's: its int8 kernels, the float parts at the default); a dynamic-size export's compiled per size, as
    the backend compiles its own graphs."""
    path = dense_file(source, manifest, "openvino")
    runner = compile_graph(path, str(path), compile_config(threads=threads), nominal=nominal_size(manifest))
    return runner, "int8" if model_precision(manifest) == "int8" else runner.precision()


def nominal_size(manifest: dict[str, Any]) -> tuple[int, int] | None:
    """A dynamic-size export's nominal input size (its graphs are compiled per size); None for a fixed-size one."""
    return tuple(manifest["input_size"]) if "dynamic_size" in manifest else None
