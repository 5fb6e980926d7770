"""Where `--backend auto` switches from ONNX Runtime to OpenVINO: the demo model at six sizes and resnet50 (random
weights) at 512², each on both runtimes, on a new image every run (as a folder of photos runs) and on one image
repeated (what lc-bench times); writes the ``auto-threshold`` block of docs/openvino.md.

    python tools/auto_threshold.py [--blocks 10] [--work runs/auto-threshold]

Times come from ``tools/runtime_study.py cascades`` (one process, the runtimes in alternating blocks of 10 runs,
medians); the GMACs per image from ``runtime.registry.model_gmacs`` (what auto weighs); resnet50 runs forced masks
of about 0.3/0.15 (its weights are random), drawn anew every run for the "new image" column.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from make_results import DEMO, random_checkpoint, run  # tools/, beside this script
from results_block import ROOT, shown, write_block
from results_block import machine as host_and_runtimes
from runtime_study import cascades

SIZES = ("160x160", "240x320", "512x512", "640x640", "720x720", "1024x1024")
RESNET50_FORCED = (0.3, 0.15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks of 10 runs per case (default: 10)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "auto-threshold")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from layercascade.model.evaluate import markdown_table
    from layercascade.runtime.registry import auto_backend, model_gmacs

    models = []
    for size in SIZES:
        folder = args.work / f"demo_{size}"
        run(["lc-export", str(DEMO), "-o", str(folder), "--input-size", size])
        models.append((f"demo, {size.replace('x', '×')}", folder, None))
    resnet50 = args.work / "resnet50_512x512"
    run(["lc-export", str(random_checkpoint("resnet50", args.work / "resnet50_random.pt")), "-o", str(resnet50),
         "--input-size", "512x512"])
    models.append(("resnet50, 512², forced 0.3/0.15", resnet50, RESNET50_FORCED))
    rows = []
    for label, folder, forced in models:
        specs = [f"{folder}@ort", f"{folder}@openvino"]
        blocks = max(1, args.blocks // 3) if forced else args.blocks
        fresh = cascades(specs, blocks, fresh=True, forced=forced)
        repeated = cascades(specs, blocks, fresh=False, forced=forced)
        rows.append([label, f"{model_gmacs(folder):.2f}", *(f"{times[spec]:.2f}" for times in (fresh, repeated)
                                                          for spec in specs), auto_backend(folder)])
    table = markdown_table(["model", "GMACs per image", "ONNX Runtime fp32, new image", "OpenVINO, new image",
                            "ONNX Runtime fp32, one image repeated", "OpenVINO, one image repeated", "auto picks"],
                           rows)
    body = f"""Measured {time.strftime('%Y-%m-%d')} with `python tools/auto_threshold.py --blocks {args.blocks} --work \
{shown(args.work)}`; machine: {host_and_runtimes()}. ms per image, medians (one process, the runtimes in alternating
blocks of 10 runs; OpenVINO at its default precision); "new image": a new synthetic image every run (resnet50: new
forced masks), as a folder of photos runs; "one image repeated": what `lc-bench` times.

{table}
"""
    write_block(ROOT / "docs" / "openvino.md", "auto-threshold", body)
    print(body)


if __name__ == "__main__":
    main()
