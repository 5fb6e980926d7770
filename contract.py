"""The stage graph contract: the tensor names that join the three stage graphs, and ρ's range.

Every exported model dir follows it (``export/stages.py`` writes it, ``lc.json`` records the
shapes and dtypes), and every backend, the calibration and the benchmarks read it by these
names; the package writes the names nowhere else.

* stage 1: ``image`` uint8 (N, H, W, 3) RGB, ``rho`` float (1,) → ``feat1``, ``scores1``, ``mask2``;
* stage 2: ``feat1``, ``mask2``, ``rho`` → ``feat2``, ``scores2``, ``mask3``;
* stage 3: ``feat2``, ``mask3``, ``scores1``, ``scores2``, ``mask2`` → ``labels`` uint8 (N, H, W)
  and ``stage_counts`` int64 (N, 3), the pixels decided at each stage;
* the dense graph: ``image`` → ``labels``.

Masks are float 0/1 at the stage resolution (N, 1, h, w); ρ is an input, never a constant
(docs/export.md).
"""

from __future__ import annotations

from layercascade.errors import fail

IMAGE = "image"
RHO = "rho"
FEAT1, SCORES1, MASK2 = "feat1", "scores1", "mask2"
FEAT2, SCORES2, MASK3 = "feat2", "scores2", "mask3"
LABELS = "labels"
STAGE_COUNTS = "stage_counts"

# The dtypes the contract fixes (the others follow the model's precision).
DTYPES = {IMAGE: "uint8", RHO: "float32", LABELS: "uint8", STAGE_COUNTS: "int64"}
MASKS = (MASK2, MASK3)
STAGE_INPUTS = ((IMAGE, RHO), (FEAT1, MASK2, RHO), (FEAT2, MASK3, SCORES1, SCORES2, MASK2))
STAGE_OUTPUTS = ((FEAT1, SCORES1, MASK2), (FEAT2, SCORES2, MASK3), (LABELS, STAGE_COUNTS))
DENSE_INPUTS, DENSE_OUTPUTS = (IMAGE,), (LABELS,)


def check_rho(rho: float) -> float:
    """``rho`` as a float, or a one-line error when it is outside (0, 1]."""
    if not 0.0 < float(rho) <= 1.0:
        fail(f"rho must be in (0, 1], got {rho}")
    return float(rho)


def rho_or_default(rho: float | None, default: float) -> float:
    """The threshold a run uses: ``rho`` when given, else the model's ``default``; checked either way."""
    return check_rho(default if rho is None else rho)
