"""ONNX Runtime sessions of exported graphs: the one place that imports onnxruntime for them and
sets their options.

Used by the runtime's ONNX Runtime backend, the calibration's statistics (it runs the fp32
stage graphs) and the probes of ONNX Runtime's own graph optimizations (``runtime/ort/layout.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layercascade.errors import fail

CPU = ["CPUExecutionProvider"]


def import_onnxruntime() -> Any:
    """``onnxruntime``, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        fail("the ONNX Runtime backend needs onnxruntime: pip install 'layercascade[cpu]'")
    return onnxruntime


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device`` ("cpu" or "cuda"), or a clear error."""
    available = import_onnxruntime().get_available_providers()
    if device == "cpu":
        return CPU
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not wanted:
        fail(f"--device cuda needs onnxruntime-gpu (installed providers: {', '.join(available)}); "
             "pip install 'layercascade[gpu]' or use --device cpu")
    return [*wanted, *CPU]


def session_options(threads: int = 0, u8u8: bool = False, optimize: bool = True,
                    profile_prefix: Path | None = None) -> Any:
    """The options of every session (``optimize``: all graph optimizations, else none).

    Worker threads spin while a run hands them work (a lowered cascade is ~200 small ops: waking
    sleeping threads for each costs more than the op), and stop spinning when the run returns,
    so sessions that run back to back (the cascade and its dense baseline in lc-bench) or the
    caller's own threads do not lose their cores to idle spinners. ``u8u8``: ONNX Runtime's
    exact u8·u8 int8 kernels (``runtime/ort/loader.py`` says when).
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if u8u8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return options


def inference_session(model: Any, options: Any = None, providers: list[str] = CPU) -> Any:
    """An ``InferenceSession`` of ``model`` (an ONNX ModelProto or its bytes) with ``options``
    (default: :func:`session_options`)."""
    serialized = model if isinstance(model, bytes) else model.SerializeToString()
    return import_onnxruntime().InferenceSession(serialized, options or session_options(), providers=providers)
