"""ONNX Runtime backend: the three stage graphs joined into one session, RegionConv lowered to row form."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from layercascade.errors import LCError, fail
from layercascade.runtime.backend import StagedBackend, StageOutputs


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


def load_onnx(path: Path):
    """The ONNX model at ``path``, or one line naming the damaged file."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf raises several types on damaged files
        fail(f"{path}: corrupt or truncated ONNX file ({str(error).splitlines()[0][:120]}); re-export the model")


class OrtRunner:
    """One ONNX graph in an InferenceSession; ``infer`` records its own time in ``last_ms``.

    ``source`` is an ONNX file or a model already loaded (``label`` then names it in messages).
    ``fold_layout``: on the CPU, fold the reorders around INT8 stems in ONNX Runtime's optimized
    graph (``ort_layout.fold_stem_reorders``; ``layout_folded`` says whether there were any).
    """

    def __init__(self, source: Path | Any, device: str = "cpu", lower: bool = True, threads: int = 0,
                 non_negative_inputs: frozenset[str] = frozenset(), label: str | None = None,
                 profile_prefix: Path | None = None, fold_layout: bool = True) -> None:
        ort = _onnxruntime()
        path = Path(label if label is not None else source)
        model = load_onnx(source) if isinstance(source, (str, Path)) else source
        from layercascade.runtime.lowering import (LoweringUnsupported, int8_conv_inputs, lower_region_convs,
                                                   mean_as_zero_point, rectified_outputs, relu_as_uint8)

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
        # runs its fast u8·s8 kernels (docs/calibration.md), and the image normalised in one pass.
        # No effect on fp32 graphs.
        model = mean_as_zero_point(relu_as_uint8(model, non_negative_inputs))
        # On x86 CPUs without VNNI ONNX Runtime turns int8 activations into uint8 + 128 for its u8·s8
        # kernels, whose 16-bit pair sums then saturate; u8·u8 does not. So INT8 graphs whose convs
        # still read int8 activations (e.g. calibrated before the stem stayed float) get u8·u8.
        # With uint8 activations (zero point 0, mostly small values) u8·s8 is exact in practice and
        # faster (docs/results.md). Lowered graphs never get u8·u8: ONNX Runtime 1.32 would turn the
        # s8 weights into u8 before fusing QGemm, and the GEMMs would stay float.
        u8u8 = not self.lowered and int8_conv_inputs(model)
        providers = providers_for(device)
        try:
            level, serialized = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, model.SerializeToString()
            if fold_layout and providers == ["CPUExecutionProvider"]:
                from layercascade.runtime.ort_layout import fold_stem_reorders

                folded = fold_stem_reorders(model, self.options(threads, u8u8))
                if folded is not None:  # already optimized (and rewritten): load as it is
                    level, serialized = ort.GraphOptimizationLevel.ORT_DISABLE_ALL, folded.SerializeToString()
            self.session = ort.InferenceSession(serialized, self.options(threads, u8u8, level, profile_prefix),
                                                providers=providers)
        except Exception as error:  # noqa: BLE001 - ORT reports invalid graphs as generic exceptions
            fail(f"{path}: ONNX Runtime cannot load it ({str(error).splitlines()[0][:160]})")
        self.layout_folded = level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.path = path
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.last_ms = 0.0

    @staticmethod
    def options(threads: int, u8u8: bool, level: Any = None, profile_prefix: Path | None = None) -> Any:
        """The session options of every runner (``level``: graph optimizations, all by default)."""
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level is None else level
        # Worker threads spin while a run hands them work (a lowered cascade is ~200 small ops:
        # waking sleeping threads for each costs more than the op), and stop spinning when the
        # run returns, so sessions that run back to back (the cascade and its dense baseline in
        # lc-bench) or the caller's own threads do not lose their cores to idle spinners.
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

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        outputs = self.session.run(self.output_names, {name: feeds[name] for name in self.input_names})
        self.last_ms = (time.perf_counter() - started) * 1e3
        return dict(zip(self.output_names, outputs))


class OrtBackend(StagedBackend):
    """A cascade model dir as one session of its joined stage graphs (``cascade_graph``).

    ``stages`` are the three stage graphs as sessions of their own, built on first use: to
    look at one stage's outputs (tests, diagnostics); ``run`` does not use them.
    """

    name = "ort"

    def __init__(self, model_dir: Path, manifest: dict[str, Any], device: str = "cpu", lower: bool = True,
                 threads: int = 0, **options: Any) -> None:
        if options:
            names = ", ".join("--" + name.replace("_", "-") for name in sorted(options))
            fail(f"{names}: not a setting of the ONNX Runtime backend (it runs the model dir's own precision); "
                 "use --backend torch or trt")
        self.model_dir = model_dir
        self.device = device
        self.lower = lower
        self.threads = threads
        self.files = [model_dir / stage["file"] for stage in manifest["stages"]]
        self._forced_runner: OrtRunner | None = None
        self._stages: list[OrtRunner] | None = None
        self.runner = self.cascade_runner(forced_masks=False)  # its errors may build ``stages``: set first

    def cascade_runner(self, forced_masks: bool, profile_prefix: Path | None = None) -> OrtRunner:
        from layercascade.runtime.cascade_graph import cascade_graph

        try:
            joined = cascade_graph([load_onnx(path) for path in self.files], forced_masks)
        except ValueError as error:
            fail(f"{self.model_dir}: its stage graphs do not form a cascade ({error}); re-export the model")
        try:
            return OrtRunner(joined, self.device, self.lower, self.threads, label=f"{self.model_dir}/stages 1-3",
                             profile_prefix=profile_prefix)
        except LCError:
            # Name the stage graph ONNX Runtime rejects: building the stage sessions one by one
            # raises that file's own error; if each alone loads, the joined graph's error stands.
            _ = self.stages
            raise

    @property
    def stages(self) -> list[OrtRunner]:
        if self._stages is None:
            # Each stage learns which of its inputs the stages before produced by a ReLU (INT8: uint8 rows).
            self._stages, rectified = [], frozenset()
            for path in self.files:
                self._stages.append(OrtRunner(path, self.device, self.lower, self.threads, rectified))
                rectified |= self._stages[-1].rectified_outputs
        return self._stages

    @staticmethod
    def feeds(images: np.ndarray, rho: float,
              forced_masks: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
        feeds = {"image": images, "rho": np.array([rho], np.float32)}
        if forced_masks is not None:
            feeds["mask2"], feeds["mask3"] = forced_masks
        return feeds

    def run(self, images: np.ndarray, rho: float,
            forced_masks: tuple[np.ndarray, np.ndarray] | None = None) -> StageOutputs:
        runner = self.runner
        if forced_masks is not None:
            if self._forced_runner is None:
                self._forced_runner = self.cascade_runner(forced_masks=True)
            runner = self._forced_runner
        out = runner.infer(self.feeds(images, rho, forced_masks))
        masks = forced_masks or (out["mask2"], out["mask3"])
        # One session: the stages are not timed apart (``run_stages`` does, one session each).
        return StageOutputs(out["labels"], masks[0], masks[1], out["stage_counts"], {"total": runner.last_ms})

    def kernel_profile(self, images: np.ndarray, rho: float, forced_masks: tuple[np.ndarray, np.ndarray] | None,
                       runs: int, warmup: int) -> dict[str, tuple[float, int]]:
        """op type → (µs, kernel calls) per run: ONNX Runtime's profiler over ``runs`` runs of the
        cascade as ``run`` runs it (after ``warmup`` untimed ones), in a profiled session of its own.

        Op types are those of the optimized graph ONNX Runtime runs (QGemm, FusedGemm, Reorder…),
        not of the exported one. The profiler adds a few µs to every kernel, so small ops weigh
        more here than in a plain run.
        """
        with tempfile.TemporaryDirectory(prefix="lc-profile-") as folder:
            runner = self.cascade_runner(forced_masks is not None, profile_prefix=Path(folder) / "ort")
            feeds = self.feeds(images, rho, forced_masks)
            for _ in range(warmup + runs):
                runner.infer(feeds)
            events = json.loads(Path(runner.session.end_profiling()).read_text())
        timed_from = [e["ts"] for e in events if e.get("name") == "model_run"][-runs]  # the warmup runs come first
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            if event["ts"] >= timed_from:
                total = totals[event["args"]["op_name"]]
                total[0] += event["dur"]
                total[1] += 1
        return {op: (us / runs, round(calls / runs)) for op, (us, calls) in totals.items()}

    def dense_runner(self, manifest: dict[str, Any]) -> OrtRunner:
        return OrtRunner(self.model_dir / manifest["dense"]["file"], self.device, lower=False, threads=self.threads)
