"""ONNX Runtime backend: the three stage graphs joined into one session, RegionConv lowered to row form."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from layercascade.contract import Rho
from layercascade.errors import LCError
from layercascade.export.session import import_onnxruntime
from layercascade.runtime.backend import JoinedGraphBackend, Masks, model_precision
from layercascade.runtime.machine import host
from layercascade.runtime.ort.loader import load_runner
from layercascade.runtime.ort.runner import OrtRunner


class OrtBackend(JoinedGraphBackend):
    """A cascade model dir as one ONNX Runtime session of its joined stage graphs (``joined``; see
    :class:`~layercascade.runtime.backend.JoinedGraphBackend`); ``stages`` are sessions of their own.
    ``uint8_activations``: see :func:`layercascade.runtime.ort.loader.prepare`.
    """

    name = "ort"

    def __init__(self, model_dir: Path, manifest: dict[str, Any], device: str = "cpu", lower: bool = True,
                 threads: int = 0, uint8_activations: bool = True) -> None:
        self.model_dir = model_dir
        self.device = device
        self.precision = model_precision(manifest)
        self.settings = {"device": device, "lower": lower, "threads": threads, "uint8_activations": uint8_activations}
        self.files = [model_dir / stage["file"] for stage in manifest["stages"]]
        self.load_joined(manifest)

    def cascade_runner(self, forced_masks: bool, graphs: list[onnx.ModelProto] | None = None,
                       profile_prefix: Path | None = None) -> OrtRunner:
        """The joined graph as one session (``graphs``: the stage graphs, if already loaded)."""
        joined = self.joined_graph(forced_masks, graphs)
        try:
            return load_runner(joined, label=f"{self.model_dir}/stages 1-3", profile_prefix=profile_prefix,
                               **self.settings)
        except LCError:
            # Name the stage graph ONNX Runtime rejects: building the stage sessions one by one
            # raises that file's own error; if each alone loads, the joined graph's error stands.
            _ = self.stages
            raise

    @property
    def stages(self) -> list[OrtRunner]:
        if self._stages is None:
            # Each stage learns which of its inputs the stages before produced by a ReLU (INT8: uint8 rows).
            self._stages, rectified = [], frozenset()
            for path in self.files:
                self._stages.append(load_runner(path, non_negative_inputs=rectified, **self.settings))
                rectified |= self._stages[-1].rectified_outputs
        return self._stages

    def kernel_profile(self, images: np.ndarray, rho: Rho, forced_masks: Masks | None,
                       runs: int, warmup: int) -> dict[str, tuple[float, int]]:
        """op type → (µs, kernel calls) per run: ONNX Runtime's profiler over ``runs`` runs of the
        cascade as ``run`` runs it (after ``warmup`` untimed ones), in a profiled session of its own.

        Op types are those of the optimized graph ONNX Runtime runs (QGemm, FusedGemm, Reorder…),
        not of the exported one. The profiler adds a few µs to every kernel, so small ops weigh
        more here than in a plain run.
        """
        with tempfile.TemporaryDirectory(prefix="lc-profile-") as folder:
            runner = self.cascade_runner(forced_masks is not None, profile_prefix=Path(folder) / "ort")
            feeds = self.feeds(images, rho, forced_masks)
            for _ in range(warmup + runs):
                runner.infer(feeds)
            events = json.loads(Path(runner.session.end_profiling()).read_text())
        timed_from = [e["ts"] for e in events if e.get("name") == "model_run"][-runs]  # the warmup runs come first
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            if event["ts"] >= timed_from:
                total = totals[event["args"]["op_name"]]
                total[0] += event["dur"]
                total[1] += 1
        return {op: (us / runs, round(calls / runs)) for op, (us, calls) in totals.items()}

    def dense_runner(self, manifest: dict[str, Any]) -> OrtRunner:
        return load_runner(self.model_dir / manifest["dense"]["file"], self.device, lower=False,
                           threads=self.settings["threads"])

    def machine(self) -> str:
        return f"{host()}, onnxruntime {import_onnxruntime().__version__}"


