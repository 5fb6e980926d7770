"""What every backend gives the cascade: a ``run`` over the three stages and a dense runner.

A backend holds one runner per stage graph. Runners take and return arrays of the
backend (numpy for ONNX Runtime; device buffers for torch / TensorRT may stay on the
device between stages); ``run`` returns host numpy arrays of the label map, the masks and
the per-stage counts only. ``run_stages`` chains the stage runners one by one and times
each; backends with a faster whole-cascade path (ONNX Runtime's joined session, torch and
TensorRT device-resident pipelines) override ``run`` and keep ``StageOutputs`` as its return
type.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class StageOutputs:
    """A batch through the cascade: labels (N, H, W) uint8, masks (N, 1, h, w), counts (N, 3)."""

    labels: np.ndarray
    mask2: np.ndarray
    mask3: np.ndarray
    stage_counts: np.ndarray
    timings: dict[str, float]


class StageRunner(Protocol):
    """One stage graph: ``infer`` maps input names to arrays and records ``last_ms``."""

    last_ms: float

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]: ...


class StagedBackend:
    """Chains three stage runners with the graph contract of DESIGN §5.

    Subclasses set ``name`` and ``stages`` and implement ``dense_runner``; ``to_host``
    turns one of their arrays into numpy (identity here).
    """

    name = "base"
    stages: list[StageRunner]

    def to_host(self, array: Any) -> np.ndarray:
        return array

    def run(self, images: np.ndarray, rho: float,
            forced_masks: tuple[np.ndarray, np.ndarray] | None = None) -> StageOutputs:
        """(N, H, W, 3) uint8 images at the input size → labels, masks and counts on the host."""
        return self.run_stages(images, rho, forced_masks)

    def run_stages(self, images: np.ndarray, rho: float,
                   forced_masks: tuple[np.ndarray, np.ndarray] | None = None) -> StageOutputs:
        """:meth:`run` through the stage runners one after another, with each stage's time."""
        rho_array = np.array([rho], np.float32)
        stage1, stage2, stage3 = self.stages
        started = time.perf_counter()
        out1 = stage1.infer({"image": images, "rho": rho_array})
        mask2 = out1["mask2"] if forced_masks is None else forced_masks[0]
        out2 = stage2.infer({"feat1": out1["feat1"], "mask2": mask2, "rho": rho_array})
        mask3 = out2["mask3"] if forced_masks is None else forced_masks[1]
        out3 = stage3.infer({"feat2": out2["feat2"], "mask3": mask3, "scores1": out1["scores1"],
                             "scores2": out2["scores2"], "mask2": mask2})
        labels, counts = self.to_host(out3["labels"]), self.to_host(out3["stage_counts"])
        total = (time.perf_counter() - started) * 1e3
        timings = {f"stage{k + 1}": runner.last_ms for k, runner in enumerate(self.stages)}
        timings["total"] = total
        return StageOutputs(labels, self.to_host(mask2), self.to_host(mask3), counts, timings)

    def dense_runner(self, manifest: dict[str, Any]) -> StageRunner:
        """A runner of the dense network of the same weights (input ``image`` → ``labels``)."""
        raise NotImplementedError
