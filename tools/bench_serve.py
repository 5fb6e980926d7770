"""Throughput of lc-serve: requests/s and p50/p99 latency at batch 1 vs dynamic batching and 1 vs 2
replicas, in one run on one local Ray, written as the serving block of docs/results.md.

The demo checkpoint is exported with ``--dynamic-batch`` (so requests can batch) at each size;
every configuration serves it on this machine's CPUs (a replica's ONNX Runtime threads are the
CPUs divided among the replicas), ``--clients`` HTTP clients post the sample images (decoding,
resizing and encoding included) until ``--requests`` are answered, after a warm-up. The same
images through an in-process ``Cascade`` (no HTTP, one at a time) give the ceiling per request.

    python tools/bench_serve.py [--sizes 160,512] [--requests 400] [--clients 16] [--max-batch 8]

``--latency-target`` instead compares a fixed-ρ service with ``lc-serve --target-ms`` under one open-loop load
(the "Latency target" block of docs/serving.md): the demo checkpoint exported at ``--size``, tuned by lc-tune on
synthetic images (``--grid``, reaching lower thresholds than lc-tune's default) (its frontier recorded in the tuned dir), then served twice on one replica — every request at
the frontier's most accurate ρ, then with the target — while requests (PNGs of other synthetic images: the kind the
frontier was measured on) arrive at ``--rate`` per second (Poisson,
seeded; the same arrival times for both) for ``--seconds``. Latency is the client's, from the request's scheduled
time to its answer (so a service that falls behind is charged for the wait). Without ``--rate`` and
``--target-ms`` both come from a calibration on this machine: one request at a time at the most accurate and the
fastest frontier point (their medians m_slow and m_fast): the rate 1200 / m_slow per second (20 % more than the
fixed service can answer), at most 600 / m_fast (60 % of what the fastest point can: room for a random load's
queue), the target 5 × m_fast. Where the two bounds cross, the frontier is too narrow per request (the HTTP hops
cost as much as the model) for any load to tell the services apart: export larger (``--size``).

    python tools/bench_serve.py --latency-target [--size 512] [--seconds 40] [--rate R] [--target-ms T]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from results_block import write_block  # tools/, beside this script

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "model" / "demo" / "lc_tiny_synthetic.pt"
RESULTS = ROOT / "docs" / "results.md"
SERVING = ROOT / "docs" / "serving.md"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def load(url: str, bodies: list[bytes], requests: int, clients: int) -> dict:
    """``clients`` threads post ``bodies`` in turn until ``requests`` answers: requests/s, latencies, batches."""
    import httpx

    counter = itertools.count()
    latencies: list[float] = []
    batches: list[int] = []
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=120) as session:
            while (index := next(counter)) < requests:
                started = time.perf_counter()
                response = session.post(f"{url}/v1/segment", content=bodies[index % len(bodies)])
                latencies.append((time.perf_counter() - started) * 1e3)
                if response.status_code != 200:
                    errors.append(response.text[:200])
                else:
                    batches.append(int(response.headers["x-lc-batch"]))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
    return {"requests_per_s": requests / wall, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "mean_batch": float(np.mean(batches))}


def in_process(model: Path, bodies: list[bytes], requests: int) -> float:
    """Images/s of one in-process Cascade, one image at a time, decoding included (no HTTP)."""
    from layercascade.runtime.cascade import Cascade
    from layercascade.serve.http import Limits, decode_image, png_bytes

    with Cascade.load(model) as cascade:
        for body in bodies:
            cascade(decode_image(body, Limits()))
        started = time.perf_counter()
        for index in range(requests):
            result = cascade(decode_image(bodies[index % len(bodies)], Limits()))
            png_bytes(result.labels, cascade.palette)
        return requests / (time.perf_counter() - started)


def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, query: str, seed: int = 0) -> dict:
    """Requests at ``rate`` per second (Poisson arrivals, ``seed``ed) for ``seconds``, each sent at its time
    whatever the answers before it: latencies (ms, from the scheduled time to the answer), the ρ and expected
    mIoU cost each answer reports, and the failures."""
    import asyncio

    import httpx

    arrivals, at = [], 0.0
    generator = np.random.default_rng(seed)
    while (at := at + generator.exponential(1 / rate)) < seconds:
        arrivals.append(at)

    async def run() -> list[tuple[float, str, float | None, int]]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            start = time.perf_counter()

            async def one(index: int, when: float) -> tuple[float, str, float | None, int]:
                await asyncio.sleep(max(0.0, start + when - time.perf_counter()))
                answer = await client.post(f"{url}/v1/segment{query}", content=bodies[index % len(bodies)])
                cost = answer.headers.get("x-lc-expected-miou-cost")
                return ((time.perf_counter() - start - when) * 1e3, answer.headers.get("x-lc-rho", ""),
                        None if cost is None else float(cost), answer.status_code)

            return await asyncio.gather(*(one(index, when) for index, when in enumerate(arrivals)))

    answers = asyncio.run(run())
    return {"latencies": [a[0] for a in answers], "rhos": [a[1] for a in answers],
            "costs": [a[2] for a in answers], "failed": sum(a[3] != 200 for a in answers)}


def sequential_ms(url: str, bodies: list[bytes], query: str, count: int = 20) -> float:
    """The median latency of ``count`` requests sent one at a time (after two untimed)."""
    import httpx

    latencies = []
    with httpx.Client(timeout=120) as client:
        for index in range(count + 2):
            started = time.perf_counter()
            client.post(f"{url}/v1/segment{query}", content=bodies[index % len(bodies)]).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1e3)
    return float(np.median(latencies[2:]))


def synthetic_bodies(skip: int, count: int = 16) -> list[bytes]:
    """PNG files of synthetic validation images after the first ``skip`` (those lc-tune measures on): requests of
    the kind the frontier was measured on, none of them its own images."""
    import io

    from PIL import Image

    from layercascade.model.data import open_dataset

    dataset = open_dataset("synthetic", "val", limit=skip + count)
    bodies = []
    for index in range(skip, skip + count):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(dataset[index][0], np.uint8)).save(buffer, "PNG")
        bodies.append(buffer.getvalue())
    return bodies


def latency_target(args: argparse.Namespace) -> None:
    """The fixed-ρ and the controlled service under one open-loop load (module docstring)."""
    import ray

    from layercascade.cli import tune as tune_cli
    from layercascade.contract import format_rho
    from layercascade.errors import run_cli
    from layercascade.export.stages import export_model
    from layercascade.model.checkpoint import load_checkpoint
    from layercascade.runtime.control import read_model_frontier
    from layercascade.serve.app import ServeSettings
    from layercascade.serve.service import start

    bodies = synthetic_bodies(args.tune_images)
    with tempfile.TemporaryDirectory(prefix="lc-bench-target-") as work:
        model = export_model(load_checkpoint(CHECKPOINT), Path(work) / "demo", input_size=(args.size, args.size))
        tuned = Path(work) / "tuned"
        tune_argv = [str(model), "--data", "synthetic", "--limit", str(args.tune_images), "--iters", "10",
                     "--grid", args.grid,
                     "--max-miou-drop", "0", "-o", str(tuned), "--no-plot", "--json"]
        with open(os.devnull, "w") as quiet:  # lc-tune's JSON report: the frontier is read back from the dir
            stdout, sys.stdout = sys.stdout, quiet
            try:
                assert run_cli(tune_cli.main, tune_argv) == 0, "lc-tune failed"
            finally:
                sys.stdout = stdout
        frontier = read_model_frontier(tuned)
        slowest, fastest = frontier.points[0], frontier.points[-1]
        fixed_query = f"?rho={format_rho(slowest.rho)}"
        cpus = os.cpu_count() or 1
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        port = free_port()
        # Every request is held (never refused at a slot limit): a service that falls behind shows it in latency.
        max_uploads = int(4 * (args.rate or 100) * args.seconds) + 1000

        def serve(name: str, target_ms: float | None):
            settings = ServeSettings(str(tuned), max_batch=1, max_uploads=min(max_uploads, 100_000),
                                     target_ms=target_ms)
            return start(settings, port=port, replicas=1, replica_cpus=1, name=name, route_prefix=f"/{name}")

        service = serve("fixed", None)
        try:
            m_slow = sequential_ms(service.url, bodies, fixed_query)
            m_fast = sequential_ms(service.url, bodies, f"?rho={format_rho(fastest.rho)}")
            # 20 % beyond what the fixed service answers, but at most 60 % of the fastest point's capacity: a random
            # load needs that room at the fastest point for its p99 to stay near 5 runs.
            rate = args.rate or round(min(1.2e3 / m_slow, 0.6e3 / m_fast), 1)
            target = args.target_ms or round(5 * m_fast, 1)
            print(f"sequential medians: {m_slow:.1f} ms at ρ = {format_rho(slowest.rho)}, {m_fast:.1f} ms at "
                  f"ρ = {format_rho(fastest.rho)}; rate {rate}/s, target {target} ms", file=sys.stderr)
            fixed = open_loop(service.url, bodies, rate, args.seconds, fixed_query)
        finally:
            service.stop()
        service = serve("controlled", target)
        try:
            sequential_ms(service.url, bodies, "", count=4)  # the same warm-up
            controlled = open_loop(service.url, bodies, rate, args.seconds, "")
        finally:
            service.stop()
        ray.shutdown()
    fixed["costs"] = [frontier.cost(slowest)] * len(fixed["latencies"])
    saved = {"machine": machine_line(), "size": args.size, "grid": args.grid, "tune_images": args.tune_images,
             "seconds": args.seconds, "rate": rate, "target_ms": target, "m_slow": m_slow, "m_fast": m_fast,
             "frontier": frontier.summary(), "fixed": fixed, "controlled": controlled}
    if args.json:
        args.json.write_text(json.dumps(saved) + "\n")
    write_latency_block(saved, args)


def machine_line() -> str:
    from results_block import machine

    return machine()


def write_latency_block(saved: dict, args: argparse.Namespace) -> None:
    """The "Latency target" block of docs/serving.md from :func:`latency_target`'s measurements."""
    import collections

    from layercascade.contract import format_rho
    from layercascade.model.evaluate import markdown_table

    target = saved["target_ms"]
    points = saved["frontier"]["points"]

    def row(name: str, run: dict) -> list[str]:
        latencies = np.array(run["latencies"])
        used = collections.Counter(run["rhos"])
        shares = ", ".join(f"{rho} {100 * n / len(run['rhos']):.0f}%" for rho, n in used.most_common(3))
        costs = [c for c in run["costs"] if c is not None]
        p50, p90, p99 = (np.percentile(latencies, q) for q in (50, 90, 99))
        return [name, str(len(latencies)), f"{p50:.0f}", f"{p90:.0f}", f"{p99:.0f}",
                f"{100 * np.mean(latencies > target):.1f}%", "yes" if p99 <= target else "**no**", shares,
                f"{np.mean(costs):+.2f}" if costs else "–", str(run["failed"])]

    table = markdown_table(["service", "requests", "p50 ms", "p90 ms", "p99 ms", f"over {target:g} ms",
                            "p99 within target", "ρ used (share)", "mean mIoU cost", "failed"],
                           [row(f"fixed ρ = {format_rho(points[0]['rho'])}", saved["fixed"]),
                            row(f"--target-ms {target:g}", saved["controlled"])])
    def p99(run: dict) -> float:
        return float(np.percentile(run["latencies"], 99))

    verdict = " ".join([
        "The fixed service's p99 " + ("misses" if p99(saved["fixed"]) > target else "meets") + " the target;",
        "the controlled one, moving to faster points, " + ("meets it." if p99(saved["controlled"]) <= target
                                                           else f"misses it too, by {p99(saved['controlled']) - target:.0f} ms "
                                                                "(its share of requests over the target is in the table).")])
    frontier = markdown_table(["ρ", "lc-tune median ms per run", "mIoU", "expected mIoU cost"],
                              [[format_rho(p["rho"]), f"{p['median_ms']:.2f}", f"{p['miou']:.2f}",
                                f"{p['expected_miou_cost']:+.2f}"] for p in points])
    body = f"""`python tools/bench_serve.py --latency-target --size {saved['size']} --grid {saved['grid']} --tune-images {saved['tune_images']} --seconds {saved['seconds']:g} --rate {saved['rate']:g} --target-ms {target:g}`
on {saved['machine']}: the demo checkpoint exported at {saved['size']}², tuned by lc-tune on {saved['tune_images']} synthetic images
(`--grid {saved['grid']} --max-miou-drop 0`), served by one replica (batch 1) on a local Ray, {saved['rate']:g} requests per second
(PNGs of 16 other synthetic images) arriving at random (Poisson, the same arrival times for both runs) for {saved['seconds']:g} s, latency from each
request's scheduled time to its answer. One request at a time takes {saved['m_slow']:.0f} ms at the most accurate
point and {saved['m_fast']:.0f} ms at the fastest. {verdict} The mIoU cost is against the model's
default ρ = {format_rho(saved['frontier']['reference']['rho'])} (lc-tune's reference; negative: more accurate).

{table}

The frontier it moves along (lc-tune's, as recorded in the tuned dir):

{frontier}
"""
    write_block(SERVING, "latency-target", body)
    print(f"wrote the latency-target block of {SERVING.relative_to(ROOT)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="160,512", help="input sizes to export at (default: 160,512)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="write the block from measurements --json saved (the other options as they were)")
    target = parser.add_argument_group("--latency-target: a fixed-ρ service against lc-serve --target-ms")
    target.add_argument("--latency-target", action="store_true", help="run this comparison instead")
    target.add_argument("--size", type=int, default=512, help="input size to export at (default: 512)")
    target.add_argument("--seconds", type=float, default=40.0, help="load per service (default: 40)")
    target.add_argument("--rate", type=float, default=None, help="requests per second (default: calibrated)")
    target.add_argument("--target-ms", type=float, default=None, help="the latency target (default: calibrated)")
    target.add_argument("--tune-images", type=int, default=20, help="synthetic images lc-tune measures on")
    # Below lc-tune's default grid too: the frontier's fastest point must be well apart from its most accurate one.
    target.add_argument("--grid", default="1,0.99,0.97,0.95,0.9,0.8,0.6,0.4", help="lc-tune's --grid")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        if args.latency_target:
            write_latency_block(saved, args)
        else:
            write_serving_block(saved["rows"], saved["machine"], args)
        return
    if args.latency_target:
        latency_target(args)
        return

    import ray

    from layercascade.export.stages import export_model
    from layercascade.model.checkpoint import load_checkpoint
    from layercascade.runtime.inputs import SAMPLES
    from layercascade.runtime.machine import host
    from layercascade.serve.app import ServeSettings
    from layercascade.serve.service import start

    cpus = os.cpu_count() or 1
    bodies = [path.read_bytes() for path in sorted(SAMPLES.iterdir())]
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    port, rows = free_port(), []
    configs = [(1, 1), (1, args.max_batch), (2, 1), (2, args.max_batch)]  # (replicas, max batch)
    with tempfile.TemporaryDirectory(prefix="lc-bench-serve-") as work:
        for size in (int(s) for s in args.sizes.split(",")):
            model = export_model(load_checkpoint(CHECKPOINT), Path(work) / f"demo-{size}", input_size=(size, size),
                                 dynamic_batch=args.max_batch)
            local = in_process(model, bodies, max(50, args.requests // 4))
            for replicas, max_batch in configs:
                threads = max(1, cpus // replicas)
                settings = ServeSettings(str(model), {"threads": threads}, max_batch=max_batch,
                                         batch_wait_ms=args.batch_wait_ms)
                service = start(settings, port=port, replicas=replicas, replica_cpus=cpus / replicas,
                                name=f"bench-{size}-{replicas}-{max_batch}", route_prefix=f"/bench{size}")
                try:
                    load(service.url, bodies, 4 * args.clients, args.clients)  # warm-up
                    measured = load(service.url, bodies, args.requests, args.clients)
                finally:
                    service.stop()
                rows.append({"size": size, "replicas": replicas, "max_batch": max_batch,
                             "threads_per_replica": threads, "in_process_per_s": local, **measured})
                print(json.dumps(rows[-1]), file=sys.stderr)
    ray.shutdown()
    machine = host()
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    write_serving_block(rows, machine, args)


def write_serving_block(rows: list[dict], machine: str, args: argparse.Namespace) -> None:
    from layercascade.model.evaluate import markdown_table

    def baseline(row: dict) -> dict:
        return next(b for b in rows if b["size"] == row["size"] and b["replicas"] == 1 and b["max_batch"] == 1)

    table = markdown_table(
        ["size", "replicas", "max batch", "requests/s", "p50 ms", "p99 ms", "mean batch", "vs batch 1, 1 replica"],
        [[f"{r['size']}²", str(r["replicas"]), str(r["max_batch"]), f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.1f}",
          f"{r['p99_ms']:.1f}", f"{r['mean_batch']:.2f}", f"{r['requests_per_s'] / baseline(r)['requests_per_s']:.2f}×"]
         for r in rows])
    local = ", ".join(f"{r['size']}²: {r['in_process_per_s']:.0f} images/s"
                      for r in rows if r["replicas"] == 1 and r["max_batch"] == 1)
    body = f"""## Serving: lc-serve on Ray Serve (CPU)

`python tools/bench_serve.py --sizes {args.sizes} --requests {args.requests} --clients {args.clients} --max-batch {args.max_batch}`
on {machine}: the demo checkpoint exported with `--dynamic-batch {args.max_batch}`, served by a local Ray on this
machine's CPUs ({os.cpu_count()}; each replica's ONNX Runtime threads are the CPUs divided among the replicas),
{args.clients} HTTP clients on the same machine posting the sample images (JPEG, PNG, BMP, WebP; decoding, resizing and
the label PNG included) until {args.requests} answers, after a warm-up; batch wait {args.batch_wait_ms:g} ms. Latency
is the client's, request to answer. For scale: one in-process `Cascade`, one image at a time, no HTTP: {local}.

{table}
"""
    write_block(RESULTS, "serving", body)
    print(f"wrote the serving block of {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
