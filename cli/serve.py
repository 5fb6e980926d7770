"""lc-serve: an HTTP service of a Layer Cascade model on Ray Serve (local Ray, or a cluster)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from layercascade.cli.args import (
    add_backend_arguments,
    check_frontier,
    finite_float,
    int_in,
    load_options,
    positive_int,
)
from layercascade.errors import fail, run_cli
from layercascade.serve import import_serving
from layercascade.serve.http import Limits


class Parser(argparse.ArgumentParser):
    """lc-serve's arguments: a bad one is one line (``error: ...``, exit 1), as every refusal of lc-serve's is."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (lc-serve --help lists the options)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lc-serve",
        description="Serve a Layer Cascade model over HTTP on Ray Serve: POST an image file's bytes to "
                    "/v1/segment (?rho=R or ?rho=R2,R3, or with --target-ms ?deadline_ms=T; ?rho_class=NAME:R,... "
                    "on top of either) and get the palette label map as PNG at the image's size (headers "
                    "X-LC-Stage-Fractions, X-LC-Milliseconds, X-LC-Rho), or JSON with 'Accept: application/json'; "
                    "GET /v1/health (200 once the model is loaded), GET /v1/model. Requests to a replica are "
                    "batched up to the model's batch capacity. Runs until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="model dir (lc-export, lc-calibrate), engine dir (lc-build) or, for the torch backend, "
                             "a checkpoint .pt (default: the bundled demo model)")
    add_backend_arguments(parser)
    parser.add_argument("--threads", type=int_in(0, 1024), default=0, metavar="N",
                        help="intra-op threads per replica (default: the backend's)")
    network = parser.add_argument_group("service")
    network.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: all)")
    network.add_argument("--port", type=int_in(1, 65535), default=8000,
                         help="port; without --address it must be free now (default: 8000)")
    network.add_argument("--replicas", type=positive_int, default=1, metavar="N",
                         help="replicas, each holding the model (default: 1)")
    network.add_argument("--replica-cpus", type=finite_float(0.0001), default=1.0, metavar="C",
                         help="CPUs Ray reserves per replica, > 0 (fractions down to 0.0001) (default: 1)")
    network.add_argument("--max-batch", type=int_in(1, 1024), default=8, metavar="N",
                         help="most requests one replica runs together, at most the model's batch capacity "
                              "(lc-export --dynamic-batch; a batch-1 model runs them one by one) (default: 8)")
    network.add_argument("--batch-wait-ms", type=finite_float(0, 10_000), default=5.0, metavar="T",
                         help="how long a replica waits for a batch to fill, 0 to 10000 (default: 5)")
    network.add_argument("--max-uploads", type=int_in(1, 100_000), default=None, metavar="N",
                         help="segment requests one replica holds at once, from the body's first byte to the answer; "
                              "one more is answered 503 with Retry-After at once (default: 2 × --max-batch, at least "
                              "16)")
    network.add_argument("--body-timeout-s", type=finite_float(0.1, 3600), default=Limits.body_timeout_s,
                         metavar="S", help="a request body not complete within S seconds gets 408 "
                                           f"(default: {Limits.body_timeout_s:g})")
    network.add_argument("--body-idle-timeout-s", type=finite_float(0.1, 3600), default=Limits.body_idle_timeout_s,
                         metavar="S", help="a request body that stalls for S seconds (its first bytes included) gets "
                                           f"408 (default: {Limits.body_idle_timeout_s:g})")
    network.add_argument("--max-body-bytes", type=positive_int, default=Limits.max_body_bytes, metavar="N",
                         help=f"larger request bodies get 413 (default: {Limits.max_body_bytes:,})")
    network.add_argument("--max-pixels", type=positive_int, default=Limits.max_pixels, metavar="N",
                         help="images of more pixels get 413, read from the header before decoding "
                              f"(default: {Limits.max_pixels:,})")
    network.add_argument("--target-ms", type=finite_float(1, 600_000), default=None, metavar="T",
                         help="a latency target per request, 1 to 600000 ms: each replica lowers ρ along the frontier "
                              "lc-tune recorded in the model dir when requests would miss it and raises it again "
                              "when there is headroom (a request's ?rho_class= applies on top); answers say the ρ "
                              "used and its expected mIoU cost, and a request may set its own ?deadline_ms= (needs a "
                              "model dir tuned by lc-tune; docs/serving.md)")
    network.add_argument("--route-prefix", default="/", metavar="PATH",
                         help="serve the model under PATH (/PATH/v1/segment): several models on one cluster "
                              "(default: /)")
    network.add_argument("--name", default=None,
                         help="Serve application name (default: the model dir's name; 'demo' for the bundled one)")
    network.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                         help="join this Ray cluster ('auto', 'ray://head:10001'); default: start a local Ray")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model is not None and not Path(args.model).exists():  # before Ray starts: that takes seconds
        fail(f"{args.model}: no such model directory, engine directory or checkpoint")
    if args.target_ms is not None:  # the frontier, checked before Ray starts
        check_frontier(args.model, "--target-ms")
    app = import_serving("app")
    service_module = import_serving("service")
    # Absolute: replicas on other nodes resolve a relative path against their own working directory.
    model = str(Path(args.model).resolve()) if args.model is not None else None
    if args.address is None:  # a local Ray and Serve start here: the port must be free (found before Ray starts)
        service_module.check_port(args.host, args.port)
    limits = Limits(args.max_body_bytes, args.max_pixels, args.body_timeout_s, args.body_idle_timeout_s)
    settings = app.ServeSettings(model, load_options(args, args.threads), limits, args.max_batch, args.batch_wait_ms,
                                 args.max_uploads, args.target_ms)
    print(f"starting lc-serve ({args.replicas} replica(s)); loading the model ...", file=sys.stderr)
    service = service_module.start(settings, host=args.host, port=args.port, replicas=args.replicas,
                                   replica_cpus=args.replica_cpus, address=args.address,
                                   route_prefix=args.route_prefix, name=args.name)
    print(f"serving {service.name} at {service.url}/v1/segment  (try: curl --data-binary @photo.jpg "
          f"{service.url}/v1/segment -o labels.png); Ctrl-C stops", file=sys.stderr)
    stop = threading.Event()
    # `kill` (SIGTERM) stops it like Ctrl-C: the application removed, the Ray it started shut down.
    signal.signal(signal.SIGTERM, lambda number, frame: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping lc-serve", file=sys.stderr)
        service.stop()
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
