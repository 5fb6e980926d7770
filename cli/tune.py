"""lc-tune: the default thresholds (ρ₂, ρ₃), or one class's (--tune-class), that meet a latency or accuracy budget on
this machine and backend."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from layercascade.cli.args import add_backend_arguments, add_data_arguments, load_options, rho_list
from layercascade.errors import LCError, fail, run_cli


def build_parser() -> argparse.ArgumentParser:
    from layercascade.runtime.tune import GRID

    parser = argparse.ArgumentParser(
        prog="lc-tune",
        description="Measure mIoU (on --data) and latency (timed as lc-bench times, on the data's images) of the "
                    "cascade at a grid of thresholds (ρ₂, ρ₃) on this machine and backend, pick the most accurate "
                    "setting within a latency budget (or the fastest within an accuracy budget), print the frontier, "
                    "draw it, and write a copy of the model dir with the choice as its default thresholds "
                    "(docs/tune.md).",
    )
    parser.add_argument("model", nargs="?", default=None, metavar="DIR",
                        help="model directory from lc-export, lc-calibrate or lc-build (default: the bundled demo "
                             "model)")
    budget = parser.add_argument_group("budget (one of)").add_mutually_exclusive_group(required=True)
    budget.add_argument("--target-ms", type=float, metavar="X",
                        help="median latency of a run (of the model's batch) at most X ms: the most accurate setting "
                             "that meets it")
    budget.add_argument("--target-fps", type=float, metavar="F",
                        help="at least F images per second at the median latency (≤ batch × 1000 / F ms per run): "
                             "the most accurate setting that meets it")
    budget.add_argument("--max-miou-drop", type=float, metavar="D",
                        help="mIoU at most D points below the model's current default thresholds': the fastest "
                             "setting within it")
    add_data_arguments(parser, split="val", required=True)
    parser.set_defaults(limit=100)
    parser.add_argument("--grid", type=rho_list, default=None, metavar="R1,R2,...",
                        help="the thresholds to combine: every (ρ₂, ρ₃) of them with ρ₃ ≥ ρ₂, plus the model's "
                             f"default (default: {','.join(f'{r:g}' for r in GRID)})")
    parser.add_argument("--tune-class", default=None, metavar="NAME",
                        help="search class NAME's own threshold instead (--rho-class NAME=R: a pixel whose winner at "
                             "stage 1 or 2 is NAME stops only if its confidence exceeds R): R at each --grid value "
                             "(1: never stops early), the other classes at the model's default thresholds; the tuned "
                             "copy records the choice as its default_rho_class")
    parser.add_argument("--iters", type=int, default=30, help="timed runs of each setting (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs of each setting first (default: 5)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: all cores)")
    add_backend_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="the tuned copy of the model dir (default: DIR_tuned beside DIR; for the demo model "
                             "./demo_model_tuned); never the model dir itself")
    plot = parser.add_mutually_exclusive_group()
    plot.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                      help="the frontier plot with the chosen point (default: OUTPUT_frontier.png beside the tuned "
                           "copy)")
    plot.add_argument("--no-plot", action="store_true", help="draw no plot (matplotlib not needed)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: every measured point (rho, rho_class, median_ms, p90_ms, p99_ms, "
                             "fps, miou, "
                             "miou_drop, stage_fractions, default, on_frontier), frontier, reference, chosen, budget, "
                             "output, plot, machine")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from layercascade.model.data import open_dataset
    from layercascade.runtime import tune
    from layercascade.runtime.cascade import DEMO_MODEL, Cascade
    from layercascade.runtime.compare import check_plot_target, pyplot

    model_dir = DEMO_MODEL if args.model is None else Path(args.model)
    if model_dir.suffix == ".pt":
        fail(f"{model_dir}: lc-tune writes the thresholds into a copy of a model dir; export the checkpoint first "
             "(lc-export CHECKPOINT -o DIR) and tune DIR")
    budget = next(tune.Budget(kind, getattr(args, kind)) for kind in tune.BUDGETS
                  if getattr(args, kind) is not None)
    output = (args.output or tune.default_output(model_dir)).resolve()
    tune.check_tuned_target(model_dir, output)
    plot = None if args.no_plot else args.plot or output.with_name(f"{output.name}_frontier.png")
    if plot is not None:  # before minutes of measuring, not after
        pyplot("the frontier plot (skip it with --no-plot)")
        check_plot_target(plot.resolve(), "lc-tune")
    dataset = open_dataset(args.data, args.split, seed=args.seed, limit=args.limit)
    with Cascade.load(model_dir, **load_options(args, args.threads)) as cascade:
        # The class by its index (one line for a name the model does not have, or a model without per-class ρ).
        tune_class = None if args.tune_class is None else next(iter(cascade.rho_class({args.tune_class: 1.0})))
        result = tune.measure_grid(cascade, dataset, args.grid or tune.GRID, args.iters, args.warmup,
                                   progress=not args.json, tune_class=tune_class)
    try:
        chosen = tune.choose_setting(result["points"], budget)
    except LCError:
        if not args.json:
            print_frontier(result, None)
        raise
    data = {"spec": args.data, "split": args.split, "seed": args.seed, "images": len(dataset)}
    record = tune.tuning_record(result, chosen, budget, data, args.precision)
    written = tune.write_tuned_dir(model_dir, output, chosen["rho"], record, chosen["rho_class"])
    if plot is not None:
        tune.plot_frontier(result, chosen, budget, plot)
    if args.json:
        print(json.dumps({**result, "budget": budget.record(), "chosen": chosen, "output": str(written),
                          "plot": None if plot is None else str(plot)}))
        return 0
    print_frontier(result, chosen)
    reference = result["reference"]
    print(f"budget: {budget.describe()} → {tune.setting_text(chosen)}: {chosen['median_ms']:.2f} ms per run, "
          f"{chosen['fps']:.1f} images/s, mIoU {chosen['miou']:.2f} ({signed(-chosen['miou_drop'])} against the "
          f"previous default {tune.setting_text(reference)}: {reference['median_ms']:.2f} ms, "
          f"mIoU {reference['miou']:.2f})")
    print(f"wrote {written} (default {tune.setting_text(chosen)})" + (f", plot {plot}" if plot else ""))
    return 0


def print_frontier(result: dict[str, Any], chosen: dict[str, Any] | None) -> None:
    """What was measured, and the frontier as a table (the default's row too when it is off the frontier)."""
    from layercascade.model.evaluate import markdown_table
    from layercascade.runtime.tune import setting_text

    print(f"{result['model']} ({result['backbone']}, {result['size'][0]}x{result['size'][1]}, batch {result['batch']}, "
          f"{result['backend']}) on {result['data']}")
    print(f"machine: {result['machine']}")
    searched = f"ρ_{result['tune_class']}" if result.get("tune_class") else "(ρ₂, ρ₃)"
    print(f"{len(result['points'])} settings {searched}, each timed {result['iters']} runs in alternating blocks on "
          f"{result['timing_images']} of the images; the frontier (no other setting is as fast and more accurate):")
    rows = []
    for point in result["points"]:
        if not (point["on_frontier"] or point["default"]):
            continue
        notes = [note for note, holds in (("chosen", point is chosen), ("previous default", point["default"]),
                                          ("off the frontier", not point["on_frontier"])) if holds]
        fractions = "/".join(f"{100 * f:.0f}" for f in point["stage_fractions"])
        rows.append((point["median_ms"], [setting_text(point).removeprefix("ρ = "), f"{point['median_ms']:.2f}",
                                          f"{point['p90_ms']:.2f}", f"{point['fps']:.1f}", f"{point['miou']:.2f}",
                                          signed(-point["miou_drop"]), fractions, ", ".join(notes)]))
    print(markdown_table(["ρ", "median ms", "p90 ms", "images/s", "mIoU", "Δ mIoU", "% at stage 1/2/3", ""],
                         [row for _, row in sorted(rows, key=lambda r: r[0])]))


def signed(change: float) -> str:
    """``change`` with its sign to the hundredth, ``+0.00`` rather than ``-0.00``."""
    return f"{round(change, 2) + 0.0:+.2f}"


def cli() -> None:
    raise SystemExit(run_cli(main))
