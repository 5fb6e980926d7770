"""What every backend gives the cascade: a ``run`` over the three stages, a dense runner, a
description of the machine it runs on, and ``close``.

A backend is a loader (``runtime/<backend>/loader.py``: prepares graphs, sessions or engines)
and a runner (runs them), the way Polygraphy splits its backends. Runners take and return arrays
of the backend (numpy for ONNX Runtime; device buffers for torch / TensorRT may stay on the
device between stages); ``run`` returns host numpy arrays of the label map, the masks and the
per-stage counts only. ``run_stages`` chains the stage runners one by one and times each;
backends with a faster whole-cascade path (ONNX Runtime's joined session, torch and TensorRT
device-resident pipelines) override ``run`` and keep ``StageOutputs`` as its return type.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from layercascade.contract import FEAT1, FEAT2, IMAGE, LABELS, MASK2, MASK3, RHO, SCORES1, SCORES2, STAGE_COUNTS
from layercascade.errors import fail

Masks = tuple[np.ndarray, np.ndarray]
# The backends Cascade.load and every command's --backend know ("auto" picks by the model's form).
BACKENDS = ("auto", "ort", "openvino", "trt", "torch")


@dataclass
class StageOutputs:
    """A batch through the cascade: labels (N, H, W) uint8, masks (N, 1, h, w), counts (N, 3)."""

    labels: np.ndarray
    mask2: np.ndarray
    mask3: np.ndarray
    stage_counts: np.ndarray
    timings: dict[str, float]


class StageRunner(Protocol):
    """One graph: ``infer`` maps input names to arrays and records ``last_ms``."""

    last_ms: float

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]: ...


def check_options(backend: str, options: dict[str, Any], known: Collection[str] = (), hint: str = "") -> None:
    """Fail on a setting ``backend`` does not have (named as its command-line flag)."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        names = ", ".join("--" + name.replace("_", "-") for name in unknown)
        fail(f"{names}: not a setting of the {backend} backend{hint}")


class StagedBackend:
    """Chains three stage runners with the stage graph contract (``layercascade.contract``).

    Subclasses set ``name``, ``device`` and ``stages`` (or override ``run_stages``) and implement
    ``dense_runner`` and ``machine``; ``to_host`` turns one of their arrays into numpy (identity here).
    """

    name = "base"
    device = "cpu"
    stages: list[StageRunner]

    def to_host(self, array: Any) -> np.ndarray:
        return array

    def run(self, images: np.ndarray, rho: float, forced_masks: Masks | None = None) -> StageOutputs:
        """(N, H, W, 3) uint8 images at the input size → labels, masks and counts on the host."""
        return self.run_stages(images, rho, forced_masks)

    def run_stages(self, images: np.ndarray, rho: float, forced_masks: Masks | None = None) -> StageOutputs:
        """:meth:`run` through the stage runners one after another, with each stage's time."""
        rho_array = np.array([rho], np.float32)
        stage1, stage2, stage3 = self.stages
        started = time.perf_counter()
        out1 = stage1.infer({IMAGE: images, RHO: rho_array})
        mask2 = out1[MASK2] if forced_masks is None else forced_masks[0]
        out2 = stage2.infer({FEAT1: out1[FEAT1], MASK2: mask2, RHO: rho_array})
        mask3 = out2[MASK3] if forced_masks is None else forced_masks[1]
        out3 = stage3.infer({FEAT2: out2[FEAT2], MASK3: mask3, SCORES1: out1[SCORES1], SCORES2: out2[SCORES2],
                             MASK2: mask2})
        labels, counts = self.to_host(out3[LABELS]), self.to_host(out3[STAGE_COUNTS])
        total = (time.perf_counter() - started) * 1e3
        timings = {f"stage{k + 1}": runner.last_ms for k, runner in enumerate(self.stages)}
        timings["total"] = total
        return StageOutputs(labels, self.to_host(mask2), self.to_host(mask3), counts, timings)

    def dense_runner(self, manifest: dict[str, Any]) -> StageRunner:
        """A runner of the dense network of the same weights (input ``image`` → ``labels``)."""
        raise NotImplementedError

    def machine(self) -> str:
        """What runs the model: the device, the host and the backend's library version."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions, engines and device memory (the backend is unusable afterwards)."""
