"""Train the demo models and write docs/results.md (and the bundled demo checkpoint).

Runs the exact ``lc-train`` / ``lc-eval`` commands listed in docs/training.md:

* ``single``  — final head only, E epochs (the plain-network baseline);
* ``dsn``     — every head on every pixel, E epochs;
* ``cascade`` — ``dsn`` for E/2 epochs, then ``cascade`` for E/2 epochs from it (equal budget);

then evaluates all three on the synthetic val split and sweeps ρ for the cascade-trained model and for
the DSN-trained one run as a cascade. The cascade checkpoint, stripped of its optimizer state, becomes
``model/demo/lc_tiny_synthetic.pt`` and its export ``runtime/demo_model/``; the DSN checkpoint,
stripped too, ``model/demo/dsn_tiny_synthetic.pt``. Finally ``lc-bench`` measures cascade vs dense on
this machine's CPU (demo model at its own size and at 512×512; irnet and resnet50 with
random weights at forced active fractions 0.3/0.15).

Then the shipped demo model runs at a grid of per-stage thresholds (ρ₂, ρ₃) and the two-threshold
Pareto frontier (mIoU against FLOP cost) is drawn against the one-threshold curve.

    python tools/make_results.py [--epochs 16] [--work runs/demo] [--skip-train] [--skip-bench]
    python tools/make_results.py --bench-only    # speed section only, from the shipped demo checkpoint
    python tools/make_results.py --rho-pairs     # the (ρ₂, ρ₃) section only, from the shipped demo model
    python tools/make_results.py --dsn-cascade [--seed-dirs DIR ...]
                                                 # DSN-trained as a cascade vs cascade-trained, shipped models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from results_block import markers, replace_block, shown, write_block  # tools/, beside this script

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "model" / "demo" / "lc_tiny_synthetic.pt"
DSN_DEMO = ROOT / "model" / "demo" / "dsn_tiny_synthetic.pt"  # the same network trained with deep supervision
DEMO_MODEL_DIR = ROOT / "runtime" / "demo_model"
SAMPLES = ROOT / "runtime" / "samples"
VAL_LIMIT = 300


def run(command: list[str], capture: bool = True) -> str:
    print("$", shlex.join(command), flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE if capture else None, text=True, check=True)
    return done.stdout or ""


def train_commands(work: Path, epochs: int) -> dict[str, list[list[str]]]:
    half = epochs // 2
    common = ["--model", "tiny", "--data", "synthetic", "--seed", "0", "--lr", "0.04", "--quiet"]
    return {
        "single": [["lc-train", "--mode", "single", "--epochs", str(epochs), *common, "-o", str(work / "single.pt")]],
        "dsn": [["lc-train", "--mode", "dsn", "--epochs", str(epochs), *common, "-o", str(work / "dsn.pt")]],
        "cascade": [
            ["lc-train", "--mode", "dsn", "--epochs", str(half), *common, "-o", str(work / "dsn_half.pt")],
            ["lc-train", "--mode", "cascade", "--rho", "0.985", "--epochs", str(epochs - half), *common,
             "--init", str(work / "dsn_half.pt"), "-o", str(work / "cascade.pt")],
        ],
    }


def evaluate(checkpoint: Path, *extra: str) -> list[dict] | dict:
    return json.loads(run(["lc-eval", str(checkpoint), "--limit", str(VAL_LIMIT), "--json", *extra]))


def same_checkpoint(a, b) -> bool:
    """Equal weights and metadata."""
    import torch

    fields = [name for name in vars(a) if name != "state_dict"]
    return (all(getattr(a, name) == getattr(b, name) for name in fields) and a.state_dict.keys() == b.state_dict.keys()
            and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict))


def ship_checkpoint(source: Path, destination: Path) -> None:
    """Copy a checkpoint without its optimizer state into the package."""
    from layercascade.model.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    checkpoint.resume = None
    # torch.save is not byte-stable: an unchanged model keeps its file (and the cascade's hash in lc.json).
    if not (destination.exists() and same_checkpoint(checkpoint, load_checkpoint(destination))):
        save_checkpoint(checkpoint, destination)
    print(f"shipped: {destination} ({destination.stat().st_size / 1e6:.1f} MB)")


def ship_demo(cascade: Path, dsn: Path) -> None:
    """Copy the cascade- and DSN-trained checkpoints without optimizer state into the package, and export
    the cascade one (the demo model)."""
    ship_checkpoint(cascade, DEMO)
    ship_checkpoint(dsn, DSN_DEMO)
    run(["lc-export", str(DEMO), "-o", str(DEMO_MODEL_DIR)], capture=False)


DEMO_REPEATS = 5
BIG_REPEATS = 3  # the big backbones' runs take minutes each
FORCED = ["--active-fraction", "0.3,0.15"]
OPENVINO = ["--backend", "openvino"]
ORT = ["--backend", "ort"]  # named: --backend auto may run a model dir on OpenVINO
BENCH_CASES = [
    # (label, checkpoint or config, export size, extra lc-bench options); every case also times the
    # dense peers (--peers: ONNX Runtime, OpenVINO at its default precision, torch eager).
    ("demo, own size", "demo", None, ORT),
    ("demo, own size, OpenVINO", "demo", None, OPENVINO),
    ("demo", "demo", "512x512", ORT),
    ("demo, OpenVINO", "demo", "512x512", OPENVINO),
    ("demo, function bodies", "demo", "512x512", [*ORT, "--no-lowering"]),
    ("resnet50 (random weights)", "resnet50", "512x512", [*ORT, *FORCED, "--iters", "5", "--warmup", "1"]),
    ("resnet50 (random weights), OpenVINO", "resnet50", "512x512", [*FORCED, *OPENVINO, "--iters", "5",
                                                                     "--warmup", "1"]),
    ("irnet (random weights)", "irnet", "512x512", [*ORT, *FORCED, "--iters", "3", "--warmup", "1"]),
    ("irnet (random weights), OpenVINO", "irnet", "512x512", [*FORCED, *OPENVINO, "--iters", "3", "--warmup", "1"]),
]


def random_checkpoint(name: str, path: Path) -> Path:
    """An untrained checkpoint of config ``name`` (speed does not depend on the weights)."""
    import torch

    from layercascade.model.checkpoint import Checkpoint, save_checkpoint
    from layercascade.model.config import get_config
    from layercascade.model.data import VOC_CLASSES, VOC_PALETTE
    from layercascade.model.network import LayerCascadeNet

    torch.manual_seed(0)
    config = get_config(name)
    save_checkpoint(Checkpoint(config, LayerCascadeNet(config).state_dict(), list(VOC_CLASSES),
                               VOC_PALETTE.tolist()), path)
    return path


def cold_start(out: Path, flags: list[str] = (), runs: int = 3) -> float:
    """Median seconds of ``runs`` fresh processes from importing lc-run to its first image's outputs written in
    ``out`` (one bundled sample; ``flags``: lc-run's options)."""
    sample = sorted(SAMPLES.iterdir())[0]
    code = ("import time; t = time.perf_counter(); from layercascade.cli.run import main; "
            f"main({[str(sample), '-o', str(out), '--quiet', *flags]!r}); print(time.perf_counter() - t)")
    seconds = [float(run([sys.executable, "-c", code]).strip().splitlines()[-1]) for _ in range(runs)]
    return sorted(seconds)[runs // 2]


def pictures(work: Path) -> None:
    """Run lc-run on the bundled samples and keep one overlay and one stage picture for the docs."""
    out = work / "lc-run"
    run(["lc-run", "-o", str(out), "--quiet"], capture=False)
    for suffix, name in (("_overlay.jpg", "demo_overlay.jpg"), ("_stages.png", "demo_stages.png")):
        shutil.copyfile(out / f"synthetic-320x320{suffix}", ROOT / "docs" / name)


def benchmarks(work: Path) -> list[dict]:
    """One ``lc-bench`` result per case: the run with the median speedup of its repeats.

    Every case is repeated, and the repeats take turns with the other cases' (round r runs the
    r-th repeat of each case): this VM's speed drifts over minutes by more than the effects
    measured, and interleaving spreads each case's runs over the whole measurement.
    """
    folders, exported = [], {}
    for _, source, size, _ in BENCH_CASES:
        folder = DEMO_MODEL_DIR
        if size is not None:
            folder = work / f"{source}_{size}"
            if folder not in exported.values():
                # Exported afresh every time: the graphs change with the exporter, not only the weights. The
                # checkpoint sits beside the model dir, where lc-bench --peers finds it for torch eager.
                checkpoint = DEMO if source == "demo" else random_checkpoint(source, work / f"{source}_random.pt")
                run(["lc-export", str(checkpoint), "-o", str(folder), "--input-size", size], capture=False)
                exported[(source, size)] = folder
        folders.append(folder)
    repeats = [BIG_REPEATS if "--active-fraction" in options else DEMO_REPEATS for *_, options in BENCH_CASES]
    runs: list[list[dict]] = [[] for _ in BENCH_CASES]
    for round_ in range(max(repeats)):
        for case, (folder, (*_, options)) in enumerate(zip(folders, BENCH_CASES)):
            if round_ < repeats[case]:
                runs[case].append(json.loads(run(["lc-bench", str(folder), "--json", "--peers", *options])))
    results = []
    for (label, *_), case_runs in zip(BENCH_CASES, runs):
        case_runs.sort(key=lambda r: r["speedup"])
        result = case_runs[len(case_runs) // 2]
        result["label"] = label
        result["speedups"] = [r["speedup"] for r in case_runs]
        results.append(result)
    return results


def plot_sweep(sweep: list[dict], path: Path, dsn_sweep: list[dict] | None = None) -> bool:
    """mIoU and stage-1 share against ρ (the paper's Table 1 as a picture), with the DSN-trained model run
    as a cascade beside the cascade-trained one when ``dsn_sweep`` is given; if matplotlib is there."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rhos = [r["rho"] for r in sweep]
    fig, left = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    trained = "cascade-trained: " if dsn_sweep else ""
    left.plot(rhos, [r["miou"] for r in sweep], "o-", color="tab:blue", label=f"{trained}mIoU")
    if dsn_sweep:
        left.plot([r["rho"] for r in dsn_sweep], [r["miou"] for r in dsn_sweep], "o-", color="tab:purple",
                  label="DSN-trained: mIoU")
    left.set_xlabel("ρ")
    left.set_ylabel("mIoU (%)")
    left.invert_xaxis()
    right = left.twinx()
    right.plot(rhos, [100 * r["stage_fractions"][0] for r in sweep], "s--", color="tab:orange",
               label=f"{trained}% stopping at stage 1")
    if dsn_sweep:
        right.plot([r["rho"] for r in dsn_sweep], [100 * r["stage_fractions"][0] for r in dsn_sweep], "s--",
                   color="tab:brown", label="DSN-trained: % stopping at stage 1")
    right.plot(rhos, [100 * r["stage_fractions"][2] for r in sweep], "^:", color="tab:green",
               label=f"{trained}% reaching stage 3")
    right.set_ylabel("% of pixels")
    fig.legend(loc="lower center", ncol=2, fontsize=7)
    left.set_title("Synthetic val: ρ sweep" + (" of the cascade- and the DSN-trained model" if dsn_sweep
                                               else " of the demo cascade model"), fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True


def bench_section(bench: list[dict]) -> str:
    from layercascade.contract import format_rho
    from layercascade.model.evaluate import markdown_table
    from layercascade.runtime.bench import PEERS

    if not bench:
        return "Not measured in this run (`--skip-bench`)."
    rows = []
    for r in bench:
        f = r["stage_fractions"]
        rows.append([r["label"], f"{r['size'][0]}×{r['size'][1]}", format_rho(r["rho"]),
                     f"{100 * f[0]:.0f}/{100 * f[1]:.0f}/{100 * f[2]:.0f}" + (" forced" if r["forced_active_fractions"] else ""),
                     f"{r['cascade']['median_ms']:.1f} ({r['cascade']['p90_ms']:.1f} / {r['cascade']['p99_ms']:.1f})",
                     f"{r['dense']['median_ms']:.1f} ({r['dense']['p90_ms']:.1f} / {r['dense']['p99_ms']:.1f})",
                     f"{r['speedup']:.2f}×",
                     "–".join(f"{x:.2f}×" for x in (min(r["speedups"]), max(r["speedups"]))) + f" ({len(r['speedups'])})",
                     f"{r['ideal_speedup']:.2f}×",
                     f"{100 * r['speedup'] / r['ideal_speedup']:.0f}%",
                     best_peer(r),
                     f"{r['speedup_vs_best_peer']:.2f}×"])
    table = markdown_table(["model", "size", "ρ", "% at stage 1/2/3", "cascade ms median (p90 / p99)",
                            "dense ms median (p90 / p99)", "speedup", "range (runs)", "FLOP-ideal", "of ideal",
                            "fastest dense peer, ms", "vs fastest peer"], rows)
    peers = markdown_table(["model", "cascade backend", "cascade ms", *(f"dense, {name} ms" for name in PEERS)],
                           [[r["label"], r["backend"], f"{r['cascade']['median_ms']:.1f}",
                             *(peer_cell(r["peers"][name]) for name in PEERS)] for r in bench])
    return f"""Measured {time.strftime('%Y-%m-%d')} on the CPU, batch 1, with ONNX Runtime (rows without a
backend named) or OpenVINO at its default precision: the three stage graphs joined into one graph,
RegionConv lowered unless noted; the cascade, the dense network on the same backend ("dense") and
the dense export on every peer runtime (`--peers`: ONNX Runtime fp32, OpenVINO at its default
precision, torch eager fp32) timed in alternating blocks of up to 10 runs in the same `lc-bench` run; each row is the run with the median speedup of
{DEMO_REPEATS} `lc-bench` runs ({BIG_REPEATS} for the big backbones), their range beside it; the cases' runs
take turns, so each case's runs spread over the whole measurement (this VM's speed drifts over
minutes by more than the effects measured).
Machine: {bench[0]['machine']}.
The FLOP-ideal speedup counts convolutions only. Fixed per-image costs (normalisation, label
upsampling, thresholds, the per-op overhead of the lowered graph's gathers and scatters) are in
the measured times, and the demo's stage 1 (16–32 channels at 256² and 128²) runs its FLOPs
slower than the wider stages 2–3, so its 11 % of the FLOPs is a larger share of the time: the tiny
demo model stays below its ideal while the big backbones, whose time is convolution, get close.
"vs fastest peer" is the cascade's speedup against the fastest way to run the same network densely
here, whichever runtime that is.

{table}

Every dense peer of each row (median ms; precision as the runtime picked it):

{peers}"""


def best_peer(result: dict) -> str:
    name = result["best_peer"]
    peer = result["peers"][name]
    return f"{name} {peer['precision']} {peer['median_ms']:.1f}"


def peer_cell(peer: dict) -> str:
    return f"{peer['median_ms']:.1f} ({peer['precision']})" if "median_ms" in peer else "not run"


SPEED_HEADING = "## Speed: cascade vs dense (`lc-bench`, CPU)"


def speed_section(bench: list[dict], cold: float | None) -> str:
    """The speed section of results.md, heading included."""
    return f"""{SPEED_HEADING}

{bench_section(bench)}

`lc-run` cold start on the demo model with `--backend auto` (ONNX Runtime for this small model: docs/openvino.md;
from importing lc-run to the first image's outputs written, median of 3 fresh processes): {"not measured" if cold is None else f"{cold:.2f} s"}.
"""


# Per-stage thresholds: every (ρ₂, ρ₃) of this grid; its diagonal is the one-threshold curve.
RHO_GRID = (1.0, 0.999, 0.995, 0.99, 0.985, 0.97, 0.95, 0.93, 0.9, 0.8)
PAIRS_BEGIN, PAIRS_END = markers("rho-pairs")


def rho_pair_sweep() -> tuple[list[dict], str]:
    """mIoU, stage fractions and FLOP cost (share of the dense network's) of the shipped demo model on
    ONNX Runtime at every (ρ₂, ρ₃) of ``RHO_GRID``², on the val images of the ρ sweep; and the machine."""
    from layercascade.cost_model import ideal_speedup
    from layercascade.model.data import open_dataset
    from layercascade.model.evaluate import evaluate
    from layercascade.runtime.cascade import Cascade

    pairs = [(rho2, rho3) for rho2 in RHO_GRID for rho3 in RHO_GRID]
    with Cascade.load(DEMO_MODEL_DIR, backend="ort") as cascade:
        results = evaluate(cascade.predict, open_dataset("synthetic", "val", limit=VAL_LIMIT), pairs, cascade.classes)
        gmacs = cascade.manifest["stage_gmacs"]
        machine = cascade.runner.machine()
    backbone, head = [g["backbone"] for g in gmacs], [g["head"] for g in gmacs]
    rows = []
    for pair, result in zip(pairs, results):
        f = result.stage_fractions
        cost = 1.0 / ideal_speedup(backbone, head, (f[1] + f[2], f[2]))
        rows.append({"rho": list(pair), "miou": result.miou, "stage_fractions": f, "cost": cost})
    return rows, machine


def one_threshold(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["rho"][0] == r["rho"][1]]


def plot_rho_pairs(rows: list[dict], path: Path) -> bool:
    """mIoU against FLOP cost: every (ρ₂, ρ₃), the one-threshold curve and the two-threshold frontier,
    cropped to the frontier's range."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from layercascade.contract import format_rho
    from layercascade.runtime.tune import pareto_front

    shown = [r for r in rows if r["cost"] < 1.0]  # ρ₂ = 1 costs more than the dense network
    front, diagonal = pareto_front(shown, "cost", "miou"), one_threshold(shown)
    fig, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    axes.scatter([100 * r["cost"] for r in shown], [r["miou"] for r in shown], s=10, color="0.7",
                 label="every (ρ₂, ρ₃) of the grid")
    axes.plot([100 * r["cost"] for r in diagonal], [r["miou"] for r in diagonal], "o-", color="tab:blue",
              label="one threshold ρ = ρ₂ = ρ₃")
    axes.step([100 * r["cost"] for r in front], [r["miou"] for r in front], "s--", where="post", markersize=3,
              color="tab:orange", label="two thresholds (ρ₂, ρ₃): Pareto frontier")
    for r in diagonal:
        axes.annotate(f"ρ={format_rho(r['rho'])}", (100 * r["cost"], r["miou"]), textcoords="offset points",
                      xytext=(3, -10), fontsize=7, color="tab:blue")
    top = front[-1]
    axes.annotate(format_rho(top["rho"]), (100 * top["cost"], top["miou"]), textcoords="offset points",
                  xytext=(-10, 6), fontsize=7, color="tab:orange")
    low = min(r["miou"] for r in front)
    axes.set_ylim(low - 0.3, max(r["miou"] for r in shown) + 0.3)
    axes.set_xlim(100 * front[0]["cost"] - 2, 100 * max(r["cost"] for r in diagonal) + 4)
    axes.set_xlabel("FLOP cost, % of the dense network")
    axes.set_ylabel("mIoU (%)")
    axes.set_title("Demo model, synthetic val: one ρ vs (ρ₂, ρ₃)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def rho_pairs_section(rows: list[dict], machine: str) -> str:
    """The (ρ₂, ρ₃) block of results.md: for each one-threshold point, the best pair at no more cost and
    the cheapest pair at no less mIoU, and whether the two-threshold frontier dominates the curve."""
    from layercascade.contract import format_rho
    from layercascade.model.evaluate import markdown_table
    from layercascade.runtime.tune import pareto_front

    table, dominated = [], []
    for point in one_threshold(rows):
        best = max((r for r in rows if r["cost"] <= point["cost"]), key=lambda r: (r["miou"], -r["cost"]))
        cheapest = min((r for r in rows if r["miou"] >= point["miou"]), key=lambda r: (r["cost"], -r["miou"]))
        if best["miou"] > point["miou"] or cheapest["cost"] < point["cost"]:
            dominated.append(point)
        table.append([format_rho(point["rho"]), f"{100 * point['cost']:.1f}", f"{point['miou']:.2f}",
                      format_rho(best["rho"]), f"{100 * best['cost']:.1f}", f"{best['miou']:.2f}",
                      f"{best['miou'] - point['miou']:+.2f}",
                      format_rho(cheapest["rho"]), f"{100 * cheapest['cost']:.1f}", f"{cheapest['miou']:.2f}"])
    points = one_threshold(rows)
    on_front = [format_rho(p["rho"]) for p in points if p not in dominated]
    verdict = (f"The two-threshold frontier dominates the one-threshold curve at {len(dominated)} of its "
               f"{len(points)} points (a pair at no more cost with a higher mIoU, or at no less mIoU for less "
               "cost); " + (f"one ρ ∈ {{{', '.join(on_front)}}} is itself on the frontier." if on_front
                            else "no one-threshold point is on the frontier."))
    plot = "\n![one ρ vs (ρ₂, ρ₃)](rho_pairs.png)\n" if (ROOT / "docs" / "rho_pairs.png").exists() else ""
    grid = ", ".join(f"{r:g}" for r in RHO_GRID)
    return f"""{PAIRS_BEGIN}
## Two thresholds (ρ₂, ρ₃) against one ρ

Generated by `python tools/make_results.py --rho-pairs` ({time.strftime('%Y-%m-%d')}; {machine}):
the shipped demo model on ONNX Runtime at every (ρ₂, ρ₃) with ρ₂, ρ₃ ∈ {{{grid}}}
({len(rows)} pairs), on the same {VAL_LIMIT} val images as the ρ sweep (`lc-eval runtime/demo_model --limit {VAL_LIMIT} --rho R2,R3
--json` gives one pair). Cost: the FLOP cost of the stage fractions seen, as a share of the dense
network's (convolutions only, as `lc-bench`'s FLOP-ideal speedup); ρ₂ = 1 sends every pixel through
stage 2 and costs more than the dense network (off the chart, which is cropped to the frontier's
range).
{plot}
{verdict} The thresholds are picked on the images they are scored on, so the margins are an upper
bound of what a pair chosen on other images would give.

{markdown_table(["one ρ", "cost %", "mIoU", "best pair at ≤ cost", "its cost %", "its mIoU", "Δ mIoU",
                 "cheapest pair at ≥ mIoU", "its cost %", "its mIoU"], table)}

The frontier (cost % → mIoU): {"; ".join(f"{format_rho(r['rho'])}: {100 * r['cost']:.1f} → {r['miou']:.2f}"
                                          for r in pareto_front(rows, "cost", "miou"))}.
{PAIRS_END}"""


def write_rho_pairs(work: Path) -> str:
    """Run the (ρ₂, ρ₃) grid, keep its rows in ``work``, draw docs/rho_pairs.png; the section."""
    rows, machine = rho_pair_sweep()
    (work / "rho_pairs.json").write_text(json.dumps(rows, indent=1))
    plot_rho_pairs(rows, ROOT / "docs" / "rho_pairs.png")
    return rho_pairs_section(rows, machine)


DSN_CASCADE_BEGIN, DSN_CASCADE_END = markers("dsn-cascade")


def sweep_pair(cascade: Path, dsn: Path) -> dict:
    """ρ sweeps (``lc-eval --rho-sweep``) of a cascade-trained checkpoint and the DSN-trained one of the
    same training seed."""
    from layercascade.model.checkpoint import load_checkpoint

    seeds = {load_checkpoint(path).training.get("seed") for path in (cascade, dsn)}
    if len(seeds) != 1:
        raise SystemExit(f"{cascade} and {dsn} were trained with different seeds ({sorted(map(str, seeds))})")
    seed = seeds.pop()
    return {"seed": seed, "label": f"seed {seed}, {shown(cascade.parent)}", "cascade": shown(cascade), "dsn": shown(dsn),
            "cascade_sweep": evaluate(cascade, "--rho-sweep"), "dsn_sweep": evaluate(dsn, "--rho-sweep")}


DEFAULT_RHO = 0.985  # the demo models' default threshold, the paper's best


def dsn_cascade_section(pairs: list[dict], command: str = "python tools/make_results.py") -> str:
    """The block of results.md that runs the DSN-trained model as a cascade beside the cascade-trained one,
    per ρ of the sweep and per training seed."""
    from layercascade.contract import format_rho
    from layercascade.model.evaluate import markdown_table

    header = ["ρ"]
    for pair in pairs:
        header += [f"{pair['label']}: DSN-trained % stop at 1", "mIoU", "cascade-trained % stop at 1", "mIoU"]
    rows = []
    for k, point in enumerate(pairs[0]["dsn_sweep"]):
        row = [format_rho(point["rho"])]
        for pair in pairs:
            for sweep in (pair["dsn_sweep"], pair["cascade_sweep"]):
                row += [f"{100 * sweep[k]['stage_fractions'][0]:.1f}", f"{sweep[k]['miou']:.2f}"]
        rows.append(row)
    summary = []
    for pair in pairs:
        dense, dsn_default, default, best = (
            next(r for r in pair["dsn_sweep"] if r["rho"] == 1.0),
            next(r for r in pair["dsn_sweep"] if r["rho"] == DEFAULT_RHO),
            next(r for r in pair["cascade_sweep"] if r["rho"] == DEFAULT_RHO),
            max(pair["cascade_sweep"], key=lambda r: r["miou"]))
        summary.append(f"{pair['label']}: DSN-trained, dense {dense['miou']:.2f}, at ρ = {DEFAULT_RHO:g} "
                       f"{dsn_default['miou']:.2f} ({100 * dsn_default['stage_fractions'][0]:.1f} % stop at stage 1); "
                       f"cascade-trained at ρ = {DEFAULT_RHO:g} {default['miou']:.2f} "
                       f"({100 * default['stage_fractions'][0]:.1f} %), {default['miou'] - dense['miou']:+.2f} against "
                       f"the DSN-trained dense, its best {best['miou']:.2f} at ρ = {format_rho(best['rho'])}")
    files = "; ".join(f"{pair['label']}: `{pair['dsn']}` and `{pair['cascade']}`" for pair in pairs)
    return f"""{DSN_CASCADE_BEGIN}
## The DSN-trained model run as a cascade (paper's Table 2: LC 73.91 > DSN 72.70)

Generated by `{command}` ({time.strftime('%Y-%m-%d')}): `lc-eval CHECKPOINT --limit
{VAL_LIMIT} --rho-sweep --json` of the same network trained two ways at equal budget ({files}; the
commands are in [training.md](training.md)); ρ = 1 is the dense network. The ρ-sweep picture above draws
the first pair. Runs of the same training command differ by several mIoU points (see training.md), so
compare the two models of one pair, and read each pair as one draw.

{markdown_table(header, rows)}

{". ".join(summary)}. Where the cascade loses accuracy: [training.md](training.md#where-the-cascade-loses-accuracy).
{DSN_CASCADE_END}"""


def replace_speed_section(path: Path, section: str) -> None:
    """results.md with its speed section (up to the next ``## `` heading) replaced."""
    text = path.read_text()
    start = text.index(SPEED_HEADING)
    end = text.index("\n## ", start + len(SPEED_HEADING)) + 1
    path.write_text(text[:start] + section + "\n" + text[end:])


# Sections other tools generate into results.md (e.g. tools/make_int8_results.py), kept as they are.
KEPT_SECTIONS = ("int8", "serving")


def kept_sections(path: Path) -> str:
    """The ``<!-- NAME:begin -->`` … ``<!-- NAME:end -->`` blocks of the current file, in order."""
    text = path.read_text() if path.exists() else ""
    blocks = []
    for name in KEPT_SECTIONS:
        begin, end = markers(name)
        if begin in text and end in text:
            blocks.append(text[text.index(begin):text.index(end) + len(end)])
    return "".join(f"\n{block}\n" for block in blocks)


def write_results(commands: dict, results: dict, sweep: list[dict], minutes: dict,
                  bench: list[dict], cold: float | None, dsn_cascade: str, pairs: str) -> None:
    from layercascade.contract import format_rho
    from layercascade.model.evaluate import EvalResult, format_table, markdown_table

    rows = []
    for mode, note in (("single", "final head only, ρ = 1"), ("dsn", "all heads, all pixels, ρ = 1"),
                       ("cascade", f"Layer Cascade, ρ = {format_rho(results['cascade']['rho'])}")):
        r = results[mode]
        rows.append([mode, note, f"{r['miou']:.2f}", f"{r['pixel_accuracy']:.2f}",
                     f"{100 * r['stage_fractions'][0]:.1f}", f"{minutes[mode]:.1f}"])
    dense = results["cascade_dense"]
    rows.append(["cascade", "the same weights at ρ = 1", f"{dense['miou']:.2f}", f"{dense['pixel_accuracy']:.2f}",
                 "0.0", "—"])
    sweep_table = format_table([EvalResult(**r) for r in sweep])
    command_lines = "\n".join(shlex.join(c) for mode in commands.values() for c in mode).replace(f"{ROOT}/", "")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    plot = "\n![ρ sweep](rho_sweep.png)\n" if (ROOT / "docs" / "rho_sweep.png").exists() else ""
    text = f"""# Results

Generated by `python tools/make_results.py` ({time.strftime('%Y-%m-%d')}, {machine}); do not edit
by hand. Model: `tiny` backbone (see `lc-info`), trained from scratch on the procedural synthetic
data set (`--data synthetic --seed 0`, 2000 training images of 160×160, 128×128 crops); evaluated on the
first {VAL_LIMIT} images of its val split. The exact commands are in [training.md](training.md).

## Training modes at equal budget (paper's Table 2)

Each model gets the same number of epochs; `cascade` spends half of them as `dsn` and half in
cascade mode started from it.

{markdown_table(["model", "what", "mIoU", "pixel acc.", "% stop at stage 1", "train min"], rows)}

## ρ sweep of the cascade model (paper's Table 1)

{sweep_table}
{plot}
Paper (VOC12 val, IRNet): 23 % of pixels stop at stage 1 at ρ = 0.985, the best mIoU is at
ρ = 0.985, and mIoU falls to 66.95 at ρ = 0.8.

{dsn_cascade}

{pairs}

{speed_section(bench, cold)}
## What the demo model does

`lc-run -o out` on the bundled samples: the overlay, and which stage decided each pixel (grey:
stage 1, orange: stage 2, magenta: stage 3), as in the paper's Fig. 4.

![overlay](demo_overlay.jpg) ![stages](demo_stages.png)

## GPU

Not measured on a GPU yet.
{kept_sections(ROOT / "docs" / "results.md")}"""
    (ROOT / "docs" / "results.md").write_text(text)
    commands_block = f"""The bundled `model/demo/lc_tiny_synthetic.pt` (cascade-trained, the demo model),
`model/demo/dsn_tiny_synthetic.pt` (the same network trained with deep supervision, DSN) and the numbers in
[results.md](results.md) come from these commands (run by `python tools/make_results.py --epochs
{commands['single'][0][4]}`, which also evaluates both and copies them into the package without their
optimizer state):

```sh
{command_lines}
```

Evaluation: `lc-eval CHECKPOINT --limit {VAL_LIMIT} [--rho R | --rho-sweep] --json`.
BatchNorm is trained (not frozen) because these models start from scratch; with ImageNet
weights (`--backbone-weights`), add `--freeze-bn` as the paper does."""
    write_block(ROOT / "docs" / "training.md", "demo-commands", commands_block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=16, help="training budget per model (default: 16)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "demo", help="folder for checkpoints")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the checkpoints already in --work")
    parser.add_argument("--skip-bench", action="store_true", help="do not run the CPU benchmarks")
    parser.add_argument("--rho-pairs", action="store_true",
                        help="no training: run the shipped demo model at the (ρ₂, ρ₃) grid, redraw docs/rho_pairs.png "
                             "and rewrite only that section of docs/results.md")
    parser.add_argument("--bench-only", action="store_true",
                        help="no training: re-export the shipped demo model, redraw the pictures, re-run the CPU "
                             "benchmarks and rewrite only the speed section of docs/results.md")
    parser.add_argument("--dsn-cascade", action="store_true",
                        help="no training: sweep ρ for the shipped cascade- and DSN-trained demo models (and the "
                             "pairs of --seed-dirs), redraw docs/rho_sweep.png and rewrite only that section of "
                             "docs/results.md")
    parser.add_argument("--seed-dirs", type=Path, nargs="+", default=[], metavar="DIR",
                        help="with --dsn-cascade: also sweep DIR/cascade.pt and DIR/dsn.pt, a pair trained by the "
                             "commands of docs/training.md with another --seed")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.bench_only:
        run(["lc-export", str(DEMO), "-o", str(DEMO_MODEL_DIR)], capture=False)
        pictures(args.work)
        bench, cold = benchmarks(args.work), cold_start(args.work / "cold")
        (args.work / "bench.json").write_text(json.dumps({"bench": bench, "cold_start_s": cold}, indent=1))
        replace_speed_section(ROOT / "docs" / "results.md", speed_section(bench, cold))
        return
    if args.rho_pairs:
        # Inserted before the speed section the first time.
        replace_block(ROOT / "docs" / "results.md", "rho-pairs", write_rho_pairs(args.work), before=SPEED_HEADING)
        return
    if args.dsn_cascade:
        pairs = [sweep_pair(DEMO, DSN_DEMO)] + [sweep_pair(d / "cascade.pt", d / "dsn.pt") for d in args.seed_dirs]
        (args.work / "dsn_cascade.json").write_text(json.dumps(pairs, indent=1))
        plot_sweep(pairs[0]["cascade_sweep"], ROOT / "docs" / "rho_sweep.png", pairs[0]["dsn_sweep"])
        command = shlex.join(["python", "tools/make_results.py", "--dsn-cascade"]
                             + (["--seed-dirs", *map(shown, args.seed_dirs)] if args.seed_dirs else []))
        # Inserted before the (ρ₂, ρ₃) block the first time.
        replace_block(ROOT / "docs" / "results.md", "dsn-cascade", dsn_cascade_section(pairs, command),
                      before=PAIRS_BEGIN)
        return
    commands = train_commands(args.work, args.epochs)
    minutes = json.loads((args.work / "minutes.json").read_text()) if args.skip_train else {}
    if not args.skip_train:
        for mode, steps in commands.items():
            started = time.time()
            for command in steps:
                run(command)
            minutes[mode] = (time.time() - started) / 60
            (args.work / "minutes.json").write_text(json.dumps(minutes))
    results = {mode: evaluate(args.work / f"{mode}.pt", "--rho", "1") for mode in ("single", "dsn")}
    results["cascade"] = evaluate(args.work / "cascade.pt")
    results["cascade_dense"] = evaluate(args.work / "cascade.pt", "--rho", "1")
    ship_demo(args.work / "cascade.pt", args.work / "dsn.pt")
    pair = sweep_pair(DEMO, DSN_DEMO)
    sweep = pair["cascade_sweep"]
    (args.work / "results.json").write_text(json.dumps({"results": results, "sweep": sweep, "dsn_sweep":
                                                        pair["dsn_sweep"]}, indent=1))
    plot_sweep(sweep, ROOT / "docs" / "rho_sweep.png", pair["dsn_sweep"])
    pictures(args.work)
    bench = [] if args.skip_bench else benchmarks(args.work)
    cold = None if args.skip_bench else cold_start(args.work / "cold")
    (args.work / "bench.json").write_text(json.dumps({"bench": bench, "cold_start_s": cold}, indent=1))
    write_results(commands, results, sweep, minutes, bench, cold, dsn_cascade_section([pair]),
                  write_rho_pairs(args.work))


if __name__ == "__main__":
    sys.exit(main())
