"""The latency controller (runtime/control.py): its moves along the frontier under injected latencies (no clock,
no server), the per-request deadline, the scaling to another machine, and the frontier read from a hostile
lc.json."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercascade.errors import LCError
from layercascade.runtime.control import (
    MAX_FRONTIER_POINTS,
    RhoController,
    read_frontier,
    read_model_frontier,
)
from layercascade.runtime.inputs import DEMO_MODEL

# lc-tune's record: the frontier fastest first, as lc-tune writes it, and the default it measured against.
FRONTIER = [{"rho": 0.9, "median_ms": 5.0, "p90_ms": 6.0, "miou": 68.0},
            {"rho": [0.9, 0.97], "median_ms": 10.0, "p90_ms": 11.0, "miou": 70.0},
            {"rho": 0.97, "median_ms": 20.0, "p90_ms": 22.0, "miou": 71.0},
            {"rho": 1.0, "median_ms": 40.0, "p90_ms": 44.0, "miou": 72.0}]
REFERENCE = {"rho": 0.985, "median_ms": 30.0, "fps": 33.3, "miou": 71.5}


def manifest(frontier=FRONTIER, reference=REFERENCE, **extra) -> dict:
    return {"tuning": {"frontier": frontier, "previous_default": reference, "backend": "ort", "batch": 1,
                       "machine": "a CPU", "size": [160, 160], **extra}}


def controller(target_ms: float = 30.0, **options) -> RhoController:
    return RhoController(read_frontier(manifest(), "lc.json"), target_ms, **options)


def test_the_frontier_is_ordered_most_accurate_first_with_its_costs() -> None:
    frontier = read_frontier(manifest(), "lc.json")
    assert [p.rho for p in frontier.points] == [(1.0, 1.0), (0.97, 0.97), (0.9, 0.97), (0.9, 0.9)]
    assert [frontier.cost(p) for p in frontier.points] == [-0.5, 0.5, 1.5, 3.5]  # against the default's 71.5
    assert frontier.measured_on == {"backend": "ort", "machine": "a CPU", "batch": 1, "size": [160, 160]}
    summary = frontier.summary()
    assert summary["points"][0] == {"rho": 1.0, "median_ms": 40.0, "miou": 72.0, "expected_miou_cost": -0.5}
    assert summary["reference"]["rho"] == 0.985


def test_it_steps_down_when_latencies_would_miss_the_target() -> None:
    control = controller(30.0, min_samples=4)
    assert control.choose().rho == (1.0, 1.0)  # the most accurate point until latencies say otherwise
    for _ in range(3):
        control.observe(45.0)
        assert control.index == 0  # not before min_samples latencies
    control.observe(45.0)
    # 45 ms at the 40 ms point: 22.5 expected at the 20 ms one, which meets 30; the 10 ms one is not needed.
    assert control.choose().rho == (0.97, 0.97) and control.moves == 1
    choice = control.choose()
    assert choice.expected_miou_cost == 0.5 and choice.expected_ms == pytest.approx(22.5)


def test_a_deep_miss_jumps_past_several_points() -> None:
    control = controller(30.0, min_samples=1)
    control.observe(200.0)  # 5 × the frontier: only the 5 ms point (25 ms expected) meets 30
    assert control.choose().rho == (0.9, 0.9) and control.moves == 1


def test_the_queue_counts() -> None:
    control = controller(30.0, min_samples=1)
    control.observe(25.0, queue_runs=0, run_ms=20.0)  # within the target, no queue: stays
    assert control.index == 0
    control.observe(25.0, queue_runs=2, run_ms=20.0)  # two runs of 20 ms (run time ratio 0.5) behind: 25 + 40
    assert control.index > 0 and control.expected_ms(control.index) <= 30.0


def test_it_steps_up_only_after_sustained_headroom() -> None:
    control = controller(30.0, window=8, min_samples=2, headroom=0.7, patience=10)
    for _ in range(2):
        control.observe(45.0)
    assert control.index == 1  # the 20 ms point
    # 10 ms there is 20 ms at the 40 ms point: within 0.7 × 30 = 21 — but only once the 45s leave the window.
    moves = []
    for _ in range(30):
        control.observe(10.0)
        moves.append(control.index)
    assert moves[-1] == 0
    first_up = moves.index(0)
    assert first_up >= 10  # patience: not before ten observations in a row with room
    assert all(index == 1 for index in moves[:first_up])


def test_latencies_between_headroom_and_target_hold_the_point() -> None:
    """Hysteresis: a point that is neither too slow nor has room for the next one is kept, never toggled."""
    control = controller(30.0, window=8, min_samples=2, headroom=0.7, patience=5)
    for _ in range(2):
        control.observe(45.0)
    assert control.index == 1
    for _ in range(200):
        control.observe(12.0)  # 12 ms here, 24 ms expected at the 40 ms point: over 21, under 30
    assert control.index == 1 and control.moves == 1


# What each point's runs take in the tests below: the most accurate one twice its frontier latency (40 ms).
REALLY = [80.0, 10.0, 5.0, 2.5]


def test_failed_climbs_back_off() -> None:
    """A point whose frontier latency promises room it never has (its runs take twice what the frontier says): each
    climb to it comes down within a few answers, and the wait before the next climb doubles, up to its cap."""
    control = controller(30.0, window=4, min_samples=2, headroom=0.7, patience=8)
    for _ in range(2):
        control.observe(45.0)
    assert control.index == 1  # the 20 ms point: 10 ms answers there promise 20 at the 40 ms one
    climbs, previous = [], control.index
    for step in range(3000):
        latency = REALLY[control.index]
        control.observe(latency)
        if control.index == 0 and previous != 0:  # a climb to the top point
            climbs.append(step)
        previous = control.index
    gaps = [later - earlier for earlier, later in zip(climbs, climbs[1:])]
    assert len(climbs) >= 6 and gaps[0] < gaps[1] < gaps[2] < gaps[3]  # 8, 16, 32, 64 answers of room, …
    assert gaps[-1] == gaps[-2]  # … up to the cap
    assert control.climb_waits[0] == 16 * 8  # capped
    assert control.climb_waits[1:] == [8, 8, 8]  # the climbs to the 20 ms point held
    assert max(gaps) <= 16 * 8 + 40  # the capped wait, then the way back up from a lower point


def test_a_climb_that_holds_resets_the_wait() -> None:
    control = controller(30.0, window=4, min_samples=2, headroom=0.7, patience=8)
    for _ in range(2):
        control.observe(45.0)
    while control.moves < 3:  # one failed climb: 80 ms at the top
        control.observe(REALLY[control.index])
    assert control.climb_waits[0] == 16
    while control.index != 0:
        control.observe(10.0)
    for _ in range(16):  # now the top point holds (20 ms there)
        control.observe(20.0)
    assert control.index == 0 and control.climb_waits[0] == 8


def test_a_slower_machine_is_scaled() -> None:
    """A frontier measured on a machine ten times faster: the observed ratio moves the controller, and the run
    time ratio scales the queue's cost."""
    control = controller(100.0, min_samples=1)
    control.observe(400.0, run_ms=400.0)  # the 40 ms point takes 400 ms here
    assert control.scale == 10.0
    # 400 ms rescaled: 200 at the 20 ms point, 100 at the 10 ms point (meets 100 ms).
    assert control.choose().rho == (0.9, 0.97)
    assert control.expected_ms(3, queue_runs=1) == pytest.approx(50.0 + 10.0 * 5.0)


def test_the_deadline_picks_the_most_accurate_point_expected_within_it() -> None:
    control = controller(30.0)
    # No latency seen yet: the frontier's own latencies (40, 20, 10, 5 ms).
    assert control.choose(deadline_ms=1000).rho == (1.0, 1.0)
    assert control.choose(deadline_ms=25).rho == (0.97, 0.97)
    assert control.choose(deadline_ms=1).rho == (0.9, 0.9)  # none meets it: the fastest
    control.queue_runs = 2  # two runs ahead: 3 × each point's latency
    choice = control.choose(deadline_ms=25)
    assert choice.rho == (0.9, 0.9) and choice.expected_ms == 15.0 and choice.expected_miou_cost == 3.5
    assert control.index == 0  # a deadline does not move the controller


def test_observations_off_the_frontier_or_not_numbers_are_ignored() -> None:
    control = controller(30.0, min_samples=1)
    control.observe(500.0, rho=(0.5, 0.5))
    control.observe(math.nan)
    control.observe(-1.0)
    control.observe(10.0, run_ms=math.inf)
    assert control.index == 0 and not control.latencies
    control.observe(500.0, rho=(0.9, 0.9))  # 100 × the fast point's 5 ms: 4 s expected at the first
    assert control.index == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e4), st.integers(0, 50), st.one_of(st.none(), st.floats(0.01, 1e4))),
                max_size=80),
       st.floats(0.5, 500), st.one_of(st.none(), st.floats(0.01, 1e5)))
def test_never_off_the_frontier_and_deterministic(observations, target, deadline) -> None:
    first, second = controller(target, min_samples=2, patience=3), controller(target, min_samples=2, patience=3)
    rhos = {p.rho for p in first.frontier.points}
    for latency, queue, run_ms in observations:
        for control in (first, second):
            control.observe(latency, queue, run_ms)
        assert first.point.rho in rhos and first.choose(deadline).rho in rhos
        assert (first.index, first.moves, first.choose(deadline)) == (second.index, second.moves,
                                                                         second.choose(deadline))


def test_a_frontier_is_cleaned_of_repeats_and_beaten_points() -> None:
    messy = [FRONTIER[3], FRONTIER[0], {"rho": [0.9, 0.9], "median_ms": 7.0, "miou": 60.0},  # the same ρ, slower
             {"rho": 0.95, "median_ms": 30.0, "miou": 69.0}, FRONTIER[2], FRONTIER[1]]  # beaten by the 10 ms point
    frontier = read_frontier(manifest(messy), "lc.json")
    assert [p.median_ms for p in frontier.points] == [40.0, 20.0, 10.0, 5.0]


HOSTILE = [
    ("no tuning record", {}, "records no latency frontier"),
    ("a tuning record from before frontiers", {"tuning": {"chosen": {}}}, "records no latency frontier"),
    ("frontier not a list", manifest("fast"), "tuning.frontier \"fast\" is not a list of 1 to 1000 points"),
    ("empty frontier", manifest([]), "is not a list of 1 to 1000 points"),
    ("too many points", manifest([FRONTIER[0]] * (MAX_FRONTIER_POINTS + 1)), "is not a list of 1 to 1000 points"),
    ("nan latency", manifest([{**FRONTIER[0], "median_ms": math.nan}]), "median_ms"),
    ("negative latency", manifest([{**FRONTIER[0], "median_ms": -1}]), "median_ms"),
    ("mIoU over 100", manifest([{**FRONTIER[0], "miou": 200}]), "miou"),
    ("boolean mIoU", manifest([{**FRONTIER[0], "miou": True}]), "miou"),
    ("rho 0", manifest([{**FRONTIER[0], "rho": 0}]), "rho is R or [R2, R3]"),
    ("rho 1.5", manifest([{**FRONTIER[0], "rho": 1.5}]), "rho is R or [R2, R3]"),
    ("three thresholds", manifest([{**FRONTIER[0], "rho": [0.9, 0.9, 0.9]}]), "rho is R or [R2, R3]"),
    ("text rho", manifest([{**FRONTIER[0], "rho": "0.9"}]), "rho is R or [R2, R3]"),
    ("point not a record", manifest([[0.9, 5, 68]]), "is not a list of {\"rho\""),
    ("no reference", manifest(reference=None), "tuning.previous_default null is not a point"),
    ("reference rho nan", manifest(reference={**REFERENCE, "rho": math.nan}), "previous_default"),
]


@pytest.mark.parametrize(("name", "record", "message"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_hostile_frontier_is_one_line(name, record, message) -> None:
    # Through JSON, as lc.json is read (nan as JSON's NaN, which Python's reader takes).
    with pytest.raises(LCError) as caught:
        read_frontier(json.loads(json.dumps(record)), "model/lc.json")
    text = str(caught.value)
    assert message in text and text.startswith("model/lc.json: ") and "run lc-tune on it first" in text
    assert "\n" not in text and len(text) < 400


def test_the_bundled_demo_has_no_frontier() -> None:
    with pytest.raises(LCError, match="records no latency frontier .*run lc-tune on it first"):
        read_model_frontier(DEMO_MODEL)


def test_a_frame_rate_is_a_target_per_frame() -> None:
    """--target-fps 25: 40 ms a frame; frames that take 60 ms with two waiting move it to a faster point."""
    control = RhoController.for_fps(read_frontier(manifest(), "lc.json"), 25.0, min_samples=1)
    assert control.target_ms == 40.0
    control.observe(60.0, queue_runs=2, run_ms=60.0)
    assert control.index > 0 and control.expected_ms(control.index) <= 40.0
    with pytest.raises(LCError, match="--target-fps must be a finite number"):
        RhoController.for_fps(control.frontier, 0.0)


def test_bad_settings() -> None:
    frontier = read_frontier(manifest(), "lc.json")
    for target in (0.0, -5.0, math.nan, math.inf):
        with pytest.raises(LCError, match="latency target must be a finite number"):
            RhoController(frontier, target)
    with pytest.raises(ValueError):
        RhoController(frontier, 30.0, window=4, min_samples=8)
