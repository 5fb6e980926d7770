"""Holding a latency target by trading ρ: :class:`RhoController` moves along the frontier lc-tune measured
(latency against mIoU, recorded in the tuned model dir's ``lc.json``) towards faster thresholds when requests
would miss the target and back towards accurate ones when there is headroom. lc-serve ``--target-ms`` gives each
replica one; a live video source keeps real time with ``target_ms = 1000 / F`` for F frames per second, observing
each frame's processing time and the frames waiting behind it (docs/serving.md, "Latency target").

Pure Python: no clock (latencies are passed in, so the same observations give the same choices), no Ray, no
numpy. The frontier is read from untrusted input (:func:`read_frontier`): bounded, finite, ρ in (0, 1].
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from layercascade.contract import Rho, check_rho, rho_value
from layercascade.errors import LCError, fail
from layercascade.manifest import MANIFEST, read_json

# A frontier longer than this is not lc-tune's (its default grid gives a few dozen settings in all).
MAX_FRONTIER_POINTS = 1000
# A failed climb doubles the wait before the next, up to this many times the patience.
MAX_BACKOFF = 16
# A latency (ms) or mIoU (%) beyond these is not a measurement.
MAX_MS = 3_600_000.0
MAX_MIOU = 100.0
TUNE_FIRST = "run lc-tune on it first (lc-tune DIR --data SPEC --max-miou-drop 0 -o DIR_TUNED; docs/tune.md)"


@dataclass(frozen=True)
class FrontierPoint:
    """One setting of the frontier: thresholds, median ms per run of the model's batch, mIoU (%)."""

    rho: Rho
    median_ms: float
    miou: float


@dataclass(frozen=True)
class Frontier:
    """lc-tune's frontier, most accurate (slowest) first, every point faster and less accurate than the one
    before; ``reference_miou`` is the mIoU of the model's default thresholds when it was tuned (an answer's mIoU
    cost is measured against it), ``measured_on`` says where (backend, machine, batch, size)."""

    points: tuple[FrontierPoint, ...]
    reference_rho: Rho
    reference_miou: float
    reference_ms: float
    measured_on: dict[str, Any]

    def cost(self, point: FrontierPoint) -> float:
        """The expected mIoU cost of ``point``: the reference's mIoU minus its own, in points (negative: more
        accurate than the reference)."""
        return round(self.reference_miou - point.miou, 4) + 0.0

    def find(self, rho: Rho) -> int | None:
        """The index of the point at ``rho``, None if ``rho`` is not on the frontier."""
        return next((k for k, point in enumerate(self.points) if point.rho == rho), None)

    def summary(self) -> dict[str, Any]:
        """For ``GET /v1/model``: the points with their costs, the reference and where it was measured."""
        return {"points": [{"rho": rho_value(p.rho), "median_ms": p.median_ms, "miou": p.miou,
                            "expected_miou_cost": self.cost(p)} for p in self.points],
                "reference": {"rho": rho_value(self.reference_rho), "median_ms": self.reference_ms,
                              "miou": self.reference_miou},
                "measured_on": self.measured_on}


def _number(value: object, low: float, high: float) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def read_frontier(manifest: dict[str, Any], source: str | Path) -> Frontier:
    """The frontier of a tuned model dir's ``lc.json`` (``tuning.frontier``, ``tuning.previous_default``), checked
    as untrusted input: at most :data:`MAX_FRONTIER_POINTS` points, each ``rho`` one or two numbers in (0, 1],
    ``median_ms`` a finite positive number, ``miou`` in [0, 100]. Points are sorted (most accurate first), a
    repeated ρ kept once (the faster measurement), and any point another beats (as fast or faster and as accurate
    or more) dropped, so the result is a frontier whatever the file holds. One line if there is no frontier or it is
    malformed."""
    tuning = manifest.get("tuning")
    if not isinstance(tuning, dict) or "frontier" not in tuning:
        fail(f"{source}: records no latency frontier (lc-tune records one in the dirs it writes); {TUNE_FIRST}")

    def wrong(field: str, what: str) -> NoReturn:
        value = json.dumps(tuning.get(field))
        fail(f"{source}: tuning.{field} {value[:80]}{'…' if len(value) > 80 else ''} is not {what}; {TUNE_FIRST}")

    def threshold(value: object, field: str) -> Rho:
        try:
            return check_rho(value)
        except LCError:
            wrong(field, "made of points whose rho is R or [R2, R3], numbers in (0, 1]")

    raw = tuning["frontier"]
    if not (isinstance(raw, list) and 0 < len(raw) <= MAX_FRONTIER_POINTS):
        wrong("frontier", f"a list of 1 to {MAX_FRONTIER_POINTS} points")
    points = []
    for entry in raw:
        if not (isinstance(entry, dict) and _number(entry.get("median_ms"), 1e-6, MAX_MS)
                and _number(entry.get("miou"), 0.0, MAX_MIOU)):
            wrong("frontier", 'a list of {"rho": R or [R2, R3], "median_ms": ms > 0, "miou": 0..100}')
        points.append(FrontierPoint(threshold(entry.get("rho"), "frontier"), float(entry["median_ms"]),
                                    float(entry["miou"])))
    reference = tuning.get("previous_default")
    if not (isinstance(reference, dict) and _number(reference.get("median_ms"), 1e-6, MAX_MS)
            and _number(reference.get("miou"), 0.0, MAX_MIOU)):
        wrong("previous_default", 'a point {"rho": ..., "median_ms": ms > 0, "miou": 0..100}')
    reference_rho = threshold(reference.get("rho"), "previous_default")
    front: list[FrontierPoint] = []  # fastest first; each kept point more accurate than the one before
    seen: set[Rho] = set()
    for point in sorted(points, key=lambda p: (p.median_ms, -p.miou)):
        if point.rho not in seen and (not front or point.miou > front[-1].miou):
            front.append(point)
        seen.add(point.rho)
    measured_on = {key: tuning[key] for key in ("backend", "machine", "batch", "size")
                   if isinstance(tuning.get(key), (str, int, list)) and len(json.dumps(tuning[key])) <= 300}
    return Frontier(tuple(reversed(front)), reference_rho, float(reference["miou"]), float(reference["median_ms"]),
                    measured_on)


def read_model_frontier(model_dir: str | Path) -> Frontier:
    """:func:`read_frontier` of ``model_dir``'s ``lc.json`` (read within the manifest's bounds, not verified: the
    model's load does that)."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        fail(f"{model_dir}: not a model dir with an {MANIFEST}; a latency target needs a tuned model dir, "
             f"{TUNE_FIRST}")
    manifest = read_json(path, TUNE_FIRST)
    if not isinstance(manifest, dict):
        fail(f"{path}: not a layercascade model manifest")
    return read_frontier(manifest, path)


@dataclass(frozen=True)
class Choice:
    """What :meth:`RhoController.choose` picked: the point's ``rho``, the latency expected for a request there
    now (``expected_ms``), its ``expected_miou_cost`` (:meth:`Frontier.cost`) and its ``index`` on the frontier
    (0: the most accurate)."""

    rho: Rho
    expected_ms: float
    expected_miou_cost: float
    index: int


class RhoController:
    """A position on a :class:`Frontier`, moved by the latencies observed there, to keep requests within
    ``target_ms``.

    The model of a request's latency at point ``p``: the ``quantile`` (p90 by default) of the last ``window``
    observed latencies, each rescaled from the point it ran at to ``p`` by the ratio of their frontier latencies,
    plus the runs queued ahead of it (``queue_runs``) at ``p``'s run time on this machine (its frontier latency
    times ``scale``: the median ratio of observed run times to the frontier's, so a frontier measured on another
    machine still serves). After each :meth:`observe`:

    * **down** (faster): once ``min_samples`` latencies were seen since the last move, when the model says the
      current point would miss the target, the controller jumps to the most accurate point that would meet it
      (the fastest when none would);
    * **up** (more accurate, one point at a time): when the next more accurate point would stay within
      ``headroom`` × target for ``patience`` observations in a row. A climb to a point that has to come down
      again within that many observations doubles the wait before the next climb to that point (up to
      :data:`MAX_BACKOFF` × ``patience``); a climb that holds resets it.

    The gap between ``headroom`` and 1, the ``patience`` and its back-off are the hysteresis: a point it left
    because it was too slow is taken again only after sustained room for it, and a load the model misjudges costs
    ever rarer probes. Deterministic: the same observations give the same moves.
    """

    def __init__(self, frontier: Frontier, target_ms: float, *, window: int = 32, quantile: float = 0.9,
                 min_samples: int = 4, headroom: float = 0.7, patience: int = 32) -> None:
        if not _number(target_ms, 1e-3, MAX_MS):
            fail(f"the latency target must be a finite number of ms above 0, got {target_ms}")
        if not (window >= 1 and 0 < quantile <= 1 and 1 <= min_samples <= window and 0 < headroom <= 1
                and patience >= 1):
            raise ValueError("window ≥ 1, quantile in (0, 1], 1 ≤ min_samples ≤ window, headroom in (0, 1], "
                             "patience ≥ 1")
        self.frontier = frontier
        self.target_ms = float(target_ms)
        self.quantile = quantile
        self.min_samples = min_samples
        self.headroom = headroom
        self.patience = patience
        self.index = 0  # the most accurate point, until latencies say otherwise
        self.queue_runs = 0
        # (latency ms, frontier ms of the point it ran at) of the last observations; run time ratios apart.
        self.latencies: deque[tuple[float, float]] = deque(maxlen=window)
        self.run_ratios: deque[float] = deque(maxlen=window)
        self.since_move = 0
        self.room = 0  # observations in a row with room for the next more accurate point
        # The room needed before a climb to each point: patience, doubled by each failed climb there.
        self.climb_waits = [patience] * len(frontier.points)
        self.climbed = False  # whether the last move was a climb
        self.moves = 0

    @classmethod
    def for_fps(cls, frontier: Frontier, fps: float, **options: Any) -> RhoController:
        """A controller that keeps a live source of ``fps`` frames per second real time: a target of 1000 / ``fps``
        ms per frame (observe each frame's processing time and the frames waiting behind it)."""
        if not _number(fps, 1e-3, 1e6):
            fail(f"--target-fps must be a finite number of frames per second above 0, got {fps}")
        return cls(frontier, 1e3 / fps, **options)

    @property
    def point(self) -> FrontierPoint:
        return self.frontier.points[self.index]

    @property
    def scale(self) -> float:
        """This machine's run time over the frontier's (1 until a run time was observed)."""
        if not self.run_ratios:
            return 1.0
        ordered = sorted(self.run_ratios)
        return ordered[len(ordered) // 2]

    def expected_ms(self, index: int, queue_runs: int | None = None) -> float:
        """The latency the model expects for a request at the point ``index`` now (class docstring)."""
        queue_runs = self.queue_runs if queue_runs is None else queue_runs
        point_ms = self.frontier.points[index].median_ms
        if self.latencies:
            rescaled = sorted(latency * point_ms / ran_ms for latency, ran_ms in self.latencies)
            recent = rescaled[min(len(rescaled) - 1, max(0, math.ceil(self.quantile * len(rescaled)) - 1))]
        else:
            recent = self.scale * point_ms
        return recent + queue_runs * self.scale * point_ms

    def observe(self, latency_ms: float, queue_runs: int = 0, run_ms: float | None = None,
                rho: Rho | None = None) -> None:
        """A request (or a frame) took ``latency_ms`` from arrival to answer at ``rho`` (default: the current
        point; a ρ off the frontier teaches nothing and is ignored), of which the model's run took ``run_ms``
        (when known); ``queue_runs`` runs of the model wait behind it now. Then move if the rules say so."""
        index = self.index if rho is None else self.frontier.find(rho)
        measured = _number(latency_ms, 0.0, math.inf) and (run_ms is None or _number(run_ms, 0.0, math.inf))
        if index is None or not measured:
            return
        ran_ms = self.frontier.points[index].median_ms
        self.latencies.append((float(latency_ms), ran_ms))
        if run_ms is not None:
            self.run_ratios.append(run_ms / ran_ms)
        self.queue_runs = max(0, int(queue_runs))
        self.since_move += 1
        self.step()

    def step(self) -> None:
        if self.since_move >= self.min_samples and self.expected_ms(self.index) > self.target_ms:
            if self.climbed and self.since_move < self.climb_waits[self.index]:  # a climb here failed soon
                self.climb_waits[self.index] = min(2 * self.climb_waits[self.index], MAX_BACKOFF * self.patience)
            meeting = [k for k in range(self.index + 1, len(self.frontier.points))
                       if self.expected_ms(k) <= self.target_ms]
            self.move(meeting[0] if meeting else len(self.frontier.points) - 1, climb=False)
            return
        if self.climbed and self.since_move >= self.climb_waits[self.index]:  # the climb here held
            self.climb_waits[self.index] = self.patience
        if self.index > 0 and self.expected_ms(self.index - 1) <= self.headroom * self.target_ms:
            self.room += 1
            if self.room >= self.climb_waits[self.index - 1]:
                self.move(self.index - 1, climb=True)
        else:
            self.room = 0

    def move(self, index: int, climb: bool) -> None:
        if index != self.index:
            self.index = index
            self.moves += 1
        self.climbed = climb
        self.since_move = 0
        self.room = 0

    def choose(self, deadline_ms: float | None = None) -> Choice:
        """The point for the next request: the current one, or with ``deadline_ms`` the most accurate point whose
        expected latency (given the current queue) meets it (the fastest when none does)."""
        if deadline_ms is None:
            index = self.index
        else:
            meeting = [k for k in range(len(self.frontier.points)) if self.expected_ms(k) <= deadline_ms]
            index = meeting[0] if meeting else len(self.frontier.points) - 1
        point = self.frontier.points[index]
        return Choice(point.rho, round(self.expected_ms(index), 3), self.frontier.cost(point), index)

    def describe(self) -> dict[str, Any]:
        """The target, the current point and the frontier (``Frontier.summary``), for ``GET /v1/model``."""
        return {"target_ms": self.target_ms, "rho": rho_value(self.point.rho), "moves": self.moves,
                "frontier": self.frontier.summary()}

