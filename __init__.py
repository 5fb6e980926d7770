"""layercascade: Layer Cascade segmentation networks from a PyTorch checkpoint to fast inference.

Top-level folders follow the data flow (docs/architecture.md): ``model`` (network, training, data,
metrics), ``export`` (ONNX graphs and graph passes), ``calibration`` (INT8), ``plugins`` (region-conv
kernels, TensorRT plugin), ``runtime`` (backends, the cascade, benchmarks), ``cli`` (the commands).
Heavy dependencies (torch, onnxruntime, TensorRT) are imported only inside the parts that need
them: ``from layercascade import Cascade`` loads the runtime on first use.
"""

from __future__ import annotations

from typing import Any

from layercascade.errors import LCError
from layercascade.version import __version__

__all__ = ["Cascade", "LCError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Cascade":
        from layercascade.runtime.cascade import Cascade

        return Cascade
    raise AttributeError(f"module 'layercascade' has no attribute {name!r}")
