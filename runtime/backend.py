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
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from layercascade.contract import (
    FEAT1,
    FEAT2,
    IMAGE,
    LABELS,
    MASK2,
    MASK3,
    RHO,
    RHO2,
    RHO3,
    SCORES1,
    SCORES2,
    STAGE_COUNTS,
    Rho,
)
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

    def run(self, images: np.ndarray, rho: Rho, forced_masks: Masks | None = None) -> StageOutputs:
        """(N, H, W, 3) uint8 images at the input size and the thresholds (ρ₂, ρ₃) → labels, masks and
        counts on the host."""
        return self.run_stages(images, rho, forced_masks)

    def run_stages(self, images: np.ndarray, rho: Rho, forced_masks: Masks | None = None) -> StageOutputs:
        """:meth:`run` through the stage runners one after another, with each stage's time."""
        rho2, rho3 = (np.array([r], np.float32) for r in rho)
        stage1, stage2, stage3 = self.stages
        started = time.perf_counter()
        out1 = stage1.infer({IMAGE: images, RHO: rho2})
        mask2 = out1[MASK2] if forced_masks is None else forced_masks[0]
        out2 = stage2.infer({FEAT1: out1[FEAT1], MASK2: mask2, RHO: rho3})
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


class JoinedGraphBackend(StagedBackend):
    """A backend that runs the three stage graphs of a model dir joined into one graph
    (``export/cascade_graph.py``): ``joined``; with forced masks a second joined graph, built on first
    use, takes the masks as inputs. ``stages`` (each stage graph alone, built on first use) serve
    ``run_stages``; ``run`` does not use them.

    Subclasses set ``model_dir`` and ``files``, implement ``cascade_runner(forced_masks, graphs=None)``
    (the joined graph made runnable, through :meth:`joined_graph`) and ``stages``, and call
    :meth:`load_joined` last in ``__init__``.
    """

    model_dir: Path
    files: list[Path]
    joined: Any = None
    _forced_runner: Any = None
    _stages: list[StageRunner] | None = None

    def load_joined(self, manifest: dict[str, Any]) -> None:
        """Load the stage graphs once, check them against ``lc.json`` and the stage contract, and build
        ``joined`` from them."""
        from layercascade.export.graph import check_stage_graphs, load_onnx

        graphs = [load_onnx(path) for path in self.files]
        check_stage_graphs(self.model_dir, manifest, graphs)
        self.joined = self.cascade_runner(forced_masks=False, graphs=graphs)

    def cascade_runner(self, forced_masks: bool, graphs: list[Any] | None = None) -> StageRunner:
        raise NotImplementedError

    def joined_graph(self, forced_masks: bool, graphs: list[Any] | None = None) -> Any:
        """The stage graphs (``graphs``, if already loaded) joined into one ONNX model."""
        from layercascade.export.graph import load_onnx

        return join_stage_graphs(self.model_dir, graphs or [load_onnx(path) for path in self.files], forced_masks)

    @staticmethod
    def feeds(images: np.ndarray, rho: Rho, forced_masks: Masks | None) -> dict[str, np.ndarray]:
        """The joined graph's inputs: the images, ρ₂ and ρ₃, and the masks when forced."""
        feeds = {IMAGE: images, RHO2: np.array([rho[0]], np.float32), RHO3: np.array([rho[1]], np.float32)}
        if forced_masks is not None:
            feeds[MASK2], feeds[MASK3] = forced_masks
        return feeds

    def run(self, images: np.ndarray, rho: Rho, forced_masks: Masks | None = None) -> StageOutputs:
        runner = self.joined
        if forced_masks is not None:
            if self._forced_runner is None:
                self._forced_runner = self.cascade_runner(forced_masks=True)
            runner = self._forced_runner
        out = runner.infer(self.feeds(images, rho, forced_masks))
        masks = forced_masks or (out[MASK2], out[MASK3])
        # One graph: the stages are not timed apart (``run_stages`` does, one graph each).
        return StageOutputs(out[LABELS], masks[0], masks[1], out[STAGE_COUNTS], {"total": runner.last_ms})

    def close(self) -> None:
        self.joined = self._forced_runner = self._stages = None


def join_stage_graphs(model_dir: Path, graphs: list[Any], forced_masks: bool = False) -> Any:
    """``graphs``, the stage graphs of ``model_dir``, joined into one ONNX model (``export/cascade_graph.py``);
    stage graphs that do not join are one line."""
    from layercascade.export.cascade_graph import cascade_graph

    try:
        return cascade_graph(graphs, forced_masks)
    except ValueError as error:
        fail(f"{model_dir}: its stage graphs do not form a cascade ({error}); re-export the model")
