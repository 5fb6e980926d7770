"""The user-facing cascade: ``Cascade.load(DIR, backend=...)`` then ``cascade(image)``.

The backend runs the three stages (ONNX Runtime: joined into one session; TensorRT and torch:
on one device stream); masks, features and scores pass from one to the next inside the
backend and only labels, masks and per-stage counts are returned.
Image policy: an image of another size is resized (bilinear) to the model's input size,
and the labels are resized back (nearest) to the image's own size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from layercascade.errors import fail
from layercascade.manifest import read_manifest
from layercascade.runtime.backend import StagedBackend, StageOutputs
from layercascade.runtime.result import CascadeResult

DEMO_MODEL = Path(__file__).resolve().parent / "demo_model"
BACKENDS = ("auto", "ort", "trt", "torch")


def check_rho(rho: float) -> float:
    if not 0.0 < float(rho) <= 1.0:
        fail(f"rho must be in (0, 1], got {rho}")
    return float(rho)


def read_cascade_manifest(model_dir: Path) -> dict[str, Any]:
    """The verified ``lc.json`` of a cascade model dir (not a dense export)."""
    manifest = read_manifest(model_dir)
    if manifest.get("kind") != "cascade":
        fail(f"{model_dir}: holds a {manifest.get('kind')!r} model, not a cascade; export without --dense")
    return manifest


class Cascade:
    """A loaded cascade model; call it on an (H, W, 3) uint8 RGB image."""

    def __init__(self, model_dir: Path, manifest: dict[str, Any], backend: StagedBackend) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self.engine = backend
        self.backend = backend.name
        self.classes: list[str] = list(manifest["classes"])
        self.palette = np.asarray(manifest["palette"], dtype=np.uint8)
        self.input_size: tuple[int, int] = tuple(manifest["input_size"])
        self.default_rho: float = float(manifest["default_rho"])
        batch = manifest["batch"]
        self.batch_size: int | None = None if batch["dynamic"] else int(batch["size"])

    @classmethod
    def load(cls, model_dir: str | Path | None = None, backend: str = "auto", device: str = "cpu",
             lower: bool = True, threads: int = 0, **options: Any) -> Cascade:
        """Load an exported model dir, an lc-build engine dir or (torch) a checkpoint ``.pt``.

        ``None`` is the bundled demo model (its checkpoint for the torch backend).

        Args:
            backend: "ort" (ONNX Runtime), "trt", "torch" or "auto" (engines → trt, a ``.pt``
                checkpoint → torch, otherwise ort).
            device: "cpu" or "cuda".
            lower: run RegionConv in compact row form (False: the graphs' function bodies).
            threads: intra-op threads (0 = the backend's default).
            options: backend-specific settings (e.g. ``precision``, ``cuda_graph``).
        """
        if backend not in BACKENDS:
            fail(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        from layercascade.runtime.engines import is_engine_dir

        if backend == "auto":
            checkpoint = model_dir is not None and Path(model_dir).suffix == ".pt"
            backend = "trt" if is_engine_dir(model_dir) else "torch" if checkpoint else "ort"
        elif backend in ("ort", "torch") and is_engine_dir(model_dir):
            fail(f"{model_dir}: holds TensorRT engines (lc-build); run it with --backend trt (or auto), "
                 f"or pass the model dir lc-export wrote to use --backend {backend}")
        if backend == "torch":
            from layercascade.runtime.torch_backend import load_torch_cascade

            return cls(*load_torch_cascade(model_dir, device, threads, **options))
        if backend == "trt":
            from layercascade.runtime.trt import load_engine_dir

            return cls(*load_engine_dir(model_dir, device, **options))
        model_dir = Path(model_dir) if model_dir is not None else DEMO_MODEL
        manifest = read_cascade_manifest(model_dir)
        from layercascade.runtime.ort import OrtBackend

        return cls(model_dir, manifest, OrtBackend(model_dir, manifest, device, lower, threads, **options))

    # -- running -------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> np.ndarray:
        """An (H, W, 3) uint8 image at the model's input size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            fail(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {tuple(image.shape)}")
        if image.shape[:2] == self.input_size:
            return image
        height, width = self.input_size
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))

    def run_batch(self, images: np.ndarray, rho: float | None = None,
                  forced_masks: tuple[np.ndarray, np.ndarray] | None = None) -> StageOutputs:
        """Run the cascade on (N, H, W, 3) uint8 images already at the input size.

        ``forced_masks`` replaces the thresholded M₂, M₃ (to benchmark chosen active fractions).
        """
        expected = (*self.input_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
            fail(f"expected (N, {expected[0]}, {expected[1]}, 3) uint8 images, got {images.dtype} {images.shape}")
        if self.batch_size is not None and images.shape[0] != self.batch_size:
            fail(f"this model was exported for batch {self.batch_size}, got {images.shape[0]} images")
        return self.engine.run(images, check_rho(self.default_rho if rho is None else rho), forced_masks)

    def __call__(self, image: np.ndarray, rho: float | None = None) -> CascadeResult:
        """Segment one (H, W, 3) uint8 RGB image of any size."""
        started = time.perf_counter()
        prepared = self.prepare(image)
        batch = prepared[None]
        if self.batch_size and self.batch_size > 1:
            batch = np.concatenate([batch, np.zeros((self.batch_size - 1, *prepared.shape), np.uint8)])
        preprocess = (time.perf_counter() - started) * 1e3
        out = self.run_batch(batch, rho)
        labels = out.labels[0]
        if labels.shape != image.shape[:2]:
            labels = np.asarray(Image.fromarray(labels).resize((image.shape[1], image.shape[0]), Image.NEAREST))
        stage_map = (1 + (out.mask2[0, 0] > 0) + (out.mask3[0, 0] > 0)).astype(np.uint8)
        counts = out.stage_counts[0].astype(np.float64)
        timings = {"preprocess": preprocess, **out.timings, "total": (time.perf_counter() - started) * 1e3}
        fractions = counts / max(counts.sum(), 1.0)
        return CascadeResult(labels, stage_map, (float(fractions[0]), float(fractions[1]), float(fractions[2])), timings)
