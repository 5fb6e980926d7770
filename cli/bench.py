"""lc-bench: latency of the cascade against the dense network of the same weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layercascade.cli.args import (
    DATA_HELP,
    add_backend_arguments,
    add_rho_argument,
    add_rho_class_argument,
    engine,
    float_pair,
    load_options,
    rho_list,
    size,
)
from layercascade.contract import format_rho, format_rho_class
from layercascade.errors import fail, run_cli
from layercascade.runtime.registry import profilers

PROFILER_COST = "the profiler adds a few µs to every kernel"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-bench",
        description="Benchmark a model directory: median / p90 / p99 latency and FPS of the cascade and of the "
                    "dense network with the same weights (dense.onnx), timed in alternating blocks in one run, the "
                    "measured speedup and the FLOP-ideal one for the stage fractions seen.",
    )
    parser.add_argument("model", nargs="?", default=None, metavar="DIR",
                        help="model directory from lc-export, TensorRT engine directory from lc-build, or (torch "
                             "backend) a checkpoint .pt (default: the bundled demo model)")
    add_rho_argument(parser, "threshold ρ in (0, 1] for both stages, or ρ₂,ρ₃ (stage 1 → 2, stage 2 → 3) "
                             "(default: the model's)")
    add_rho_class_argument(parser)
    parser.add_argument("--size", type=size, default=None, metavar="HxW",
                        help="time the model at this input size: a dynamic-size export (lc-export --dynamic-size) "
                             "at any size it takes (multiples of 8 within its bounds; OpenVINO compiles for the "
                             "size before timing), a fixed-size export at its own size only (default: the model's "
                             "input size)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per run (default: the model's static batch, else 1)")
    parser.add_argument("--iters", type=int, default=50, help="timed runs of each network (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: 5)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: all cores)")
    parser.add_argument("--active-fraction", type=float_pair, default=None, metavar="F2,F3",
                        help="force the shares of pixels reaching stages 2 and 3 (e.g. 0.3,0.15) instead of "
                             "thresholding: for untrained models")
    parser.add_argument("--per-stage", action="store_true",
                        help="then also the median ms of each stage (ONNX Runtime: each stage graph run as a "
                             "session of its own, one after another; TensorRT: CUDA events between the stages)")
    parser.add_argument("--profile", action="store_true",
                        help="then also the backend's profiler ("
                             + "; ".join(f"{name}: {reader}" for name, reader in profilers().items())
                             + ") over --iters more cascade runs: kernel ms per run by op type, convolution & GEMM "
                             f"kernels against all other ops (with --compare: per precision and ρ); {PROFILER_COST}")
    parser.add_argument("--peers", action="store_true",
                        help="also time the dense export as a user would run it without us, in the same blocks: "
                             "ONNX Runtime (fp32), OpenVINO at its default precision (bf16 on CPUs with native "
                             "bf16), torch eager (when torch and the source checkpoint are found); for an INT8 dir "
                             "also its int8 dense.onnx on ONNX Runtime and OpenVINO (the float peers then run its "
                             "fp32 source). The speedup is then also given against the fastest of them, and the "
                             "fastest of the cascade's precision class (fp32/fp16/bf16, or int8)")
    add_backend_arguments(parser)
    compare = parser.add_argument_group("precision comparison")
    compare.add_argument("--compare", type=precision_list, default=None, metavar="LIST",
                         help="time precisions against each other instead of cascade vs dense: fp32 and any of "
                              "fp16 (backends that have it, e.g. a checkpoint with --backend torch --device cuda), "
                              "bf16 (--backend openvino), int8 (give the INT8 dir from lc-calibrate as DIR; its fp32 "
                              "source is found from its lc.json), e.g. fp32,int8 or, with --backend openvino, "
                              "fp32,bf16,int8")
    compare.add_argument("--rhos", type=rho_list, default=None, metavar="R1,R2,...",
                         help="with --compare: the thresholds to measure, each for both stages (default: --rho or "
                              "the model's)")
    compare.add_argument("--data", default=None, metavar="SPEC",
                         help="with --compare: also mIoU and label agreement with fp32 on this data set's val "
                              "split; " + DATA_HELP.replace(" (default: synthetic)", ""))
    compare.add_argument("--limit", type=int, default=100, metavar="N",
                         help="with --data: evaluate the first N images (default: 100)")
    compare.add_argument("--plot", default=None, metavar="FILE.png",
                         help="with --compare and --data: draw FPS against mIoU per precision and ρ")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: size, backend, precision, cascade, dense (median_ms, p90_ms, "
                             "p99_ms, fps, runs), speedup, ideal_speedup, stage_fractions, machine (and with "
                             "--per-stage stages_ms, with --profile profile, with --peers peers, best_peer, "
                             "speedup_vs_best_peer, precision_class, best_peer_same_class, "
                             "speedup_vs_best_peer_same_class)")
    return parser


def precision_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare is not None:
        if args.rho_class is not None:
            fail("--rho-class goes without --compare (which measures uniform thresholds, --rhos)")
        return compare_main(args)
    if args.rhos or args.data or args.plot:
        fail("--rhos, --data and --plot go with --compare (e.g. --compare fp32,int8)")
    from layercascade.runtime.bench import benchmark
    from layercascade.runtime.cascade import Cascade

    cascade = Cascade.load(args.model, **load_options(args, args.threads))
    batch = args.batch or cascade.batch_size or 1
    result = benchmark(cascade, args.rho, batch, args.iters, args.warmup, args.active_fraction,
                       progress=not args.json, per_stage=args.per_stage, profile=args.profile, peers=args.peers,
                       threads=args.threads, size=args.size, rho_class=args.rho_class)
    if args.json:
        print(json.dumps(result))
        return 0
    per_class = f" ({format_rho_class(result['rho_class'])})" if result["rho_class"] else ""
    print(f"{result['model']} ({result['backbone']}, {result['size'][0]}x{result['size'][1]}, batch {batch}, "
          f"ρ = {format_rho(result['rho'])}{per_class}, {engine(result['backend'], result['precision'])}"
          f"{', no lowering' if args.no_lowering else ''})")
    print(f"machine: {result['machine']}")
    rows = [(name, result[name]) for name in ("cascade", "dense")]
    rows += [(f"dense, {engine(r['backend'], r['precision'])}", r) for r in result.get("peers", {}).values()
             if "median_ms" in r]
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}s} {'median ms':>10s} {'p90 ms':>9s} {'p99 ms':>9s} {'FPS':>8s}")
    for name, r in rows:
        print(f"{name:{width}s} {r['median_ms']:10.2f} {r['p90_ms']:9.2f} {r['p99_ms']:9.2f} {r['fps']:8.1f}")
    f = result["stage_fractions"]
    forced = " (forced)" if args.active_fraction else ""
    print(f"pixels decided at stage 1/2/3{forced}: {100 * f[0]:.1f}% / {100 * f[1]:.1f}% / {100 * f[2]:.1f}%")
    print(f"speedup {result['speedup']:.2f}x (FLOP-ideal {result['ideal_speedup']:.2f}x, "
          f"{100 * result['speedup'] / result['ideal_speedup']:.0f}% of ideal)")
    if args.peers:
        for name, r in result["peers"].items():
            if "missing" in r:
                print(f"peer {name}: not timed ({r['missing']})")
        if result["best_peer"]:
            print(f"speedup vs the fastest dense peer ({peer_name(result, result['best_peer'])}): "
                  f"{result['speedup_vs_best_peer']:.2f}x")
        if result["best_peer_same_class"]:
            print(f"speedup vs the fastest {result['precision_class']} dense peer "
                  f"({peer_name(result, result['best_peer_same_class'])}): "
                  f"{result['speedup_vs_best_peer_same_class']:.2f}x")
    if args.per_stage:
        print("per stage, median ms: " + ", ".join(f"stage {k + 1} {ms:.2f}"
                                                   for k, ms in enumerate(result["stages_ms"].values())))
    if args.profile:
        print_profile(result["profile"])
    return 0


def peer_name(result: dict, name: str) -> str:
    return engine(result["peers"][name]["backend"], result["peers"][name]["precision"])


def print_profile(profile: dict, shown: int = 12) -> None:
    """The op types taking most kernel time, the rest summed, and the convolution / other split."""
    from layercascade.model.evaluate import markdown_table

    total = profile["kernel_ms"]
    print(f"profile of the cascade, kernel ms per run ({profile['runs']} runs; {PROFILER_COST}):")
    ops = profile["op_types"]
    rows = [[r["op"], f"{r['ms']:.3f}", f"{100 * r['ms'] / total:.1f}", str(r["kernels"])] for r in ops[:shown]]
    if len(ops) > shown:
        rest = ops[shown:]
        rest_ms = sum(r["ms"] for r in rest)
        rows.append([f"{len(rest)} other op types", f"{rest_ms:.3f}", f"{100 * rest_ms / total:.1f}",
                     str(sum(r["kernels"] for r in rest))])
    print(markdown_table(["op type", "ms", "%", "kernels"], rows))
    print(f"convolution & GEMM kernels {profile['conv_gemm_ms']:.3f} ms ({100 * profile['conv_gemm_ms'] / total:.0f}%), "
          f"all other ops {profile['other_ms']:.3f} ms, total {total:.3f} ms")


def compare_main(args) -> int:
    """lc-bench --compare: one table of latency (and accuracy) per precision and ρ."""
    from layercascade.model.evaluate import markdown_table
    from layercascade.runtime.bench import bench_size
    from layercascade.runtime.cascade import Cascade
    from layercascade.runtime.compare import (
        check_plot_target,
        compare_precisions,
        plot_comparison,
        precision_sources,
        pyplot,
    )

    if args.active_fraction or args.precision or args.per_stage:
        fail("--compare times each precision on thresholded masks; drop --active-fraction, --precision and "
             "--per-stage")
    if args.plot and not args.data:
        fail("--plot draws speed against mIoU: give --data too (e.g. --data synthetic)")
    if args.plot:
        pyplot("--plot")  # before minutes of measuring, not after
        check_plot_target(Path(args.plot).resolve(), "lc-bench")
    cascades = {name: Cascade.load(model_dir, **{**load_options(args, args.threads), **options})
                for name, (model_dir, options) in precision_sources(args.model, args.compare, args.backend).items()}
    fp32 = cascades["fp32"]
    if args.size and bench_size(fp32, args.size) != fp32.input_size:
        fail(f"--compare times the model at its input size ({fp32.input_size[0]}x{fp32.input_size[1]}); "
             "drop --size, or time another size without --compare")
    dataset = None
    if args.data:
        from layercascade.model.data import open_dataset

        dataset = open_dataset(args.data, "val", limit=args.limit)
    rhos = args.rhos or [fp32.rho(args.rho)]
    result = compare_precisions(cascades, rhos, args.batch or fp32.batch_size or 1, args.iters, args.warmup,
                                dataset, progress=not args.json, profile=args.profile)
    if args.plot:
        plot_comparison(result, args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{fp32.input_size[0]}x{fp32.input_size[1]}, batch {result['batch']}, {result['backend']}"
          + (f", {result['data']}" if dataset is not None else ""))
    print(f"machine: {result['machine']}")
    header = ["precision", "ρ", "median ms", "p90 ms", "p99 ms", "FPS", "speedup vs fp32"]
    if dataset is not None:
        header += ["mIoU", "label agreement %"]
    rows = []
    for r in result["rows"]:
        row = [r["precision"], format_rho(r["rho"]), f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
               f"{r['p99_ms']:.2f}", f"{r['fps']:.1f}", f"{r['speedup_vs_fp32']:.2f}x"]
        if dataset is not None:
            row += [f"{r['miou']:.2f}", f"{r['label_agreement']:.2f}"]
        rows.append(row)
    print(markdown_table(header, rows))
    if args.profile:
        print(f"profile, kernel ms per run ({args.iters} runs; {PROFILER_COST}):")
        print(markdown_table(["precision", "ρ", "convolution & GEMM", "all other ops", "total"],
                             [[r["precision"], format_rho(r["rho"]), f"{r['profile']['conv_gemm_ms']:.3f}",
                               f"{r['profile']['other_ms']:.3f}", f"{r['profile']['kernel_ms']:.3f}"]
                              for r in result["rows"]]))
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
