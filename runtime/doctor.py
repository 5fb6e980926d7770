"""What this machine can run: libraries, GPU, TensorRT, the lc plugins, the backends lc-run can use (those of
``runtime/registry.py``) and what ``--backend auto`` picks among them.

Each probe runs in its own Python process (``python -m layercascade.runtime.doctor NAME``), several at
once, with a timeout: a package that fails to import, hangs, or crashes in native code (CUDA and
TensorRT libraries can) shows up as one failed line instead of ending the report.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

from layercascade.errors import LCError
from layercascade.export.session import import_onnxruntime
from layercascade.plugins.nvidia import cuda_python_version, driver_gpus, import_tensorrt
from layercascade.runtime.backend import BackendSpec
from layercascade.runtime.registry import BACKENDS, model_dir_candidates

WHO = "the TensorRT backend"
Report = dict[str, Any]
PROBE_TIMEOUT_S = 90


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _version_of(module: str) -> Report:
    imported = importlib.import_module(module)
    return {"ok": True, "version": getattr(imported, "__version__", "?"), "detail": ""}


def probe_python() -> Report:
    return {"ok": True, "version": platform.python_version(), "detail": sys.executable}


def probe_onnxruntime() -> Report:
    onnxruntime = import_onnxruntime()
    providers = onnxruntime.get_available_providers()
    installed = [d for d in ("onnxruntime", "onnxruntime-gpu") if _distribution_version(d)]
    # Both wheels install the same module; the CPU one then hides the CUDA provider.
    clash = "; onnxruntime and onnxruntime-gpu are both installed: uninstall both, reinstall one" \
        if len(installed) == 2 else ""
    return {"ok": True, "version": onnxruntime.__version__, "providers": providers,
            "detail": "providers: " + ", ".join(providers) + clash}


def probe_openvino() -> Report:
    """OpenVINO's version, devices, what its CPU plugin computes natively, and the precision it computes in by default
    (bf16 where the CPU has it natively, else fp32)."""
    from layercascade.runtime.openvino.loader import core, cpu_capabilities, openvino_version
    from layercascade.runtime.openvino.runner import OPENVINO_PRECISIONS

    devices = list(core().available_devices)
    capabilities = cpu_capabilities()
    default = core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    default = OPENVINO_PRECISIONS.get(default, default)
    return {"ok": True, "version": openvino_version(), "devices": devices, "capabilities": capabilities,
            "default_precision": default,
            "detail": f"devices: {', '.join(devices)}; CPU: {', '.join(capabilities)}; default precision {default}"}


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def probe_ray() -> Report:
    """Ray for lc-serve and lc-run --ray, read from the installed distributions (only ``serve/`` imports Ray)."""
    version = _distribution_version("ray")
    if version is None:
        return {"ok": False, "detail": "not installed: pip install 'layercascade[serve]' (lc-serve, lc-run --ray)"}
    parts = {"Ray Serve": "uvicorn", "Ray Data": "pyarrow", "httpx": "httpx"}  # a distribution each brings
    missing = [part for part, distribution in parts.items() if _distribution_version(distribution) is None]
    detail = f"missing {', '.join(missing)}: pip install 'layercascade[serve]'" if missing else ", ".join(parts)
    return {"ok": not missing, "version": version, "detail": detail}


def probe_tensorrt() -> Report:
    """Import (missing / bindings only / libraries not loading) and whether a builder starts (GPU)."""
    trt = import_tensorrt(WHO)

    class Capture(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, message: str) -> None:
            self.messages.append(message)

    logger = Capture()
    try:
        builder = trt.Builder(logger)
    except Exception as error:  # noqa: BLE001 - TensorRT reports a failed builder as an exception
        builder, failure = None, _first_line(error)
    else:
        failure = "" if builder is not None else "trt.Builder returned None"
    if builder is not None:
        return {"ok": True, "version": trt.__version__, "gpu": True, "detail": "builder starts"}
    cuda_init = any("CUDA initialization failure" in m for m in logger.messages) or "CUDA initialization" in failure
    reason = "no GPU: CUDA initialization failure" if cuda_init else \
        f"the builder does not start: {(logger.messages or [failure])[-1]}"
    return {"ok": False, "version": trt.__version__, "gpu": False, "detail": reason}


def probe_cuda_python() -> Report:
    return {"ok": True, "version": cuda_python_version(WHO), "detail": ""}


def probe_gpu() -> Report:
    """GPUs and driver: nvidia-smi if present, else the CUDA driver through cuda-python."""
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=False)
        lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        if done.returncode == 0 and lines:
            return {"ok": True, "gpus": lines, "detail": "; ".join(lines) + " (nvidia-smi)"}
        return {"ok": False, "detail": f"nvidia-smi found no GPU: {(done.stderr or done.stdout).strip()[:200]}"}
    if importlib.util.find_spec("cuda") is None:
        return {"ok": False, "detail": "no nvidia-smi and no cuda-python: no NVIDIA driver found"}
    names, version = driver_gpus(WHO)
    return {"ok": bool(names), "gpus": names, "detail": f"{', '.join(names) or 'no GPU'}; CUDA driver API {version}"}


def probe_plugins() -> Report:
    """Whether lc::RegionConv registers with TensorRT (and its source hash, as engines record it)."""
    from layercascade.plugins import trt_plugin

    trt_plugin.register_plugins()
    trt = import_tensorrt(WHO)
    namespace, name = trt_plugin.plugin_id().split("::")
    found = trt.get_plugin_registry().get_creator(name, "1", namespace) is not None
    return {"ok": found, "detail": f"{trt_plugin.plugin_id()} " + ("registered" if found else "not in the registry"),
            "source_sha256": trt_plugin.plugin_source_sha256()}


def _torch_probe() -> Report:
    from layercascade.runtime.torch import backend

    return backend.probe()


PROBES: dict[str, Callable[[], Report]] = {
    "python": probe_python,
    "numpy": lambda: _version_of("numpy"),
    "onnxruntime": probe_onnxruntime,
    "onnx": lambda: _version_of("onnx"),
    "openvino": probe_openvino,
    "torch": _torch_probe,
    "triton": lambda: _version_of("triton"),
    "tensorrt": probe_tensorrt,
    "cuda-python": probe_cuda_python,
    "gpu": probe_gpu,
    "lc plugins": probe_plugins,
    "ray": probe_ray,
}


def run_probe_here(name: str) -> Report:
    """One probe in this process; a missing or broken package is a failed probe, not an error."""
    try:
        return PROBES[name]()
    except ModuleNotFoundError as error:
        return {"ok": False, "detail": f"not installed (no module named {error.name!r})"}
    except LCError as error:
        return {"ok": False, "detail": str(error)}
    except Exception as error:  # noqa: BLE001 - the report names whatever broke
        return {"ok": False, "detail": _first_line(error)}


def run_probe(name: str) -> Report:
    """One probe in a child process: crashes and hangs stay there."""
    command = [sys.executable, "-m", "layercascade.runtime.doctor", name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "detail": f"hung: no answer within {PROBE_TIMEOUT_S} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
    tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
    return {"ok": False, "detail": f"crashed ({how}){': ' + tail if tail else ''}"}


def usable_backends(probes: dict[str, Report]) -> dict[str, Report]:
    """Which ``lc-run --backend`` choices work here, on which devices, or why not: each backend's probes
    (the first failed one is the reason) and devices, as its spec declares them."""
    backends: dict[str, Report] = {}
    for spec in BACKENDS:
        failed = next((name for name in spec.probes if not probes[name]["ok"]), None)
        if failed is None:
            backends[spec.name] = {"ok": True, "devices": spec.usable_devices(probes), "detail": ""}
        else:
            backends[spec.name] = {"ok": False, "devices": [], "detail": f"{failed}: {probes[failed]['detail']}"}
    return backends


def auto_pick(probes: dict[str, Report], backends: dict[str, Report]) -> Report | None:
    """What ``--backend auto`` runs an fp32 model dir with here, on the CPU: ``backend`` and ``precision`` (the
    default precision its first probe reports, e.g. OpenVINO's; else fp32), and where that backend is picked only
    for models of at least ``min_gmacs`` per image, what runs the smaller ones (``smaller``); None when no backend
    can. An INT8 dir runs on the same backends at int8."""
    def described(spec: BackendSpec) -> Report:
        return {"backend": spec.name, "precision": probes[spec.probes[0]].get("default_precision", "fp32")}

    def first_usable(gmacs: float) -> BackendSpec | None:
        return next((spec for spec in model_dir_candidates(gmacs) if backends[spec.name]["ok"]), None)

    large, small = first_usable(math.inf), first_usable(0.0)
    if large is None:
        return None
    pick = described(large)
    if small is not None and small is not large:
        pick.update(min_gmacs=large.auto_min_gmacs, smaller=described(small))
    return pick


def diagnose() -> tuple[dict[str, Report], dict[str, Report], Report | None]:
    """Every probe, each in its own process (four at a time), the backends they allow and :func:`auto_pick`."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        probes = dict(zip(PROBES, pool.map(run_probe, PROBES)))
    backends = usable_backends(probes)
    return probes, backends, auto_pick(probes, backends)


if __name__ == "__main__":
    print(json.dumps(run_probe_here(sys.argv[1])))
