"""The torch backend object: a checkpoint's cascade in PyTorch, the reference path on the CPU and
the kernels path (Triton region convs) on CUDA."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layercascade.contract import IMAGE, LABELS, RhoVectors
from layercascade.errors import fail
from layercascade.export.describe import check_input_size, model_keys
from layercascade.model.checkpoint import Checkpoint
from layercascade.runtime.backend import Masks, StagedBackend, StageOutputs
from layercascade.runtime.machine import host
from layercascade.runtime.torch.program import DeviceProgram, KernelPath
from layercascade.runtime.torch.reference import ReferencePath

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


class DenseRunner:
    """The dense network of the backend's weights: ``infer({"image": ...}) -> {"labels": ...}``."""

    def __init__(self, dense: Callable[[np.ndarray], np.ndarray]) -> None:
        self.dense = dense
        self.last_ms = 0.0

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        labels = self.dense(feeds[IMAGE])
        self.last_ms = (time.perf_counter() - started) * 1e3
        return {LABELS: labels}


def _check_device(device: str, precision: str, cuda_graph: bool, kernels: bool) -> None:
    if device not in ("cpu", "cuda"):
        fail(f"unknown device {device!r}; choose cpu or cuda")
    if precision not in PRECISIONS:
        fail(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            fail(f"--device cuda: no CUDA device visible to PyTorch (torch {torch.__version__}, {build}); "
                 "use --device cpu")
        return
    if precision != "fp32":
        fail(f"--precision {precision} runs on CUDA only; the torch backend's CPU path is the fp32 reference "
             "(use --device cuda, or drop --precision)")
    if cuda_graph:
        fail("--cuda-graph needs --device cuda")
    if kernels and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        fail("the region-conv kernels run on the CPU only in Triton's interpreter: set TRITON_INTERPRET=1")


class TorchBackend(StagedBackend):
    """A checkpoint's cascade in PyTorch: the reference on the CPU, Triton kernels on CUDA.

    The model's manifest is built from the checkpoint with the exporter's ``lc.json`` keys
    (``export/describe.py``); batches of any size are accepted (``batch.dynamic``).

    Args:
        checkpoint: the weights and their metadata.
        device: "cpu" or "cuda".
        precision: "fp32" or "fp16" (CUDA only).
        cuda_graph: capture the cascade (and the dense network) in CUDA graphs (CUDA only).
        input_size: (H, W) the model runs at (default: the checkpoint's).
        threads: intra-op threads on the CPU (0 = PyTorch's default).
        kernels: run the kernels path (default: on CUDA); on the CPU it needs TRITON_INTERPRET=1.
        source: the checkpoint's file, recorded with its sha256 in the manifest.
    """

    name = "torch"

    def __init__(self, checkpoint: Checkpoint, device: str = "cpu", precision: str = "fp32",
                 cuda_graph: bool = False, input_size: tuple[int, int] | None = None, threads: int = 0,
                 kernels: bool | None = None, source: Path | None = None) -> None:
        kernels = device == "cuda" if kernels is None else kernels
        _check_device(device, precision, cuda_graph, kernels)
        self.input_size = check_input_size(input_size or checkpoint.input_size)
        if threads:
            torch.set_num_threads(threads)
        model = checkpoint.build_model()
        self.manifest = {"kind": "cascade", **model_keys(checkpoint, self.input_size, source),
                         "batch": {"dynamic": True, "max": None}}
        self.device = device
        self.precision = precision
        if kernels:
            try:
                import triton  # noqa: F401 - only to give a clear error before the kernels import it
            except ImportError:
                fail("the torch backend's kernels need triton: pip install 'layercascade[kernels]'")
            self.path: ReferencePath | KernelPath = KernelPath(model, checkpoint, self.input_size,
                                                               PRECISIONS[precision], torch.device(device),
                                                               cuda_graph)
        else:
            self.path = ReferencePath(model, checkpoint, self.input_size)

    def run(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None = None) -> StageOutputs:
        return self.path.run(images, rho, forced_masks)

    def run_stages(self, images: np.ndarray, rho: RhoVectors, forced_masks: Masks | None = None) -> StageOutputs:
        """:meth:`run`: the stages run inside one path here, which times them apart itself (the
        reference path per stage; the kernels path as one device time, the whole cascade on one stream)."""
        return self.run(images, rho, forced_masks)

    def dense_runner(self, manifest: dict[str, Any]) -> DenseRunner:
        dense = self.path.dense_labels if isinstance(self.path, KernelPath) else self.path.dense
        return DenseRunner(dense)

    def machine(self) -> str:
        gpu = f"{torch.cuda.get_device_name()}, host " if self.device == "cuda" else ""
        return f"{gpu}{host()}, torch {torch.__version__}"

    def device_program(self, kind: str, batch: int, forced: bool = False,
                       graph: bool | None = None) -> DeviceProgram:
        """The on-device program of the cascade or the dense network, for timing with CUDA events
        (kernels path only): fill its ``inputs`` buffers, then call it. See :meth:`KernelPath.program`."""
        if not isinstance(self.path, KernelPath):
            fail("device programs exist on the kernels path only (--device cuda)")
        return self.path.program(kind, batch, forced, graph)

    def close(self) -> None:
        self.path = None
        if self.device == "cuda":
            torch.cuda.empty_cache()


def probe() -> dict[str, Any]:
    """torch's version and whether it sees a CUDA GPU (lc-doctor's report)."""
    cuda = torch.cuda.is_available()
    if cuda:
        detail = f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name()}"
    elif torch.version.cuda is None:
        detail = "CPU build (no CUDA)"
    else:
        detail = f"CUDA {torch.version.cuda} build, but no usable GPU"
    return {"ok": True, "version": torch.__version__, "cuda": cuda, "detail": detail}
