"""lc-bench's dense peers at every precision (runtime/bench.py): which peers run which graph, and the speedups
against the fastest peer overall and of the cascade's precision class, computed from injected timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layercascade.cli import bench as bench_cli
from layercascade.errors import run_cli
from layercascade.runtime import bench
from layercascade.runtime.cascade import Cascade

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'layercascade[cpu]')")

# Injected timings (ms) of every step lc-bench times: the cascade, its dense network, each peer.
SAMPLES = {"cascade": [2.0, 2.0, 3.0], "dense": [3.0, 3.0, 3.0], "peer:openvino": [4.0, 5.0, 4.0],
           "peer:ort": [8.0, 8.0, 8.0], "peer:torch": [20.0, 20.0, 20.0], "peer:openvino-int8": [1.0, 1.0, 2.0],
           "peer:ort-int8": [3.0, 3.0, 3.0]}


@pytest.fixture
def injected(monkeypatch: pytest.MonkeyPatch) -> list[set]:
    """lc-bench's timing replaced by :data:`SAMPLES`; records which steps it was given."""
    given: list[set] = []

    def timed_blocks(steps: dict, iters: int, warmup: int, progress: bool) -> dict:
        given.append(set(steps))
        return {key: SAMPLES[key] for key in steps}

    monkeypatch.setattr(bench, "timed_blocks", timed_blocks)
    return given


def test_peer_report_speedups_overall_and_within_the_precision_class() -> None:
    samples = {"peer:ort": [4.0, 4.0, 4.0], "peer:openvino": [2.0, 3.0, 2.0], "peer:ort-int8": [1.0, 1.0, 1.0]}
    peers = {"ort": ("ort", "fp32"), "openvino": ("openvino", "bf16"), "ort-int8": ("ort", "int8")}
    report = bench.peer_report(samples, peers, {"torch": "torch: not installed"}, [2.0, 2.0, 2.0], "bf16", batch=1)
    assert report["precision_class"] == "float"
    assert (report["best_peer"], report["speedup_vs_best_peer"]) == ("ort-int8", 0.5)
    assert (report["best_peer_same_class"], report["speedup_vs_best_peer_same_class"]) == ("openvino", 1.0)
    assert report["peers"]["torch"] == {"missing": "torch: not installed"}
    assert report["peers"]["openvino"] == {"median_ms": 2.0, "p90_ms": 2.8, "p99_ms": 2.98, "fps": 500.0, "runs": 3,
                                           "backend": "openvino", "precision": "bf16", "precision_class": "float"}
    int8 = bench.peer_report(samples, peers, {}, [2.0, 2.0, 2.0], "int8", batch=1)
    assert (int8["best_peer_same_class"], int8["speedup_vs_best_peer_same_class"]) == ("ort-int8", 0.5)
    unknown = bench.peer_report(samples, peers, {}, [2.0], None, batch=1)  # a backend that does not say
    assert unknown["precision_class"] is None and unknown["best_peer_same_class"] is None
    none = bench.peer_report({}, {}, {"ort": "x"}, [1.0], "fp32", 1)
    assert none["best_peer"] is None and none["speedup_vs_best_peer"] is None and none["best_peer_same_class"] is None


def test_an_int8_dir_has_peers_at_both_precisions(demo_int8: tuple, injected: list[set]) -> None:
    """An INT8 dir: its quantized dense.onnx on ONNX Runtime and OpenVINO (the int8 peers), its fp32 source's dense
    network on every runtime (the float peers)."""
    from layercascade.runtime.openvino.loader import cpu_capabilities

    int8_dir, record, _ = demo_int8
    with Cascade.load(int8_dir, backend="openvino") as cascade:
        result = bench.benchmark(cascade, None, 1, 3, 0, progress=False, peers=True)
    assert injected == [set(SAMPLES)]  # every peer timed in the same blocks as the cascade
    assert (result["backend"], result["precision"], result["precision_class"]) == ("openvino", "int8", "int8")
    peers = result["peers"]
    assert {name: (p["backend"], p["precision"]) for name, p in peers.items()} == {
        "openvino": ("openvino", "bf16" if "BF16" in cpu_capabilities() else "fp32"), "ort": ("ort", "fp32"),
        "torch": ("torch", "fp32"), "openvino-int8": ("openvino", "int8"), "ort-int8": ("ort", "int8")}
    assert peers["ort"]["median_ms"] == 8.0 and peers["openvino-int8"]["median_ms"] == 1.0
    assert (result["best_peer"], result["speedup_vs_best_peer"]) == ("openvino-int8", 0.5)
    assert (result["best_peer_same_class"], result["speedup_vs_best_peer_same_class"]) == ("openvino-int8", 0.5)
    assert result["speedup"] == 1.5  # dense 3 ms / cascade 2 ms


def test_an_fp32_dir_has_float_peers_and_says_where_the_int8_ones_come_from(demo_fp32: Path, injected: list[set],
                                                                            capsys: pytest.CaptureFixture) -> None:
    assert run_cli(bench_cli.main, [str(demo_fp32), "--backend", "ort", "--peers", "--iters", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["backend"], result["precision"], result["precision_class"]) == ("ort", "fp32", "float")
    for name in ("ort-int8", "openvino-int8"):
        assert result["peers"][name] == {"missing": f"{demo_fp32} is not an INT8 dir; the int8 peers run an INT8 "
                                                    "dir's dense.onnx: lc-calibrate DIR -o DIR_INT8, then lc-bench "
                                                    "DIR_INT8 --peers"}
    assert (result["best_peer"], result["speedup_vs_best_peer"]) == ("openvino", 2.0)
    assert (result["best_peer_same_class"], result["speedup_vs_best_peer_same_class"]) == ("openvino", 2.0)
    assert run_cli(bench_cli.main, [str(demo_fp32), "--backend", "ort", "--peers", "--iters", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(", ort fp32)") and "dense, ort fp32" in out and "dense, torch fp32" in out
    assert "speedup vs the fastest float dense peer (openvino " in out
