"""The default engine (issue 23): `lc-run` with `--backend auto` (OpenVINO at its default precision for models of at
least 6 GMACs per image, else ONNX Runtime) against the engine it replaced as the default, ONNX Runtime fp32
(`--backend ort`), on the demo model at 160² (auto: ONNX Runtime) and exported at 1024² (auto: OpenVINO): cold start
on one image and per-image time on the bundled samples; writes the ``default-engine`` block of docs/results.md.

    python tools/default_engine.py [--runs 7] [--work runs/default-engine]

Cold start: a fresh Python process from importing lc-run to the first image's outputs written (median of the
runs). Per image: the summary's ``mean_ms`` of lc-run over the four bundled sample images (the model's own time per
image, reading and writing excluded), median of the runs. The two engines take turns, so the machine's drift hits
both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from make_results import SAMPLES, cold_start  # tools/, beside this script
from results_block import ROOT, write_block
from results_block import machine as host_and_runtimes

ENGINES = {"ort": ["--backend", "ort"], "auto": []}


def per_image(flags: list[str], out: Path) -> tuple[float, str]:
    """(mean ms per image, "backend precision") of one lc-run over the samples."""
    subprocess.run(["lc-run", str(SAMPLES), "-o", str(out), "--quiet", *flags], check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    return summary["mean_ms"], f"{summary['backend']} {summary['precision']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each measurement per engine (default: 7)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "default-engine")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    large = args.work / "demo_1024"
    subprocess.run(["lc-export", "-o", str(large), "--input-size", "1024x1024"], check=True, capture_output=True)
    models = {"demo, 160²": [], "demo, 1024²": ["--model", str(large)]}
    cold: dict[tuple[str, str], list[float]] = {}
    image: dict[tuple[str, str], list[float]] = {}
    ran: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory() as work:
        for run in range(args.runs):
            for model, model_flags in models.items():
                for name, flags in ENGINES.items():
                    key = (model, name)
                    out = Path(work) / f"{len(cold)}-{run}"
                    cold.setdefault(key, []).append(cold_start(Path(f"{out}-cold"), [*model_flags, *flags], runs=1))
                    ms, ran[key] = per_image([*model_flags, *flags], out)
                    image.setdefault(key, []).append(ms)
    machine = host_and_runtimes()
    rows, changes = [], []
    for model in models:
        for name, label in (("ort", "before: `--backend ort`"), ("auto", "after: `--backend auto` (the default)")):
            key = (model, name)
            rows.append(f"| {model} | {label} | {ran[key]} | {statistics.median(cold[key]):.2f} "
                        f"| {statistics.median(image[key]):.2f} |")
        before, after = (model, "ort"), (model, "auto")
        cold_change = f"cold start {statistics.median(cold[after]) - statistics.median(cold[before]):+.2f} s"
        if ran[before] == ran[after]:
            changes.append(f"{model}: auto runs it on the same engine ({ran[after]}; the rows differ by noise only), "
                           f"{cold_change}")
        else:
            changes.append(f"{model}: each image {statistics.median(image[before]) / statistics.median(image[after]):.2f}"
                           f"× as fast, {cold_change}")
    body = f"""## The default engine: `lc-run` before and after `--backend auto` weighed OpenVINO

Measured {time.strftime('%Y-%m-%d')} with `python tools/default_engine.py --runs {args.runs}` (median of {args.runs}
runs each, the engines taking turns); machine: {machine}. Cold start: a fresh process from importing lc-run to the
first image's outputs written, one sample image. Per image: lc-run's `mean_ms` over the four bundled samples (the
model's own time per image, fit into its input; the first images include each engine's warm-up).

| model | `lc-run` | engine and precision | cold start s | ms per image |
|---|---|---|---|---|
{chr(10).join(rows)}

{"; ".join(changes)} (the issue allows the cold start to grow by at most 0.5 s).
"""
    write_block(ROOT / "docs" / "results.md", "default-engine", body)
    print(body)


if __name__ == "__main__":
    main()
