"""One compiled OpenVINO model that runs a graph and times itself (the runner half of the OpenVINO backend), and
a graph of a dynamic-size export compiled per size (:class:`SizedRunner`)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from layercascade.errors import fail

# OpenVINO's names of the float precisions → layercascade's.
OPENVINO_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


@dataclass(eq=False)
class OvRunner:
    """A graph compiled by OpenVINO; ``infer`` records its own time in ``last_ms``.

    Each thread gets an infer request of its own (a request runs one inference at a time), so one
    runner may serve several threads, as an ONNX Runtime session does.
    """

    compiled: Any  # openvino.CompiledModel
    label: str
    input_names: list[str]  # the ONNX graph's (a port may carry other names as well)
    output_names: list[str]
    last_ms: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.outputs = [(name, self.compiled.output(name)) for name in self.output_names]
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._request()
        started = time.perf_counter()
        # share_inputs: OpenVINO reads our arrays in place (they are not changed during the call);
        # outputs are copied, so they stay valid after the next inference.
        results = request.infer({name: feeds[name] for name in self.input_names}, share_inputs=True)
        self.last_ms = (time.perf_counter() - started) * 1e3
        return {name: results[port] for name, port in self.outputs}

    def inference_precision(self) -> str:
        """The precision OpenVINO computes the float parts in (bf16 or f32), as compiled."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def precision(self) -> str:
        """:meth:`inference_precision` as layercascade names precisions (bf16, fp32)."""
        return OPENVINO_PRECISIONS.get(self.inference_precision(), self.inference_precision())

    def perf_counts(self) -> list[Any]:
        """OpenVINO's per-op profile of this thread's last inference (compiled with PERF_COUNT)."""
        return list(self._request().profiling_info)


# The most sizes a SizedRunner keeps compiled: a compiled model holds its own copy of the weights and memory for the
# activations at its size, so the bound is small; a stream of images of one size compiles once.
COMPILED_SIZES = 4


class SizedRunner:
    """A graph with a symbolic height and width (lc-export --dynamic-size), compiled by OpenVINO for each concrete
    size it runs at: OpenVINO's CPU plugin runs static shapes faster than dynamic ones (it plans memory and picks
    kernels once). The compiled models of the last ``capacity`` sizes run are kept, the least recently used
    dropped first; ``compiles`` counts the compiles.

    ``sized``: (input, axis, dimension name) of every symbolic size axis of the graph's inputs (the batch axis
    stays as exported); ``compile(dims)``: an :class:`OvRunner` of the graph with each named dimension set to
    ``dims[name]``; ``implied(dims)``: the dimensions that follow from ``dims`` (the stage maps' from the image's);
    ``first``: the dimensions to compile for at once (the export's nominal size). One runner may serve several
    threads, as :class:`OvRunner` does.
    """

    def __init__(self, compile: Callable[[dict[str, int]], OvRunner], sized: list[tuple[str, int, str]],
                 implied: Callable[[dict[str, int]], dict[str, int]], label: str, first: dict[str, int],
                 capacity: int = COMPILED_SIZES) -> None:
        self.compile = compile
        self.sized = sized
        self.implied = implied
        self.label = label
        self.capacity = capacity
        self.dims = list(dict.fromkeys(name for _, _, name in sized))  # the cache key's order
        self.compiles = 0
        self.last_ms = 0.0
        self._compiled: OrderedDict[tuple[int, ...], OvRunner] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.runner_for({name: first[name] for name in self.dims})

    def dimensions(self, feeds: dict[str, np.ndarray]) -> dict[str, int]:
        """The size dimensions of ``feeds``; inputs of different sizes are one line."""
        values = [(name, dim, int(feeds[name].shape[axis])) for name, axis, dim in self.sized]
        dims: dict[str, int] = {}
        for _, dim, value in values:
            dims.setdefault(dim, value)
        expected = {**dims, **self.implied(dims)}
        for name, dim, value in values:
            if value != expected[dim]:
                fail(f"{self.label}: {name} has {dim} {value}, not {expected[dim]}; give inputs of one size")
        return dims

    def runner_for(self, dims: dict[str, int]) -> OvRunner:
        """The graph compiled for ``dims`` (compiled now if it is not kept)."""
        key = tuple(dims[name] for name in self.dims)
        # One lock around look-up and compile: simple, and a compile is rare (once per new size); threads whose
        # size is kept wait behind it too.
        with self._lock:
            runner = self._compiled.get(key)
            if runner is None:
                runner = self._compiled[key] = self.compile(dims)
                self.compiles += 1
                while len(self._compiled) > self.capacity:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(key)
        self._local.runner = runner
        return runner

    @property
    def sizes(self) -> list[tuple[int, ...]]:
        """The sizes compiled and kept (values of the dimensions ``dims``), least recently used first."""
        with self._lock:
            return list(self._compiled)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` through the graph compiled at their size; ``last_ms`` includes a compile the call needed."""
        started = time.perf_counter()
        out = self.runner_for(self.dimensions(feeds)).infer(feeds)
        self.last_ms = (time.perf_counter() - started) * 1e3
        return out

    def _last(self) -> OvRunner:
        """This thread's last runner (else the most recently used one)."""
        runner = getattr(self._local, "runner", None)
        if runner is None:
            with self._lock:
                runner = next(reversed(self._compiled.values()))
        return runner

    def inference_precision(self) -> str:
        return self._last().inference_precision()

    def precision(self) -> str:
        return self._last().precision()

    def perf_counts(self) -> list[Any]:
        """OpenVINO's per-op profile of this thread's last inference (compiled with PERF_COUNT)."""
        return self._last().perf_counts()
