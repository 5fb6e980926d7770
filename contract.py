"""The stage graph contract: the tensor names that join the three stage graphs, and ρ's range.

Every exported model dir follows it (``export/stages.py`` writes it, ``lc.json`` records the
shapes and dtypes), and every backend, the calibration and the benchmarks read it by these
names; the package writes the names nowhere else.

* stage 1: ``image`` uint8 (N, H, W, 3) RGB, ``rho`` float (C,) → ``feat1``, ``scores1``, ``mask2``;
  its ``rho`` is ρ₂ per class (C classes), the thresholds of ``mask2``;
* stage 2: ``feat1``, ``mask2``, ``rho`` → ``feat2``, ``scores2``, ``mask3``; its ``rho`` is ρ₃;
* stage 3: ``feat2``, ``mask3``, ``scores1``, ``scores2``, ``mask2`` → ``labels`` uint8 (N, H, W),
  ``stage_counts`` int64 (N, 3), the pixels decided at each stage, and ``confidence`` float32 (N, h, w), the
  max softmax probability of the fused scores (those of the stage that decided the pixel) at the stage
  resolution; a model dir exported before it (``lc.json`` version 2) has no ``confidence`` and runs without;
* the dense graph: ``image`` → ``labels``.

Masks are float 0/1 at the stage resolution (N, 1, h, w); ρ is an input, never a constant
(docs/export.md). Where the stages run joined (the cascade graph, TensorRT's shared buffers) the
two ``rho`` inputs are ``rho2`` and ``rho3``. A run's threshold is the pair (ρ₂, ρ₃); one ρ means
both. Per-class thresholds (``rho_class``, class → ρ_c) override both for pixels whose stage winner is that
class: a pixel goes on when its confidence ≤ ``rho[argmax(scores)]``. The graphs take the two as float32 vectors
of one threshold per class (:func:`rho_vectors`); graphs exported before per-class thresholds take ``rho`` of
shape (1,) and run uniform thresholds only (:func:`stage_rho`).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from layercascade.errors import LCError, fail

IMAGE = "image"
RHO = "rho"
# The stage graphs' ``rho`` inputs where the stages are joined: stage 1's (ρ₂), stage 2's (ρ₃).
RHO2, RHO3 = "rho2", "rho3"
STAGE_RHOS = (RHO2, RHO3)
FEAT1, SCORES1, MASK2 = "feat1", "scores1", "mask2"
FEAT2, SCORES2, MASK3 = "feat2", "scores2", "mask3"
LABELS = "labels"
STAGE_COUNTS = "stage_counts"
CONFIDENCE = "confidence"

# The dtypes the contract fixes (the others follow the model's precision).
DTYPES = {IMAGE: "uint8", RHO: "float32", LABELS: "uint8", STAGE_COUNTS: "int64", CONFIDENCE: "float32"}
MASKS = (MASK2, MASK3)
STAGE_INPUTS = ((IMAGE, RHO), (FEAT1, MASK2, RHO), (FEAT2, MASK3, SCORES1, SCORES2, MASK2))
STAGE_OUTPUTS = ((FEAT1, SCORES1, MASK2), (FEAT2, SCORES2, MASK3), (LABELS, STAGE_COUNTS, CONFIDENCE))
# The outputs a model dir exported by an earlier layercascade may lack (the rest of the cascade runs without).
OPTIONAL_OUTPUTS = frozenset({CONFIDENCE})
DENSE_INPUTS, DENSE_OUTPUTS = (IMAGE,), (LABELS,)


# The symbolic dimensions of a dynamic-size export (lc-export --dynamic-size): the image's height and width
# (multiples of 8), and the stage resolution's (an eighth of them).
DYNAMIC_DIMS = ("height", "width")
DYNAMIC_STAGE_DIMS = ("stage_height", "stage_width")


# (ρ₂, ρ₃): the thresholds of M₂ (stage 1 → 2) and M₃ (stage 2 → 3).
Rho = tuple[float, float]
# What the API takes for them: one ρ for both stages, or (ρ₂, ρ₃).
RhoLike = float | Sequence[float]
# Per-class thresholds as the API takes them: class name (or index) → ρ_c; checked, class index → ρ_c.
RhoClassLike = Mapping[str | int, float]
RhoClass = dict[int, float]
# What the stage graphs take per run: ρ₂ and ρ₃ per class, float32 vectors (C,) (graphs exported before per-class
# thresholds: (1,)).
RhoVectors = tuple[np.ndarray, np.ndarray]
BEFORE_PER_CLASS = "exported before per-class thresholds; re-export it with lc-export"


def check_threshold(value: float) -> float:
    """One threshold as a float, or a one-line error when it is not a number in (0, 1] (nan is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value <= 1.0:
        fail(f"rho must be a number in (0, 1], got {value!r}")
    return float(value)


def check_rho(rho: RhoLike) -> Rho:
    """(ρ₂, ρ₃) from one ρ (both stages) or a pair, each checked to lie in (0, 1]; else a one-line error."""
    if isinstance(rho, (str, bytes)) or not isinstance(rho, Sequence):
        value = check_threshold(rho)
        return value, value
    if len(rho) != 2:
        fail(f"rho must be one threshold or two (rho2, rho3), got {len(rho)}: {list(rho)}")
    return check_threshold(rho[0]), check_threshold(rho[1])


def rho_or_default(rho: RhoLike | None, default: RhoLike) -> Rho:
    """The thresholds a run uses: ``rho`` when given, else the model's ``default``; checked either way."""
    return check_rho(default if rho is None else rho)


def rho_from_text(text: str) -> Rho:
    """``R`` (both stages) or ``R2,R3`` (stage 1 → 2, stage 2 → 3) → (ρ₂, ρ₃), each a number in (0, 1];
    else a one-line error."""
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(parts) > 2 or not values:
        fail(f"rho must be R or R2,R3 with numbers in (0, 1], got {text!r}")
    return check_rho(values[0] if len(values) == 1 else values)


def rho_value(rho: RhoLike) -> float | list[float]:
    """``rho`` for a report (JSON): one number when both stages share it, else [ρ₂, ρ₃]."""
    rho2, rho3 = check_rho(rho)
    return rho2 if rho2 == rho3 else [rho2, rho3]


def format_rho(rho: RhoLike) -> str:
    """``rho`` (e.g. a report's :func:`rho_value`) as ``--rho`` takes it: ``0.985``, or ``0.9,0.97`` when the
    stages differ."""
    rho2, rho3 = check_rho(rho)
    return f"{rho2:g}" if rho2 == rho3 else f"{rho2:g},{rho3:g}"


def check_rho_class(rho_class: RhoClassLike | None, classes: Sequence[str]) -> RhoClass:
    """Per-class thresholds by class index: each key a class name of ``classes`` (or an index into it), each
    value in (0, 1]; else a one-line error (an unknown name lists the classes)."""
    checked: RhoClass = {}
    for key, value in (rho_class or {}).items():
        if isinstance(key, str) and key in classes:
            index = classes.index(key)
        elif isinstance(key, numbers.Integral) and not isinstance(key, bool) and 0 <= key < len(classes):
            index = int(key)
        else:
            fail(f"rho_class: {key!r} is not a class of this model ({', '.join(classes)})")
        try:
            checked[index] = check_threshold(value)
        except LCError:
            fail(f"rho_class: {key}={value!r}: a threshold must be a number in (0, 1] (1: never stops early)")
    return checked


def rho_class_from_text(text: str, separator: str = "=") -> dict[str, float]:
    """``NAME=R[,NAME=R…]`` (``separator`` between name and value) → {name: R}, each R a number in (0, 1];
    else a one-line error. The names are checked against a model's classes later (:func:`check_rho_class`)."""
    parsed: dict[str, float] = {}
    for part in text.split(","):
        name, found, value = part.strip().rpartition(separator)
        try:
            number = float(value)
        except ValueError:
            number = None
        if not found or not name or number is None:
            fail(f"rho_class must be NAME{separator}R[,NAME{separator}R...] with R in (0, 1], got {text[:80]!r}")
        if not 0.0 < number <= 1.0:
            fail(f"rho_class: {name}{separator}{value}: a threshold must be a number in (0, 1] (1: never stops early)")
        parsed[name] = number
    return parsed


def threshold_count(manifest: Mapping[str, Any]) -> int:
    """How many thresholds each stage graph's ``rho`` takes, by ``lc.json``: one per class, or 1 for graphs
    exported before per-class thresholds (stage 1's ``rho`` of shape [1], lc.json version 2 and older). A manifest
    without stage graphs (the torch backend's, of a checkpoint) runs per-class thresholds."""
    stages = manifest.get("stages")
    inputs = stages[0].get("inputs") if isinstance(stages, list) and stages and isinstance(stages[0], dict) else None
    for spec in inputs if isinstance(inputs, list) else []:
        if isinstance(spec, dict) and spec.get("name") == RHO and spec.get("shape") == [1]:
            return 1
    return len(manifest["classes"])


def rho_vectors(rho: Rho, rho_class: RhoClass, num_classes: int) -> RhoVectors:
    """The stage graphs' ``rho`` inputs of a run: ρ₂ and ρ₃ per class, each class of ``rho_class`` at its own."""
    vectors = tuple(np.full(num_classes, r, np.float32) for r in rho)
    for index, value in rho_class.items():
        for vector in vectors:
            vector[index] = value
    return vectors


def stage_rho(value: np.ndarray | float, length: int, source: object = "this model") -> np.ndarray:
    """One stage's thresholds (a vector of :func:`rho_vectors`, or one number) as a graph whose ``rho`` has
    ``length`` entries takes them: a graph of one threshold (exported before per-class thresholds) takes a uniform
    vector's one value; asked for per-class ones it is one line."""
    vector = np.asarray(value, np.float32).reshape(-1)
    if len(vector) == length:
        return vector
    if len(vector) == 1:
        return np.full(length, vector[0], np.float32)
    if length == 1 and np.all(vector == vector[0]):
        return vector[:1].copy()
    if length == 1:
        refuse_per_class(source)
    fail(f"{source}: its graphs take {length} thresholds per stage, got {len(vector)}")


def refuse_per_class(source: object) -> NoReturn:
    """The one line for per-class thresholds asked of a model whose graphs take one threshold per stage."""
    fail(f"{source}: per-class thresholds (rho_class) need a model that takes them; it was {BEFORE_PER_CLASS}")


def rho_class_value(rho_class: RhoClass, classes: Sequence[str]) -> dict[str, float]:
    """``rho_class`` for a report (JSON): class name → ρ_c."""
    return {classes[index]: value for index, value in sorted(rho_class.items())}


def format_rho_class(rho_class: Mapping[str, float]) -> str:
    """Per-class thresholds by name (a report's :func:`rho_class_value`) as ``--rho-class`` takes them:
    ``person=1,car=0.9``."""
    return ",".join(f"{name}={value:g}" for name, value in rho_class.items())
