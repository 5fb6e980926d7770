"""GPU check of the region-conv Triton kernels: correctness natively, then timings vs cuDNN.

    python tools/gpu_check.py [--out gpu-results] [--dry-run]

Runs from a plain source checkout on a machine with torch + triton + numpy + a CUDA GPU and
nothing of ours installed, without network, in a few minutes on one H100 (without Pillow or tqdm
the end-to-end images are smooth random fields instead of the bundled samples). Timing statistics
are ``layercascade.runtime.timing``'s, as in lc-bench, with a CUDA-event clock. Writes
``gpu_check.log`` and ``gpu_check.json`` into ``--out``, the JSON after every phase (``complete``
says whether all ran; a phase that crashes is recorded as its ``error``):

* ``smoke``: first, ``tools/trt_smoke.py`` in a process of its own (``trt_smoke.json``: the driver,
  the imports, the static TensorRT check, every AOT kernel loaded and launched, and with TensorRT
  the parser, plugin engines, lc-build, parity and CUDA graphs), each step's outcome here;
* ``correctness``: every case of ``python -m layercascade.plugins.check``, run natively;
* ``benchmark``: for C = C_out ∈ {64, 256, 512} on 1×64×64 fp16 NHWC maps, 3×3 and 1×1
  (dilation 1, bias, no ReLU), at 5/10/25/50/100 % active pixels, scattered (random) and
  clustered (smooth blobs, like real cascade regions) masks: median / p90 / p99 GPU time of
  the list form (conv on a prebuilt list; building the list timed apart), the single-launch
  mask form and dense cuDNN ``conv2d`` (channels-last fp16), each over ≥ 50 CUDA-graph
  replays after warm-up, timed with CUDA events, next to the ideal speedup 1 / fraction;
* ``end_to_end``: frames per second of the whole cascade (torch backend, kernels path: uint8
  images on the GPU → label maps on the GPU, thresholding and fusion included) against the
  dense network of the same weights (cuDNN, BN folded), 512×512 fp16, batch 1 and 8, eager and
  replayed as one CUDA graph, ≥ 50 timed runs each (CUDA events, alternating blocks): ``tiny``
  (the demo checkpoint at ρ = 0.985), ``resnet50`` and ``irnet`` (untrained weights, regions
  forced to 30 % / 15 % of the pixels), next to the FLOP-ideal speedup; at batch 1 the labels
  and scores are also compared with the fp32 reference path on the CPU.

``--dry-run`` does the same on the CPU with Triton's interpreter, tiny sizes and a few
iterations (wall-clock timings, meaningless as speed; end to end only ``tiny``, 32×32, fp32,
no CUDA graph), so the test suite can run it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from trt_smoke import Log, import_checkout  # this folder is on sys.path: scripts run from it

SIZES = {"channels": (64, 256, 512), "kernels": (3, 1), "map": 64, "warmup": 10, "iters": 50}
DRY_SIZES = {"channels": (16,), "kernels": (3, 1), "map": 8, "warmup": 1, "iters": 2}
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
MASK_KINDS = ("scattered", "clustered")
E2E = {"models": ("tiny", "resnet50", "irnet"), "size": 512, "batches": (1, 8), "graphs": (False, True),
       "precision": "fp16", "warmup": 5, "iters": 50}
DRY_E2E = {"models": ("tiny",), "size": 32, "batches": (1, 2), "graphs": (False,), "precision": "fp32",
           "warmup": 1, "iters": 2}
DEMO_RHO = 0.985
FORCED_ACTIVE = (0.3, 0.15)  # shares of pixels reaching stages 2 and 3 for untrained models
# Stop starting new kernel-benchmark layers, new end-to-end models, then new end-to-end cases
# past these points so the whole run stays under 6 minutes: a model's start compiles all its
# region-conv kernels (IRNet: 21 specialisations, ~1 min at 1-3 s each) and runs the fp32
# reference on the CPU, so a model starts no later than 4 minutes in.
DEADLINE_S = 150.0
E2E_MODEL_DEADLINE_S = 240.0
E2E_DEADLINE_S = 300.0
# fp16 scores of a 50-100 layer network drift from the fp32 reference by a few 1e-3 of their range.
E2E_SCORE_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}


def stats(samples: list[float], batch: int = 1) -> dict[str, float]:
    """Median, p90, p99 (ms, unrounded), FPS at ``batch`` images per call and the number of timed runs
    (``runtime.timing``'s statistics)."""
    from layercascade.runtime.timing import LatencyStats

    return dataclasses.asdict(LatencyStats.of(samples, batch))


def cuda_event_ms(call: Callable[[], object]) -> float:
    """GPU milliseconds of one ``call()``, between two CUDA events (the clock of ``runtime.timing``)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def make_timer(cuda: bool, warmup: int, iters: int) -> Callable[[Callable[[], object]], dict]:
    """A timer of one call: CUDA events around CUDA-graph replays on a GPU (GPU time without
    Python launch overhead — how the runtime runs stages), wall clock on the CPU."""
    from layercascade.runtime.timing import time_calls

    def time_eager(fn: Callable[[], object]) -> dict:
        for _ in range(warmup):
            fn()
        return stats(time_calls(fn, iters))

    def time_graph(fn: Callable[[], object]) -> dict:
        # Warm up on the stream that then captures (Triton compiles, cuDNN picks its algorithm,
        # handles and workspaces cached per stream get made), as torch.cuda.graph's docs ask.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            fn()
        for _ in range(warmup):
            graph.replay()
        torch.cuda.synchronize()
        return stats(time_calls(graph.replay, iters, cuda_event_ms))

    return time_graph if cuda else time_eager


class Deadlines:
    """Checks of the time since ``started`` against the deadlines above; ``truncated`` records a skip."""

    def __init__(self, started: float, log: Log) -> None:
        self.started, self.log, self.truncated = started, log, False

    def passed(self, deadline_s: float, skipped: str) -> bool:
        """Whether ``deadline_s`` has passed; if so, log that ``skipped`` is skipped."""
        if time.perf_counter() - self.started <= deadline_s:
            return False
        self.truncated = True
        self.log(f"# deadline: skipping {skipped}")
        return True


def clustered_mask(fraction: float, size: int, seed: int) -> torch.Tensor:
    """Exactly round(fraction·size²) active pixels forming smooth blobs: the top of a
    bilinearly upsampled 8×8 noise field (cascade regions are objects and their borders)."""
    generator = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(1, 1, 8, 8, generator=generator), size=(size, size),
                          mode="bilinear", align_corners=False).flatten()
    mask = torch.zeros_like(field)
    mask[torch.argsort(field, descending=True)[: round(fraction * field.numel())]] = 1
    return mask.view(1, 1, size, size)


def bench_layer(c: int, k: int, side: int, device: str, time_call: Callable, log: Log) -> list[dict]:
    """One C→C k×k layer on a 1×side×side fp16 map: dense, then both forms per mask."""
    from layercascade.plugins import check, kernels
    from layercascade.plugins.reference import region_conv_reference

    gen = torch.Generator().manual_seed(c * 10 + k)
    x = torch.randn(1, side, side, c, generator=gen).to(device, torch.float16)
    weight = (torch.randn(c, c, k, k, generator=gen) / (c * k * k) ** 0.5).to(device, torch.float16)
    bias = torch.randn(c, generator=gen).to(device, torch.float16)
    packed = kernels.pack_weight(weight)
    pad = (k - 1) // 2
    # x.permute is the NCHW view of NHWC memory, i.e. a channels-last tensor.
    x_cl = x.permute(0, 3, 1, 2)
    w_cl = weight.contiguous(memory_format=torch.channels_last)
    dense = time_call(functools.partial(F.conv2d, x_cl, w_cl, bias, padding=pad))
    log(f"C={c} k={k}: dense conv2d {dense['median_ms']:.4f} ms")
    rows = []
    for kind in MASK_KINDS:
        for fraction in FRACTIONS:
            seed = int(fraction * 1000) + c
            mask = (check.make_mask((1, side, side), fraction, seed) if kind == "scattered"
                    else clustered_mask(fraction, side, seed)).to(device, torch.float16)
            active, count = kernels.active_list(mask)
            list_call = functools.partial(kernels.region_conv, x, packed, bias, active, count, padding=pad)
            masked_call = functools.partial(kernels.region_conv_masked, x, packed, bias, mask, padding=pad)
            ref = region_conv_reference(x, weight, bias, mask, padding=pad).double()
            err_list = (list_call().double() - ref).abs().max().item()
            err_masked = (masked_call().double() - ref).abs().max().item()
            timing = {"active_list_ms": time_call(functools.partial(kernels.active_list, mask)),
                      "list_ms": time_call(list_call), "masked_ms": time_call(masked_call)}
            list_ms, build_ms, masked_ms = (timing[key]["median_ms"] for key in ("list_ms", "active_list_ms",
                                                                                   "masked_ms"))
            row = {
                "c": c, "kernel": k, "mask": kind, "fraction": fraction,
                "active_pixels": int(mask.sum().item()), "dense_ms": dense, **timing,
                "speedup_list": dense["median_ms"] / list_ms,
                "speedup_list_with_build": dense["median_ms"] / (list_ms + build_ms),
                "speedup_masked": dense["median_ms"] / masked_ms,
                "ideal_speedup": 1.0 / fraction,
                "max_abs_err_list": err_list, "max_abs_err_masked": err_masked,
                "ok": max(err_list, err_masked) <= check.TOLERANCE["fp16"] * max(1.0, ref.abs().max().item()),
            }
            rows.append(row)
            log(f"  {kind:9s} {fraction:5.0%}: list {list_ms:.4f} ms (+ build {build_ms:.4f}) "
                f"×{row['speedup_list']:.2f}, masked {masked_ms:.4f} ms ×{row['speedup_masked']:.2f}, "
                f"ideal ×{row['ideal_speedup']:.1f}, {'ok' if row['ok'] else 'WRONG'}")
    return rows


def benchmark(sizes: dict, cuda: bool, log: Log, started: float) -> dict:
    """Region conv (list and mask forms) vs dense conv2d over channels and kernel sizes."""
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True  # give the dense baseline its best algorithm
    time_call = make_timer(cuda, sizes["warmup"], sizes["iters"])
    rows, deadlines = [], Deadlines(started, log)
    for c in sizes["channels"]:
        for k in sizes["kernels"]:
            if deadlines.passed(DEADLINE_S, f"C={c} k={k}"):
                continue
            try:
                rows += bench_layer(c, k, sizes["map"], device, time_call, log)
            except Exception as error:  # noqa: BLE001 - one failing layer must not lose the other results
                log(f"C={c} k={k}: FAILED {type(error).__name__}: {error}")
                rows.append({"c": c, "kernel": k, "ok": False, "error": f"{type(error).__name__}: {error}"})
    settings = {"batch": 1, "map": [sizes["map"]] * 2, "dtype": "fp16", "layout": "NHWC / channels_last",
                "dilation": 1, "bias": True, "relu": False, "warmup": sizes["warmup"], "iters": sizes["iters"],
                "timing": "CUDA events around CUDA-graph replays" if cuda else "wall clock (interpreter)",
                "dense": "torch.nn.functional.conv2d (cuDNN on a GPU), cudnn.benchmark on",
                "list_ms": "region_conv on a prebuilt list (zero-fill + one kernel); active_list_ms apart"}
    return {"settings": settings, "rows": rows, "truncated": deadlines.truncated}


def e2e_checkpoint(name: str):
    """The demo checkpoint for ``tiny``; untrained weights (seed 0) of the registered config otherwise."""
    from layercascade.model.checkpoint import Checkpoint, load_checkpoint
    from layercascade.model.config import get_config
    from layercascade.model.network import LayerCascadeNet

    if name == "tiny":
        return load_checkpoint(), "demo checkpoint"
    torch.manual_seed(0)
    config = get_config(name)
    return Checkpoint(config, LayerCascadeNet(config).state_dict(), [f"class{k}" for k in range(config.num_classes)],
                      [[0, 0, 0]] * config.num_classes), "untrained"


def e2e_images(backend, batch: int) -> tuple[np.ndarray, str]:
    """``batch`` bundled sample images at the model's input size (uint8 NHWC), and their source.

    Reading the samples needs Pillow and ``runtime.bench`` needs tqdm; a bare torch + triton
    machine may have neither, so there the images are smooth random colour fields instead.
    """
    try:
        from layercascade.runtime.bench import sample_batch
        from layercascade.runtime.cascade import Cascade
    except ImportError as error:
        field = F.interpolate(torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                              size=backend.input_size, mode="bilinear", align_corners=False)
        images = (field * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        return images, f"smooth random images ({error.name} is not installed, the bundled samples need it)"
    # Cascade only to resize the samples to the model's input size.
    return sample_batch(Cascade(Path("checkpoint"), backend.manifest, backend), batch), "bundled samples"


def time_alternating(calls: dict[str, Callable[[], object]], cuda: bool, warmup: int, iters: int,
                     batch: int) -> dict[str, dict]:
    """Statistics of each of ``calls`` (``batch`` images each), timed in alternating blocks
    (``runtime.timing``; CUDA events on a GPU)."""
    from layercascade.runtime.timing import time_in_blocks, wall_ms

    samples = time_in_blocks(calls, iters, warmup, cuda_event_ms if cuda else wall_ms)
    return {name: stats(values, batch) for name, values in samples.items()}


def fill_cascade_inputs(program, images: torch.Tensor, masks: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Set a cascade device program's images, ρ₂ = ρ₃ and (when given) its forced NCHW masks."""
    from layercascade.contract import STAGE_RHOS

    program.inputs["images"].copy_(images)
    for name in STAGE_RHOS:
        program.inputs[name].fill_(DEMO_RHO)
    if masks is not None:
        for name, mask in zip(("forced2", "forced3"), masks):
            program.inputs[name].copy_(torch.from_numpy(mask).permute(0, 2, 3, 1))


def e2e_case(backend, images: torch.Tensor, masks, graph: bool, cuda: bool, sizes: dict) -> dict:
    """Cascade and dense programs of ``backend`` on ``images`` (already on the device): timings and fractions."""
    from layercascade.contract import LABELS, STAGE_COUNTS

    batch = images.shape[0]
    cascade = backend.device_program("cascade", batch, forced=masks is not None, graph=graph)
    dense = backend.device_program("dense", batch, graph=graph)
    fill_cascade_inputs(cascade, images, masks)
    dense.inputs["images"].copy_(images)
    out = cascade()
    counts = out[STAGE_COUNTS].sum(0).double()
    labels = out[LABELS].clone()  # a graph's outputs are overwritten by the next replay
    timing = time_alternating({"cascade": cascade, "dense": dense}, cuda, sizes["warmup"], sizes["iters"], batch)
    return {"fractions": (counts / counts.sum()).tolist(), "labels": labels, **timing}


def e2e_reference_check(checkpoint, backend, images, masks, precision: str) -> dict:
    """Batch-1 labels and scores of the kernels path against the fp32 reference path on the CPU."""
    from layercascade.contract import LABELS, MASKS, SCORES1, SCORES2
    from layercascade.runtime.torch.backend import TorchBackend

    reference = TorchBackend(checkpoint, "cpu", input_size=backend.input_size)
    first_masks = None if masks is None else tuple(m[:1] for m in masks)
    expected = reference.path.stage_outputs(images[:1], (DEMO_RHO, DEMO_RHO), first_masks)
    program = backend.device_program("cascade", 1, forced=masks is not None, graph=False)
    fill_cascade_inputs(program, torch.from_numpy(images[:1]), first_masks)
    out = program()
    errors = []
    for k, scores in enumerate(expected["scores"]):
        ours = out[(SCORES1, SCORES2, "scores3")[k]].permute(0, 3, 1, 2).float().cpu()
        errors.append(float((ours - scores).abs().max()) / max(1.0, float(scores.abs().max())))
    agreement = float((out[LABELS].cpu() == expected[LABELS]).float().mean())
    masks_equal = [bool(torch.equal(out[name].permute(0, 3, 1, 2).float().cpu(), m))
                   for name, m in zip(MASKS, expected["masks"])]
    ok = max(errors) <= E2E_SCORE_TOLERANCE[precision] or (masks is None and agreement >= 0.99)
    return {"label_agreement": agreement, "score_rel_err": errors, "masks_equal": masks_equal, "ok": ok}


def end_to_end(sizes: dict, cuda: bool, log: Log, started: float) -> dict:
    """Cascade vs dense FPS of whole networks through the torch backend's kernels path."""
    from layercascade.cost_model import ideal_speedup
    from layercascade.runtime.timing import forced_masks
    from layercascade.runtime.torch.backend import TorchBackend

    torch.backends.cudnn.benchmark = True
    device, precision, side = ("cuda" if cuda else "cpu"), sizes["precision"], sizes["size"]
    rows, deadlines, image_source = [], Deadlines(started, log), None
    for name in sizes["models"]:
        if deadlines.passed(E2E_MODEL_DEADLINE_S, name):
            continue
        try:
            checkpoint, weights = e2e_checkpoint(name)
            backend = TorchBackend(checkpoint, device, precision, input_size=(side, side), kernels=True)
            all_images, image_source = e2e_images(backend, max(sizes["batches"]))
            stage_shape = (len(all_images), 1, *backend.manifest["stage_size"])
            all_masks = forced_masks(stage_shape, FORCED_ACTIVE) if weights == "untrained" else None
            gmacs = backend.manifest["stage_gmacs"]
            check = e2e_reference_check(checkpoint, backend, all_images, all_masks, precision)
            log(f"{name} ({weights}): vs fp32 reference at batch 1: labels {check['label_agreement']:.2%} equal, "
                f"score error {max(check['score_rel_err']):.1e} of range, {'ok' if check['ok'] else 'WRONG'} "
                f"({time.perf_counter() - started:.0f} s so far)")
        except Exception as error:  # noqa: BLE001 - one failing model must not lose the other results
            log(f"{name}: FAILED {type(error).__name__}: {error}")
            rows.append({"model": name, "ok": False, "error": f"{type(error).__name__}: {error}"})
            continue
        for batch in sizes["batches"]:
            images = torch.from_numpy(all_images[:batch]).to(device)
            first_labels = None  # of the batch's first timed mode, which the others must reproduce
            masks = None if all_masks is None else tuple(m[:batch] for m in all_masks)
            for graph in sizes["graphs"]:
                if deadlines.passed(E2E_DEADLINE_S, f"{name} batch {batch}{' graph' if graph else ''}"):
                    continue
                row = {"model": name, "weights": weights, "size": [side, side], "batch": batch,
                       "precision": precision, "cuda_graph": graph,
                       "rho": DEMO_RHO if masks is None else None,
                       "forced_active_fractions": None if masks is None else list(FORCED_ACTIVE),
                       "reference_check": check if batch == sizes["batches"][0] and not graph else None}
                try:
                    case = e2e_case(backend, images, masks, graph, cuda, sizes)
                except Exception as error:  # noqa: BLE001 - keep the other cases
                    log(f"{name} batch {batch} graph={graph}: FAILED {type(error).__name__}: {error}")
                    rows.append({**row, "ok": False, "error": f"{type(error).__name__}: {error}"})
                    continue
                fractions = case["fractions"]
                reach = (fractions[1] + fractions[2], fractions[2])
                first_labels = case["labels"] if first_labels is None else first_labels
                same_labels = bool(torch.equal(case["labels"], first_labels))
                row.update({
                    "stage_fractions": fractions, "cascade_ms": case["cascade"], "dense_ms": case["dense"],
                    "cascade_fps": batch * 1e3 / case["cascade"]["median_ms"],
                    "dense_fps": batch * 1e3 / case["dense"]["median_ms"],
                    "speedup": case["dense"]["median_ms"] / case["cascade"]["median_ms"],
                    "ideal_speedup": ideal_speedup([g["backbone"] for g in gmacs], [g["head"] for g in gmacs], reach),
                    "labels_match_first_mode": same_labels, "ok": check["ok"] and same_labels,
                })
                rows.append(row)
                log(f"  {name} batch {batch} {'graph' if graph else 'eager'}: cascade {row['cascade_fps']:.1f} FPS "
                    f"({case['cascade']['median_ms']:.3f} ms), dense {row['dense_fps']:.1f} FPS "
                    f"({case['dense']['median_ms']:.3f} ms), ×{row['speedup']:.2f} (ideal ×{row['ideal_speedup']:.2f}); "
                    f"stages {'/'.join(f'{100 * f:.0f}%' for f in fractions)}"
                    f"{'' if same_labels else '; labels differ from the first mode: WRONG'}")
        del backend
        if cuda:
            torch.cuda.empty_cache()
    settings = {key: (list(value) if isinstance(value, tuple) else value) for key, value in sizes.items()}
    settings.update({"demo_rho": DEMO_RHO, "forced_active_fractions": list(FORCED_ACTIVE), "images": image_source,
                     "timing": ("CUDA events around each call (eager launches, or one CUDA-graph replay)" if cuda
                                else "wall clock (interpreter)"),
                     "measured": "uint8 images on the device → label maps on the device; host copies excluded",
                     "dense": "the same weights, BN folded, every stage's blocks on every pixel, final head; "
                              "cuDNN channels-last convs (ReLU and residual adds as separate passes, eager "
                              "PyTorch), cudnn.benchmark on"})
    return {"settings": settings, "rows": rows, "truncated": deadlines.truncated}


def smoke_run(out: Path, dry_run: bool, log: Log) -> dict[str, str]:
    """``tools/trt_smoke.py`` in a process of its own (native crashes stay there, and its PTX steps
    need Triton compiling, not interpreting); each step's outcome."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, str(Path(__file__).with_name("trt_smoke.py")), "--out", str(out)]
    done = subprocess.run([*command, *(["--dry-run"] if dry_run else [])], env=env, capture_output=True, text=True,
                          check=False)
    for line in done.stdout.splitlines():
        log(line)
    report = out / "trt_smoke.json"
    if not report.is_file():
        log(f"smoke run: no report (exit status {done.returncode}): {done.stderr.strip()[-500:]}")
        return {"smoke": "failed"}
    return {step["step"]: step["outcome"] for step in json.loads(report.read_text())["steps"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"), help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import_checkout()
    import triton

    cuda = torch.cuda.is_available() and not args.dry_run
    if not (cuda or args.dry_run):
        print("gpu_check: no CUDA GPU visible to torch; use --dry-run to exercise the script on the CPU",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "gpu_check.log")
    device = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter)"
    log(f"# {device}; python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}")

    results = {
        "schema": 1,
        "dry_run": args.dry_run,
        "device": device,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
                     "cuda": torch.version.cuda},
        "correctness_ok": False,
        "complete": False,
    }

    def save() -> None:
        """Write what is measured so far (atomically), so a crash or a kill later keeps it."""
        results["elapsed_s"] = time.perf_counter() - started
        partial = args.out / "gpu_check.json.partial"
        partial.write_text(json.dumps(results, indent=1), encoding="utf-8")
        partial.replace(args.out / "gpu_check.json")

    def phase(name: str, run: Callable[[], object]) -> bool:
        """Run one phase into ``results[name]``; a crash is logged and recorded, not fatal."""
        try:
            results[name] = run()
            return True
        except Exception as error:  # noqa: BLE001 - keep the phases measured before it
            log(f"# {name}: FAILED {type(error).__name__}: {error}")
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            return False
        finally:
            save()

    def correctness() -> list[dict]:
        from layercascade.plugins import check

        return check.run_checks(quick=args.dry_run, with_ptx=False, report=log)

    log("# TensorRT / GPU smoke run (trt_smoke.json)")
    results["smoke"] = smoke_run(args.out, args.dry_run, log)
    log("# correctness")
    ok = phase("correctness", correctness)
    if ok:
        rows = results["correctness"]
        results["correctness_ok"] = all(r["ok"] for r in rows)
        ok = results["correctness_ok"]
        log(f"# correctness: {sum(r['ok'] for r in rows)}/{len(rows)} ok ({time.perf_counter() - started:.0f} s so far)")
    log("# benchmark")
    ok &= phase("benchmark", lambda: benchmark(DRY_SIZES if args.dry_run else SIZES, cuda, log, started))
    log(f"# end to end ({time.perf_counter() - started:.0f} s so far)")
    ok &= phase("end_to_end", lambda: end_to_end(DRY_E2E if args.dry_run else E2E, cuda, log, started))
    ok = ok and all(row["ok"] for row in results["benchmark"]["rows"] + results["end_to_end"]["rows"])
    ok = ok and "failed" not in results["smoke"].values()
    results["complete"] = True
    save()
    log(f"# {'all ok' if ok else 'FAILURES'}; {results['elapsed_s']:.0f} s; results in {args.out}")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
