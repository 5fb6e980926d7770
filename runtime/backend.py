"""What a backend is (:class:`BackendSpec`, one per backend, declared in its subpackage's ``__init__`` and
listed in ``runtime/registry.py``) and what every backend gives the cascade (:class:`StagedBackend`): a ``run``
over the three stages, a dense runner, a description of the machine it runs on, and ``close``.

A backend is a loader (``runtime/<backend>/loader.py``: prepares graphs, sessions or engines)
and a runner (runs them), the way Polygraphy splits its backends. Runners take and return arrays
of the backend (numpy for ONNX Runtime; device buffers for torch / TensorRT may stay on the
device between stages); ``run`` returns host numpy arrays of the label map, the masks and the
per-stage counts only. ``run_stages`` chains the stage runners one by one and times each;
backends with a faster whole-cascade path (ONNX Runtime's joined session, torch and TensorRT
device-resident pipelines) override ``run`` and keep ``StageOutputs`` as its return type.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from layercascade.contract import (
    CONFIDENCE,
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
    RhoVectors,
    stage_rho,
    threshold_count,
)
from layercascade.errors import LCError, fail

Masks = tuple[np.ndarray, np.ndarray]
# lc-doctor's probe results by probe name (runtime/doctor.py PROBES): {"ok": bool, "detail": str, ...}.
Probes = Mapping[str, Mapping[str, Any]]
# The precisions, in the order help texts and reports list them; fp32, fp16 and bf16 are the float class.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def model_precision(manifest: dict[str, Any]) -> str:
    """What a model dir's graphs compute in: int8 for an INT8 dir from lc-calibrate, else fp32."""
    return "int8" if "quantization" in manifest else "fp32"


def precision_class(precision: str) -> str:
    """The precision class lc-bench compares peers within: int8, or float for fp32, fp16 and bf16."""
    return "int8" if precision == "int8" else "float"


class BackendCannotRun(LCError):
    """The backend is not installed here, or cannot compile this model: ``--backend auto`` passes to the next."""


class BackendFallbackWarning(UserWarning):
    """``--backend auto`` passed over a faster backend (not installed, or unable to compile the model)."""


def cpu_only(probes: Probes) -> list[str]:
    return ["cpu"]


@dataclass(frozen=True)
class BackendSpec:
    """What one backend is and can do. Each backend declares one in its subpackage's ``__init__`` (cheap: no
    heavy import) and ``runtime/registry.py`` lists them; ``Cascade.load``, ``lc-doctor``, ``lc-bench`` and the
    commands' ``--backend`` and ``--precision`` choices read them, nothing else lists backends.

    Attributes:
        name: the ``--backend`` choice and ``Cascade.backend``.
        label: its name in messages.
        loader: the module with ``load(source, device, lower, threads, **options) -> (path, manifest, backend)``,
            imported only when the backend is chosen.
        modules: the Python packages it needs (a loader import that misses one is one line with ``install``).
        install: how to install them.
        probes: lc-doctor's probes (``runtime/doctor.py`` PROBES) it needs, in order; the first that fails is
            why it cannot run here.
        usable_devices: the devices it runs on here, from lc-doctor's probe results (all of ``probes`` ok).
        devices: the ``--device`` values ``--backend auto`` may pick it for (its loader checks its own).
        options: the ``Cascade.load`` settings it takes beyond device, lowering and threads.
        options_hint: said after the refusal of a setting it does not have.
        precisions: the ``--precision`` values it takes; ``precision_note`` says how (``--precision`` help).
        auto: the precisions asked for (None: none) at which ``--backend auto`` may pick it for a model dir;
            () for a backend auto picks only for the sources it ``claims``.
        auto_min_gmacs: ``--backend auto`` passes over it for a model dir whose dense network costs fewer GMACs
            per image (at its input size) than this: there its per-run overhead outweighs its faster kernels.
        claims: the sources only it runs (TensorRT engine dirs, torch checkpoints); ``claimed`` says what
            such a source is, in messages. None: it runs model dirs.
        profiler: what its ``kernel_profile`` reads (lc-bench ``--profile``); None: it has none.
        peer: ``"module:function"``, ``function(source, manifest, threads) -> (runner, precision)``: the dense
            network of a model dir as a user would run it with this runtime alone (lc-bench ``--peers``).
        peer_int8: its peer runs an INT8 dir's quantized ``dense.onnx`` too.
        environment: variables set (unless set already) before its modules load.
    """

    name: str
    label: str
    loader: str
    modules: tuple[str, ...]
    install: str
    probes: tuple[str, ...]
    usable_devices: Callable[[Probes], list[str]] = cpu_only
    devices: tuple[str, ...] = ("cpu",)
    options: tuple[str, ...] = ()
    options_hint: str = ""
    precisions: tuple[str, ...] = ()
    precision_note: str = ""
    auto: tuple[str | None, ...] = ()
    auto_min_gmacs: float = 0.0
    claims: Callable[[Path], bool] | None = None
    claimed: str = ""
    profiler: str | None = None
    peer: str | None = None
    peer_int8: bool = False
    environment: tuple[tuple[str, str], ...] = ()

    def installed(self) -> bool:
        """Whether the packages it needs are installed (found, not imported)."""
        return all(importlib.util.find_spec(module) is not None for module in self.modules)

    def import_module(self, name: str) -> ModuleType:
        """``name``, one of this backend's modules, imported with its ``environment``; a package it needs that
        is missing is one line (:class:`BackendCannotRun`)."""
        for variable, value in self.environment:
            os.environ.setdefault(variable, value)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is None or error.name.split(".")[0] not in self.modules:
                raise
            raise BackendCannotRun(f"the {self.name} backend needs {error.name}, which is not installed: "
                                   f"{self.install}") from None

    def load(self, source: str | Path | None, device: str, lower: bool, threads: int,
             options: dict[str, Any]) -> tuple[Path, dict[str, Any], StagedBackend]:
        """Its loader's ``load``, after checking ``options`` against :attr:`options`."""
        check_options(self.label, options, self.options, self.options_hint)
        return self.import_module(self.loader).load(source, device, lower, threads, **options)

    def fits(self, device: str, options: Mapping[str, Any]) -> bool:
        """Whether ``--backend auto`` may pick it for a model dir on ``device`` with ``options``."""
        return (self.claims is None and device in self.devices and set(options) <= set(self.options)
                and options.get("precision") in self.auto)

    def dense_peer(self, source: Path, manifest: dict[str, Any], threads: int) -> tuple[StageRunner, str]:
        """The dense network of ``source`` on this runtime alone, and the precision it computes in (:attr:`peer`)."""
        module, function = (self.peer or "").partition(":")[::2]
        if not function:
            fail(f"the {self.name} backend has no dense peer")
        return getattr(self.import_module(module), function)(source, manifest, threads)


@dataclass
class StageOutputs:
    """A batch through the cascade: labels (N, H, W) uint8, masks (N, 1, h, w), counts (N, 3), and the fused
    scores' max softmax probability (N, h, w) float32 (None: a model dir exported without it)."""

    labels: np.ndarray
    mask2: np.ndarray
    mask3: np.ndarray
    stage_counts: np.ndarray
    timings: dict[str, float]
    confidence: np.ndarray | None = None


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
    # What it computes in: fp32, fp16, bf16 or int8 (an INT8 dir: int8, whatever its float parts run in);
    # None where the backend does not say.
    precision: str | None = None
    # The most images one run takes where the backend takes fewer than the export allows (None: the export's).
    max_batch: int | None = None
    # What a dynamic-size export's padded sizes are rounded up to on this backend: the graphs' multiple (8), or
    # coarser where each new size costs a compile.
    size_step: int = 8
    stages: list[StageRunner]
    # How many thresholds each stage graph takes (``contract.threshold_count``): one per class, or 1 (a model
    # exported before per-class thresholds); set by backends of graphs. None: whatever it is given.
    thresholds: int | None = None
    source: Any = "this model"  # what messages name

    def to_host(self, array: Any) -> np.ndarray:
        return array

    def run(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None = None) -> StageOutputs:
        """(N, H, W, 3) uint8 images at the input size and the thresholds (ρ₂, ρ₃), each one per class
        (``contract.rho_vectors``; one number is every class's) → labels, masks, counts and confidence on the host."""
        return self.run_stages(images, rho, forced_masks)

    def run_stages(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None = None) -> StageOutputs:
        """:meth:`run` through the stage runners one after another, with each stage's time."""
        rho2, rho3 = self.threshold_feeds(rho)
        stage1, stage2, stage3 = self.stages
        started = time.perf_counter()
        out1 = stage1.infer({IMAGE: images, RHO: rho2})
        mask2 = out1[MASK2] if forced_masks is None else forced_masks[0]
        out2 = stage2.infer({FEAT1: out1[FEAT1], MASK2: mask2, RHO: rho3})
        mask3 = out2[MASK3] if forced_masks is None else forced_masks[1]
        out3 = stage3.infer({FEAT2: out2[FEAT2], MASK3: mask3, SCORES1: out1[SCORES1], SCORES2: out2[SCORES2],
                             MASK2: mask2})
        labels, counts = self.to_host(out3[LABELS]), self.to_host(out3[STAGE_COUNTS])
        confidence = self.to_host(out3[CONFIDENCE]) if CONFIDENCE in out3 else None
        total = (time.perf_counter() - started) * 1e3
        timings = {f"stage{k + 1}": runner.last_ms for k, runner in enumerate(self.stages)}
        timings["total"] = total
        return StageOutputs(labels, self.to_host(mask2), self.to_host(mask3), counts, timings, confidence)

    def threshold_feeds(self, rho: RhoVectors) -> RhoVectors:
        """ρ₂ and ρ₃ as the stage graphs take them: :attr:`thresholds` each (``contract.stage_rho``; None: as given)."""
        return tuple(stage_rho(value, self.thresholds or np.size(value), self.source) for value in rho)

    def kernel_profile(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None,
                       runs: int, warmup: int) -> dict[str, tuple[float, int]]:
        """op type → (µs, kernels) per run: the backend's own profiler (its spec's ``profiler``) over ``runs``
        runs of the cascade as ``run`` runs it, after ``warmup`` untimed ones. Backends without one keep this."""
        fail(f"the {self.name} backend has no kernel profiler")

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
        self.thresholds, self.source = threshold_count(manifest), self.model_dir
        self.joined = self.cascade_runner(forced_masks=False, graphs=graphs)

    def cascade_runner(self, forced_masks: bool, graphs: list[Any] | None = None) -> StageRunner:
        raise NotImplementedError

    def joined_graph(self, forced_masks: bool, graphs: list[Any] | None = None) -> Any:
        """The stage graphs (``graphs``, if already loaded) joined into one ONNX model."""
        from layercascade.export.graph import load_onnx

        return join_stage_graphs(self.model_dir, graphs or [load_onnx(path) for path in self.files], forced_masks)

    def feeds(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None) -> dict[str, np.ndarray]:
        """The joined graph's inputs: the images, ρ₂ and ρ₃, and the masks when forced."""
        feeds = {IMAGE: images, **dict(zip((RHO2, RHO3), self.threshold_feeds(rho)))}
        if forced_masks is not None:
            feeds[MASK2], feeds[MASK3] = forced_masks
        return feeds

    def run(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None = None) -> StageOutputs:
        runner = self.joined
        if forced_masks is not None:
            if self._forced_runner is None:
                self._forced_runner = self.cascade_runner(forced_masks=True)
            runner = self._forced_runner
        out = runner.infer(self.feeds(images, rho, forced_masks))
        masks = forced_masks or (out[MASK2], out[MASK3])
        # One graph: the stages are not timed apart (``run_stages`` does, one graph each).
        return StageOutputs(out[LABELS], masks[0], masks[1], out[STAGE_COUNTS], {"total": runner.last_ms},
                            out.get(CONFIDENCE))

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


def lowered_graph(model: Any, name: str) -> tuple[Any, bool]:
    """``model`` with its RegionConvs in compact row form (``export/lowering.py``) and whether any were lowered;
    where the lowering cannot cover it, ``model`` as it is (its function bodies run) and a warning naming ``name``."""
    from layercascade.export.lowering import LoweringUnsupported, lower_region_convs

    try:
        lowered = lower_region_convs(model)
    except LoweringUnsupported as reason:
        # Attributed here, not to the caller: a model auto passes from one backend to the next warns once.
        warnings.warn(f"{name}: running RegionConv function bodies ({reason})", stacklevel=1)
        return model, False
    return lowered, lowered is not model


def dense_file(source: Path, manifest: dict[str, Any], who: str) -> Path:
    """The dense graph of the model dir ``source`` (one line when ``source`` is not a model dir)."""
    if not source.is_dir():
        fail(f"{who}: the dense export runs from a model dir (lc-export), not from {source}")
    return source / manifest["dense"]["file"]
