"""Stand-ins for TensorRT and cuda-python, so the TensorRT backend and lc-build run their Python
paths on machines without a GPU: a simulated GPU whose "engines" are ONNX graphs that ONNX Runtime
runs on host memory, and a GPU machine whose TensorRT builder does not start."""

from __future__ import annotations

import ctypes
import sys
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from layercascade.manifest import read_manifest
from layercascade.runtime.inputs import DEMO_MODEL
from layercascade.runtime.trt.engines import BuiltEngine, batch_range, size_range, write_engine_dir

TENSORRT_VERSION = "11.4.0.106"
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
# What the fake engines were "built" with; the simulated driver (cudaDriverGetVersion) is CUDA 13.0.
BUILT = {"tensorrt": TENSORRT_VERSION, "gpu": GPU, "plugin_sha256": "ab" * 32, "ptx_cuda": "12.8"}
DRIVER_VERSION = 13000


def fake_engine_dir(target: Path, model_dir: Path = DEMO_MODEL, precision: str = "fp16") -> Path:
    """An engine dir of ``model_dir`` with stand-in plans, built for lc-build's default profile."""
    manifest = read_manifest(model_dir)
    settings = {**BUILT, "precision": precision, "batch": batch_range(manifest, None),
                "size": size_range(manifest, None), "version_compatible": False}
    return write_engine_dir(target, model_dir, manifest,
                            lambda graph: BuiltEngine(f"plan of {graph.name}".encode(), "00" * 32, False), settings)


def install_fake_tensorrt(monkeypatch, tensorrt: types.ModuleType, cudart: types.ModuleType) -> None:
    """Make ``import tensorrt`` and ``from cuda.bindings import runtime`` give these stand-ins."""
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)


class SimulatedCuda:
    """``cuda.bindings.runtime`` over host memory: pointers are real addresses, stream work runs at
    once or is recorded while a capture is open, and a graph launch replays what was recorded."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0)

    INVALIDATED = 901  # cudaErrorStreamCaptureInvalidated

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.capture: list | None = None
        self.launches = 0
        # What TensorRT does with a data-dependent stage inside a capture: refuse to enqueue (False),
        # or enqueue and invalidate the capture, after which every call on the stream fails (True).
        self.invalidate_captures = False
        self.invalidated = False
        self.captured: list[str] = []  # the engines enqueued inside a capture, in order
        self.driver_version = DRIVER_VERSION  # cudaDriverGetVersion: 1000 · major + 10 · minor

    def submit(self, work) -> tuple:
        if self.capture is None:
            work()
        else:
            self.capture.append(work)
        return (0,)

    def _allocate(self, nbytes: int) -> tuple:
        self.blocks.append(np.zeros(nbytes, np.uint8))
        return 0, self.blocks[-1].ctypes.data

    cudaMalloc = cudaMallocHost = _allocate

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream) -> tuple:
        if self.invalidated:
            return (self.INVALIDATED,)
        return self.submit(lambda: ctypes.memmove(dst, src, nbytes))

    def cudaStreamBeginCapture(self, stream, mode) -> tuple:
        self.capture = []
        return (0,)

    def cudaStreamEndCapture(self, stream) -> tuple:
        graph, self.capture = self.capture, None
        if self.invalidated:
            self.invalidated = False
            return self.INVALIDATED, None
        return 0, graph

    def cudaGraphLaunch(self, graph, stream) -> tuple:
        self.launches += 1
        for work in graph:
            work()
        return (0,)

    def cudaDriverGetVersion(self) -> tuple:
        return 0, self.driver_version

    cudaGetDeviceCount = staticmethod(lambda: (0, 1))
    cudaGetDevice = staticmethod(lambda: (0, 0))
    cudaGetDeviceProperties = staticmethod(
        lambda device: (0, types.SimpleNamespace(name=GPU["name"].encode(), major=9, minor=0)))
    cudaStreamCreate = cudaEventCreate = staticmethod(lambda: (0, 7))  # handles convert with int()
    cudaGraphInstantiate = staticmethod(lambda graph, flags: (0, graph))
    cudaEventElapsedTime = staticmethod(lambda start, end: (0, 0.25))
    cudaStreamSynchronize = cudaEventRecord = cudaGraphDestroy = staticmethod(lambda *args: (0,))
    cudaGetLastError = cudaFree = cudaFreeHost = cudaGraphExecDestroy = staticmethod(lambda *args: (0,))
    cudaEventDestroy = cudaStreamDestroy = staticmethod(lambda *args: (0,))


def simulated_tensorrt(cuda: SimulatedCuda) -> types.ModuleType:
    """``tensorrt`` whose "plans" name an ONNX file that ONNX Runtime runs on the simulated device
    memory. Like TensorRT with data-dependent shapes, graphs with NonZero refuse stream capture.

    TensorRT documents nothing about an execution context whose enqueue went into a capture the driver
    then invalidated; this stand-in takes the worst case, a context that refuses all later work (the
    backend must replace it). A context whose enqueue TensorRT refused stays usable, as trtexec
    assumes (``samples/common/sampleInference.cpp``)."""
    import onnxruntime

    trt = types.ModuleType("tensorrt")
    trt.__version__ = TENSORRT_VERSION
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            pass

    class Context:
        def __init__(self, engine) -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}
            self.broken = False

        def set_input_shape(self, name: str, shape) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name: str, address: int) -> None:
            self.addresses[name] = address

        def execute_async_v3(self, stream) -> bool:
            if self.broken:
                return False
            if cuda.capture is not None:
                cuda.captured.append(self.engine.name)
                if self.engine.data_dependent:
                    cuda.invalidated = self.broken = cuda.invalidate_captures
                    return cuda.invalidate_captures
            return cuda.submit(self.execute) == (0,)

        def execute(self) -> None:
            session = self.engine.session
            feeds = {}
            for value in session.get_inputs():
                dtype = self.engine.dtypes[value.name]
                count = int(np.prod(self.shapes[value.name]))
                raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(self.addresses[value.name])
                feeds[value.name] = np.frombuffer(raw, dtype).reshape(self.shapes[value.name]).copy()
            for value, array in zip(session.get_outputs(), session.run(None, feeds)):
                ctypes.memmove(self.addresses[value.name], np.ascontiguousarray(array).ctypes.data, array.nbytes)

    class Engine:
        def __init__(self, path: str) -> None:
            self.name = Path(path).stem
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            values = [*self.session.get_inputs(), *self.session.get_outputs()]
            self.names = [v.name for v in values]
            self.inputs = {v.name for v in self.session.get_inputs()}
            numpy_types = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(int64)": np.int64}
            self.dtypes = {v.name: np.dtype(numpy_types[v.type]) for v in values}
            self.data_dependent = "NonZero" in Path(path).read_bytes().decode("latin-1")
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, index: int) -> str:
            return self.names[index]

        def get_tensor_mode(self, name: str) -> str:
            return "input" if name in self.inputs else "output"

        def get_tensor_dtype(self, name: str) -> np.dtype:
            return self.dtypes[name]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> Engine:
            assert registered, "the plugin must be registered before deserializing"
            return Engine(plan.decode())

    registered: list[bool] = []
    trt.Logger, trt.Runtime = Logger, Runtime
    trt.registered = registered
    return trt


def install_gpu_without_builder(monkeypatch, gpus: int, builder_error: Exception | None) -> None:
    """tensorrt and cuda.bindings.runtime stand-ins: a machine with ``gpus`` GPUs where ``trt.Builder``
    raises ``builder_error`` (as TensorRT does after "CUDA initialization failure")."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = TENSORRT_VERSION

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            pass

    def make_builder(logger: Logger):
        raise builder_error

    trt.Logger, trt.Builder = Logger, make_builder
    cudart = types.ModuleType("cuda.bindings.runtime")
    cudart.cudaGetDeviceCount = lambda: (0, gpus) if gpus else (100, 0)  # 100 = cudaErrorNoDevice
    cudart.cudaGetDevice = lambda: (0, 0)
    properties = types.SimpleNamespace(name=GPU["name"].encode(), major=9, minor=0)
    cudart.cudaGetDeviceProperties = lambda device: (0, properties)
    install_fake_tensorrt(monkeypatch, trt, cudart)


# -- the plugin creator's attribute conversion, per release ------------------------------------------
# Two releases that convert differently (tensorrt_bindings/plugin/_lib.py,
# _TemplatePluginCreator.create_plugin; the same code in every wheel of its side: 10.6.0 … 11.1.0.106, and
# 11.2.1.2 … 11.4.0.106).
CREATOR_RELEASES = ("10.16.1.11", "11.4.0.106")


def parser_fields(node: onnx.NodeProto, names: typing.Iterable[str]) -> dict[str, np.ndarray]:
    """The plugin fields TensorRT's ONNX parser makes of ``node``'s attributes ``names`` (onnx-tensorrt
    ``loadFields``: INT → one kINT32 value, INTS → kINT32 values, FLOAT → one kFLOAT32), as numpy arrays,
    which is how the Python creator sees ``PluginField.data``."""
    attributes = {a.name: a for a in node.attribute}
    kinds = {onnx.AttributeProto.INT: np.int32, onnx.AttributeProto.INTS: np.int32,
             onnx.AttributeProto.FLOAT: np.float32}
    return {name: np.atleast_1d(np.array(onnx.helper.get_attribute_value(attributes[name]),
                                         kinds[attributes[name].type]))
            for name in names}


def creator_attribute(annotation: Any, data: np.ndarray, release: str) -> Any:
    """The value the creator of TensorRT ``release`` makes of field ``data`` for a register-function
    parameter annotated ``annotation``: ``NDArray[dtype]`` → ``data.astype(dtype)`` in every release;
    ``str`` → the decoded bytes; another builtin (``int``, ``float``, ``bool``) → ``annotation(data)`` up
    to 11.1, and ``annotation(data[0])`` for a one-element array from 11.2."""
    if typing.get_origin(annotation) is np.ndarray:
        dtype = typing.get_args(typing.get_args(annotation)[1])[0]
        return np.frombuffer(data.tobytes(), np.float16) if dtype is np.float16 else data.astype(dtype)
    if annotation is str:
        return data.tobytes().decode("utf-8")
    major, minor = (int(part) for part in release.split(".")[:2])
    if (major, minor) >= (11, 2) and data.size == 1:
        return annotation(data[0])
    return annotation(data)
