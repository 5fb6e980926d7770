"""One-shot TensorRT / GPU smoke run: what a first run of the GPU path meets, learnt in one go.

    python tools/trt_smoke.py [--out DIR] [--dry-run]

Ordered steps; each is recorded in ``trt_smoke.json`` (and a line in ``trt_smoke.log``) as ``ok``,
``failed`` (with its error) or ``skipped`` (with the reason), and a failed step never stops the
later ones. The JSON is rewritten after every step, so a crash keeps what was learnt:

1. ``driver``: the GPU, its compute capability, the driver's CUDA version (the PTX ISA it loads);
2. ``imports``: tensorrt (and ``tensorrt.plugin``), triton, torch (with CUDA?), cuda-python, onnxruntime;
3. ``static_check``: ``lc-build --check`` of the demo model dir (fp32, fp16) and of an INT8 copy;
4. ``ptx``: every RegionConv specialisation of the demo model (fp32, fp16, both tactics) compiled to
   AOT PTX as the plugin hands it to TensorRT, loaded with ``cuModuleLoadData`` and launched once
   against the reference (``--dry-run``: the first tactic, compiled and assembled by ptxas only);
5. ``parse``: every graph of every precision through ``trt.OnnxParser`` alone, its errors listed;
6. ``one_node``: a one-RegionConv engine, fp32 and fp16, AOT then JIT plugin, against the reference;
7. ``two_nodes``: two RegionConvs of other dilations and activations in one engine (each layer must
   run its own kernel);
8. ``lc_build``: ``lc-build`` of the demo model, fp32 and fp16;
9. ``parity``: ``lc-run``'s TensorRT backend against ONNX Runtime on the bundled samples;
10. ``cuda_graph``: the engines replayed from CUDA graphs against eager runs.

Runs with whatever the machine has: without TensorRT the TensorRT steps say "skipped: tensorrt not
importable"; without a GPU the GPU steps are skipped. ``tools/gpu_check.py`` runs it as its first
phase; ``--dry-run`` (the test suite) runs the CPU-side steps only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the checkout; its root is the package itself
PLUGIN_LAYERS = ("stage2.onnx", "stage3.onnx")
TRT_STEPS = ("parse", "one_node", "two_nodes", "lc_build", "parity", "cuda_graph")


class Skip(Exception):
    """A step that cannot run here; the message says why."""


def import_checkout() -> None:
    """Make ``import layercascade`` resolve to this checkout, whether or not a copy is installed.

    The repository root is the package directory, so its parent is not an import root of
    ``layercascade``; a temporary directory holding a ``layercascade`` symlink to the root
    is put first on ``sys.path`` (ahead of any installed or editable copy).
    """
    link_dir = Path(tempfile.mkdtemp(prefix="lc-gpu-check-"))
    link = link_dir / "layercascade"
    link.symlink_to(ROOT, target_is_directory=True)
    atexit.register(lambda: (link.unlink(), link_dir.rmdir()))
    sys.path.insert(0, str(link_dir))
    import layercascade

    if Path(layercascade.__file__).resolve().parent != ROOT:
        raise SystemExit(f"layercascade resolved to {layercascade.__file__}, not the checkout {ROOT}")


class Log:
    """Print and append to a log file."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8")

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


class Smoke:
    """The steps, sharing what earlier ones found (``self.state``)."""

    def __init__(self, out: Path, dry_run: bool, log: Log) -> None:
        self.out, self.dry_run, self.log = out, dry_run, log
        self.work = Path(tempfile.mkdtemp(prefix="lc-trt-smoke-"))
        self.state: dict[str, Any] = {}

    # -- what the machine has ------------------------------------------------------------------
    def gpu(self) -> Any:
        """torch with a usable CUDA GPU, or Skip."""
        if self.dry_run:
            raise Skip("dry run: no GPU steps")
        import torch

        if not torch.cuda.is_available():
            raise Skip("no CUDA GPU visible to torch")
        return torch

    def tensorrt(self) -> Any:
        try:
            import tensorrt
        except (ImportError, OSError) as error:
            raise Skip(f"tensorrt not importable ({str(error).splitlines()[0][:120]})") from None
        self.gpu()
        return tensorrt

    # -- the steps -----------------------------------------------------------------------------
    def driver(self) -> dict:
        self.gpu()
        from layercascade.plugins.nvidia import driver_cuda_version, gpu_info

        gpu, cuda = gpu_info("the smoke run"), driver_cuda_version("the smoke run")
        self.state["arch"] = "sm_" + gpu["compute_capability"].replace(".", "")
        self.state["driver_cuda"] = cuda
        return {**gpu, "driver_cuda": cuda}

    def imports(self) -> dict:
        found = {}
        for name in ("tensorrt", "tensorrt.plugin", "triton", "torch", "cuda.bindings", "onnxruntime", "onnx"):
            try:
                module = __import__(name, fromlist=["_"])
                found[name] = getattr(module, "__version__", "present")
            except (ImportError, OSError) as error:
                found[name] = f"missing: {str(error).splitlines()[0][:120]}"
        import torch

        found["torch.cuda"] = torch.version.cuda if torch.cuda.is_available() else "no usable GPU"
        return found

    def static_check(self) -> dict:
        from layercascade.calibration.calibrate import calibrate
        from layercascade.runtime.inputs import DEMO_MODEL
        from layercascade.runtime.trt.build import check_model_dir

        int8 = self.work / "int8"
        calibrate(DEMO_MODEL, int8, limit=4, method="minmax", cache=self.work / "statistics.npz", progress=False)
        self.state["int8_dir"] = int8
        report = {}
        for folder in (DEMO_MODEL, int8):
            findings, graphs = check_model_dir(folder)
            errors = [f.line() for f in findings if f.level == "error"]
            report[folder.name] = {"graphs": graphs, "errors": errors,
                                   "warnings": [f.line() for f in findings if f.level == "warning"]}
            if errors:
                raise RuntimeError(f"{folder}: {len(errors)} error(s): {errors[:3]}")
        return report

    def specialisations(self) -> list[Any]:
        """Every distinct RegionConv layer of the demo model's stages 2–3."""
        import onnx
        from onnx import numpy_helper

        from layercascade.export import regionconv
        from layercascade.export.graph import attributes
        from layercascade.plugins.trt_plugin import layer_from_node
        from layercascade.runtime.inputs import DEMO_MODEL

        layers = set()
        for name in PLUGIN_LAYERS:
            model = onnx.load(str(DEMO_MODEL / name))
            weights = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
            for node in model.graph.node:
                if (node.domain, node.op_type) == (regionconv.DOMAIN, regionconv.OP_TYPE):
                    shape, settings = weights[node.input[1]], attributes(node)
                    layers.add(layer_from_node(shape[1] * settings["group"], shape, settings["pads"],
                                               settings["dilations"], settings["group"], settings["activation"]))
        return sorted(layers)

    def ptx(self) -> dict:
        from layercascade.plugins import trt_plugin

        arch, cuda = self.state.get("arch", "sm_90"), self.state.get("driver_cuda")
        rows = []
        tactics = trt_plugin.TACTICS[:1] if self.dry_run else trt_plugin.TACTICS  # the dry run: compile time
        for layer in self.specialisations():
            for precision in trt_plugin.PRECISIONS:
                for tactic in tactics:
                    kernel = trt_plugin.aot_kernel(layer, precision, arch, tactic, cuda)
                    row = {"layer": layer._asdict(), "precision": precision, "tactic": tactic, "kernel": kernel.name,
                           "shared_bytes": kernel.shared_bytes, "threads": kernel.threads}
                    row.update(self.launch(kernel, layer, precision, tactic) if not self.dry_run
                               else assemble(kernel.ptx, self.work))
                    rows.append(row)
        bad = [r for r in rows if not r["ok"]]
        if bad:
            raise RuntimeError(f"{len(bad)} of {len(rows)} kernels wrong: {bad[:2]}")
        return {"arch": arch, "driver_cuda": cuda, "kernels": rows}

    def launch(self, kernel: Any, layer: Any, precision: str, tactic: int) -> dict:
        """``kernel``'s PTX through the driver API (cuModuleLoadData, cuLaunchKernel), as TensorRT
        launches it, on a small map against the dense masked reference."""
        import ctypes

        import numpy as np
        from onnx import numpy_helper

        torch = self.gpu()
        from layercascade.plugins import nvidia, trt_plugin
        from layercascade.plugins.examples import Layer, region_conv_chain, tolerance

        driver = nvidia.import_cuda_driver("the smoke run")
        example = region_conv_chain(precision, (2, layer.c_in, 13, 17),
                                    [Layer(layer.c_out, layer.kernel, layer.dilation, layer.relu)])
        weights = {t.name: t for t in example.model.graph.initializer}

        tensors = [torch.from_numpy(a).cuda() for a in (example.feeds["X"], numpy_helper.to_array(weights["W0"]),
                                                         numpy_helper.to_array(weights["B0"]), example.feeds["M"])]
        out = torch.full((2, layer.c_out, 13, 17), float("nan"), dtype=tensors[0].dtype, device="cuda")
        n, _, h, w = example.feeds["X"].shape
        scalars = trt_plugin.kernel_scalars(n, h, w)
        grid = trt_plugin.launch_grid(scalars[2], layer.c_out, trt_plugin.tile_config(layer, precision, tactic))
        torch.cuda.synchronize()
        module = nvidia.cuda_call(driver.cuModuleLoadData(kernel.ptx.encode() + b"\0"))
        function = nvidia.cuda_call(driver.cuModuleGetFunction(module, kernel.name.encode()))
        values = ([ctypes.c_void_p(t.data_ptr()) for t in tensors] + [ctypes.c_int(int(s)) for s in scalars]
                  + [ctypes.c_void_p(out.data_ptr())])
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        nvidia.cuda_call(driver.cuLaunchKernel(function, *grid, kernel.threads, 1, 1, kernel.shared_bytes, 0,
                                               ctypes.addressof(params), 0))
        torch.cuda.synchronize()
        driver.cuModuleUnload(module)
        error = float(np.abs(out.cpu().double().numpy() - example.expected).max())
        return {"max_abs_err": error, "ok": error <= tolerance(precision, example.expected)}

    def parse(self) -> dict:
        trt = self.tensorrt()
        from layercascade.manifest import read_manifest
        from layercascade.plugins.trt_plugin import register_plugins
        from layercascade.runtime.inputs import DEMO_MODEL
        from layercascade.runtime.trt.build import network_flags, onnx_for
        from layercascade.runtime.trt.engines import graphs_of

        register_plugins()
        logger = trt.Logger(trt.Logger.WARNING)
        report, failures = {}, 0
        for folder, precisions in ((DEMO_MODEL, ("fp32", "fp16")), (self.state.get("int8_dir"), ("int8",))):
            if folder is None:
                continue
            for precision in precisions:
                for graph in graphs_of(read_manifest(folder)):
                    network = trt.Builder(logger).create_network(network_flags(trt, graph.name != "dense"))
                    parser = trt.OnnxParser(network, logger)
                    ok = parser.parse(onnx_for(graph, folder, precision), str(folder / graph.onnx))
                    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                    report[f"{graph.onnx} ({precision})"] = {"ok": bool(ok), "layers": network.num_layers,
                                                             "errors": errors}
                    failures += not ok
        if failures:
            raise RuntimeError(f"{failures} graph(s) rejected: " + json.dumps(report)[:2000])
        return report

    def engine_of(self, example: Any, aot: bool) -> Any:
        """Build and run ``example`` with TensorRT; its output Y."""
        trt = self.tensorrt()
        self.gpu()  # CUDA through torch, or the step is skipped
        from layercascade.plugins.examples import run_plan
        from layercascade.plugins.trt_plugin import register_plugins

        register_plugins()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flag = trt.NetworkDefinitionCreationFlag
        plugin = flag.PREFER_AOT_PYTHON_PLUGINS if aot else flag.PREFER_JIT_PYTHON_PLUGINS
        network = builder.create_network((1 << int(plugin)) | (1 << int(flag.STRONGLY_TYPED)))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(example.model.SerializeToString()):
            raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
        plan = builder.build_serialized_network(network, builder.create_builder_config())
        if plan is None:
            raise RuntimeError("TensorRT could not build the engine (see its log)")
        return run_plan(trt, logger, plan, example)

    def compare_engines(self, layers: list[Any]) -> dict:
        import numpy as np

        from layercascade.plugins.examples import region_conv_chain, tolerance

        report, wrong = {}, []
        for precision in ("fp32", "fp16"):
            example = region_conv_chain(precision, (2, 32, 19, 23), layers)
            for aot in (True, False):
                error = float(np.abs(self.engine_of(example, aot) - example.expected).max())
                key = f"{precision} {'AOT' if aot else 'JIT'}"
                report[key] = {"max_abs_err": error, "ok": error <= tolerance(precision, example.expected)}
                if not report[key]["ok"]:
                    wrong.append(key)
        if wrong:
            raise RuntimeError(f"wrong results: {wrong}: {report}")
        return report

    def one_node(self) -> dict:
        from layercascade.plugins.examples import Layer

        return self.compare_engines([Layer(48, 3, 2, True)])

    def two_nodes(self) -> dict:
        from layercascade.plugins.examples import Layer

        return self.compare_engines([Layer(48, 3, 1, True), Layer(40, 3, 4, False)])

    def lc_build(self) -> dict:
        self.tensorrt()
        from layercascade.runtime.inputs import DEMO_MODEL
        from layercascade.runtime.trt.build import BuildOptions, build_engines

        built = {}
        for precision in ("fp32", "fp16"):
            started = time.perf_counter()
            target = build_engines(DEMO_MODEL, self.work / f"engines-{precision}", BuildOptions(precision),
                                   progress=False)
            built[precision] = {"dir": str(target), "seconds": round(time.perf_counter() - started, 1),
                                "files": sorted(p.name for p in target.iterdir())}
            self.state[f"engines_{precision}"] = target
        return built

    def parity(self) -> dict:
        import numpy as np

        from layercascade.runtime.bench import sample_batch
        from layercascade.runtime.cascade import Cascade

        self.tensorrt()
        report = {}
        reference = Cascade.load(None, backend="ort")
        images = sample_batch(reference, 4)
        for precision in ("fp32", "fp16"):
            folder = self.state.get(f"engines_{precision}")
            if folder is None:
                raise Skip("no engines (lc_build did not run)")
            with Cascade.load(folder) as engines:
                agree = [float(np.mean(engines.run_batch(i[None]).labels == reference.run_batch(i[None]).labels))
                         for i in images]
            needed = 0.999 if precision == "fp32" else 0.99
            report[precision] = {"label_agreement": min(agree), "ok": min(agree) >= needed}
        if not all(r["ok"] for r in report.values()):
            raise RuntimeError(f"labels differ from ONNX Runtime: {report}")
        return report

    def cuda_graph(self) -> dict:
        import numpy as np

        from layercascade.runtime.bench import sample_batch
        from layercascade.runtime.cascade import Cascade

        self.tensorrt()
        folder = self.state.get("engines_fp16")
        if folder is None:
            raise Skip("no engines (lc_build did not run)")
        with Cascade.load(folder) as eager, Cascade.load(folder, cuda_graph=True) as graphs:
            images = sample_batch(eager, 2)
            same = [bool(np.array_equal(eager.run_batch(i[None]).labels, graphs.run_batch(i[None]).labels))
                    for i in list(images) * 2]
            captured = graphs.runner.captured_stages
        if not all(same):
            raise RuntimeError(f"graph replays differ from eager runs: {same}")
        return {"replays_equal_eager": len(same), "captured_stages": captured}


STEPS = ("driver", "imports", "static_check", "ptx", *TRT_STEPS)


def assemble(ptx: str, work: Path) -> dict:
    """ptxas (Triton's copy) assembles ``ptx`` for its own ``.target``: the dry run's check."""
    import re
    import subprocess

    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE).group(1)
    source = work / "kernel.ptx"
    source.write_text(ptx)
    done = subprocess.run([get_ptxas(int(re.sub(r"\D", "", target))).path, f"-arch={target}", str(source), "-o",
                           str(work / "kernel.cubin")], capture_output=True, text=True, check=False)
    return {"assembled": done.returncode == 0, "ok": done.returncode == 0, "ptxas": done.stderr.strip()[-300:]}


def run_smoke(out: Path, dry_run: bool, log: Log) -> dict:
    """Every step in order into ``out/trt_smoke.json``; returns the results."""
    smoke = Smoke(out, dry_run, log)
    results: dict[str, Any] = {"schema": 1, "dry_run": dry_run, "steps": []}
    started = time.perf_counter()
    for name in STEPS:
        begun = time.perf_counter()
        record: dict[str, Any] = {"step": name}
        try:
            record.update(outcome="ok", result=getattr(smoke, name)())
        except Skip as reason:
            record.update(outcome="skipped", reason=str(reason))
        except Exception as error:  # noqa: BLE001 - a failed step is recorded; the next ones still run
            record.update(outcome="failed", error=f"{type(error).__name__}: {str(error)[:2000]}",
                          traceback=traceback.format_exc()[-3000:])
        record["seconds"] = round(time.perf_counter() - begun, 2)
        results["steps"].append(record)
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        detail = record.get("reason") or record.get("error", "")
        log(f"smoke {name}: {record['outcome']} ({record['seconds']} s){': ' + detail[:300] if detail else ''}")
        partial = out / "trt_smoke.json.partial"
        partial.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        partial.replace(out / "trt_smoke.json")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"), help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="the CPU-side steps only")
    args = parser.parse_args(argv)
    import_checkout()
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_smoke(args.out, args.dry_run, Log(args.out / "trt_smoke.log"))
    return 1 if any(step["outcome"] == "failed" for step in results["steps"]) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
