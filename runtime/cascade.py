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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from layercascade.contract import (
    CONFIDENCE,
    Rho,
    RhoClass,
    RhoClassLike,
    RhoLike,
    RhoVectors,
    check_rho,
    check_rho_class,
    refuse_per_class,
    rho_or_default,
    rho_vectors,
    threshold_count,
)
from layercascade.errors import fail
from layercascade.model.data.images import as_rgb
from layercascade.model.data.placement import (
    SCALE,
    Placement,
    Sizes,
    Tile,
    check_resize,
    default_overlap,
    default_resize,
    labels_back,
    pad_colour,
    place,
    stage_extent,
    stage_fractions,
    stage_map_back,
    tile_grid,
    to_input,
)
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

if TYPE_CHECKING:
    from layercascade.runtime.video import FrameResult

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
        self.sizes = Sizes(self.input_size, *((tuple(dynamic["min"]), tuple(dynamic["max"]), dynamic["multiple"],
                                               runner.size_step) if dynamic else ()))
        self.pad_colour = pad_colour(manifest["mean"])
        self.default_rho: Rho = check_rho(manifest["default_rho"])
        # How many thresholds the stage graphs take per stage: one per class, or 1 (exported before per-class ones).
        self.threshold_count = threshold_count(manifest)
        self.default_rho_class: RhoClass = self.rho_class(manifest.get("default_rho_class", {}))
        batch = manifest["batch"]
        self.batch_size: int | None = None if batch["dynamic"] else int(batch["size"])
        # Whether results carry the confidence: a model dir exported before lc.json version 3 has none (a torch
        # checkpoint always does; its manifest lists no stage graphs).
        stages = manifest.get("stages")
        self.has_confidence = not stages or any(output.get("name") == CONFIDENCE for output in stages[-1]["outputs"])

    @classmethod
    def load(cls, model_dir: str | Path | None = None, backend: str = "auto", device: str = "cpu",
             lower: bool = True, threads: int = 0, **options: Any) -> Cascade:
        """Load an exported model dir, an lc-build engine dir or (torch) a checkpoint ``.pt``.

        ``None`` is the bundled demo model (its checkpoint for the torch backend).

        Args:
            backend: a name of ``runtime/registry.py`` ("openvino", "ort" (ONNX Runtime), "trt", "torch") or
                "auto": TensorRT for an engine dir, torch for a ``.pt`` checkpoint; for a model dir OpenVINO
                at its default precision (bf16 where the CPU has it natively, else fp32) or int8, where it is
                installed, compiles the model and the model costs at least 6 GMACs per image, else ONNX Runtime
                (then a :class:`BackendFallbackWarning` says why, unless the model was merely small); ONNX Runtime too for ``precision="fp32"`` (the exact reference), ``device="cuda"``
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

    def rho_class(self, rho_class: RhoClassLike | None = None) -> RhoClass:
        """The per-class thresholds a run uses, by class index: ``rho_class`` (class name or index → ρ_c in (0, 1];
        ρ_c overrides ρ₂ and ρ₃ for pixels whose stage winner is that class; 1: they never stop early), or, when
        None, the model's default (lc-tune --tune-class; usually none). A model exported before per-class
        thresholds takes none: one line."""
        if rho_class is None:
            return self.default_rho_class
        checked = check_rho_class(rho_class, self.classes)
        if checked and self.threshold_count == 1:
            refuse_per_class(self.model_dir)
        return checked

    def thresholds(self, rho: RhoLike | None = None, rho_class: RhoClassLike | None = None) -> RhoVectors:
        """ρ₂ and ρ₃ per class, as the backends take them, of a run at ``rho`` (:meth:`rho`) and ``rho_class``
        (:meth:`rho_class`)."""
        return rho_vectors(self.rho(rho), self.rho_class(rho_class), len(self.classes))

    def prepare(self, image: np.ndarray | Image.Image, resize: str = "fit") -> np.ndarray:
        """The model input (H, W, 3) uint8 at the model's (nominal) input size of an image (or a PIL image), placed
        by ``resize`` (``fit`` or ``stretch``): what benchmarks and the calibration feed, images of one size."""
        image = as_rgb(image)
        if resize not in ("fit", "stretch"):
            fail(f"prepare places an image at the input size by fit or stretch, not {resize!r}")
        return to_input(image, place(image.shape[:2], self.sizes, resize), self.pad_colour)

    def run_batch(self, images: np.ndarray, rho: RhoLike | None = None,
                  forced_masks: Masks | None = None, rho_class: RhoClassLike | None = None) -> StageOutputs:
        """Run the cascade on (N, H, W, 3) uint8 images already at the input size, at ``rho`` and ``rho_class``
        (see :meth:`thresholds`).

        ``forced_masks`` replaces the thresholded M₂, M₃ (to benchmark chosen active fractions).
        """
        return self.runner.run(self.checked_batch(images), self.thresholds(rho, rho_class), forced_masks)

    def checked_batch(self, images: np.ndarray) -> np.ndarray:
        """``images`` if this open cascade takes them as one batch as they are; else one line."""
        if self.closed:
            fail("this cascade was closed; load the model again (Cascade.load)")
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or not self.takes(images.shape[1:3]):
            fail(f"expected (N, {self.sizes.describe()}, 3) uint8 images, got {images.dtype} {images.shape}")
        if self.batch_size is not None and images.shape[0] != self.batch_size:
            fail(f"this model was exported for batch {self.batch_size}, got {images.shape[0]} images")
        return images

    def takes(self, size: tuple[int, int]) -> bool:
        """Whether the graphs take images of ``size`` = (H, W) as they are (``Sizes.takes``)."""
        return self.sizes.takes(size)

    @property
    def batch_capacity(self) -> int | None:
        """The most images one run takes: the exported batch size, a dynamic batch's maximum, or None
        (no limit)."""
        if self.batch_size is not None:
            return self.batch_size
        # A backend may take fewer than the export allows (lc-build --max-batch builds engines for fewer).
        limits = [n for n in (self.manifest["batch"].get("max"), self.runner.max_batch) if n]
        return min(limits) if limits else None

    def __call__(self, image: np.ndarray | Image.Image, rho: RhoLike | None = None, resize: str | None = None,
                 tile: tuple[int, int] | None = None, overlap: int | None = None,
                 rho_class: RhoClassLike | None = None) -> CascadeResult:
        """Segment one image of any size: an (H, W, 3) uint8 RGB array or a PIL image of any mode.

        Args:
            rho: one ρ for both stages or (ρ₂, ρ₃) (default: the model's).
            rho_class: per-class thresholds, class name (or index) → ρ_c in (0, 1]: a pixel whose winner at stage
                1 or 2 is that class stops there only if its confidence exceeds ρ_c (1: never stops early); the
                other classes keep ``rho`` (default: the model's, usually none; ``{}``: none).
            resize: how the image meets the input (``model/data/placement.py``): ``fit`` (keep the aspect ratio,
                pad with the mean colour; the default of a fixed-size export), ``stretch`` (resize to the input)
                or ``none`` (the image's own pixels, padded; the default of a dynamic-size export); the labels
                come back at the image's own size either way.
            tile: (height, width) of the windows an image runs in at its own resolution when it is larger (implies
                ``resize="none"``; default: the input size, or a dynamic export's largest size, and only for images
                ``none`` cannot run whole).
            overlap: pixels the windows overlap by at least (default: a quarter of the tile's smaller side, in
                multiples of 8); each pixel's label comes from the window whose centre it is nearest.
        """
        return self.segment_batch([image], rho, resize, tile, overlap, rho_class)[0]

    def segment_batch(self, images: Sequence[np.ndarray | Image.Image], rho: RhoLike | None = None,
                      resize: str | None = None, tile: tuple[int, int] | None = None,
                      overlap: int | None = None, rho_class: RhoClassLike | None = None) -> list[CascadeResult]:
        """Segment images of any sizes (as :meth:`__call__` takes them) together: the images that meet the input
        at one size run in batches of up to :attr:`batch_capacity` (a fixed batch is filled up with blank
        images), an image larger than the input runs in tiles (each image's tiles batched). Each result is the
        image's own; its ``timings`` are those of the runs it was in, ``total`` included."""
        mode, tile, overlap = self.image_policy(resize, tile, overlap)
        thresholds = self.thresholds(rho, rho_class)  # checked once, before any image runs
        originals = [as_rgb(image) for image in images]
        results: list[CascadeResult | None] = [None] * len(originals)
        whole: dict[tuple[int, int], list[tuple[int, Placement]]] = {}
        for index, image in enumerate(originals):
            size = image.shape[:2]
            if mode == "none" and not (size[0] <= tile[0] and size[1] <= tile[1]):  # (a tile fits the input)
                results[index] = self._run_tiled(image, thresholds, tile, overlap)
            else:
                placement = place(size, self.sizes, mode)
                whole.setdefault(placement.input_size, []).append((index, placement))
        step = self.batch_capacity or max(len(originals), 1)
        for group in whole.values():
            for first in range(0, len(group), step):
                chunk = group[first:first + step]
                done = self._run_placed([originals[i] for i, _ in chunk], [p for _, p in chunk], thresholds)
                for (index, _), result in zip(chunk, done, strict=True):
                    results[index] = result
        return results

    def image_policy(self, resize: str | None, tile: tuple[int, int] | None,
                     overlap: int | None) -> tuple[str, tuple[int, int], int]:
        """(resize mode, tile, overlap) of a run, the defaults filled in and checked (one line each)."""
        mode = default_resize(self.sizes) if resize is None else check_resize(resize)
        if tile is not None and mode != "none":
            fail(f"tiles run the image at its own resolution: --tile goes with --resize none, not {mode}")
        top = self.sizes.largest
        tile = top if tile is None else (int(tile[0]), int(tile[1]))
        if not (0 < tile[0] <= top[0] and 0 < tile[1] <= top[1]):
            fail(f"--tile {tile[0]}x{tile[1]}: a tile must fit the model's input ({top[0]}x{top[1]} at most)")
        return mode, tile, default_overlap(tile) if overlap is None else int(overlap)

    def _run_placed(self, images: list[np.ndarray], placements: list[Placement],
                    thresholds: RhoVectors) -> list[CascadeResult]:
        """One run of images placed at one input size: their labels, stage maps and confidence back at their own
        sizes."""
        started = time.perf_counter()
        batch = np.stack([to_input(image, placement, self.pad_colour) for image, placement in zip(images, placements)])
        if self.batch_size is not None and len(batch) < self.batch_size:
            blank = np.empty((self.batch_size - len(batch), *batch.shape[1:]), np.uint8)
            blank[...] = self.pad_colour
            batch = np.concatenate([batch, blank])
        preprocess = (time.perf_counter() - started) * 1e3
        out = self.runner.run(self.checked_batch(batch), thresholds)
        results = []
        for index, placement in enumerate(placements):
            stage_map = stage_map_back(stage_map_of(out, index), placement)
            confidence = None if out.confidence is None else stage_map_back(out.confidence[index], placement)
            results.append(CascadeResult(labels_back(out.labels[index], placement), stage_map,
                                         stage_fractions(stage_map), {}, confidence, stage_extent(placement)))
        timings = {"preprocess": preprocess, **out.timings, "total": (time.perf_counter() - started) * 1e3}
        for result in results:
            result.timings = dict(timings)
        return results

    def _run_tiled(self, image: np.ndarray, thresholds: RhoVectors, tile: tuple[int, int],
                   overlap: int) -> CascadeResult:
        """An image larger than the input at its own resolution: overlapping windows (batched), each pixel's
        label from the window whose centre it is nearest; memory bounded by the windows in flight."""
        started = time.perf_counter()
        tiles = tile_grid(image.shape[:2], tile, overlap)
        labels = np.empty(image.shape[:2], np.uint8)
        stage_map = np.empty((-(-image.shape[0] // SCALE), -(-image.shape[1] // SCALE)), np.uint8)
        confidence: np.ndarray | None = np.empty(stage_map.shape, np.float32)
        step = self.batch_capacity or len(tiles)
        timings: dict[str, float] = {}
        for first in range(0, len(tiles), step):
            chunk = tiles[first:first + step]
            windows = [image[top:top + height, left:left + width] for top, left, height, width in
                       (t.window for t in chunk)]
            done = self._run_placed(windows, [place(w.shape[:2], self.sizes, "none") for w in windows], thresholds)
            for t, result in zip(chunk, done, strict=True):
                if result.confidence is None:
                    confidence = None
                stitch(labels, stage_map, confidence, t, result)
            for name, ms in done[0].timings.items():
                timings[name] = timings.get(name, 0.0) + ms
        timings["total"] = (time.perf_counter() - started) * 1e3
        return CascadeResult(labels, stage_map, stage_fractions(stage_map), timings, confidence)

    def stream(self, source: str | Path | Iterable[np.ndarray | Image.Image], rho: RhoLike | None = None,
               resize: str | None = None, realtime: bool | None = None,
               open_timeout_s: float = 10.0, rho_class: RhoClassLike | None = None,
               target_fps: float | None = None) -> Iterator[FrameResult]:
        """Segment every frame of a video file, URL (rtsp://, udp://, tcp://, http(s)://...), V4L2 camera
        (/dev/videoN) or iterable of (H, W, 3) uint8 frames / PIL images: one
        :class:`~layercascade.runtime.video.FrameResult` per frame, in order.

        Frames are decoded in a thread of their own into a bounded queue and run in batches as the model's
        batch capacity allows (``runtime/video``; files and URLs need PyAV: ``pip install
        'layercascade[video]'``). ``realtime`` (default: for live sources) drops the frames the cascade cannot
        keep up with; a file never drops one. A source that cannot be opened (within ``open_timeout_s``
        seconds) is a one-line :class:`~layercascade.errors.LCError` here; one that fails mid-way ends the frames
        with a :class:`~layercascade.runtime.video.SourceStoppedWarning`; closing the generator stops the decoding.
        ``rho`` and ``rho_class``: as :meth:`__call__` takes them, for every frame. ``target_fps``: keep that many
        frames per second by lowering (ρ₂, ρ₃) along the frontier lc-tune recorded in the model dir, in place of
        ``rho`` (each result's ``rho`` says what it ran at; docs/run.md).
        """
        from layercascade.runtime.video import stream

        return stream(self, source, rho=rho, resize=resize, realtime=realtime, open_timeout_s=open_timeout_s,
                      rho_class=rho_class, target_fps=target_fps)

    def predict(self, image: np.ndarray, rho: RhoLike, resize: str | None = None,
                rho_class: RhoClassLike | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """A predictor for ``model.evaluate``: labels, stage fractions and stage-resolution pixels of one image."""
        result = self(image, rho, resize, rho_class=rho_class)
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


def stage_map_of(out: StageOutputs, index: int) -> np.ndarray:
    """The stage that decided each stage-resolution pixel of image ``index`` of a run: 1, 2 or 3."""
    return (1 + (out.mask2[index, 0] > 0) + (out.mask3[index, 0] > 0)).astype(np.uint8)


def stitch(labels: np.ndarray, stage_map: np.ndarray, confidence: np.ndarray | None, tile: Tile,
           result: CascadeResult) -> None:
    """Copy a window's labels inside its core into the image's, and the stage pixels whose centres lie in its core
    into the image's stage map and confidence (unless None) (a window need not start on the stage grid: its nearest
    stage pixel is taken)."""
    top, left, _, _ = tile.window
    core_top, core_left, core_bottom, core_right = tile.core
    labels[core_top:core_bottom, core_left:core_right] = result.labels[core_top - top:core_bottom - top,
                                                                       core_left - left:core_right - left]
    height, width = labels.shape

    def covered(start: int, end: int, length: int, offset: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
        centres = np.minimum(np.arange(-(-length // SCALE)) * SCALE + SCALE // 2, length - 1)
        inside = np.nonzero((centres >= start) & (centres < end))[0]
        return inside, np.minimum((centres[inside] - offset) // SCALE, cells - 1)

    rows, window_rows = covered(core_top, core_bottom, height, top, result.stage_map.shape[0])
    columns, window_columns = covered(core_left, core_right, width, left, result.stage_map.shape[1])
    stage_map[np.ix_(rows, columns)] = result.stage_map[np.ix_(window_rows, window_columns)]
    if confidence is not None:
        confidence[np.ix_(rows, columns)] = result.confidence[np.ix_(window_rows, window_columns)]
