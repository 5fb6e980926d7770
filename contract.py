"""The stage graph contract: the tensor names that join the three stage graphs, and ρ's range.

Every exported model dir follows it (``export/stages.py`` writes it, ``lc.json`` records the
shapes and dtypes), and every backend, the calibration and the benchmarks read it by these
names; the package writes the names nowhere else.

* stage 1: ``image`` uint8 (N, H, W, 3) RGB, ``rho`` float (1,) → ``feat1``, ``scores1``, ``mask2``;
  its ``rho`` is ρ₂, the threshold of ``mask2``;
* stage 2: ``feat1``, ``mask2``, ``rho`` → ``feat2``, ``scores2``, ``mask3``; its ``rho`` is ρ₃;
* stage 3: ``feat2``, ``mask3``, ``scores1``, ``scores2``, ``mask2`` → ``labels`` uint8 (N, H, W),
  ``stage_counts`` int64 (N, 3), the pixels decided at each stage, and ``confidence`` float32 (N, h, w), the
  max softmax probability of the fused scores (those of the stage that decided the pixel) at the stage
  resolution; a model dir exported before it (``lc.json`` version 2) has no ``confidence`` and runs without;
* the dense graph: ``image`` → ``labels``.

Masks are float 0/1 at the stage resolution (N, 1, h, w); ρ is an input, never a constant
(docs/export.md). Where the stages run joined (the cascade graph, TensorRT's shared buffers) the
two ``rho`` inputs are ``rho2`` and ``rho3``. A run's threshold is the pair (ρ₂, ρ₃); one ρ means
both.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from layercascade.errors import fail

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
