"""Serving and scale-out: lc-serve (Ray Serve over HTTP), lc-run --ray (Ray Data over many images) and
lc-triton (a Triton Inference Server model repository). Only this package imports Ray."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from layercascade.errors import fail
from layercascade.runtime.registry import auto_backend


def import_serving(module: str) -> ModuleType:
    """``layercascade.serve.<module>``, or one line saying which extra installs what it needs."""
    try:
        return importlib.import_module(f"layercascade.serve.{module}")
    except ImportError as error:
        if error.name and error.name.split(".")[0] in ("ray", "starlette", "pyarrow", "pandas"):
            fail(f"{error.name} is not installed; install the serving extra: pip install 'layercascade[serve]'")
        raise


def gpus_per_model(model: str | None, load: dict[str, Any]) -> float:
    """The GPUs Ray reserves for each copy of the model (a replica, a worker): one for a model that runs on
    CUDA (``--device cuda``, the TensorRT backend, an engine dir), none otherwise."""
    backend = load.get("backend", "auto")
    on_gpu = load.get("device") == "cuda" or (auto_backend(model) if backend == "auto" else backend) == "trt"
    return 1.0 if on_gpu else 0.0


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (e.g. ``ray://head:10001`` or ``auto``), or start a new local
    instance (never a cluster that merely happens to run here: this process owns what it starts and shuts
    it down); returns whether one was started. A Ray already initialised in this process is used as is."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except ConnectionError as error:
        fail(f"cannot reach the Ray cluster at {address!r} ({error}); start it (`ray start --head`) or leave "
             "--address out to run a local Ray")
    return address is None


def last_line(error: BaseException) -> str:
    """The last line of a Ray error (its cause; the lines before are the traceback)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
