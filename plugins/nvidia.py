"""TensorRT and cuda-python: the one module that imports them, with one set of install messages,
and the questions asked of the CUDA driver (which GPU, which compute capability).

``who`` in every function names what needs the library ("lc-build", "the TensorRT backend", …),
so a machine without it gets one line saying who needed what and how to install it.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import Any

from layercascade.errors import fail

# The oldest TensorRT lc-build and the trt backend take. Engines hold the lc::RegionConv Python plugin
# (ahead-of-time since 10.9), which reaches TensorRT through its ONNX parser; before 10.10 that parser passed
# the ONNX node's *name* to the Python plugin creator, which looks plugins up as "namespace::name" (so
# "lc::<node name>", a KeyError), and only from 10.10 on its op type. onnx-tensorrt importerUtils.cpp
# createPlugin(): at 0137504e (the 10.6 GA release) addPluginWithCreator passes getNodeName(node); at ff761afc
# (TensorRT v10.12.0's parsers/onnx) the V3Quick branch passes node.op_type() ("QDP framework relies on the name
# passed to createPlugin() being exactly equal to the registered plugin name"). NVIDIA/TensorRT 665cfbe8 (the
# 10.10 release) renamed the node of samples/python/quickly_deployable_plugins/qdp_runner.py from its op type
# "circ_pad_plugin" to "circ_pad_plugin 0", the first release whose sample parses a node named otherwise;
# docs/tensorrt.md has the evidence and what is not verified.
TENSORRT_FLOOR = (10, 10)
INSTALL = ("pip install 'layercascade[gpu]' (TensorRT ≥ 10.10 and cuda-python, on a machine with an NVIDIA "
           "GPU)")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


def import_tensorrt(who: str) -> Any:
    """``tensorrt``, or one line naming what is wrong with its install (missing, bindings only, libraries
    that do not load, older than :data:`TENSORRT_FLOOR`)."""
    try:
        import tensorrt
    except ModuleNotFoundError as error:
        if error.name != "tensorrt":
            fail(f"{who} needs TensorRT, which does not import ({_first_line(error)}); {INSTALL}")
        if importlib.util.find_spec("tensorrt_bindings") is not None:
            fail(f"{who} needs TensorRT: only TensorRT's Python bindings are installed (tensorrt_bindings, without "
                 "libnvinfer); install the full TensorRT (tensorrt-cu13 from NVIDIA's package index)")
        fail(f"{who} needs TensorRT, which is not installed: {INSTALL}")
    except (ImportError, OSError) as error:  # OSError: the bindings without libnvinfer
        fail(f"{who} needs TensorRT, whose libraries do not load ({_first_line(error)}): install the libnvinfer "
             "that matches the bindings (tensorrt-cu13-libs)")
    check_tensorrt_version(tensorrt.__version__, who)
    return tensorrt


def check_tensorrt_version(version: str, who: str) -> None:
    """One line unless TensorRT ``version`` (``"10.9.0.34"``) is at least :data:`TENSORRT_FLOOR`."""
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < TENSORRT_FLOOR:
        floor = ".".join(map(str, TENSORRT_FLOOR))
        fail(f"{who} needs TensorRT ≥ {floor}, found TensorRT {version}: older ONNX parsers look Python plugins up by "
             f"node name, not op type, and cannot create lc::RegionConv; {INSTALL}")


def import_tensorrt_plugin(who: str) -> Any:
    """``tensorrt.plugin`` (ahead-of-time plugins since 10.9, below :data:`TENSORRT_FLOOR`)."""
    trt = import_tensorrt(who)
    try:
        import tensorrt.plugin as trtp
    except ImportError as error:
        fail(f"{who} needs tensorrt.plugin, which does not import in TensorRT {trt.__version__} "
             f"({_first_line(error)}); {INSTALL}")
    return trtp


def import_cudart(who: str) -> Any:
    """``cuda.bindings.runtime`` (NVIDIA's samples moved from pycuda to it in TensorRT 10.14)."""
    return _cuda_bindings(who, "runtime")


def import_cuda_driver(who: str) -> Any:
    """``cuda.bindings.driver``: the CUDA driver API."""
    return _cuda_bindings(who, "driver")


def cuda_python_version(who: str) -> str:
    """The version of cuda-python's ``cuda.bindings``."""
    return _cuda_bindings(who).__version__


def _cuda_bindings(who: str, submodule: str = "") -> Any:
    """cuda-python's ``cuda.bindings``, or its ``submodule``; one line when it does not import."""
    try:
        import cuda.bindings  # noqa: F401 - the package itself, then the submodule asked for
        return importlib.import_module(f"cuda.bindings.{submodule}" if submodule else "cuda.bindings")
    except ImportError as error:
        fail(f"{who} needs cuda-python ({_first_line(error)}); {INSTALL}")


def cuda_call(result: tuple) -> Any:
    """Unpack a ``cuda.bindings`` result ``(error, *values)``; a CUDA error here is a bug or a broken GPU."""
    error, *values = result
    if int(error) != 0:
        raise RuntimeError(f"CUDA error: {error!r}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_info(who: str) -> dict[str, str]:
    """Name and compute capability (``"9.0"``) of the current CUDA device, or one line saying there is none."""
    cudart = import_cudart(who)
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or count == 0:
        fail(f"{who}: no CUDA GPU ({getattr(error, 'name', error)}); TensorRT engines are built and run on an "
             "NVIDIA GPU")
    device = cuda_call(cudart.cudaGetDevice())
    properties = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = properties.name.decode() if isinstance(properties.name, bytes) else str(properties.name)
    return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{properties.major}.{properties.minor}"}


def driver_cuda_version(who: str) -> str:
    """The CUDA version of the installed driver (``"12.4"``): the newest PTX ISA it loads follows from it."""
    version = cuda_call(import_cudart(who).cudaDriverGetVersion())
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_gpus(who: str) -> tuple[list[str], str]:
    """The names of the GPUs the CUDA driver sees and its API version (``"13.0"``)."""
    driver = import_cuda_driver(who)
    (status,) = driver.cuInit(0)
    if status != driver.CUresult.CUDA_SUCCESS:
        fail(f"{who}: the CUDA driver does not initialise ({status.name})")
    _, version = driver.cuDriverGetVersion()
    _, count = driver.cuDeviceGetCount()
    names = []
    for index in range(count):
        _, device = driver.cuDeviceGet(index)
        _, name = driver.cuDeviceGetName(256, device)
        names.append(name.split(b"\0")[0].decode())
    return names, f"{version // 1000}.{version % 1000 // 10}"


def create_trt(trt: Any, factory: str, logger: Any, who: str) -> Any:
    """``trt.Builder`` / ``trt.Runtime``; without a usable GPU TensorRT reports "CUDA initialization
    failure" in its log and the constructor fails (TypeError from pybind's nullptr factory)."""
    try:
        created = getattr(trt, factory)(logger)
    except (TypeError, RuntimeError) as error:
        fail(f"{who}: no CUDA GPU usable by TensorRT ({_first_line(error)})")
    if created is None:
        fail(f"{who}: no CUDA GPU usable by TensorRT (trt.{factory} could not be created)")
    return created

