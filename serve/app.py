"""lc-serve on Ray Serve: one deployment per model, each replica holding one :class:`Cascade`, the
segment requests to a replica batched (``serve.batch``) up to the model's batch capacity.

A replica loads its model in its constructor, so Serve routes requests to it only once the model is
loaded (before any replica is, Serve's proxy answers 503 itself). A replica whose load failed stays
up to say why: it answers 503 with the load's error, and its health check fails, so Serve replaces
it (a transient failure, e.g. a GPU out of memory, then heals). A request the service refuses gets
its 4xx and a JSON ``{"error": ...}``; an unexpected failure is a 500 of the same form; neither takes
the replica down. The request rules are ``http.py``'s.

Slow and hostile clients: a replica holds at most ``max_uploads`` segment requests (from the first byte
of the body to the answer); one more is answered 503 with ``Retry-After`` at once, and a body that does
not arrive within its deadlines is answered 408, which frees its slot. Serve lets a replica take more
requests than that (``max_ongoing_requests``), so health and model requests are answered while uploads
stall.

Latency target (``ServeSettings.target_ms``, lc-serve ``--target-ms``): each replica holds a
:class:`~layercascade.runtime.control.RhoController` on the frontier lc-tune recorded in the model dir, runs each
request at the ρ it chooses (or the request's own ``?rho=``, or the most accurate one expected within its
``?deadline_ms=``), and teaches it each answer's latency and the runs still queued behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from layercascade.errors import LCError
from layercascade.runtime.control import RhoController, read_frontier
from layercascade.runtime.inputs import DEMO_MODEL
from layercascade.serve import gpus_per_model
from layercascade.serve.http import (
    JSON,
    HTTPProblem,
    Limits,
    RhoUsed,
    SegmentQuery,
    check_answer_outputs,
    check_per_class,
    check_segment_request,
    decode_image,
    error_body,
    model_description,
    read_body,
    segment_answer,
    wants_json,
)

DEPLOYMENT = "layercascade"
# Requests a replica takes beyond its uploads: health, model and refusals, which are answered at once.
FREE_SLOTS = 16


@dataclass(frozen=True)
class ServeSettings:
    """How the service runs a model: ``load`` are ``Cascade.load``'s keyword arguments."""

    model: str | None
    load: dict[str, Any] = field(default_factory=dict)
    limits: Limits = Limits()
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_uploads: int | None = None  # segment requests a replica holds at once; None: max(16, 2 × max_batch)
    target_ms: float | None = None  # lc-serve --target-ms: each replica moves ρ along the model's frontier

    @property
    def upload_slots(self) -> int:
        """The replica's bound on segment requests: by default enough to fill a batch while the one before runs."""
        return self.max_uploads or max(16, 2 * self.max_batch)


def json_response(status: int, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(content, status_code=status, media_type=JSON, headers=headers)


class CascadeServer:
    """A replica: the model and the routes of ``/v1``."""

    def __init__(self, settings: ServeSettings) -> None:
        from layercascade.runtime.cascade import Cascade

        self.settings = settings
        self.name = app_name(settings.model)
        self.cascade: Any = None
        self.load_error: str | None = None
        self.uploads = 0  # segment requests in this replica, from their body's first byte to their answer
        self.working = 0  # of these, the ones whose body is read: decoding, waiting for their batch, running
        self.controller: RhoController | None = None
        self.clock = time.perf_counter  # the time the controller's latencies are measured by (tests inject one)
        # Decoded images wait here for their batch: at most this many at once bounds a replica's memory
        # (a 40 MP image is ~0.3 GB while it decodes).
        self.decoding = asyncio.Semaphore(2 * settings.max_batch)
        try:
            cascade = Cascade.load(settings.model, **settings.load)
            if settings.target_ms is not None:
                frontier = read_frontier(cascade.manifest, f"{self.name}/lc.json")
                self.controller = RhoController(frontier, settings.target_ms)
        except LCError as error:
            self.load_error = str(error)
            return
        except Exception as error:  # a bug, but the service must say it
            self.load_error = f"{type(error).__name__}: {error}"
            return
        # Batches never exceed what one run of the model takes.
        capacity = cascade.batch_capacity or settings.max_batch
        self.max_batch = max(1, min(settings.max_batch, capacity))
        self.segment_many.set_max_batch_size(self.max_batch)
        self.segment_many.set_batch_wait_timeout_s(settings.batch_wait_ms / 1e3)
        self.cascade = cascade
        self.description = model_description(cascade, self.name)  # GET /v1/model

    def check_health(self) -> None:
        """Serve's health check: a replica without its model is replaced."""
        if self.load_error:
            raise RuntimeError(f"the model failed to load: {self.load_error}")

    def status(self) -> dict[str, Any]:
        """For lc-serve's start (through a deployment handle, so it works on a remote cluster too)."""
        return {"ready": self.cascade is not None, "error": self.load_error}

    def ready(self) -> None:
        """503 when this replica has no model (its load failed)."""
        if self.cascade is None:
            raise HTTPProblem(503, f"the model failed to load: {self.load_error}")

    async def __call__(self, request: Request) -> Response:
        try:
            # Below its route prefix (Serve passes it as the ASGI root_path), the path is the endpoint.
            path = request.url.path.removeprefix(request.scope.get("root_path", "")) or "/"
            route = (request.method, "/" + path.strip("/"))
            if route == ("POST", "/v1/segment"):
                return await self.segment(request)
            if route == ("GET", "/v1/health"):
                self.ready()
                return json_response(200, {"status": "ready"})
            if route == ("GET", "/v1/model"):
                self.ready()
                target = None if self.controller is None else self.controller.describe()
                return json_response(200, {**self.description, "latency_target": target})
            known = {"/v1/segment": "POST", "/v1/health": "GET", "/v1/model": "GET"}
            if route[1] in known:
                raise HTTPProblem(405, f"{route[1]} takes {known[route[1]]}, not {request.method}")
            raise HTTPProblem(404, f"no such endpoint {route[1]!r}: POST /v1/segment, GET /v1/health, GET /v1/model")
        except HTTPProblem as problem:
            return json_response(problem.status, error_body(self.without_paths(problem.message)), problem.headers)
        except Exception as error:  # the replica keeps serving; the client learns what broke
            message = self.without_paths(f"internal error: {type(error).__name__}: {error}")
            return json_response(500, error_body(message))

    def without_paths(self, message: str) -> str:
        """``message`` with the model's path on this machine replaced by the model's name (a load error names
        files of the model dir): clients learn what went wrong, not where the model lives."""
        model = Path(self.settings.model) if self.settings.model else DEMO_MODEL
        for path in sorted({str(model.resolve()), str(model)}, key=len, reverse=True):
            message = message.replace(path, self.name)
        return message

    @contextlib.contextmanager
    def upload_slot(self) -> Iterator[None]:
        """One of the replica's slots for segment requests, or 503 with Retry-After at once: a client never
        waits for a slot, and the replica's other slots stay free for health and model requests."""
        if self.uploads >= self.settings.upload_slots:
            raise HTTPProblem(503, f"this replica is at its limit of {self.settings.upload_slots} segment requests "
                                   "in flight (lc-serve --max-uploads); retry shortly", {"Retry-After": "1"})
        self.uploads += 1
        try:
            yield
        finally:
            self.uploads -= 1

    async def segment(self, request: Request) -> Response:
        """``POST /v1/segment``: the checks that need no body, a slot, the body (within its deadlines), then
        the batch."""
        self.ready()
        limits = self.settings.limits
        body: bytes | None = None
        try:
            query = check_segment_request(request.headers, request.url.query, limits, self.cascade.classes)
            if query.deadline_ms is not None and self.controller is None:
                raise HTTPProblem(400, "deadline_ms needs a service with a latency target (lc-serve --target-ms) on "
                                       "a model tuned by lc-tune; give rho instead")
            check_answer_outputs(query, self.cascade.has_confidence)
            check_per_class(query, self.cascade.threshold_count > 1)
            with self.upload_slot():
                body = await read_body(request.stream(), limits)
                return await self.segment_body(body, query, wants_json(request.headers.get("accept"), query))
        except HTTPProblem as problem:
            if body is None:  # refused before its body was read: close rather than wait for the rest of it
                problem.headers["Connection"] = "close"
            raise

    def rho_for(self, query: SegmentQuery) -> RhoUsed:
        """The thresholds a request runs at: its own ``rho``, else the controller's choice (for its deadline when it
        gives one), else the model's default; its ``rho_class`` on top of any of them (the controller moves
        (ρ₂, ρ₃) only)."""
        controller = self.controller
        if query.rho is not None:
            index = None if controller is None else controller.frontier.find(query.rho)
            cost = None if index is None else controller.frontier.cost(controller.frontier.points[index])
            return RhoUsed(query.rho, "request", cost, query.rho_class)
        if controller is None:
            return RhoUsed(self.cascade.default_rho, "default", rho_class=query.rho_class)
        choice = controller.choose(query.deadline_ms)
        return RhoUsed(choice.rho, "controller" if query.deadline_ms is None else "deadline", choice.expected_miou_cost,
                       query.rho_class)

    async def segment_body(self, body: bytes, query: SegmentQuery, as_json: bool) -> Response:
        """The answer to an image file's bytes: decoded (at most 2 × max_batch at once), run in a batch at the
        thresholds :meth:`rho_for` picks when the batch runs, encoded; its latency (from here to the encoded
        answer) taught to the controller."""
        limits = self.settings.limits
        started = self.clock()
        self.working += 1
        try:
            async with self.decoding:
                image = await asyncio.to_thread(decode_image, body, limits)
                result, batch, run_ms, used = await self.segment_many((image, query))
            if isinstance(result, Exception):
                raise result
            milliseconds = (self.clock() - started) * 1e3
            content, media_type, headers = await asyncio.to_thread(
                segment_answer, result, self.cascade.palette, milliseconds, as_json, used, query.outputs)
        finally:
            self.working -= 1
        if self.controller is not None:  # the runs of the model that wait behind this answer
            self.controller.observe((self.clock() - started) * 1e3, math.ceil(self.working / self.max_batch), run_ms,
                                    used.rho)
        headers["X-LC-Batch"] = str(batch)  # how many images ran together with this one (itself included)
        return Response(content, media_type=media_type, headers=headers)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.005)
    async def segment_many(self, requests: list[tuple[np.ndarray, SegmentQuery]]
                           ) -> list[tuple[Any, int, float, RhoUsed]]:
        """The requests that arrived together, their thresholds picked now (:meth:`rho_for`: the controller's
        latest choice, not the one when they arrived), run as batches of one ρ, rho_class and resize mode each (the
        batch size and wait are set from the settings once the model is loaded): (result, images run with it, ms of
        that run, thresholds used) each. A failure is returned to each of the requests it concerns, as the
        exception, not raised: it must not fail the others."""
        used = [self.rho_for(query) for _, query in requests]
        results: list[tuple[Any, int, float, RhoUsed]] = [(None, 0, 0.0, u) for u in used]
        by_run: dict[tuple, list[int]] = {}
        for index, (_, query) in enumerate(requests):
            by_run.setdefault((used[index].rho, used[index].rho_class, query.resize), []).append(index)
        for (rho, rho_class, resize), indices in by_run.items():
            started = self.clock()
            try:
                answers = await asyncio.to_thread(self.cascade.segment_batch, [requests[i][0] for i in indices],
                                                  rho, resize, rho_class=None if rho_class is None else dict(rho_class))
            except Exception as error:  # the images were checked already: a failure here is the server's (500)
                answers = [error] * len(indices)
            run_ms = (self.clock() - started) * 1e3
            for index, answer in zip(indices, answers, strict=True):
                results[index] = (answer, len(indices), run_ms, used[index])
        return results


def application(settings: ServeSettings, replicas: int = 1, replica_cpus: float = 1.0) -> Any:
    """The Ray Serve application of one model: ``replicas`` replicas reserving ``replica_cpus`` CPUs each (and a
    GPU each for a model that runs on one)."""
    gpus = gpus_per_model(settings.model, settings.load)
    deployment = serve.deployment(
        CascadeServer, name=DEPLOYMENT, num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": gpus},
        # The uploads, and slots beside them that stalled uploads cannot take (health, model, refusals).
        max_ongoing_requests=settings.upload_slots + FREE_SLOTS,
    )
    return deployment.bind(settings)


def app_name(model: str | None) -> str:
    """The Serve application's name: the model dir's name (``demo`` for the bundled one)."""
    return Path(model).resolve().name if model else "demo"
