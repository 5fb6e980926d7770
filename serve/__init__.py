"""Serving and scale-out: lc-serve (Ray Serve over HTTP), lc-run --ray (Ray Data over many images) and
lc-triton (a Triton Inference Server model repository). Only this package imports Ray."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from layercascade.errors import fail
from layercascade.runtime.cascade import auto_backend


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
