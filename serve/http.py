"""What lc-serve answers, apart from Ray: the checks on a request (content type, body size and the
time to send it, the image and its pixel count, ρ) and the answers (a palette PNG or JSON), so the
rules are plain functions tested without a server. Every refusal is an :class:`HTTPProblem` (status
and one line). :class:`JSONErrors` gives Serve's proxy the same JSON error body for its own answers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import urllib.parse
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from layercascade.contract import (
    Rho,
    check_rho_class,
    format_rho,
    rho_class_from_text,
    rho_class_value,
    rho_from_text,
    rho_value,
)
from layercascade.errors import LCError
from layercascade.manifest import model_hash
from layercascade.model.data.images import ImageTooLarge, read_rgb
from layercascade.model.data.placement import RESIZE_MODES
from layercascade.runtime.segment import encode
from layercascade.runtime.visualize import confidence_image, label_image

if TYPE_CHECKING:
    from layercascade.runtime.cascade import Cascade
    from layercascade.runtime.result import CascadeResult

# Request bodies the service reads as image files: any image/* type, raw bytes, none given, and the
# type `curl --data-binary @photo.jpg` sends unless told otherwise (the body is the file either way).
OCTET_STREAM = "application/octet-stream"
CURL_DEFAULT = "application/x-www-form-urlencoded"
JSON = "application/json"
PNG = "image/png"


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a replica. ``max_pixels`` is checked from the image's header,
    before a pixel is decoded, so a small file claiming a huge image (a decompression bomb) costs nothing.
    A body must arrive within ``body_timeout_s`` in all, with no pause longer than ``body_idle_timeout_s``
    (the wait for its first bytes included), so a client that stalls frees the replica's slot."""

    max_body_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000
    body_timeout_s: float = 60.0  # 32 MiB at 4.5 Mbit/s; a 5 MB photo at 0.7 Mbit/s
    body_idle_timeout_s: float = 10.0


class HTTPProblem(Exception):
    """A request the service refuses: ``status`` (4xx/5xx), a one-line ``message`` and the answer's
    extra ``headers`` (e.g. ``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    """The JSON body of every error answer: ``{"error": "..."}``, the message made one line of at most 500
    characters (an internal error's text may be long)."""
    return json.dumps({"error": " ".join(message.split())[:500]}).encode()


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class JSONErrors:
    """ASGI middleware for Serve's HTTP proxy (installed by :func:`proxy_middlewares`): the proxy's own
    error answers — text such as its 404 for a path no application serves, its 503 while no replica is
    up, its 408 and 503 on timeouts and back-pressure — become ``{"error": ...}`` like the replicas'
    answers, and a request the proxy drops without an answer (it does so when a replica dies under the
    request) gets a JSON 500 instead of its server's text one. JSON answers and successes pass unchanged."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False  # an answer went out (or is going out) to the client
        held: Message | None = None  # the start of a text error answer, sent as JSON once its body is here
        text = bytearray()

        async def relay(message: Message) -> None:
            nonlocal answered, held
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and not content_type.startswith(JSON.encode()):
                    held = message
                    return
                answered = True
            elif message["type"] == "http.response.body" and held is not None:
                text.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    answered = True
                    await send_json_error(send, held["status"], text.decode("utf-8", "replace"), held["headers"])
                return
            await send(message)

        try:
            await self.app(scope, receive, relay)
        except Exception as error:  # the proxy's server would answer a text 500
            if answered:
                raise
            await send_json_error(send, 500, f"internal error in Serve's proxy: {type(error).__name__}: {error}")
            return
        if held is not None and not answered:  # a text error whose body never ended
            await send_json_error(send, held["status"], text.decode("utf-8", "replace"), held["headers"])
        elif not answered:
            await send_json_error(send, 500, "the request ended without an answer (e.g. its replica died); retry it")


async def send_json_error(send: Send, status: int, message: str,
                          headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """An error answer of ``message`` (made one line) as ``{"error": ...}``, keeping ``headers`` other than
    the content's type and length (e.g. ``Retry-After``, ``X-Request-ID``)."""
    body = error_body(message.strip() or f"HTTP {status}")
    kept = [(name, value) for name, value in headers if name.lower() not in (b"content-type", b"content-length")]
    await send({"type": "http.response.start", "status": status,
                "headers": [*kept, (b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list[Any]:
    """What Serve's proxy wraps its ASGI app in: :class:`JSONErrors` (Serve calls this in the proxy's
    process when ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names it: :data:`PROXY_CALLBACK`)."""
    from starlette.middleware import Middleware

    return [Middleware(JSONErrors)]


PROXY_CALLBACK = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": f"{__name__}.proxy_middlewares"}


def check_content_type(value: str | None) -> None:
    """415 unless the body is declared an image, raw bytes, or not declared at all."""
    kind = (value or "").split(";")[0].strip().lower()
    if kind and kind not in (OCTET_STREAM, CURL_DEFAULT) and not kind.startswith("image/"):
        raise HTTPProblem(415, f"content type {kind[:60]!r} is not an image: send the image file's bytes as the body "
                               f"(curl --data-binary @photo.jpg; image/* or {OCTET_STREAM}), not a form or text")


def check_declared_length(value: str | None, limits: Limits) -> None:
    """413 when the Content-Length header alone is over the limit (the body is then not read); 400 when
    it is not a number (Serve's HTTP server refuses those first; the rule stands alone all the same)."""
    if value is None:
        return
    if not (value.isascii() and value.strip().isdigit()):
        raise HTTPProblem(400, f"Content-Length {value[:40]!r} is not a number of bytes")
    if int(value) > limits.max_body_bytes:
        raise HTTPProblem(413, body_too_large(limits))


# The maps a segment answer can carry (?outputs=): the label map (palette PNG at the image's size), the confidence
# (16-bit grey PNG at the image's size, round(p · 65535)), the stage map (8-bit grey PNG at the stage resolution,
# 1, 2 or 3: the stage that decided the pixel).
ANSWER_OUTPUTS = ("labels", "confidence", "stages")


@dataclass(frozen=True)
class SegmentQuery:
    """What a segment request asks for in its query: ``rho`` (None: the model's default, or the latency
    controller's choice), ``resize`` (None: the model's default; ``model/data/placement.py``), ``deadline_ms``
    (lc-serve ``--target-ms`` only: the most accurate ρ expected to answer within it), the maps of the answer,
    ``outputs``, and ``rho_class`` ((class index, ρ_c) pairs in class order, on top of whichever ρ; None: the
    model's default). Requests of equal thresholds and resize run in one batch (``outputs`` shapes only the
    answer, so it does not count in comparisons)."""

    rho: Rho | None = None
    resize: str | None = None
    deadline_ms: float | None = None
    outputs: tuple[str, ...] = field(default=("labels",), compare=False)
    rho_class: tuple[tuple[int, float], ...] | None = None


QUERY_HELP = ("/v1/segment takes ?rho=R or ?rho=R2,R3 (or ?deadline_ms=T), ?rho_class=NAME:R[,NAME:R...], "
              f"?resize=fit|stretch|none and ?outputs= (comma-separated: {', '.join(ANSWER_OUTPUTS)})")
QUERY_FIELDS = ("rho", "rho_class", "resize", "deadline_ms", "outputs")
# The longest deadline a request may set (ms): ten minutes, beyond any answer worth waiting for.
MAX_DEADLINE_MS = 600_000.0
# The longest rho_class value read: 255 classes with a short name and a threshold each; the answer echoes none.
MAX_RHO_CLASS_CHARS = 8192


@dataclass(frozen=True)
class RhoUsed:
    """The thresholds an answer was computed with and why: ``source`` is ``request`` (its ``?rho=``), ``default``
    (the model's), ``controller`` (lc-serve ``--target-ms``) or ``deadline`` (its ``?deadline_ms=``);
    ``expected_miou_cost`` the frontier's mIoU at the model's tuned reference minus at ``rho`` (None when the model
    has no frontier or ``rho`` is not on it); ``rho_class`` the request's per-class thresholds, which apply on top
    of ``rho`` whatever its source (:class:`SegmentQuery`; None: the model's default)."""

    rho: Rho
    source: str
    expected_miou_cost: float | None = None
    rho_class: tuple[tuple[int, float], ...] | None = None


def check_segment_request(headers: Mapping[str, str], query: str, limits: Limits,
                          classes: Sequence[str]) -> SegmentQuery:
    """The checks of ``POST /v1/segment`` that need no body: the content type (415), the declared
    length (413; 400 when not a number) and the query (400: only :data:`QUERY_FIELDS`, each given at most once;
    ``rho_class`` names of ``classes``, the model's); returns what the query asks for."""
    check_content_type(headers.get("content-type"))
    check_declared_length(headers.get("content-length"), limits)
    fields = urllib.parse.parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(fields) - set(QUERY_FIELDS))
    if unknown:
        raise HTTPProblem(400, f"unknown query parameter {unknown[0][:40]!r}: {QUERY_HELP}")
    repeated = [name for name, values in fields.items() if len(values) > 1]
    if repeated:
        raise HTTPProblem(400, f"{repeated[0]} is given more than once: {QUERY_HELP}, each once")
    resize = fields["resize"][0] if "resize" in fields else None
    if resize is not None and resize not in RESIZE_MODES:
        raise HTTPProblem(400, f"resize {resize[:40]!r} is not one of {', '.join(RESIZE_MODES)}")
    if "rho" in fields and "deadline_ms" in fields:
        raise HTTPProblem(400, "give rho or deadline_ms, not both: rho fixes the thresholds, deadline_ms lets the "
                               "service pick them")
    outputs = parse_answer_outputs(fields["outputs"][0]) if "outputs" in fields else ("labels",)
    return SegmentQuery(parse_rho(fields["rho"][0] if "rho" in fields else None), resize,
                        parse_deadline(fields["deadline_ms"][0] if "deadline_ms" in fields else None), outputs,
                        parse_rho_class(fields["rho_class"][0] if "rho_class" in fields else None, classes))


def parse_deadline(value: str | None) -> float | None:
    """The query's ``deadline_ms``: a number of milliseconds in (0, :data:`MAX_DEADLINE_MS`]; else 400."""
    if value is None:
        return None
    try:
        deadline = float(value) if len(value) <= 40 else math.nan
    except ValueError:
        deadline = math.nan
    if not (math.isfinite(deadline) and 0 < deadline <= MAX_DEADLINE_MS):
        shown = value if len(value) <= 40 else f"{len(value):,} characters"
        raise HTTPProblem(400, f"deadline_ms must be a number of milliseconds in (0, {MAX_DEADLINE_MS:g}], "
                               f"got {shown!r}")
    return deadline


def parse_answer_outputs(value: str) -> tuple[str, ...]:
    """The query's ``outputs``: names of :data:`ANSWER_OUTPUTS`, comma-separated, in that order; 400 otherwise."""
    names = value.split(",")
    unknown = [name for name in names if name not in ANSWER_OUTPUTS]
    if unknown:
        raise HTTPProblem(400, f"outputs: {unknown[0][:40]!r} is not one of {', '.join(ANSWER_OUTPUTS)}")
    return tuple(name for name in ANSWER_OUTPUTS if name in names)


def check_per_class(query: SegmentQuery, takes_per_class: bool) -> None:
    """400 when the query gives per-class thresholds to a model exported before them (its graphs take one each)."""
    if query.rho_class and not takes_per_class:
        raise HTTPProblem(400, "rho_class: the served model was exported before per-class thresholds (lc.json "
                               "version 2); its operator must re-export it with lc-export")


def check_answer_outputs(query: SegmentQuery, has_confidence: bool) -> None:
    """400 when the query asks for the confidence of a model exported without it."""
    if "confidence" in query.outputs and not has_confidence:
        raise HTTPProblem(400, "outputs=confidence: the served model was exported before layercascade wrote the "
                               "confidence (lc.json version 2); its operator must re-export it with lc-export")


async def read_body(chunks: AsyncIterable[bytes], limits: Limits) -> bytes:
    """The request's body from its ``chunks`` (Starlette's ``request.stream()``): 413 once it is over the
    size limit, 408 when it is not complete within the body timeout or a chunk does not come within the
    idle timeout (a stalled client then frees its slot instead of holding it for as long as it likes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.body_timeout_s
    stream = aiter(chunks)
    body = bytearray()
    while True:
        left = deadline - loop.time()
        try:
            chunk = await asyncio.wait_for(anext(stream), min(limits.body_idle_timeout_s, max(left, 0.0)))
        except StopAsyncIteration:
            return bytes(body)
        except TimeoutError:
            if left <= limits.body_idle_timeout_s:
                why = f"was not complete within {limits.body_timeout_s:g} s (lc-serve --body-timeout-s)"
            else:
                why = f"stalled: nothing came for {limits.body_idle_timeout_s:g} s (lc-serve --body-idle-timeout-s)"
            raise HTTPProblem(408, f"the request body {why}; {len(body):,} bytes came") from None
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise HTTPProblem(413, body_too_large(limits))


def body_too_large(limits: Limits) -> str:
    return f"request body over the limit of {limits.max_body_bytes:,} bytes (lc-serve --max-body-bytes)"


def decode_image(body: bytes, limits: Limits) -> np.ndarray:
    """The request's image as (H, W, 3) uint8 RGB, EXIF orientation applied (as lc-run reads files).
    400: empty or not a decodable image; 413: over the body or pixel limit."""
    if not body:
        raise HTTPProblem(400, "empty request body: send the image file's bytes")
    if len(body) > limits.max_body_bytes:
        raise HTTPProblem(413, body_too_large(limits))
    try:
        return read_rgb("request body", limits.max_pixels, data=body)
    except ImageTooLarge as error:
        raise HTTPProblem(413, str(error).replace("--max-pixels N", "lc-serve --max-pixels N")) from None
    except LCError as error:
        raise HTTPProblem(400, str(error)) from None


def parse_rho(value: str | None) -> Rho | None:
    """The query's ``rho``: ``R`` (both stages) or ``R2,R3`` (None: the model's default); 400 unless each is a
    number in (0, 1]."""
    if value is None:
        return None
    if len(value) > 60:  # no number in (0, 1] needs more; the answer does not echo a long value
        raise HTTPProblem(400, f"rho must be R or R2,R3 with numbers in (0, 1], got {len(value):,} characters")
    try:
        return rho_from_text(value)
    except LCError as error:
        raise HTTPProblem(400, str(error)) from None


def parse_rho_class(value: str | None, classes: Sequence[str]) -> tuple[tuple[int, float], ...] | None:
    """The query's ``rho_class``: ``NAME:R[,NAME:R...]`` (or ``NAME=R``, URL-encoded), each NAME a class of
    ``classes`` and R in (0, 1], as (class index, R) pairs in class order (None: the model's default; an empty value:
    none); 400 otherwise."""
    if value is None:
        return None
    if not value:
        return ()
    if len(value) > MAX_RHO_CLASS_CHARS:
        raise HTTPProblem(400, f"rho_class is over {MAX_RHO_CLASS_CHARS:,} characters")
    try:
        by_name = rho_class_from_text(value, "=" if "=" in value and ":" not in value else ":")
        return tuple(sorted(check_rho_class(by_name, classes).items()))
    except LCError as error:
        raise HTTPProblem(400, str(error)[:400]) from None


def wants_json(accept: str | None, query: SegmentQuery = SegmentQuery()) -> bool:
    """Whether the answer is JSON: the client asked for it (``Accept: application/json``), or for maps other than
    the label map alone (one PNG cannot carry them)."""
    return JSON in (accept or "").lower() or query.outputs != ("labels",)


def png_bytes(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """The palette PNG of a label map (the bytes lc-run writes as ``<stem>.png``: its encoder)."""
    return encode({"labels": label_image(labels, palette)})["labels"]


def answer_pngs(result: CascadeResult, palette: np.ndarray, outputs: Iterable[str]) -> dict[str, bytes]:
    """The PNG of each of ``outputs`` (:data:`ANSWER_OUTPUTS`) of a result."""
    def png(picture: Image.Image) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()

    draw = {
        "labels": lambda: png_bytes(result.labels, palette),
        "confidence": lambda: png(confidence_image(result.confidence_at_image_size())),
        "stages": lambda: png(Image.fromarray(result.stage_map)),
    }
    return {name: draw[name]() for name in outputs}


def segment_answer(result: CascadeResult, palette: np.ndarray, milliseconds: float, as_json: bool,
                   used: RhoUsed, outputs: tuple[str, ...] = ("labels",)) -> tuple[bytes, str, dict[str, str]]:
    """(body, media type, headers) of a segmentation: the palette PNG of the labels at the image's
    size, or JSON holding the PNGs of ``outputs`` in base64 (``<name>_png``); either way the stage fractions, the
    time and the thresholds ``used`` (with their source and expected mIoU cost) in headers."""
    pngs = answer_pngs(result, palette, outputs if as_json else ("labels",))
    fractions = [round(float(f), 6) for f in result.stage_fractions]
    headers = {"X-LC-Stage-Fractions": ",".join(str(f) for f in fractions),
               "X-LC-Milliseconds": f"{milliseconds:.3f}", "X-LC-Rho": format_rho(used.rho),
               "X-LC-Rho-Source": used.source}
    if used.expected_miou_cost is not None:
        headers["X-LC-Expected-mIoU-Cost"] = f"{used.expected_miou_cost:g}"
    if not as_json:
        return pngs["labels"], PNG, headers
    body = {**{f"{name}_png": base64.b64encode(png).decode() for name, png in pngs.items()},
            "stage_fractions": fractions, "size": [int(result.labels.shape[0]), int(result.labels.shape[1])],
            "ms": round(milliseconds, 3), "rho": rho_value(used.rho), "rho_source": used.source,
            "expected_miou_cost": used.expected_miou_cost}
    return json.dumps(body).encode(), JSON, headers


def model_description(cascade: Cascade, name: str) -> dict[str, Any]:
    """``GET /v1/model``: what the served model segments and how it runs. The model is named, never
    located: ``name`` (the model dir's) and the hash of its files (None where the model has no
    file list: a checkpoint, an engine dir); no path of the serving machine reaches a client."""
    return {
        "model": name,
        "model_hash": model_hash(cascade.manifest) if "files" in cascade.manifest else None,
        "classes": cascade.classes,
        "palette": cascade.palette.tolist(),
        "input_size": list(cascade.input_size),
        "default_rho": rho_value(cascade.default_rho),  # one number, or [ρ₂, ρ₃] when the stages differ
        "default_rho_class": rho_class_value(cascade.default_rho_class, cascade.classes),  # class name → ρ_c
        "batch_capacity": cascade.batch_capacity,
        "outputs": [name for name in ANSWER_OUTPUTS if name != "confidence" or cascade.has_confidence],
        "backend": cascade.backend,
        "precision": cascade.precision,  # what the backend computes in (auto's bf16 on such a CPU)
        "quantization": cascade.manifest.get("quantization", {}).get("precision"),
        "machine": cascade.runner.machine(),
    }
