"""lc-info: per-stage FLOPs and parameter counts of a checkpoint or a registered config."""

from __future__ import annotations

import argparse
import json

from layercascade.cli.args import float_pair, size
from layercascade.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-info",
        description="Show a Layer Cascade model: per-stage multiply-accumulates (backbone and head, on every "
                    "pixel) and parameter counts, and the FLOP-ideal cascade speedup at given active fractions.",
    )
    parser.add_argument("model", nargs="?", default=None,
                        help="checkpoint .pt or config name (tiny, resnet18, resnet50, resnet101, irnet; "
                             "default: the bundled demo model)")
    parser.add_argument("--size", type=size, default=None, metavar="HxW",
                        help="input size for the FLOP count (default: the checkpoint's, 512x512 for a config)")
    parser.add_argument("--active", default="0.3,0.15", metavar="A2,A3",
                        help="shares of pixels reaching stages 2 and 3 for the ideal speedup (default: 0.3,0.15)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: per-stage GMACs and parameters, ideal speedup")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from layercascade.model.checkpoint import load_checkpoint
    from layercascade.model.config import config_names, get_config
    from layercascade.model.evaluate import markdown_table
    from layercascade.model.flops import ideal_speedup, stage_costs

    active = float_pair(args.active)
    if args.model in config_names():
        config, input_size, source = get_config(args.model), (512, 512), f"config {args.model}"
    else:
        checkpoint = load_checkpoint(args.model)
        config, input_size = checkpoint.config, tuple(checkpoint.input_size)
        source = args.model or "demo model"
    input_size = args.size or input_size
    costs = stage_costs(config, input_size)
    speedup = ideal_speedup(costs, active)
    if args.json:
        print(json.dumps({
            "model": source, "backbone": config.backbone, "num_classes": config.num_classes,
            "input_size": list(input_size),
            "stages": [{"backbone_gmacs": c.backbone_macs / 1e9, "head_gmacs": c.head_macs / 1e9,
                        "backbone_params": c.backbone_params, "head_params": c.head_params} for c in costs],
            "active_fractions": list(active), "ideal_speedup": speedup,
        }))
        return 0
    total = sum(c.backbone_macs for c in costs)
    rows = [[f"stage {k + 1}", f"{c.backbone_macs / 1e9:.2f}", f"{100 * c.backbone_macs / total:.0f}%",
             f"{c.head_macs / 1e9:.2f}", f"{c.backbone_params / 1e6:.2f}", f"{c.head_params / 1e6:.3f}"]
            for k, c in enumerate(costs)]
    rows.append(["total", f"{total / 1e9:.2f}", "100%", f"{sum(c.head_macs for c in costs) / 1e9:.2f}",
                 f"{sum(c.backbone_params for c in costs) / 1e6:.2f}",
                 f"{sum(c.head_params for c in costs) / 1e6:.3f}"])
    print(f"{source}: {config.backbone}, {config.num_classes} classes, input {input_size[0]}x{input_size[1]}")
    print(markdown_table(["", "backbone GMAC", "share", "head GMAC", "backbone M params", "head M params"], rows))
    print(f"FLOP-ideal cascade speedup over the dense network at active fractions {active[0]:g}/{active[1]:g}: "
          f"{speedup:.2f}x")
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
