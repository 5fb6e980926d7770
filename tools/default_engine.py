"""The default engine (issue 23): `lc-run` with `--backend auto` (OpenVINO at its default precision where installed)
against the engine it replaced as the default, ONNX Runtime fp32 (`--backend ort`): cold start on one image and
per-image time on the bundled samples; writes the ``default-engine`` block of docs/results.md.

    python tools/default_engine.py [--runs 7]

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
import sys
import tempfile
import time
from pathlib import Path

from results_block import ROOT, write_block  # tools/, beside this script

SAMPLES = ROOT / "runtime" / "samples"
ENGINES = {"ort": ["--backend", "ort"], "auto": []}


def cold_start(flags: list[str], out: Path) -> float:
    sample = sorted(SAMPLES.iterdir())[0]
    code = ("import time; t = time.perf_counter(); from layercascade.cli.run import main; "
            f"main({[str(sample), '-o', str(out), '--quiet', *flags]!r}); print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def per_image(flags: list[str], out: Path) -> tuple[float, str]:
    """(mean ms per image, "backend precision") of one lc-run over the samples."""
    subprocess.run(["lc-run", str(SAMPLES), "-o", str(out), "--quiet", *flags], check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    return summary["mean_ms"], f"{summary['backend']} {summary['precision']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each measurement per engine (default: 7)")
    args = parser.parse_args()
    cold: dict[str, list[float]] = {name: [] for name in ENGINES}
    image: dict[str, list[float]] = {name: [] for name in ENGINES}
    ran: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as work:
        for run in range(args.runs):
            for name, flags in ENGINES.items():
                cold[name].append(cold_start(flags, Path(work) / f"cold-{name}-{run}"))
                ms, ran[name] = per_image(flags, Path(work) / f"samples-{name}-{run}")
                image[name].append(ms)
    machine = json.loads(subprocess.run(["lc-bench", "--json", "--backend", "ort", "--iters", "2"], check=True,
                                        capture_output=True, text=True).stdout)["machine"]
    rows = [f"| {label} | {ran[name]} | {statistics.median(cold[name]):.2f} | {statistics.median(image[name]):.2f} |"
            for name, label in (("ort", "before: ONNX Runtime (`--backend ort`)"),
                                ("auto", "after: `--backend auto` (the default)"))]
    growth = statistics.median(cold["auto"]) - statistics.median(cold["ort"])
    speedup = statistics.median(image["ort"]) / statistics.median(image["auto"])
    body = f"""## The default engine: `lc-run` before and after `--backend auto` picked OpenVINO

Measured {time.strftime('%Y-%m-%d')} with `python tools/default_engine.py --runs {args.runs}` (median of {args.runs}
runs each, the engines taking turns); machine: {machine}. Cold start: a fresh process from importing lc-run to the
first image's outputs written, one sample image. Per image: lc-run's `mean_ms` over the four bundled samples (the
demo model, 160², the model's own time per image).

| `lc-run` | engine and precision | cold start s | ms per image |
|---|---|---|---|
{chr(10).join(rows)}

The default engine makes each image {speedup:.2f}× as fast and the cold start {growth:+.2f} s longer (the issue
allows at most +0.5 s).
"""
    write_block(ROOT / "docs" / "results.md", "default-engine", body)
    print(body)


if __name__ == "__main__":
    main()
