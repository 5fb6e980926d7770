"""lc-doctor: what this machine can run — libraries, GPU, TensorRT, the lc plugins, usable backends.

Each probe runs in its own Python process (``lc-doctor --probe NAME``), several at once, with
a timeout: a package that fails to import, hangs, or crashes in native code (CUDA and
TensorRT libraries can) shows up as one failed line instead of ending the report. Exit
status 0 always: the report is the result.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

from layercascade import __version__
from layercascade.errors import LCError, run_cli

PROBE_TIMEOUT_S = 90
Report = dict[str, Any]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _version_of(module: str) -> Report:
    imported = importlib.import_module(module)
    return {"ok": True, "version": getattr(imported, "__version__", "?"), "detail": ""}


def probe_python() -> Report:
    return {"ok": True, "version": platform.python_version(), "detail": sys.executable}


def probe_onnxruntime() -> Report:
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    installed = [d for d in ("onnxruntime", "onnxruntime-gpu") if _distribution_version(d)]
    # Both wheels install the same module; the CPU one then hides the CUDA provider.
    clash = "; onnxruntime and onnxruntime-gpu are both installed: uninstall both, reinstall one" \
        if len(installed) == 2 else ""
    return {"ok": True, "version": onnxruntime.__version__, "providers": providers,
            "detail": "providers: " + ", ".join(providers) + clash}


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def probe_torch() -> Report:
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        detail = f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name()}"
    elif torch.version.cuda is None:
        detail = "CPU build (no CUDA)"
    else:
        detail = f"CUDA {torch.version.cuda} build, but no usable GPU"
    return {"ok": True, "version": torch.__version__, "cuda": cuda, "detail": detail}


def probe_tensorrt() -> Report:
    """Import (missing / bindings only / libraries not loading) and whether a builder starts (GPU)."""
    from layercascade.plugins.trt_plugin import import_tensorrt

    trt, _ = import_tensorrt()

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
    from cuda import bindings

    return {"ok": True, "version": bindings.__version__, "detail": ""}


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
    try:
        from cuda.bindings import driver
    except ImportError:
        return {"ok": False, "detail": "no nvidia-smi and no cuda-python: no NVIDIA driver found"}
    (status,) = driver.cuInit(0)
    if status != driver.CUresult.CUDA_SUCCESS:
        return {"ok": False, "detail": f"CUDA driver does not initialise: {status.name}"}
    _, version = driver.cuDriverGetVersion()
    _, count = driver.cuDeviceGetCount()
    names = []
    for index in range(count):
        _, device = driver.cuDeviceGet(index)
        _, name = driver.cuDeviceGetName(256, device)
        names.append(name.split(b"\0")[0].decode())
    return {"ok": count > 0, "gpus": names,
            "detail": f"{', '.join(names) or 'no GPU'}; CUDA driver API {version // 1000}.{version % 1000 // 10}"}


def probe_plugins() -> Report:
    """Whether lc::RegionConv registers with TensorRT (and its source hash, as engines record it)."""
    from layercascade.plugins import trt_plugin

    trt_plugin.register_plugins()
    trt, _ = trt_plugin.import_tensorrt()
    namespace, name = trt_plugin.plugin_id().split("::")
    found = trt.get_plugin_registry().get_creator(name, "1", namespace) is not None
    return {"ok": found, "detail": f"{trt_plugin.plugin_id()} " + ("registered" if found else "not in the registry"),
            "source_sha256": trt_plugin.plugin_source_sha256()}


PROBES: dict[str, Callable[[], Report]] = {
    "python": probe_python,
    "numpy": lambda: _version_of("numpy"),
    "onnxruntime": probe_onnxruntime,
    "onnx": lambda: _version_of("onnx"),
    "torch": probe_torch,
    "triton": lambda: _version_of("triton"),
    "tensorrt": probe_tensorrt,
    "cuda-python": probe_cuda_python,
    "gpu": probe_gpu,
    "lc plugins": probe_plugins,
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
    command = [sys.executable, "-m", "layercascade.runtime.cli.doctor", "--probe", name]
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
    """Which ``lc-run --backend`` choices work here, on which devices, or why not."""
    def reason(*names: str) -> str | None:
        for name in names:
            if not probes[name]["ok"]:
                return f"{name}: {probes[name]['detail']}"
        return None

    backends: dict[str, Report] = {}
    missing = reason("onnxruntime")
    providers = probes["onnxruntime"].get("providers", [])
    devices = ["cpu"] + [device for device, provider in (("cuda", "CUDAExecutionProvider"),
                                                         ("tensorrt-ep", "TensorrtExecutionProvider"))
                         if provider in providers]
    backends["ort"] = {"ok": missing is None, "devices": devices if missing is None else [], "detail": missing or ""}
    missing = reason("torch")
    devices = [] if missing else ["cpu"] + (["cuda"] if probes["torch"].get("cuda") and probes["triton"]["ok"] else [])
    backends["torch"] = {"ok": missing is None, "devices": devices, "detail": missing or ""}
    missing = reason("tensorrt", "cuda-python", "lc plugins")
    backends["trt"] = {"ok": missing is None, "devices": ["cuda"] if missing is None else [], "detail": missing or ""}
    return backends


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc-doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--probe", choices=list(PROBES), help=argparse.SUPPRESS)
    return parser


def report_lines(probes: dict[str, Report], backends: dict[str, Report]) -> list[str]:
    width = max(map(len, probes)) + 2
    lines = [f"layercascade {__version__} on {platform.platform()}"]
    for name, probe in probes.items():
        status = "ok" if probe["ok"] else "--"
        text = " ".join(part for part in (probe.get("version") or "", probe["detail"]) if part)
        lines.append(f"  {status}  {name:<{width}}{text}")
    lines.append("backends lc-run can use:")
    for name, backend in backends.items():
        text = ", ".join(backend["devices"]) if backend["ok"] else f"no ({backend['detail']})"
        lines.append(f"  {'ok' if backend['ok'] else '--'}  {name:<{width}}{text}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.probe:
        print(json.dumps(run_probe_here(args.probe)))
        return 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        probes = dict(zip(PROBES, pool.map(run_probe, PROBES)))
    backends = usable_backends(probes)
    if args.json:
        print(json.dumps({"version": __version__, "probes": probes, "backends": backends}, indent=2))
    else:
        print("\n".join(report_lines(probes, backends)))
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
