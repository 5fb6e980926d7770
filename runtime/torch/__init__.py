"""PyTorch backend: runs a checkpoint's three stages itself, not the ONNX graphs of a model dir.

``reference`` is the dense masked reference (the normative region semantics, on the CPU),
``planner`` turns the network's folded ops (``model/ops.py``) into kernel calls on NHWC tensors,
``program`` runs the cascade and the dense network as such plans on a device (Triton region convs,
CUDA graphs), ``backend`` is the backend object and ``loader`` loads a checkpoint into it. The only
part of ``runtime/`` that imports torch.
"""

import os

# OpenMP threads that spin while idle steal the cores the next layer needs as soon as anything
# else runs on the machine; like the ONNX Runtime backend, wait passively. OpenMP reads this when
# torch loads it, so it applies when this package is what imports torch (the CLIs); a user's
# setting stays.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from layercascade.errors import fail  # noqa: E402 - after the OpenMP setting, before torch loads

try:
    import torch  # noqa: F401, E402 - only to give a clear error before the modules here import it
except ImportError:
    fail("the torch backend needs PyTorch: pip install 'layercascade[torch]', or use --backend ort")
