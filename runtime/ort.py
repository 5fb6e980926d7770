"""ONNX Runtime backend: one session per stage graph, RegionConv lowered to row form."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.errors import fail
from layercascade.runtime.backend import StagedBackend


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        fail("the ONNX Runtime backend needs onnxruntime: pip install 'layercascade[cpu]'")
    return onnxruntime


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device`` ("cpu" or "cuda"), or a clear error."""
    available = _onnxruntime().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not wanted:
        fail(f"--device cuda needs onnxruntime-gpu (installed providers: {', '.join(available)}); "
             "pip install 'layercascade[gpu]' or use --device cpu")
    return [*wanted, "CPUExecutionProvider"]


class OrtRunner:
    """One ONNX graph in an InferenceSession; ``infer`` records its own time in ``last_ms``."""

    def __init__(self, path: Path, device: str = "cpu", lower: bool = True, threads: int = 0,
                 non_negative_inputs: frozenset[str] = frozenset()) -> None:
        ort = _onnxruntime()
        import onnx

        try:
            model = onnx.load(str(path))
        except Exception as error:  # noqa: BLE001 - protobuf raises several types on damaged files
            fail(f"{path}: corrupt or truncated ONNX file ({str(error).splitlines()[0][:120]}); re-export the model")
        from layercascade.runtime.lowering import (LoweringUnsupported, int8_conv_inputs, lower_region_convs,
                                                   rectified_outputs, relu_as_uint8)

        self.rectified_outputs = rectified_outputs(model)
        self.lowered = False
        if lower:
            try:
                lowered = lower_region_convs(model)
                self.lowered = lowered is not model
                model = lowered
            except LoweringUnsupported as reason:
                print(f"warning: {path.name}: running RegionConv function bodies ({reason})", file=sys.stderr)
        # INT8 graphs: non-negative activations as uint8, so ONNX Runtime fuses Conv + ReLU + Q and
        # runs its fast u8·s8 kernels (docs/calibration.md). No effect on fp32 graphs.
        model = relu_as_uint8(model, non_negative_inputs)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Every session owns a thread pool whose idle threads spin by default; the three
        # stage sessions run back to back, so spinning pools steal the cores the next stage
        # needs; compare with `lc-bench` on a cascade model.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # On x86 CPUs without VNNI ONNX Runtime turns int8 activations into uint8 + 128 for its u8·s8
        # kernels, whose 16-bit pair sums then saturate; u8·u8 does not. So INT8 graphs whose convs
        # still read int8 activations (e.g. calibrated before the stem stayed float) get u8·u8.
        # With uint8 activations (zero point 0, mostly small values) u8·s8 is exact in practice and
        # faster (docs/results.md). Lowered graphs never get u8·u8: ONNX Runtime 1.32 would turn the
        # s8 weights into u8 before fusing QGemm, and the GEMMs would stay float.
        if not self.lowered and int8_conv_inputs(model):
            options.add_session_config_entry("session.x64quantprecision", "1")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers_for(device))
        except Exception as error:  # noqa: BLE001 - ORT reports invalid graphs as generic exceptions
            fail(f"{path}: ONNX Runtime cannot load it ({str(error).splitlines()[0][:160]})")
        self.path = path
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.last_ms = 0.0

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self.session.run(self.output_names, {name: feeds[name] for name in self.input_names})
        self.last_ms = (time.perf_counter() - started) * 1e3
        return dict(zip(self.output_names, outputs))


class OrtBackend(StagedBackend):
    """The three stage runners of a cascade model dir (or the dense graph)."""

    name = "ort"

    def __init__(self, model_dir: Path, manifest: dict[str, Any], device: str = "cpu", lower: bool = True,
                 threads: int = 0, **options: Any) -> None:
        if options:
            names = ", ".join("--" + name.replace("_", "-") for name in sorted(options))
            fail(f"{names}: not a setting of the ONNX Runtime backend (it runs the model dir's own precision); "
                 "use --backend torch or trt")
        # Each stage learns which of its inputs the stages before produced by a ReLU (INT8: uint8 rows).
        self.stages: list[OrtRunner] = []
        rectified: frozenset[str] = frozenset()
        for stage in manifest["stages"]:
            self.stages.append(OrtRunner(model_dir / stage["file"], device, lower, threads, rectified))
            rectified |= self.stages[-1].rectified_outputs
        self.model_dir = model_dir
        self.device = device
        self.threads = threads

    def dense_runner(self, manifest: dict[str, Any]) -> OrtRunner:
        return OrtRunner(self.model_dir / manifest["dense"]["file"], self.device, lower=False, threads=self.threads)
