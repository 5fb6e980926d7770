"""lc-serve against hostile input, without a server: mutated requests against the request rules
(property-based), bodies that stall or trickle, the JSON wrapper of Serve's proxy, and lc-serve's
options (each bad one is one line and exit 1, before Ray starts). The service itself under stalled
clients is in test_serve.py (its Ray and Serve)."""

from __future__ import annotations

import asyncio
import json
import socket
import string
from collections.abc import AsyncIterator

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from layercascade.model.data import VOC_CLASSES
from layercascade.runtime.inputs import SAMPLES
from layercascade.serve.http import (
    HTTPProblem,
    JSONErrors,
    Limits,
    check_segment_request,
    decode_image,
    read_body,
)
from layercascade.tests.helpers import png_claiming

JPEG = (SAMPLES / "synthetic-240x320.jpg").read_bytes()
LIMITS = Limits(max_body_bytes=len(JPEG) + 100, max_pixels=240 * 320)


# -- mutated requests against the rules -----------------------------------------------------------------
def mutated(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` truncated, with bytes overwritten, or behind junk."""
    cut = st.integers(0, len(original)).map(lambda n: original[:n])
    flipped = st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: bytes(_edited(original, edits)))
    prefixed = st.binary(min_size=1, max_size=16).map(lambda junk: junk + original)
    return st.one_of(cut, flipped, prefixed)


def _edited(original: bytes, edits: list[tuple[int, int]]) -> bytearray:
    data = bytearray(original)
    for index, value in edits:
        data[index] = value
    return data


header_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=80)  # what latin-1 headers decode to
content_types = st.one_of(st.none(), header_text, st.sampled_from(
    ["image/jpeg", "image/png; charset=binary", "application/octet-stream", "application/x-www-form-urlencoded",
     "text/plain", "application/json", "multipart/form-data; boundary=x", "IMAGE/JPEG", " image/webp ;q=1"]))
content_lengths = st.one_of(st.none(), st.integers(0, 2**64).map(str), header_text,
                            st.sampled_from(["-1", "1e3", " 12", "²", "0x10", ""]))
rho_values = st.one_of(st.sampled_from(["0.9", "1", "0.9,0.97", "0", "2", "nan", "inf", "-0.5", "0.9,", ",", "",
                                        "1e-300", "0.9,0.9,0.9", "%30.9", "0.9%00", "%0A"]),
                       st.text(max_size=12), st.text(string.digits + ".,", min_size=61, max_size=80))
rho_class_values = st.one_of(st.sampled_from(["person:1", "person%3D1", "person:1,car:0.9", "person", "person:",
                                              ":0.9", "dog:0", "dog:nan", "unicorn:0.9", "person:1,,car:0.9", "",
                                              "person:1:2", "%0A:1"]),
                             st.text(max_size=30))
queries = st.one_of(
    st.text(max_size=40),
    st.lists(st.tuples(st.sampled_from(["rho", "Rho", "rho ", "x", "", "rho[]", "resize"]), rho_values), max_size=3).map(
        lambda pairs: "&".join(f"{key}={value}" for key, value in pairs)),
    st.lists(st.tuples(st.sampled_from(["rho_class", "rho", "rho_class[]"]), rho_class_values), max_size=3).map(
        lambda pairs: "&".join(f"{key}={value}" for key, value in pairs)),
)
bodies = st.one_of(st.binary(max_size=600), mutated(JPEG), mutated(png_claiming(20_000, 20_000)), st.just(JPEG))


def refused_in_one_line(rule, *args):
    """``rule(*args)``'s value, or None when it refused with a 4xx and a one-line message."""
    try:
        return rule(*args)
    except HTTPProblem as problem:
        event(f"{rule.__name__}: {problem.status}")
        assert 400 <= problem.status < 500, problem
        assert problem.message and "\n" not in problem.message and len(problem.message) < 400, problem.message
        return None


@settings(max_examples=150)
@given(content_type=content_types, content_length=content_lengths, query=queries, body=bodies,
       extra=st.lists(st.tuples(header_text.filter(bool), header_text), max_size=4))
def test_every_mutated_request_is_answered_or_refused_with_a_4xx_line(content_type, content_length, query, body,
                                                                     extra) -> None:
    """Each rule of POST /v1/segment takes the mutated request or refuses it with its 4xx and one line:
    never another exception (a 500), never a multi-line or unbounded message."""
    raw = [(name.encode("latin-1").lower(), value.encode("latin-1")) for name, value in extra]
    for name, value in (("content-type", content_type), ("content-length", content_length)):
        if value is not None:
            raw.insert(0, (name.encode(), value.encode("latin-1")))
    asked = refused_in_one_line(check_segment_request, Headers(raw=raw), query, LIMITS, VOC_CLASSES)
    if asked is not None and asked.rho is not None:
        assert len(asked.rho) == 2 and all(0 < r <= 1 for r in asked.rho)
    if asked is not None and asked.rho_class is not None:
        event("rho_class taken")
        assert all(0 <= c < len(VOC_CLASSES) and 0 < r <= 1 for c, r in asked.rho_class)
    if asked is not None:
        assert asked.resize in (None, "fit", "stretch", "none")
    image = refused_in_one_line(decode_image, body, LIMITS)
    if image is not None:
        event("decoded")
        assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] * image.shape[1] <= LIMITS.max_pixels


# -- bodies: size and time -----------------------------------------------------------------------------------
async def chunks(pieces: list[bytes], pause_s: float = 0.0, then_stall: bool = False) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
        await asyncio.sleep(pause_s)
    if then_stall:
        await asyncio.Event().wait()  # a client that stops sending and keeps the connection open


def body_answer(stream: AsyncIterator[bytes], limits: Limits) -> bytes | HTTPProblem:
    try:
        return asyncio.run(read_body(stream, limits))
    except HTTPProblem as problem:
        return problem


@settings(max_examples=30)
@given(sizes=st.lists(st.integers(0, 400), max_size=12), limit=st.integers(1, 3000))
def test_a_body_in_any_chunks_is_read_whole_or_refused_at_its_size_limit(sizes, limit) -> None:
    pieces = [bytes([len(sizes) % 256]) * size for size in sizes]
    answer = body_answer(chunks(pieces), Limits(max_body_bytes=limit))
    if sum(sizes) <= limit:
        assert answer == b"".join(pieces)
    else:
        assert isinstance(answer, HTTPProblem) and answer.status == 413 and "--max-body-bytes" in answer.message


def test_a_stalled_or_trickling_body_gets_408_within_its_deadlines() -> None:
    stalled = body_answer(chunks([b"0123456789"], then_stall=True), Limits(body_timeout_s=30, body_idle_timeout_s=0.2))
    assert isinstance(stalled, HTTPProblem) and stalled.status == 408
    assert "--body-idle-timeout-s" in stalled.message and "10 bytes came" in stalled.message
    silent = body_answer(chunks([], then_stall=True), Limits(body_timeout_s=30, body_idle_timeout_s=0.2))
    assert isinstance(silent, HTTPProblem) and silent.status == 408 and "0 bytes came" in silent.message
    # A byte every 20 ms never trips a 10 s idle timeout: the total deadline ends it.
    trickle = body_answer(chunks([b"x"] * 10_000, pause_s=0.02), Limits(body_timeout_s=0.3, body_idle_timeout_s=10))
    assert isinstance(trickle, HTTPProblem) and trickle.status == 408 and "--body-timeout-s" in trickle.message
    assert body_answer(chunks([b"ab", b"cd"], pause_s=0.01), Limits(body_timeout_s=5, body_idle_timeout_s=5)) == b"abcd"


# -- Serve's proxy: its own answers as JSON ------------------------------------------------------------------
def through_json_errors(app) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of what the client gets from ``app`` wrapped in :class:`JSONErrors`."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(JSONErrors(app)({"type": "http", "method": "GET", "path": "/"}, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    headers = {name.decode().lower(): value.decode() for name, value in sent[0]["headers"]}
    return sent[0]["status"], headers, sent[1]["body"]


def answering(status: int, content_type: bytes, *bodies: bytes, extra: tuple = ()):
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [[b"content-type", content_type], *extra]})
        for index, body in enumerate(bodies):
            await send({"type": "http.response.body", "body": body, "more_body": index < len(bodies) - 1})
    return app


def test_the_proxys_text_errors_and_dropped_requests_become_json() -> None:
    # Serve's proxy: 503 (no replica up / back-pressure, with Retry-After), sent in pieces.
    backpressure = answering(503, b"text/plain; charset=utf-8", b"Request dropped due to\n", b"backpressure.",
                             extra=([b"retry-after", b"2"],))
    status, headers, body = through_json_errors(backpressure)
    assert (status, headers["content-type"], headers["retry-after"]) == (503, "application/json", "2")
    assert json.loads(body) == {"error": "Request dropped due to backpressure."}
    assert int(headers["content-length"]) == len(body)

    async def drops(scope, receive, send) -> None:  # what the proxy does when a replica dies under the request
        return None

    async def raises(scope, receive, send) -> None:
        raise RuntimeError("the proxy broke")

    for app, words in ((drops, "without an answer"), (raises, "RuntimeError: the proxy broke")):
        status, headers, body = through_json_errors(app)
        assert status == 500 and headers["content-type"] == "application/json" and words in json.loads(body)["error"]
    # Answers that are JSON already (the replicas') and successes pass unchanged.
    for app in (answering(413, b"application/json", b'{"error": "too big"}'), answering(200, b"image/png", b"\x89PNG")):
        assert through_json_errors(app)[2] in (b'{"error": "too big"}', b"\x89PNG")


# -- lc-serve's options --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "words"), [
    (["--batch-wait-ms", "nan"], "--batch-wait-ms"),
    (["--batch-wait-ms", "inf"], "--batch-wait-ms"),
    (["--batch-wait-ms", "-5"], "--batch-wait-ms"),
    (["--replica-cpus", "-1"], "--replica-cpus"),
    (["--replica-cpus", "0"], "--replica-cpus"),
    (["--replica-cpus", "nan"], "--replica-cpus"),
    (["--replicas", "0"], "--replicas"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-batch", "1e9"], "--max-batch"),
    (["--max-uploads", "-3"], "--max-uploads"),
    (["--body-timeout-s", "0"], "--body-timeout-s"),
    (["--body-timeout-s", "inf"], "--body-timeout-s"),
    (["--body-idle-timeout-s", "nan"], "--body-idle-timeout-s"),
    (["--port", "70000"], "--port"),
    (["--threads", "-1"], "--threads"),
    (["--no-such-option"], "unrecognized arguments"),
    (["--host", "198.51.100.7"], "cannot listen on 198.51.100.7:8000"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_each_bad_option_is_one_line_and_exit_1(argv, words, capsys) -> None:
    from layercascade.cli import serve as serve_cli
    from layercascade.errors import run_cli

    assert run_cli(serve_cli.main, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err


def test_a_port_in_use_is_one_line_before_ray_starts(capsys) -> None:
    from layercascade.cli import serve as serve_cli
    from layercascade.errors import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_cli(serve_cli.main, ["--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port} (") and err.count("\n") == 1, err
