"""The backends: one :class:`~layercascade.runtime.backend.BackendSpec` each, declared in its own subpackage
(``runtime/<backend>/__init__.py``) and listed here once, in ``--backend auto``'s order of preference.

``Cascade.load``, lc-doctor, lc-bench and the commands' ``--backend`` and ``--precision`` choices read this
list; nothing else names the backends. A static tuple, not a registry filled on import: what it holds does not
depend on what was imported before. Importing it loads no backend library (the specs are cheap).
"""

from __future__ import annotations

import math
from pathlib import Path

from layercascade.errors import LCError, fail
from layercascade.manifest import read_manifest
from layercascade.runtime.backend import PRECISIONS, BackendSpec
from layercascade.runtime.openvino import SPEC as OPENVINO
from layercascade.runtime.ort import SPEC as ORT
from layercascade.runtime.torch import SPEC as TORCH
from layercascade.runtime.trt import SPEC as TRT

AUTO = "auto"
# auto takes the first that claims the source (TensorRT engine dirs, torch checkpoints); for a model dir, the
# first that fits the device and settings, is installed and compiles it: OpenVINO was measured the faster CPU
# engine at its default precision and at int8, ONNX Runtime at fp32 (docs/openvino.md).
BACKENDS: tuple[BackendSpec, ...] = (OPENVINO, ORT, TRT, TORCH)
# What auto falls back to when no faster backend fits: the exact fp32 reference.
REFERENCE = ORT
CHOICES = (AUTO, *(spec.name for spec in BACKENDS))
PRECISION_CHOICES = tuple(p for p in PRECISIONS if any(p in spec.precisions for spec in BACKENDS))


def backend_spec(name: str) -> BackendSpec:
    """The spec of the backend ``name`` (one line for an unknown name)."""
    for spec in BACKENDS:
        if spec.name == name:
            return spec
    fail(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")


def claimed_by(source: str | Path | None) -> BackendSpec | None:
    """The backend that alone runs ``source`` (an engine dir: TensorRT; a checkpoint: torch), or None (a model dir,
    or the bundled demo for ``None``)."""
    if source is None:
        return None
    return next((spec for spec in BACKENDS if spec.claims is not None and spec.claims(Path(source))), None)


def auto_candidates(source: str | Path | None, device: str = "cpu", options: dict | None = None) -> list[BackendSpec]:
    """What ``--backend auto`` tries for ``source``, in order: the backend that claims it, else
    :func:`model_dir_candidates` for its work per image. Whether each is installed and compiles the model is
    ``Cascade.load``'s to find out."""
    owner = claimed_by(source)
    return [owner] if owner is not None else model_dir_candidates(model_gmacs(source), device, options)


def model_dir_candidates(gmacs: float, device: str = "cpu", options: dict | None = None) -> list[BackendSpec]:
    """The backends ``--backend auto`` tries, in order, for a model dir of ``gmacs`` per image: those that fit
    ``device`` and ``options`` (the precision asked included) and whose ``auto_min_gmacs`` it reaches, fastest
    first, or the reference (whose loader then names what it does not take)."""
    return [spec for spec in BACKENDS if spec.fits(device, options or {}) and gmacs >= spec.auto_min_gmacs] or [REFERENCE]


def model_gmacs(source: str | Path | None) -> float:
    """The GMACs per image of a model dir's three stages with every pixel in each (its dense network's work, and
    its heads'), at its (nominal) input size, from ``lc.json``'s ``stage_gmacs``: what ``--backend auto`` weighs
    each backend's per-run overhead against (infinite when they cannot be read: the loader then says what is
    wrong)."""
    from layercascade.runtime.inputs import DEMO_MODEL

    try:
        manifest = read_manifest(DEMO_MODEL if source is None else source, verify=False)
        return float(sum(stage["backbone"] + stage["head"] for stage in manifest["stage_gmacs"]))
    except (LCError, KeyError, TypeError, ValueError):
        return math.inf


def auto_backend(source: str | Path | None, device: str = "cpu", options: dict | None = None) -> str:
    """The backend ``--backend auto`` picks for ``source``: the first candidate installed here (``Cascade.load``
    still passes to the next where it cannot compile the model)."""
    candidates = auto_candidates(source, device, options)
    return next((spec for spec in candidates if spec.installed()), candidates[-1]).name


def profilers() -> dict[str, str]:
    """backend → what lc-bench ``--profile`` reads on it, for the backends that have a profiler."""
    return {spec.name: spec.profiler for spec in BACKENDS if spec.profiler}
