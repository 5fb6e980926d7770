"""Peers at every precision (issue 23): the cascade against the dense network run as a user would run it without us,
fp32/bf16 and INT8, on the demo model (160², 512²) and resnet50 / irnet (random weights, 512²) at forced active
fractions 0.3/0.15 and the paper's 0.77/0.48; writes the ``peers`` block of docs/results.md.

    python tools/peers_table.py [--repeats 3] [--work runs/peers]

Each model is exported (fp32) and calibrated (INT8, ``lc-calibrate --limit 16`` on synthetic images: the weights of
the big backbones are random, so only their speed means anything). ``lc-bench --peers`` on the fp32 dir times the
cascade on ``--backend auto`` (the engine it picks for the model's size) against the float peers; on the INT8 dir
the INT8 cascade against the float peers of its fp32 source and the int8 peers (its ``dense.onnx``, which
lc-calibrate quantizes with the stages' statistics, on ONNX Runtime and OpenVINO). Each row is the run with the median
speedup of ``--repeats`` runs; the cases' runs take turns, so the machine's drift spreads over all of them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from make_results import DEMO, random_checkpoint, run  # tools/, beside this script
from results_block import ROOT, shown, write_block

MODELS = [  # (label, checkpoint or config, export size, fractions: None = the model's own ρ on sample images)
    ("demo", "demo", "160x160", [None]),
    ("demo", "demo", "512x512", [None]),
    ("resnet50", "resnet50", "512x512", ["0.3,0.15", "0.77,0.48"]),
    ("irnet", "irnet", "512x512", ["0.3,0.15", "0.77,0.48"]),
]
ITERS = {"demo": ["--iters", "30"], "resnet50": ["--iters", "5", "--warmup", "1"],
         "irnet": ["--iters", "3", "--warmup", "1"]}


def prepare(work: Path) -> dict[tuple[str, str], tuple[Path, Path]]:
    """(label, size) → (fp32 dir, INT8 dir), exported and calibrated afresh."""
    dirs = {}
    for label, source, size, _ in MODELS:
        checkpoint = DEMO if source == "demo" else random_checkpoint(source, work / f"{source}_random.pt")
        fp32, int8 = work / f"{label}_{size}", work / f"{label}_{size}_int8"
        run(["lc-export", str(checkpoint), "-o", str(fp32), "--input-size", size])
        run(["lc-calibrate", str(fp32), "-o", str(int8), "--limit", "16"])
        dirs[label, size] = fp32, int8
    return dirs


def cell(result: dict, peer: str | None) -> str:
    if peer is None:
        return "—"
    timing = result["peers"][peer]
    return f"{peer} {timing['precision']} {timing['median_ms']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="lc-bench runs per case (default: 3)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "peers")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dirs = prepare(args.work)
    cases = [(label, size, fractions, precision, dirs[label, size][precision == "int8"])
             for label, _, size, all_fractions in MODELS for fractions in all_fractions
             for precision in ("float", "int8")]
    runs: list[list[dict]] = [[] for _ in cases]
    for _ in range(args.repeats):
        for index, (label, _, fractions, _, folder) in enumerate(cases):
            forced = [] if fractions is None else ["--active-fraction", fractions]
            runs[index].append(json.loads(run(["lc-bench", str(folder), "--json", "--peers", *forced,
                                               *ITERS[label]])))
    rows, machine = [], runs[0][0]["machine"]
    for (label, size, fractions, _, _), case_runs in zip(cases, runs, strict=True):
        case_runs.sort(key=lambda r: r["speedup_vs_best_peer"])
        r = case_runs[len(case_runs) // 2]
        shares = fractions.replace(",", "/") + " forced" if fractions else "/".join(
            f"{100 * f:.0f}" for f in r["stage_fractions"][1:]) + " (ρ " + str(r["rho"]) + ")"
        rows.append(f"| {label} | {size.replace('x', '×')} | {shares} | {r['backend']} {r['precision']} "
                    f"| {r['cascade']['median_ms']:.1f} | {cell(r, r['best_peer'])} | {r['speedup_vs_best_peer']:.2f}× "
                    f"| {cell(r, r.get('best_peer_same_class'))} "
                    f"| {r['speedup_vs_best_peer_same_class']:.2f}× |")
    body = f"""## Peers at every precision: the cascade against the dense network, fp32/bf16 and INT8

Measured {time.strftime('%Y-%m-%d')} with `python tools/peers_table.py --repeats {args.repeats} --work \
{shown(args.work)}`; machine: {machine}. Batch 1, `lc-bench --peers` in alternating blocks; the demo model at its own
ρ on the bundled samples (the % reaching stages 2/3 are the measured ones), the big backbones (random weights) at forced
shares of pixels reaching stages 2 and 3. The float rows run the fp32 model dir on `--backend auto` (the engine of the
column "cascade": ONNX Runtime under 6 GMACs per image, OpenVINO above) against the float peers (ONNX Runtime fp32,
OpenVINO at its default precision, torch eager); the INT8 rows run the lc-calibrate dir (the same rule, at int8)
against those and the int8 peers: the same dir's `dense.onnx`, quantized by
lc-calibrate with the stages' statistics (our own quantizer, not NNCF), on ONNX Runtime and OpenVINO. Each row is the
run with the median speedup over the fastest peer of {args.repeats}. lc-bench times one image (or one pair of forced
masks) repeated: OpenVINO's best case, since it re-plans for every new active-pixel count (docs/openvino.md, "What
`--backend auto` picks"); the models under 6 GMACs per image run on ONNX Runtime under auto for that reason.

| model | size | % to stages 2/3 | cascade | cascade ms | fastest peer, ms | vs fastest | fastest peer of the same class, ms | vs same class |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    write_block(ROOT / "docs" / "results.md", "peers", body)
    print(body)


if __name__ == "__main__":
    main()
