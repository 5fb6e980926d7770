"""lc-doctor (cli/doctor.py, probes in runtime/doctor.py): one report, every probe isolated, exit 0
whatever is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layercascade.cli import doctor as doctor_cli
from layercascade.runtime import doctor
from layercascade.runtime.registry import BACKENDS

FAKE_TENSORRT = {
    # Bindings whose builder cannot start: what `import tensorrt` gives on a machine without a GPU.
    "tensorrt/__init__.py": (
        "__version__ = '11.4.0.106'\n"
        "class ILogger:\n"
        "    def __init__(self):\n"
        "        pass\n"
        "class Builder:\n"
        "    def __init__(self, logger):\n"
        "        logger.log(1, 'CUDA initialization failure with error: 35')\n"
        "        raise TypeError('pybind11::init(): factory function returned nullptr')\n"),
    "tensorrt/plugin.py": "def aot_impl(plugin_id):\n    pass\n",
}


def _install(tmp_path: Path, files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Put ``files`` (fake packages) first on the probes' import path."""
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def _report(capsys: pytest.CaptureFixture[str]) -> dict:
    assert doctor_cli.main(["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    report = _report(capsys)
    assert list(report["probes"]) == list(doctor.PROBES)
    assert report["probes"]["numpy"] == {"ok": True, "version": np.__version__, "detail": ""}
    assert all(isinstance(p["ok"], bool) and isinstance(p["detail"], str) for p in report["probes"].values())
    assert list(report["backends"]) == [spec.name for spec in BACKENDS]
    openvino = report["probes"]["openvino"]
    if openvino["ok"]:
        assert "CPU" in openvino["devices"] and "FP32" in openvino["capabilities"]
        assert openvino["default_precision"] in ("fp32", "bf16") and report["backends"]["openvino"]["devices"] == ["cpu"]
        assert report["auto"] == {"backend": "openvino", "precision": openvino["default_precision"], "min_gmacs": 6.0,
                                  "smaller": {"backend": "ort", "precision": "fp32"}}
    onnxruntime = pytest.importorskip("onnxruntime")
    assert report["backends"]["ort"]["ok"] and report["backends"]["ort"]["devices"][0] == "cpu"
    assert report["probes"]["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    if not report["probes"]["tensorrt"]["ok"]:
        assert not report["backends"]["trt"]["ok"] and report["backends"]["trt"]["detail"].startswith("tensorrt:")


def test_screen_has_one_line_per_probe_and_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor_cli.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(doctor.PROBES) + 1 + len(BACKENDS) + 1
    assert lines[1].split()[1] == "python" and lines[-2].split()[1] == BACKENDS[-1].name
    assert lines[-1].startswith("--backend auto runs a model dir on ")


def test_broken_and_crashing_packages_stay_in_their_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _install(tmp_path, {"onnx/__init__.py": "raise RuntimeError('broken onnx build')\n",
                        "triton/__init__.py": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"},
             monkeypatch)
    probes = _report(capsys)["probes"]
    assert probes["onnx"] == {"ok": False, "detail": "RuntimeError: broken onnx build"}
    assert not probes["triton"]["ok"] and probes["triton"]["detail"].startswith("crashed (signal 11)")
    assert probes["numpy"]["ok"] and probes["python"]["ok"]


def test_tensorrt_without_gpu_is_reported_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, FAKE_TENSORRT, monkeypatch)
    probe = doctor.run_probe("tensorrt")
    assert probe == {"ok": False, "version": "11.4.0.106", "gpu": False,
                     "detail": "no GPU: CUDA initialization failure"}


@pytest.mark.parametrize("files, words", [
    ({"tensorrt_bindings/__init__.py": ""}, "only TensorRT's Python bindings"),
    ({"tensorrt/__init__.py": "raise ImportError('libnvinfer.so.11: cannot open shared object file')\n"},
     "libraries do not load (libnvinfer.so.11"),
])
def test_tensorrt_install_problems_are_named(files: dict[str, str], words: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT imports here: a partial install cannot be provoked")
    except ImportError:
        pass
    _install(tmp_path, files, monkeypatch)
    probe = doctor.run_probe("tensorrt")
    assert not probe["ok"] and words in probe["detail"]


def _probes(changes: dict[str, dict] | None = None) -> dict:
    """Probe results of a healthy GPU machine, with ``changes``."""
    healthy = {name: {"ok": True, "detail": ""} for name in doctor.PROBES}
    healthy["onnxruntime"]["providers"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    healthy["torch"]["cuda"] = True
    return healthy | (changes or {})


def test_usable_backends() -> None:
    gpu = doctor.usable_backends(_probes())
    assert gpu == {"ort": {"ok": True, "devices": ["cpu", "cuda"], "detail": ""},
                   "openvino": {"ok": True, "devices": ["cpu"], "detail": ""},
                   "torch": {"ok": True, "devices": ["cpu", "cuda"], "detail": ""},
                   "trt": {"ok": True, "devices": ["cuda"], "detail": ""}}
    no_openvino = doctor.usable_backends(_probes({"openvino": {"ok": False, "detail": "not installed"}}))
    assert no_openvino["openvino"] == {"ok": False, "devices": [], "detail": "openvino: not installed"}
    no_triton = doctor.usable_backends(_probes({"triton": {"ok": False, "detail": "not installed"}}))
    assert no_triton["torch"]["devices"] == ["cpu"]
    no_plugins = doctor.usable_backends(_probes({"lc plugins": {"ok": False, "detail": "x"}}))
    assert no_plugins["trt"] == {"ok": False, "devices": [], "detail": "lc plugins: x"}
    no_ort = doctor.usable_backends(_probes({"onnxruntime": {"ok": False, "detail": "not installed"}}))
    assert no_ort["ort"] == {"ok": False, "devices": [], "detail": "onnxruntime: not installed"}
    assert not doctor.usable_backends(_probes({"cuda-python": {"ok": False, "detail": "y"}}))["trt"]["ok"]


def test_auto_pick_follows_the_registry() -> None:
    """What lc-doctor says auto runs a model dir with: OpenVINO at its default precision where it works, else ONNX
    Runtime (fp32), else nothing."""
    def pick(changes: dict) -> dict | None:
        probes = _probes(changes)
        return doctor.auto_pick(probes, doctor.usable_backends(probes))

    bf16 = {"ok": True, "detail": "", "default_precision": "bf16"}
    smaller = {"min_gmacs": 6.0, "smaller": {"backend": "ort", "precision": "fp32"}}
    assert pick({"openvino": bf16}) == {"backend": "openvino", "precision": "bf16", **smaller}
    assert pick({}) == {"backend": "openvino", "precision": "fp32", **smaller}
    assert pick({"onnx": {"ok": False, "detail": "broken"}}) is None  # both CPU backends read ONNX
    no_openvino = {"openvino": {"ok": False, "detail": "not installed"}}
    assert pick(no_openvino) == {"backend": "ort", "precision": "fp32"}


def test_ray_probe_names_the_serve_extra(monkeypatch) -> None:
    installed = {"ray": "2.60.0", "uvicorn": "0.30", "pyarrow": "17", "httpx": "0.28"}
    monkeypatch.setattr(doctor, "_distribution_version", installed.get)
    assert doctor.probe_ray() == {"ok": True, "version": "2.60.0", "detail": "Ray Serve, Ray Data, httpx"}
    del installed["pyarrow"]
    assert doctor.probe_ray()["detail"] == "missing Ray Data: pip install 'layercascade[serve]'"
    del installed["ray"]
    assert not doctor.probe_ray()["ok"] and "layercascade[serve]" in doctor.probe_ray()["detail"]
