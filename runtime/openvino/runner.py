"""One compiled OpenVINO model that runs a graph and times itself (the runner half of the OpenVINO backend)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
