"""TensorRT backend, the runner: the stage engines chained on one CUDA stream.

Written against NVIDIA's documented Python APIs (TensorRT ≥ 10.9 / 11.x, ``cuda-python``'s
``cuda.bindings.runtime``), following ``samples/python/common_runtime.py`` of NVIDIA/TensorRT
(cudaMalloc / cudaMallocHost buffers wrapped as numpy, ``cudaMemcpyAsync``,
``set_tensor_address`` + ``execute_async_v3``) and the developer guide's "CUDA Graphs"
section (one ``execute_async_v3`` before capture, then ``cudaStreamBeginCapture`` →
``execute_async_v3`` → ``cudaStreamEndCapture`` → ``cudaGraphInstantiate`` →
``cudaGraphLaunch``). Nothing here has run on a real TensorRT yet: our build machines have
no GPU (see docs/build.md).

Design: every tensor of the three stages has one device buffer, allocated once for the
largest batch and image size of the engines' optimization profile and bound by address, so stage
k's outputs are stage k+1's inputs in place and a run at a smaller batch or size uses the leading
part of each buffer (set_input_shape per run; no reallocation, so addresses never change and memory
is bounded by the profile's maximum);
ρ₂ and ρ₃ (stage 1's and stage 2's ``rho``, one threshold per class, a buffer each) are copied to the device
only when they change; the host sees only the image (in) and the
labels, stage counts and masks (out), through pinned buffers and async copies; the stream is
synchronised once per run. Per-stage times come from CUDA events between the stages.
"""

from __future__ import annotations

import ctypes
import time
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.contract import (
    CONFIDENCE,
    IMAGE,
    LABELS,
    MASK2,
    MASK3,
    MASKS,
    STAGE_COUNTS,
    STAGE_RHOS,
    RhoVectors,
    stage_rho,
)
from layercascade.errors import fail
from layercascade.plugins.nvidia import cuda_call
from layercascade.runtime.backend import Masks, StagedBackend, StageOutputs
from layercascade.runtime.machine import host
from layercascade.runtime.trt.engines import (
    FORCED,
    HOST_INPUTS,
    HOST_OUTPUTS,
    BufferSpec,
    Size,
    SizeRange,
    plan_buffers,
    size_text,
    stage_bindings,
)

# Captured CUDA graphs kept per backend, one set per (batch, image size, forced masks): a graph replays only
# the shapes it was captured with (Torch-TensorRT, "CUDAGraphs": "A graph recorded for one input shape is invalid
# for a different shape and must be re-recorded"), and a stream of ever new sizes must not grow without bound.
MAX_CAPTURED = 16


# -- memory -------------------------------------------------------------------------------------
def leading(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The first elements of a pinned buffer (allocated for the largest shape) as an array of ``shape``: where a
    run's tensor lies, as the device buffer holds it."""
    return array.reshape(-1)[:int(np.prod(shape, dtype=np.int64))].reshape(shape)


def copy_async(cudart: Any, stream: Any, host: np.ndarray, device: int, nbytes: int, to_device: bool) -> None:
    """Queue a copy of the first ``nbytes`` between a pinned host array and a device buffer."""
    kind = cudart.cudaMemcpyKind
    if to_device:
        cuda_call(cudart.cudaMemcpyAsync(device, host.ctypes.data, nbytes, kind.cudaMemcpyHostToDevice, stream))
    else:
        cuda_call(cudart.cudaMemcpyAsync(host.ctypes.data, device, nbytes, kind.cudaMemcpyDeviceToHost, stream))


class _Memory:
    """Device buffers and pinned host arrays, freed together by ``close``."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.device: list[int] = []
        self.pinned: list[int] = []

    def device_buffer(self, nbytes: int) -> int:
        pointer = int(cuda_call(self.cudart.cudaMalloc(max(nbytes, 1))))
        self.device.append(pointer)
        return pointer

    def pinned_array(self, spec: BufferSpec) -> np.ndarray:
        """A numpy array over page-locked memory (as HostDeviceMem in common_runtime.py)."""
        pointer = int(cuda_call(self.cudart.cudaMallocHost(max(spec.nbytes, 1))))
        self.pinned.append(pointer)
        raw = (ctypes.c_uint8 * max(spec.nbytes, 1)).from_address(pointer)
        return np.frombuffer(raw, np.uint8, spec.nbytes).view(spec.dtype).reshape(spec.shape)

    def close(self) -> None:
        for pointer in self.device:
            self.cudart.cudaFree(pointer)
        for pointer in self.pinned:
            self.cudart.cudaFreeHost(pointer)
        self.device, self.pinned = [], []


def deserialize(runtime: Any, path: Path) -> Any:
    """The engine serialized in ``path`` (``ICudaEngine``), or one line saying it could not be read."""
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        fail(f"{path}: TensorRT could not deserialize it (see its log above); rebuild with lc-build")
    return engine


class EngineRunner:
    """One engine and its execution context, bound by tensor name to device addresses.

    ``capturable``: False for an engine with data-dependent shapes (lc-build records it), which the
    backend never captures in a CUDA graph (see :meth:`TrtBackend._capture`).
    """

    def __init__(self, trt: Any, engine: Any, path: Path, specs: dict[str, BufferSpec],
                 capturable: bool = True) -> None:
        self.trt, self.engine, self.path, self.capturable = trt, engine, path, capturable
        self.context = engine.create_execution_context()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in self.names:
            if name not in specs:
                fail(f"{path}: engine tensor {name!r} is not in lc.json; rebuild with lc-build")
            engine_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine_dtype != specs[name].dtype:
                fail(f"{path}: engine tensor {name!r} is {engine_dtype}, lc.json says {specs[name].dtype}; "
                     "rebuild with lc-build")
        self.specs = specs
        self.shape: tuple[int, Size | None] | None = None  # (batch, image size) of the inputs' shapes
        self.addresses: dict[str, int] = {}
        self.retired: list[Any] = []  # contexts replaced by renew()

    def set_shape(self, batch: int, size: Size | None) -> None:
        """Each input's shape for a run of ``batch`` images of ``size`` (IExecutionContext.set_input_shape,
        which is False outside the engine's optimization profile)."""
        for name in self.inputs:
            if not self.context.set_input_shape(name, self.specs[name].shape_for(batch, size)):
                at = f" of {size_text(size)}" if size is not None else ""
                fail(f"{self.path}: {batch} image(s){at} are outside the engine's optimization profile; rebuild "
                     "with lc-build --max-batch / --shapes")
        self.shape = (batch, size)

    def bind(self, addresses: dict[str, int]) -> None:
        for name in self.names:
            self.context.set_tensor_address(name, addresses[name])
        self.addresses = addresses

    def renew(self) -> None:
        """A fresh execution context with the same input shapes and addresses. TensorRT documents
        nothing about a context whose enqueue went into a capture that failed; trtexec keeps using
        it after a refused enqueue (``samples/common/sampleInference.cpp``), but not after TensorRT
        enqueued into a capture the driver then invalidated. A new context is cheap and certain. The
        old one is kept: graphs captured from it for other batches or sizes still use its memory."""
        self.retired.append(self.context)
        self.context = self.engine.create_execution_context()
        if self.shape is not None:
            self.set_shape(*self.shape)
        self.bind(self.addresses)

    def enqueue(self, stream: Any) -> bool:
        return bool(self.context.execute_async_v3(int(stream)))


# -- the backend --------------------------------------------------------------------------------
class TrtBackend(StagedBackend):
    """The three stage engines of an lc-build engine dir, run on one CUDA stream."""

    name = "trt"

    device = "cuda"

    def __init__(self, engine_dir: Path, manifest: dict[str, Any], metadata: dict[str, Any], trt: Any,
                 cudart: Any, gpu: dict[str, str], runtime: tuple[Any, Any], engines: list[Any],
                 cuda_graph: bool = False, sizes: SizeRange | None = None) -> None:
        """``runtime``: the ``trt.Runtime`` that deserialized ``engines`` (the stage engines, in order)
        and its logger, which must live as long as it (``loader.load`` prepares all three); ``sizes``: the image
        sizes the engines were built for (:func:`engine_sizes`; None: the export's fixed size)."""
        self.precision = metadata["precision"]
        self.engine_dir, self.trt, self.cudart = engine_dir, trt, cudart
        self.runtime, self.logger = runtime
        self.metadata = metadata
        self.gpu = gpu  # name and compute capability, for reports (lc-bench's machine line)
        self.max_batch = int(metadata["batch"]["max"])
        self.sizes = sizes
        self.stage_specs = manifest["stages"]
        self.plan = plan_buffers(self.stage_specs, self.max_batch, self.sizes.max if self.sizes else None)
        self.memory = _Memory(cudart)
        weakref.finalize(self, self.memory.close)  # device and pinned memory go with the backend
        self.stream = cuda_call(cudart.cudaStreamCreate())
        self.buffers = {name: self.memory.device_buffer(spec.nbytes) for name, spec in self.plan.items()}
        host = [*HOST_INPUTS, *HOST_OUTPUTS, *FORCED.values()]
        self.host = {name: self.memory.pinned_array(self.plan[name]) for name in host if name in self.plan}
        # Each engine checks its tensors against the buffers they bind to (its rho: ρ₂'s or ρ₃'s).
        records = {record["file"]: record for record in metadata["engines"].values()}
        self.engines = [EngineRunner(trt, engine, engine_dir / stage["file"],
                                     {tensor: self.plan[buffer] for tensor, buffer in names.items()},
                                     capturable=not records[stage["file"]]["data_dependent_shapes"])
                        for engine, stage, names in zip(engines, self.stage_specs,
                                                        stage_bindings(self.stage_specs, forced=False))]
        self.events = [cuda_call(cudart.cudaEventCreate()) for _ in range(len(self.engines) + 1)]
        self.cuda_graph = cuda_graph
        self.dense_runners: list[DenseRunner] = []
        # (batch, size, forced) → per stage: graph exec or None; the least recently used dropped past MAX_CAPTURED.
        self.graphs: OrderedDict[tuple[int, Size | None, bool], list[Any]] = OrderedDict()
        self.captured_stages: list[bool] = []
        self.shape: tuple[int, Size | None] | None = None  # (batch, size) the engines' input shapes are set for
        self.rho: RhoVectors | None = None
        self.forced: bool | None = None

    # -- one run ----------------------------------------------------------------------------------
    def check_size(self, size: Size) -> Size | None:
        """``size`` (H, W) if the engines take it (None for a fixed-size export, which takes only its own size);
        one line otherwise."""
        if self.sizes is None:
            built = self.plan[IMAGE].shape[1:3]
            if tuple(size) != built:
                fail(f"the engines take {size_text(built)} images, got {size_text(size)}")
            return None
        if tuple(size) not in self.sizes:
            fail(f"the engines take images from {size_text(self.sizes.min)} to {size_text(self.sizes.max)} (multiples "
                 f"of 8), got {size_text(size)}; rebuild them with lc-build --shapes MINxMIN:OPTxOPT:MAXxMAX covering "
                 "it (within the export's lc-export --dynamic-size bounds)")
        return tuple(size)

    def _prepare(self, batch: int, size: Size | None, forced: bool) -> None:
        """Input shapes and tensor addresses: set only when the batch, the size or the mask source changes."""
        if (batch, size) != self.shape:
            for engine in self.engines:
                engine.set_shape(batch, size)
        if forced != self.forced:
            for engine, names in zip(self.engines, stage_bindings(self.stage_specs, forced)):
                engine.bind({tensor: self.buffers[buffer] for tensor, buffer in names.items()})
        self.shape, self.forced = (batch, size), forced

    def _host(self, name: str, batch: int, size: Size | None) -> np.ndarray:
        """The pinned array of ``name`` as this run's tensor."""
        return leading(self.host[name], self.plan[name].shape_for(batch, size))

    def _copy(self, name: str, batch: int, size: Size | None, to_device: bool) -> None:
        copy_async(self.cudart, self.stream, self.host[name], self.buffers[name],
                   self.plan[name].bytes_for(batch, size), to_device)

    def _stage_work(self, index: int, batch: int, size: Size | None, forced: bool) -> bool:
        """Stage ``index``'s copies and engine on the stream; False if TensorRT refused to enqueue."""
        uploads = {0: [IMAGE], 1: [FORCED[MASK2]] if forced else [], 2: [FORCED[MASK3]] if forced else []}[index]
        for name in uploads:
            self._copy(name, batch, size, to_device=True)
        if not self.engines[index].enqueue(self.stream):
            return False
        if index == len(self.engines) - 1:
            for name in [LABELS, STAGE_COUNTS, *([CONFIDENCE] if CONFIDENCE in self.plan else []),
                         *([] if forced else MASKS)]:
                self._copy(name, batch, size, to_device=False)
        return True

    def _graphs_for(self, key: tuple[int, Size | None, bool]) -> list[Any]:
        """The captured stages of ``key`` = (batch, size, forced), captured on first use; the least recently
        used set is destroyed when more than :data:`MAX_CAPTURED` are kept."""
        if key in self.graphs:
            self.graphs.move_to_end(key)
            return self.graphs[key]
        self.graphs[key] = self._capture(*key)
        while len(self.graphs) > MAX_CAPTURED:
            for graph in self.graphs.popitem(last=False)[1]:
                if graph is not None:
                    self.cudart.cudaGraphExecDestroy(graph)
        return self.graphs[key]

    def _capture(self, batch: int, size: Size | None, forced: bool) -> list[Any]:
        """A CUDA graph per stage, where one can be had; the other stages run eagerly on the same
        stream, so there is still no host sync between stages.

        Stages with data-dependent shapes (lc-build records them: stage 3, whose label upsampling
        takes NonZero) are never captured. Their sizes are known only once the GPU has computed them,
        and the kernels after them (or an ``IOutputAllocator``) need them on the host, inside
        ``execute_async_v3``; a stream capture records work without running it and forbids host
        syncs. NVIDIA excludes them too: TensorRT-RTX 1.2 release notes ("stream capture is not
        possible for all models, especially when using data-dependent dynamic shapes"),
        Torch-TensorRT's CUDA graphs ("not compatible with models that have data-dependent shapes
        (DDS ops such as nonzero)"; its output allocator, for DDS, is "incompatible with CUDA
        graphs"). Trying would at best be refused, at worst leave the stage's context in a failed
        capture; any other stage that fails to capture is handled by :meth:`_capture_stage`.
        """
        cudart = self.cudart
        for index in range(len(self.engines)):  # the developer guide's enqueue before capture
            self._enqueue_or_fail(index, batch, size, forced)
        cuda_call(cudart.cudaStreamSynchronize(self.stream))
        graphs = [self._capture_stage(index, batch, size, forced) if engine.capturable else None
                  for index, engine in enumerate(self.engines)]
        self.captured_stages = [g is not None for g in graphs]
        if not any(self.captured_stages):
            warnings.warn("TensorRT could not capture any stage in a CUDA graph; running eagerly", stacklevel=1)
        return graphs

    def _capture_stage(self, index: int, batch: int, size: Size | None, forced: bool) -> Any:
        """Stage ``index``'s work as an instantiated CUDA graph, or None (it then runs eagerly).

        As trtexec does (``samples/common/sampleInference.cpp``, ``sampleDevice.h``
        ``endCaptureOnError``): TensorRT returns False from an enqueue it cannot capture; the capture
        is ended whatever happened inside it (a stream left capturing would break every later call),
        its graph dropped and the CUDA error cleared. A capture the driver invalidated after TensorRT
        enqueued (the copies after it fail too) ends the same way, and the stage gets a fresh context.
        """
        cudart = self.cudart
        cuda_call(cudart.cudaStreamBeginCapture(self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
        try:
            enqueued = self._stage_work(index, batch, size, forced)
        except RuntimeError:  # a CUDA call inside the invalidated capture
            enqueued = False
        finally:
            error, graph = cudart.cudaStreamEndCapture(self.stream)
        instance = None
        if enqueued and int(error) == 0:
            status, created = cudart.cudaGraphInstantiate(graph, 0)
            instance = created if int(status) == 0 else None
        if int(error) == 0:
            cudart.cudaGraphDestroy(graph)  # the instance keeps what it needs
        if instance is None:
            cudart.cudaGetLastError()  # clear the capture's error: this stage runs eagerly
            # ... from now on, at every batch and size: a stage that failed once is not tried again, so it
            # renews its context once, not once per new shape (each retired context keeps its memory).
            self.engines[index].capturable = False
            self.engines[index].renew()
        return instance

    def _enqueue_or_fail(self, index: int, batch: int, size: Size | None, forced: bool) -> None:
        if not self._stage_work(index, batch, size, forced):
            fail(f"{self.engines[index].path}: TensorRT could not run the engine (see its log above)")

    def run(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None = None) -> StageOutputs:
        """Images (N, H, W, 3) in, labels / masks / counts / confidence out; one stream sync per call. H, W: the
        export's size, or (dynamic-size engines) any size of the engines' profile."""
        batch, forced = images.shape[0], forced_masks is not None
        if batch > self.max_batch:
            fail(f"the engines take at most {self.max_batch} images per run, got {batch}; "
                 f"rebuild with lc-build --max-batch {batch}")
        size = self.check_size(images.shape[1:3])
        started = time.perf_counter()
        self._prepare(batch, size, forced)
        self._host(IMAGE, batch, size)[...] = images
        if forced:
            for mask, values in zip(MASKS, forced_masks):
                self._host(FORCED[mask], batch, size)[...] = values
        cudart = self.cudart
        # ρ₂, ρ₃ (per class, or one each for engines of graphs exported before per-class thresholds) live on the
        # device; they cross only when they change.
        rho = tuple(stage_rho(value, self.host[name].size, self.engine_dir) for name, value in zip(STAGE_RHOS, rho))
        if self.rho is None or not all(np.array_equal(a, b) for a, b in zip(rho, self.rho)):
            for name, value in zip(STAGE_RHOS, rho):
                self.host[name][...] = value
                self._copy(name, batch, size, to_device=True)
            self.rho = rho
        graphs = self._graphs_for((batch, size, forced)) if self.cuda_graph else None
        cuda_call(cudart.cudaEventRecord(self.events[0], self.stream))
        for index in range(len(self.engines)):
            if graphs is not None and graphs[index] is not None:
                cuda_call(cudart.cudaGraphLaunch(graphs[index], self.stream))
            else:
                self._enqueue_or_fail(index, batch, size, forced)
            cuda_call(cudart.cudaEventRecord(self.events[index + 1], self.stream))
        cuda_call(cudart.cudaStreamSynchronize(self.stream))
        # Per-stage times from the events between the stages, read after the one sync.
        timings = {f"stage{index + 1}": float(cuda_call(cudart.cudaEventElapsedTime(self.events[index],
                                                                                     self.events[index + 1])))
                   for index in range(len(self.engines))}
        timings["total"] = (time.perf_counter() - started) * 1e3
        mask2, mask3 = forced_masks if forced else (self._host(mask, batch, size).copy() for mask in MASKS)
        confidence = self._host(CONFIDENCE, batch, size).copy() if CONFIDENCE in self.plan else None
        return StageOutputs(self._host(LABELS, batch, size).copy(), mask2, mask3,
                            self._host(STAGE_COUNTS, batch, size).copy(), timings, confidence)

    def run_stages(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None = None) -> StageOutputs:
        """:meth:`run`, which times the stages apart already (CUDA events between them, one sync)."""
        return self.run(images, rho, forced_masks)

    def dense_runner(self, manifest: dict[str, Any]) -> DenseRunner:
        runner = DenseRunner(self, self.engine_dir / manifest["dense"]["file"], manifest["dense"])
        self.dense_runners.append(runner)  # its engine goes with the backend's close
        return runner

    def machine(self) -> str:
        return (f"{self.gpu['name']} (compute capability {self.gpu['compute_capability']}), host {host()}, "
                f"TensorRT {self.trt.__version__}")

    def close(self) -> None:
        """Free the CUDA graphs, events and stream, the device and pinned memory, and drop the engines,
        their contexts and the runtime (the backend is unusable afterwards; memory is freed at exit too)."""
        for graphs in self.graphs.values():
            for graph in graphs:
                if graph is not None:
                    self.cudart.cudaGraphExecDestroy(graph)
        self.graphs = {}
        for event in self.events:
            self.cudart.cudaEventDestroy(event)
        if self.events:
            self.cudart.cudaStreamDestroy(self.stream)
        self.events, self.engines, self.dense_runners = [], [], []
        self.runtime = self.logger = None
        self.memory.close()


class DenseRunner:
    """``dense.engine``: the same weights run densely, for lc-bench's baseline (image → labels)."""

    def __init__(self, backend: TrtBackend, path: Path, spec: dict[str, Any]) -> None:
        self.backend = backend
        self.plan = plan_buffers([spec], backend.max_batch, backend.sizes.max if backend.sizes else None)
        self.buffers = {name: backend.memory.device_buffer(s.nbytes) for name, s in self.plan.items()}
        self.host = {name: backend.memory.pinned_array(s) for name, s in self.plan.items()}
        self.engine = EngineRunner(backend.trt, deserialize(backend.runtime, path), path, self.plan)
        self.engine.bind(self.buffers)
        self.last_ms = 0.0

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        backend, cudart = self.backend, self.backend.cudart
        images = feeds[IMAGE]
        batch = images.shape[0]
        if batch > backend.max_batch:
            fail(f"the engines take at most {backend.max_batch} images per run, got {batch}")
        size = backend.check_size(images.shape[1:3])
        started = time.perf_counter()
        if (batch, size) != self.engine.shape:
            self.engine.set_shape(batch, size)
        leading(self.host[IMAGE], self.plan[IMAGE].shape_for(batch, size))[...] = images
        copy_async(cudart, backend.stream, self.host[IMAGE], self.buffers[IMAGE],
                   self.plan[IMAGE].bytes_for(batch, size), to_device=True)
        if not self.engine.enqueue(backend.stream):
            fail(f"{self.engine.path}: TensorRT could not run the engine (see its log above)")
        copy_async(cudart, backend.stream, self.host[LABELS], self.buffers[LABELS],
                   self.plan[LABELS].bytes_for(batch, size), to_device=False)
        cuda_call(cudart.cudaStreamSynchronize(backend.stream))
        self.last_ms = (time.perf_counter() - started) * 1e3
        return {LABELS: leading(self.host[LABELS], self.plan[LABELS].shape_for(batch, size)).copy()}
