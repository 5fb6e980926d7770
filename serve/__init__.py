"""Serving and scale-out: lc-serve (Ray Serve over HTTP), lc-run --ray (Ray Data over many images) and
lc-triton (a Triton Inference Server model repository). Only this package imports Ray."""

from __future__ import annotations

import importlib
from types import ModuleType

from layercascade.errors import fail


def import_serving(module: str) -> ModuleType:
    """``layercascade.serve.<module>``, or one line saying which extra installs what it needs."""
    try:
        return importlib.import_module(f"layercascade.serve.{module}")
    except ImportError as error:
        if error.name and error.name.split(".")[0] in ("ray", "starlette", "httpx", "pyarrow", "pandas"):
            fail(f"{error.name} is not installed; install the serving extra: pip install 'layercascade[serve]'")
        raise
