"""tools/runtime_study.py: the side-by-side timings behind docs/openvino.md's comparisons."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'layercascade[openvino]')")

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "runtime_study.py"


def study(*args: str) -> str:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True, text=True).stdout


def test_save_compare_and_cascades(tmp_path: Path) -> None:
    prefix = str(tmp_path / "demo")
    study("save", str(SCRIPT.parent.parent / "runtime" / "demo_model"), prefix)
    assert {p.name for p in tmp_path.iterdir()} == {f"demo_{k}" for k in ("ort.onnx", "openvino.onnx", "dense.onnx",
                                                                         "image.npy")}
    compared = json.loads(study("compare", prefix, "--blocks", "1", "--profile-runs", "2", "--json"))
    steps = {f"{prefix}: {what}" for what in ("cascade, ort", "cascade, openvino", "dense, openvino", "dense, ort")}
    assert set(compared["wall_ms"]) == steps and all(ms > 0 for ms in compared["wall_ms"].values())
    # every stage-1 conv once per run in ONNX Runtime's profile; OpenVINO's counters name its own op types
    assert compared["profiles"][f"{prefix}: ort"]["Conv"][1] == 7
    assert compared["profiles"][f"{prefix}: openvino"]["Convolution"][1] == 7
    timed = json.loads(study("cascades", "demo@ort", "dense:demo@openvino:fp32", "--blocks", "1", "--json"))
    assert set(timed["wall_ms"]) == {"demo@ort", "dense:demo@openvino:fp32"}
    assert "| demo@ort" in study("cascades", "demo@ort", "--blocks", "1")
