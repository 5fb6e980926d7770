"""Throughput of lc-serve: requests/s and p50/p99 latency at batch 1 vs dynamic batching and 1 vs 2
replicas, in one run on one local Ray, written as the serving block of docs/results.md.

The demo checkpoint is exported with ``--dynamic-batch`` (so requests can batch) at each size;
every configuration serves it on this machine's CPUs (a replica's ONNX Runtime threads are the
CPUs divided among the replicas), ``--clients`` HTTP clients post the sample images (decoding,
resizing and encoding included) until ``--requests`` are answered, after a warm-up. The same
images through an in-process ``Cascade`` (no HTTP, one at a time) give the ceiling per request.

    python tools/bench_serve.py [--sizes 160,512] [--requests 400] [--clients 16] [--max-batch 8]
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
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        write_serving_block(saved["rows"], saved["machine"], args)
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
