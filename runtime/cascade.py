"""The user-facing cascade: ``Cascade.load(DIR, backend=...)`` then ``cascade(image)``.

The backend runs the three stages (ONNX Runtime: joined into one session; TensorRT and torch:
on one device stream); masks, features and scores pass from one to the next inside the
backend and only labels, masks and per-stage counts are returned.
Image policy: an image of another size is resized (bilinear) to the model's input size,
and the labels are resized back (nearest) to the image's own size.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from layercascade.contract import Rho, RhoLike, check_rho, rho_or_default
from layercascade.errors import fail
from layercascade.model.data.images import as_rgb, resize_image, resize_labels
from layercascade.runtime.backend import BACKENDS, Masks, StagedBackend, StageOutputs, check_options
from layercascade.runtime.inputs import DEMO_MODEL
from layercascade.runtime.result import CascadeResult

__all__ = ["DEMO_MODEL", "Cascade"]


def auto_backend(model_dir: str | Path | None) -> str:
    """What ``--backend auto`` runs ``model_dir`` with: engines → trt, a ``.pt`` checkpoint → torch, else ort."""
    from layercascade.runtime.trt.engines import is_engine_dir

    if is_engine_dir(model_dir):
        return "trt"
    return "torch" if model_dir is not None and Path(model_dir).suffix == ".pt" else "ort"


class Cascade:
    """A loaded cascade model; call it on an (H, W, 3) uint8 RGB image.

    ``runner`` is the backend that runs the stages (a :class:`StagedBackend`), ``backend`` its
    name. ``close()`` (or leaving a ``with`` block) releases its sessions, engines and device memory.
    """

    def __init__(self, model_dir: Path, manifest: dict[str, Any], runner: StagedBackend) -> None:
        """``manifest``: checked by the backend's loader (``manifest.check_cascade_fields``), before it
        loaded ``runner``."""
        self.model_dir = model_dir
        self.manifest = manifest
        self.runner = runner
        self.backend = runner.name
        self.closed = False
        self.classes: list[str] = list(manifest["classes"])
        self.palette = np.asarray(manifest["palette"], dtype=np.uint8)
        self.input_size: tuple[int, int] = tuple(manifest["input_size"])
        self.default_rho: Rho = check_rho(manifest["default_rho"])
        batch = manifest["batch"]
        self.batch_size: int | None = None if batch["dynamic"] else int(batch["size"])

    @classmethod
    def load(cls, model_dir: str | Path | None = None, backend: str = "auto", device: str = "cpu",
             lower: bool = True, threads: int = 0, **options: Any) -> Cascade:
        """Load an exported model dir, an lc-build engine dir or (torch) a checkpoint ``.pt``.

        ``None`` is the bundled demo model (its checkpoint for the torch backend).

        Args:
            backend: "ort" (ONNX Runtime), "openvino", "trt", "torch" or "auto" (engines → trt, a
                ``.pt`` checkpoint → torch, otherwise ort).
            device: "cpu" or "cuda".
            lower: run RegionConv in compact row form (False: the graphs' function bodies).
            threads: intra-op threads (0 = the backend's default).
            options: backend-specific settings: ``precision`` (torch, trt, openvino), ``cuda_graph``
                (torch, trt), ``input_size`` and ``kernels`` (torch), ``uint8_activations`` (ort),
                ``performance_hint`` (openvino).
        """
        if backend not in BACKENDS:
            fail(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        from layercascade.runtime.trt.engines import is_engine_dir

        if backend == "auto":
            backend = auto_backend(model_dir)
        elif backend in ("ort", "openvino", "torch") and is_engine_dir(model_dir):
            fail(f"{model_dir}: holds TensorRT engines (lc-build); run it with --backend trt (or auto), "
                 f"or pass the model dir lc-export wrote to use --backend {backend}")
        # Each backend's loader (imported only when chosen): OPTIONS, its settings, and load.
        if backend == "torch":
            from layercascade.runtime.torch import loader
        elif backend == "trt":
            from layercascade.runtime.trt import loader
        elif backend == "openvino":
            from layercascade.runtime.openvino import loader
        else:
            from layercascade.runtime.ort import loader
        label = {"ort": "ONNX Runtime", "openvino": "OpenVINO", "trt": "TensorRT", "torch": "torch"}[backend]
        check_options(label, options, loader.OPTIONS, getattr(loader, "OPTIONS_HINT", ""))
        return cls(*loader.load(model_dir, device, lower, threads, **options))

    @property
    def engine(self) -> StagedBackend:
        """The backend's runner under its old name (deprecated: "engine" means a TensorRT engine)."""
        warnings.warn("Cascade.engine is deprecated; use Cascade.runner", DeprecationWarning, stacklevel=2)
        return self.runner

    # -- running -------------------------------------------------------------------------------
    def rho(self, rho: RhoLike | None = None) -> Rho:
        """The thresholds (ρ₂, ρ₃) a run uses: ``rho`` (one ρ for both stages, or a pair; checked to lie
        in (0, 1]) or the model's default."""
        return rho_or_default(rho, self.default_rho)

    def prepare(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """An (H, W, 3) uint8 image (or a PIL image) at the model's input size."""
        return resize_image(as_rgb(image), self.input_size)

    def run_batch(self, images: np.ndarray, rho: RhoLike | None = None,
                  forced_masks: Masks | None = None) -> StageOutputs:
        """Run the cascade on (N, H, W, 3) uint8 images already at the input size, at ``rho`` (see :meth:`rho`).

        ``forced_masks`` replaces the thresholded M₂, M₃ (to benchmark chosen active fractions).
        """
        if self.closed:
            fail("this cascade was closed; load the model again (Cascade.load)")
        expected = (*self.input_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
            fail(f"expected (N, {expected[0]}, {expected[1]}, 3) uint8 images, got {images.dtype} {images.shape}")
        if self.batch_size is not None and images.shape[0] != self.batch_size:
            fail(f"this model was exported for batch {self.batch_size}, got {images.shape[0]} images")
        return self.runner.run(images, self.rho(rho), forced_masks)

    @property
    def batch_capacity(self) -> int | None:
        """The most images one run takes: the exported batch size, a dynamic batch's maximum, or None
        (no limit)."""
        if self.batch_size is not None:
            return self.batch_size
        # A backend may take fewer than the export allows (lc-build --max-batch builds engines for fewer).
        limits = [n for n in (self.manifest["batch"].get("max"), getattr(self.runner, "max_batch", None)) if n]
        return min(limits) if limits else None

    def __call__(self, image: np.ndarray | Image.Image, rho: RhoLike | None = None) -> CascadeResult:
        """Segment one image of any size: an (H, W, 3) uint8 RGB array or a PIL image of any mode; ``rho``:
        one ρ for both stages or (ρ₂, ρ₃) (default: the model's)."""
        return self.segment_batch([image], rho)[0]

    def segment_batch(self, images: Sequence[np.ndarray | Image.Image], rho: RhoLike | None = None) -> list[CascadeResult]:
        """Segment images of any sizes (as :meth:`__call__` takes them) together, in runs of up to
        :attr:`batch_capacity` images (a fixed batch is filled up with blank images). Each result is
        the image's own; its ``timings`` are those of the run it was in, ``total`` included."""
        results: list[CascadeResult] = []
        step = self.batch_capacity or max(len(images), 1)
        for first in range(0, len(images), step):
            results += self._run_chunk(images[first:first + step], rho)
        return results

    def _run_chunk(self, images: Sequence[np.ndarray | Image.Image], rho: RhoLike | None) -> list[CascadeResult]:
        started = time.perf_counter()
        originals = [as_rgb(image) for image in images]
        batch = np.stack([self.prepare(image) for image in originals])
        if self.batch_size is not None and len(batch) < self.batch_size:
            blank = np.zeros((self.batch_size - len(batch), *batch.shape[1:]), np.uint8)
            batch = np.concatenate([batch, blank])
        preprocess = (time.perf_counter() - started) * 1e3
        out = self.run_batch(batch, rho)
        results = []
        for index, image in enumerate(originals):
            labels = resize_labels(out.labels[index], image.shape[:2])
            stage_map = (1 + (out.mask2[index, 0] > 0) + (out.mask3[index, 0] > 0)).astype(np.uint8)
            counts = out.stage_counts[index].astype(np.float64)
            fractions = counts / max(counts.sum(), 1.0)
            results.append(CascadeResult(labels, stage_map, (float(fractions[0]), float(fractions[1]),
                                                             float(fractions[2])), {}))
        timings = {"preprocess": preprocess, **out.timings, "total": (time.perf_counter() - started) * 1e3}
        for result in results:
            result.timings = dict(timings)
        return results

    def predict(self, image: np.ndarray, rho: RhoLike) -> tuple[np.ndarray, np.ndarray, int]:
        """A predictor for ``model.evaluate``: labels, stage fractions and stage-resolution pixels of one image."""
        result = self(image, rho)
        return result.labels, np.asarray(result.stage_fractions), result.stage_map.size

    # -- resources ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend's sessions, engines and device memory; the cascade is unusable afterwards."""
        if not self.closed:
            self.runner.close()
            self.closed = True

    def __enter__(self) -> Cascade:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
