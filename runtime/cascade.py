"""The user-facing cascade: ``Cascade.load(DIR, backend=...)`` then ``cascade(image)``.

The backend runs the three stages (ONNX Runtime: joined into one session; TensorRT and torch:
on one device stream); masks, features and scores pass from one to the next inside the
backend and only labels, masks and per-stage counts are returned.
Image policy (``model/data/placement.py``): ``fit`` (the default of a fixed-size export) scales an image to fit
inside the input keeping its aspect ratio and pads the rest with the mean colour, ``stretch`` resizes it to the
input, ``none`` (the default of a dynamic-size export) runs it at its own size, padded to the next size the
graphs take, and in overlapping tiles where it is larger; the labels come back at the image's own size.
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
from layercascade.model.data.placement import Sizes, pad_colour
from layercascade.runtime.backend import (
    BackendCannotRun,
    BackendFallbackWarning,
    Masks,
    StagedBackend,
    StageOutputs,
)
from layercascade.runtime.inputs import DEMO_MODEL
from layercascade.runtime.registry import AUTO, auto_candidates, backend_spec, claimed_by
from layercascade.runtime.result import CascadeResult

__all__ = ["DEMO_MODEL", "Cascade"]


class Cascade:
    """A loaded cascade model; call it on an (H, W, 3) uint8 RGB image.

    ``runner`` is the backend that runs the stages (a :class:`StagedBackend`), ``backend`` its name,
    ``precision`` what it computes in. ``close()`` (or leaving a ``with`` block) releases its sessions,
    engines and device memory.
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
        dynamic = manifest.get("dynamic_size")
        # What the graphs take: the input size, or (lc-export --dynamic-size) any multiple of 8 within bounds.
        self.sizes = Sizes(self.input_size, *((tuple(dynamic["min"]), tuple(dynamic["max"]), dynamic["multiple"])
                                              if dynamic else ()))
        self.pad_colour = pad_colour(manifest["mean"])
        self.default_rho: Rho = check_rho(manifest["default_rho"])
        batch = manifest["batch"]
        self.batch_size: int | None = None if batch["dynamic"] else int(batch["size"])

    @classmethod
    def load(cls, model_dir: str | Path | None = None, backend: str = "auto", device: str = "cpu",
             lower: bool = True, threads: int = 0, **options: Any) -> Cascade:
        """Load an exported model dir, an lc-build engine dir or (torch) a checkpoint ``.pt``.

        ``None`` is the bundled demo model (its checkpoint for the torch backend).

        Args:
            backend: a name of ``runtime/registry.py`` ("openvino", "ort" (ONNX Runtime), "trt", "torch") or
                "auto": TensorRT for an engine dir, torch for a ``.pt`` checkpoint; for a model dir OpenVINO
                at its default precision (bf16 where the CPU has it natively, else fp32) or int8, where it is
                installed and compiles the model, else ONNX Runtime (then a :class:`BackendFallbackWarning`
                says why); ONNX Runtime too for ``precision="fp32"`` (the exact reference), ``device="cuda"``
                and settings only it has.
            device: "cpu" or "cuda".
            lower: run RegionConv in compact row form (False: the graphs' function bodies).
            threads: intra-op threads (0 = the backend's default).
            options: backend-specific settings (each backend's spec lists its own): ``precision``,
                ``cuda_graph`` (torch, trt), ``input_size`` and ``kernels`` (torch), ``uint8_activations``
                (ort), ``performance_hint`` (openvino).
        """
        if backend == AUTO:
            return cls._load_auto(model_dir, device, lower, threads, options)
        spec = backend_spec(backend)
        owner = claimed_by(model_dir)
        if owner not in (None, spec):
            fail(f"{model_dir}: {owner.claimed}; run it with --backend {owner.name} (or auto), not --backend {backend}")
        return cls(*spec.load(model_dir, device, lower, threads, options))

    @classmethod
    def _load_auto(cls, model_dir: str | Path | None, device: str, lower: bool, threads: int,
                   options: dict[str, Any]) -> Cascade:
        """``--backend auto``: the first of :func:`~layercascade.runtime.registry.auto_candidates` that is
        installed and compiles the model; the last one's own errors stand."""
        *faster, last = auto_candidates(model_dir, device, options)
        passed_over: list[str] = []
        for spec in faster:
            if not spec.installed():
                passed_over.append(f"{spec.label} is not installed ({spec.install})")
                continue
            try:
                loaded = spec.load(model_dir, device, lower, threads, options)
                break
            except BackendCannotRun as reason:
                passed_over.append(str(reason))
        else:
            spec, loaded = last, last.load(model_dir, device, lower, threads, options)
        if passed_over:
            warnings.warn(f"--backend auto: {'; '.join(passed_over)}; running {spec.label}", BackendFallbackWarning,
                          stacklevel=3)
        return cls(*loaded)

    @property
    def precision(self) -> str | None:
        """What the backend computes in: fp32, fp16, bf16 or int8 (an INT8 dir; None where the backend does not
        say)."""
        return self.runner.precision

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
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or not self.takes(images.shape[1:3]):
            fail(f"expected (N, {self.size_text()}, 3) uint8 images, got {images.dtype} {images.shape}")
        if self.batch_size is not None and images.shape[0] != self.batch_size:
            fail(f"this model was exported for batch {self.batch_size}, got {images.shape[0]} images")
        return self.runner.run(images, self.rho(rho), forced_masks)

    def takes(self, size: tuple[int, int]) -> bool:
        """Whether the graphs take images of ``size`` = (H, W) as they are."""
        if not self.sizes.dynamic:
            return tuple(size) == self.input_size
        return all(low <= n <= high and n % self.sizes.multiple == 0
                   for n, low, high in zip(size, self.sizes.low, self.sizes.high))

    def size_text(self) -> str:
        """The sizes the graphs take, for messages: ``160, 160``, or ``H, W`` with their bounds."""
        if not self.sizes.dynamic:
            return f"{self.input_size[0]}, {self.input_size[1]}"
        (low_h, low_w), (high_h, high_w) = self.sizes.low, self.sizes.high
        return (f"H, W (multiples of {self.sizes.multiple}, {low_h} <= H <= {high_h}, {low_w} <= W <= {high_w})")

    @property
    def batch_capacity(self) -> int | None:
        """The most images one run takes: the exported batch size, a dynamic batch's maximum, or None
        (no limit)."""
        if self.batch_size is not None:
            return self.batch_size
        # A backend may take fewer than the export allows (lc-build --max-batch builds engines for fewer).
        limits = [n for n in (self.manifest["batch"].get("max"), self.runner.max_batch) if n]
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
