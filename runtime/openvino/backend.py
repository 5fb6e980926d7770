"""OpenVINO backend: the three stage graphs joined into one compiled model, RegionConv lowered to row form."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from layercascade.contract import Rho
from layercascade.runtime.backend import JoinedGraphBackend, Masks
from layercascade.runtime.machine import host
from layercascade.runtime.openvino.loader import compile_graph, nominal_size, openvino_version
from layercascade.runtime.openvino.runner import OvRunner, SizedRunner


class OvBackend(JoinedGraphBackend):
    """A cascade model dir as one OpenVINO compiled model of its joined stage graphs (``joined``; see
    :class:`~layercascade.runtime.backend.JoinedGraphBackend`); ``stages`` are compiled one by one.
    ``config``: the CPU plugin's settings (``loader.compile_config``). A dynamic-size export's graphs are
    compiled per size (:class:`~layercascade.runtime.openvino.runner.SizedRunner`), for its nominal size at load.
    """

    name = "openvino"
    # Each new size compiles (a fraction of a second on the demo model): padded sizes rounded up to 32 let images of similar
    # sizes share a compiled model, at the cost of at most 31 padded rows and columns.
    size_step = 32

    def __init__(self, model_dir: Path, manifest: dict[str, Any], config: dict[str, Any], lower: bool = True) -> None:
        self.model_dir = model_dir
        self.config = config
        self.lower = lower
        self.quantized = "quantization" in manifest
        self.files = [model_dir / stage["file"] for stage in manifest["stages"]]
        self.nominal = nominal_size(manifest)
        self._profiled: dict[bool, OvRunner | SizedRunner] = {}  # compiled with PERF_COUNT, by forced masks
        self.load_joined(manifest)
        self.precision = "int8" if self.quantized else self.joined.precision()

    def cascade_runner(self, forced_masks: bool, graphs: list[onnx.ModelProto] | None = None,
                       config: dict[str, Any] | None = None) -> OvRunner | SizedRunner:
        """The joined graph compiled (``graphs``: the stage graphs, if already loaded)."""
        return compile_graph(self.joined_graph(forced_masks, graphs), f"{self.model_dir}/stages 1-3",
                             config or self.config, self.lower, layouts=True, nominal=self.nominal)

    @property
    def stages(self) -> list[OvRunner | SizedRunner]:
        if self._stages is None:
            self._stages = [compile_graph(path, str(path), self.config, self.lower, layouts=True,
                                          nominal=self.nominal) for path in self.files]
        return self._stages

    def kernel_profile(self, images: np.ndarray, rho: Rho, forced_masks: Masks | None,
                       runs: int, warmup: int) -> dict[str, tuple[float, int]]:
        """op type → (µs, executed ops) per run: OpenVINO's per-op counters (``PERF_COUNT``) over ``runs``
        runs of the cascade as ``run`` runs it (after ``warmup`` untimed ones), in a model compiled for it.

        Op types are those of the graph OpenVINO runs after its fusions (FullyConnected, Subgraph,
        Reorder…), not of the exported one.
        """
        forced = forced_masks is not None
        if forced not in self._profiled:  # compiled once: lc-bench --compare profiles every ρ
            self._profiled[forced] = self.cascade_runner(forced, config={**self.config, "PERF_COUNT": True})
        runner = self._profiled[forced]
        feeds = self.feeds(images, rho, forced_masks)
        for _ in range(warmup):
            runner.infer(feeds)
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for _ in range(runs):
            runner.infer(feeds)
            for info in runner.perf_counts():
                if info.status.name == "EXECUTED":
                    total = totals[info.node_type]
                    total[0] += info.real_time.total_seconds() * 1e6
                    total[1] += 1
        return {op: (us / runs, round(count / runs)) for op, (us, count) in totals.items()}

    def close(self) -> None:
        self._profiled.clear()
        super().close()

    def dense_runner(self, manifest: dict[str, Any]) -> OvRunner | SizedRunner:
        path = self.model_dir / manifest["dense"]["file"]
        return compile_graph(path, str(path), self.config, layouts=True, nominal=self.nominal)

    def inference_precision(self) -> str:
        """The precision OpenVINO computes the float parts in (bf16 or f32), as compiled."""
        return self.joined.inference_precision()

    def machine(self) -> str:
        precision = self.inference_precision() + (" + int8 (QDQ)" if self.quantized else "")
        return f"{host()}, openvino {openvino_version()} ({precision})"

