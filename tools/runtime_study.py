"""Side-by-side CPU timings in one process, in alternating blocks of 10 runs (medians), for the figures of
docs/openvino.md that compare versions, runtimes or precisions with each other.

This shared VM's speed drifts by more than these effects between `lc-bench` runs; timed in one
process, taking turns, all candidates see the same drift.

    # the graphs a version's ONNX Runtime and OpenVINO backends compile, saved by that version
    # (run with each version's python; the script needs nothing newer than Cascade.load):
    python tools/runtime_study.py save DIR PREFIX
    # two saved versions: wall medians of cascade and dense on both runtimes, then per-op-type kernel
    # time of each cascade (ONNX Runtime's profiler, OpenVINO's PERF_COUNT), profiled in turn:
    python tools/runtime_study.py compare PREFIX_A PREFIX_B [--blocks 30] [--profile-runs 300]
    # loaded cascades and dense networks: [dense:]DIR@BACKEND[:PRECISION] (DIR "demo": the bundled model)
    python tools/runtime_study.py cascades demo@ort demo@openvino:bf16 dense:demo@openvino:fp32 ...
    # the same on a new synthetic image every run (the active pixels differ run to run, as real images' do):
    python tools/runtime_study.py cascades demo@ort demo@openvino --fresh
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from layercascade.contract import IMAGE, RHO2, RHO3
from layercascade.export.lowering import lower_region_convs
from layercascade.export.session import session_options
from layercascade.model.evaluate import markdown_table
from layercascade.runtime.bench import sample_batch
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.timing import forced_masks
from layercascade.runtime.openvino.loader import core

RHO = 0.985
OPENVINO = {"PERFORMANCE_HINT": "LATENCY"}  # the backend's default settings


TIMED_PER_BLOCK = 10
CALLS_PER_BLOCK = 1 + TIMED_PER_BLOCK  # the untimed call first


def interleaved_medians(steps: dict[str, Callable[[], object]], blocks: int) -> dict[str, float]:
    """Median ms of each step over ``blocks`` turns of 10 timed calls (after one untimed call each turn)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(blocks):
        for name, step in steps.items():
            step()
            for _ in range(TIMED_PER_BLOCK):
                started = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - started) * 1e3)
    return {name: float(np.median(values)) for name, values in times.items()}


def save(model_dir: str, prefix: str) -> None:
    """PREFIX_ort.onnx (the joined, lowered cascade), PREFIX_openvino.onnx (the same with this version's
    OpenVINO layout rewrites, if it has any), PREFIX_dense.onnx and PREFIX_image.npy (a bundled sample)."""
    cascade = Cascade.load(model_dir, backend="ort")
    joined = lower_region_convs(cascade.runner.joined_graph(False))
    onnx.save(joined, f"{prefix}_ort.onnx")
    try:
        from layercascade.runtime.openvino.layout import openvino_layouts
    except ImportError:  # a version from before the rewrites
        onnx.save(joined, f"{prefix}_openvino.onnx")
    else:
        onnx.save(openvino_layouts(joined), f"{prefix}_openvino.onnx")
    onnx.save(onnx.load(Path(cascade.model_dir) / "dense.onnx"), f"{prefix}_dense.onnx")
    np.save(f"{prefix}_image.npy", sample_batch(cascade, 1))


def compare(prefixes: list[str], blocks: int, profile_runs: int) -> dict:
    import onnxruntime

    image = np.load(f"{prefixes[0]}_image.npy")

    def session(path: str, profile: Path | None = None) -> onnxruntime.InferenceSession:
        return onnxruntime.InferenceSession(path, session_options(profile_prefix=profile),
                                            providers=["CPUExecutionProvider"])

    def request(path: str, **extra) -> object:
        return core().compile_model(core().read_model(path), "CPU", {**OPENVINO, **extra}).create_infer_request()

    def cascade_feeds(ort_session: onnxruntime.InferenceSession) -> dict[str, np.ndarray]:
        """The image and ρ for both stages, as many as the graph's rho inputs take (one per class; one in graphs
        exported before per-class thresholds)."""
        shapes = {graph_input.name: graph_input.shape for graph_input in ort_session.get_inputs()}
        return {IMAGE: image, **{name: np.full(shapes[name][0], RHO, np.float32) for name in (RHO2, RHO3)}}

    steps, feeds_of = {}, {}
    for prefix in prefixes:
        ort_cascade, ov_cascade = session(f"{prefix}_ort.onnx"), request(f"{prefix}_openvino.onnx")
        feeds = feeds_of[prefix] = cascade_feeds(ort_cascade)
        ort_dense, ov_dense = session(f"{prefix}_dense.onnx"), request(f"{prefix}_dense.onnx")
        steps[f"{prefix}: cascade, ort"] = lambda s=ort_cascade, f=feeds: s.run(None, f)
        steps[f"{prefix}: cascade, openvino"] = lambda r=ov_cascade, f=feeds: r.infer(f, share_inputs=True)
        steps[f"{prefix}: dense, openvino"] = lambda r=ov_dense: r.infer({IMAGE: image}, share_inputs=True)
        steps[f"{prefix}: dense, ort"] = lambda s=ort_dense: s.run(None, {IMAGE: image})
    wall = interleaved_medians(steps, blocks)
    folder = Path(tempfile.mkdtemp(prefix="lc-study-"))
    sessions = {p: session(f"{p}_ort.onnx", folder / f"profile{k}") for k, p in enumerate(prefixes)}
    requests = {p: request(f"{p}_openvino.onnx", PERF_COUNT=True) for p in prefixes}
    ov_ops = {p: defaultdict(lambda: [0.0, 0.0]) for p in prefixes}
    warmup = 5
    for run in range(warmup + profile_runs):
        for prefix in prefixes:  # in turn, one run each, so drift hits every version alike
            sessions[prefix].run(None, feeds_of[prefix])
            requests[prefix].infer(feeds_of[prefix], share_inputs=True)
            for info in requests[prefix].profiling_info if run >= warmup else ():
                if info.status.name == "EXECUTED":
                    ov_ops[prefix][info.node_type][0] += info.real_time.total_seconds() * 1e3 / profile_runs
                    ov_ops[prefix][info.node_type][1] += 1 / profile_runs
    profiles = {}
    for prefix, ort_session in sessions.items():
        events = json.loads(Path(ort_session.end_profiling()).read_text())
        timed_from = [e["ts"] for e in events if e.get("name") == "model_run"][-profile_runs]
        ops = defaultdict(lambda: [0.0, 0.0])
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= timed_from:
                ops[event["args"]["op_name"]][0] += event["dur"] / 1e3 / profile_runs
                ops[event["args"]["op_name"]][1] += 1 / profile_runs
        profiles[f"{prefix}: ort"] = {op: [round(ms, 4), round(n)] for op, (ms, n) in ops.items()}
        profiles[f"{prefix}: openvino"] = {op: [round(ms, 4), round(n)] for op, (ms, n) in ov_ops[prefix].items()}
    return {"wall_ms": wall, "profiles": profiles}


def parse_spec(spec: str) -> tuple[bool, str | None, str, str | None]:
    """[dense:]DIR@BACKEND[:PRECISION] → (dense, model dir or None for the demo, backend, precision)."""
    dense = spec.startswith("dense:")
    where, _, how = spec.removeprefix("dense:").partition("@")
    backend, _, precision = how.partition(":")
    return dense, None if where == "demo" else where, backend or "ort", precision or None


def cascades(specs: list[str], blocks: int, fresh: bool = False,
             forced: tuple[float, float] | None = None) -> dict[str, float]:
    """Wall medians of each spec's cascade (or dense network) on a bundled sample image, or with ``fresh``, on a new
    synthetic val image at the model's size every run (the same sequence for every spec), as a folder of photos
    runs: the active pixels then differ run to run, and a runtime that re-plans on a new shape (OpenVINO, for the
    tensors whose length the active pixels set) pays for it every image, not once."""
    steps = {}
    for spec in specs:
        dense, model_dir, backend, precision = parse_spec(spec)
        cascade = Cascade.load(model_dir, backend=backend, **({"precision": precision} if precision else {}))
        images = iter(synthetic_batches(cascade.input_size, blocks * CALLS_PER_BLOCK)) if fresh else None
        image = sample_batch(cascade, 1)
        if dense:  # the backend's own dense network, at the cascade's settings
            runner = cascade.runner.dense_runner(cascade.manifest)
            steps[spec] = lambda runner=runner, image=image, images=images: runner.infer(
                {IMAGE: next(images) if images else image})
        elif forced is not None:  # forced masks, their shares drawn anew every run (fresh) or fixed
            masks = iter(forced_mask_pairs(cascade.manifest["stage_size"], forced, blocks * CALLS_PER_BLOCK, fresh))
            steps[spec] = lambda cascade=cascade, image=image, masks=masks: cascade.run_batch(
                image, RHO, forced_masks=next(masks))
        else:
            steps[spec] = lambda cascade=cascade, image=image, images=images: cascade.run_batch(
                next(images) if images else image, RHO)
    return interleaved_medians(steps, blocks)


def forced_mask_pairs(size: list[int], shares: tuple[float, float], count: int, fresh: bool) -> list[tuple]:
    """``count`` (M₂, M₃) at the stage size (``runtime.timing.forced_masks``), the same sequence for every spec;
    ``fresh``: each pair's shares scaled by a factor within ±20 %, so the active pixel counts differ run to run."""
    factors = np.random.default_rng(0).uniform(0.8, 1.2, count) if fresh else np.ones(1)
    pairs = [forced_masks((1, 1, *size), (min(1.0, shares[0] * f), min(1.0, shares[1] * f)), seed=k)
             for k, f in enumerate(factors)]
    return pairs if fresh else pairs * count


def synthetic_batches(size: tuple[int, int], count: int) -> list[np.ndarray]:
    from layercascade.model.data.synthetic import SyntheticSegmentation

    data = SyntheticSegmentation("val", size=size, length=count)
    return [data[k][0][None] for k in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    saving = commands.add_parser("save")
    saving.add_argument("model_dir")
    saving.add_argument("prefix")
    comparing = commands.add_parser("compare")
    comparing.add_argument("prefixes", nargs="+")
    comparing.add_argument("--blocks", type=int, default=30)
    comparing.add_argument("--profile-runs", type=int, default=300)
    timing = commands.add_parser("cascades")
    timing.add_argument("specs", nargs="+")
    timing.add_argument("--blocks", type=int, default=30)
    timing.add_argument("--fresh", action="store_true",
                        help="a new synthetic image every run (as a folder of photos runs) instead of one repeated; "
                             "with --forced, new shares every run (all made first: blocks × 11 images per spec)")
    timing.add_argument("--forced", type=lambda text: tuple(float(v) for v in text.split(",")), default=None,
                        metavar="F2,F3", help="forced masks with these shares of the pixels (untrained models)")
    for command in (comparing, timing):
        command.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.command == "save":
        save(args.model_dir, args.prefix)
        return
    if args.command == "cascades":
        result = {"wall_ms": cascades(args.specs, args.blocks, args.fresh, args.forced)}
    else:
        result = compare(args.prefixes, args.blocks, args.profile_runs)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(markdown_table(["", "median ms"], [[name, f"{ms:.3f}"] for name, ms in result["wall_ms"].items()]))
    for name, ops in result.get("profiles", {}).items():
        rows = sorted(ops.items(), key=lambda item: -item[1][0])
        print(f"\n{name}: {sum(ms for ms, _ in ops.values()):.3f} ms in {sum(n for _, n in ops.values())} kernels")
        print(markdown_table(["op type", "ms", "kernels"], [[op, f"{ms:.3f}", str(n)] for op, (ms, n) in rows]))


if __name__ == "__main__":
    main()
