"""lc-serve: the request rules (no server), then the service on a local Ray (loopback only):
answers identical to a local Cascade under concurrent clients, dynamic batching, a corpus of bad
requests, clients that stall, a replica killed under load, and a model that does not load.
test_serve_hostile.py holds the rules under mutated requests and lc-serve's options."""

from __future__ import annotations

import base64
import collections
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from layercascade.contract import check_rho, rho_from_text
from layercascade.errors import LCError
from layercascade.model.data.images import read_rgb
from layercascade.runtime.cascade import Cascade
from layercascade.runtime.inputs import DEMO_MODEL, SAMPLES
from layercascade.runtime.registry import auto_backend
from layercascade.serve.http import (
    JSON,
    HTTPProblem,
    Limits,
    RhoUsed,
    SegmentQuery,
    check_content_type,
    check_declared_length,
    check_per_class,
    decode_image,
    parse_rho,
    parse_rho_class,
    png_bytes,
    segment_answer,
    wants_json,
)
from layercascade.tests.helpers import png_claiming

SAMPLE_FILES = sorted(SAMPLES.iterdir())
JPEG = SAMPLES / "synthetic-240x320.jpg"


# The bad requests of the issue, each with the status it must get: (name, body, content type, query, status).
BAD_REQUESTS = [
    ("empty body", b"", "image/jpeg", "", 400),
    ("truncated JPEG", JPEG.read_bytes()[: len(JPEG.read_bytes()) // 2], "image/jpeg", "", 400),
    ("text", b"hello, this is not an image", "application/octet-stream", "", 400),
    ("PNG claiming 20000x20000", png_claiming(20_000, 20_000), "image/png", "", 413),
    ("rho 0", JPEG.read_bytes(), "image/jpeg", "?rho=0", 400),
    ("rho 2", JPEG.read_bytes(), "image/jpeg", "?rho=2", 400),
    ("rho nan", JPEG.read_bytes(), "image/jpeg", "?rho=nan", 400),
    ("text content type", JPEG.read_bytes(), "text/plain", "", 415),
    ("JSON content type", b'{"image": 1}', "application/json", "", 415),
]


# -- the rules, without a server ----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "body", "content_type", "query", "status"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_each_bad_request_is_its_status_and_one_line(name, body, content_type, query, status) -> None:
    limits = Limits()
    with pytest.raises(HTTPProblem) as caught:
        check_content_type(content_type)
        parse_rho(query.removeprefix("?rho=") if query else None)
        decode_image(body, limits)
    assert caught.value.status == status
    assert "\n" not in caught.value.message and "<_io" not in caught.value.message


def test_what_is_accepted() -> None:
    for kind in (None, "", "image/jpeg", "image/png; charset=binary", "application/octet-stream",
                 "application/x-www-form-urlencoded"):  # the last: curl --data-binary's own
        check_content_type(kind)
    assert parse_rho(None) is None and parse_rho("0.9") == (0.9, 0.9) and parse_rho("1") == (1.0, 1.0)
    assert parse_rho("0.9,0.97") == (0.9, 0.97)  # ρ₂ (stage 1 → 2), ρ₃ (stage 2 → 3)
    for bad in ("0.9,0.97,0.99", "0.9,", "", "inf"):
        with pytest.raises(HTTPProblem) as caught:
            parse_rho(bad)
        assert caught.value.status == 400
    classes = Cascade.load(None, backend="ort").classes
    assert parse_rho_class(None, classes) is None and parse_rho_class("", classes) == ()  # the default; none
    assert parse_rho_class("person:1,car:0.9", classes) == ((7, 0.9), (15, 1.0))  # by class index, in class order
    assert parse_rho_class("person=1", classes) == ((15, 1.0),)  # ?rho_class=person%3D1, decoded
    for bad, message in (("unicorn:1", "'unicorn' is not a class of this model (background, aeroplane"),
                         ("person:0", "a threshold must be a number in (0, 1]"), ("person", "NAME:R[,NAME:R...]"),
                         ("person:1," * 1000, "over 8,192 characters")):
        with pytest.raises(HTTPProblem) as caught:
            parse_rho_class(bad, classes)
        assert caught.value.status == 400 and message in caught.value.message and "\n" not in caught.value.message
    # A model exported before per-class thresholds takes none: a 400 before the body is read, not the run's 500.
    check_per_class(SegmentQuery(rho_class=((15, 1.0),)), takes_per_class=True)
    check_per_class(SegmentQuery(rho_class=()), takes_per_class=False)  # ?rho_class= (none) runs anywhere
    with pytest.raises(HTTPProblem, match="exported before per-class thresholds.*re-export it") as caught:
        check_per_class(SegmentQuery(rho_class=((15, 1.0),)), takes_per_class=False)
    assert caught.value.status == 400
    assert wants_json("application/json") and wants_json("text/html, application/json;q=0.9")
    assert not wants_json(None) and not wants_json("image/png")
    for path in SAMPLE_FILES:
        np.testing.assert_array_equal(decode_image(path.read_bytes(), Limits()), read_rgb(path))


def test_body_and_pixel_limits() -> None:
    body = JPEG.read_bytes()
    with pytest.raises(HTTPProblem) as caught:
        decode_image(body, Limits(max_body_bytes=len(body) - 1))
    assert caught.value.status == 413 and "--max-body-bytes" in caught.value.message
    with pytest.raises(HTTPProblem) as caught:
        check_declared_length(str(len(body)), Limits(max_body_bytes=len(body) - 1))
    assert caught.value.status == 413
    check_declared_length(str(len(body)), Limits(max_body_bytes=len(body)))
    with pytest.raises(HTTPProblem) as caught:
        decode_image(body, Limits(max_pixels=240 * 320 - 1))
    assert caught.value.status == 413 and "lc-serve --max-pixels" in caught.value.message
    assert decode_image(body, Limits(max_pixels=240 * 320)).shape == (240, 320, 3)


def test_answers_carry_lc_runs_label_map(tmp_path) -> None:
    from layercascade.runtime.segment import segment_all

    with Cascade.load(None) as cascade:
        result = cascade(read_rgb(JPEG), 0.9)
        segment_all(cascade, [JPEG], tmp_path, rho=0.9, strict=True, progress=False)
        used = RhoUsed((0.9, 0.9), "request")
        png, media_type, headers = segment_answer(result, cascade.palette, 12.5, False, used)
        assert media_type == "image/png" and png == (tmp_path / f"{JPEG.stem}.png").read_bytes()
        assert [float(f) for f in headers["X-LC-Stage-Fractions"].split(",")] == pytest.approx(
            result.stage_fractions, abs=1e-6)
        assert headers["X-LC-Milliseconds"] == "12.500"
        assert headers["X-LC-Rho"] == "0.9" and headers["X-LC-Rho-Source"] == "request"
        assert "X-LC-Expected-mIoU-Cost" not in headers  # no frontier: no cost to expect
        body, media_type, _ = segment_answer(result, cascade.palette, 12.5, True, RhoUsed((0.9, 0.95), "deadline", 0.5))
        import json

        answer = json.loads(body)
        assert media_type == "application/json" and base64.b64decode(answer["labels_png"]) == png
        assert answer["size"] == [240, 320] and answer["ms"] == 12.5
        assert answer["rho"] == [0.9, 0.95] and answer["rho_source"] == "deadline"
        assert answer["expected_miou_cost"] == 0.5


# -- the service on a local Ray ------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def port(ray_session) -> int:
    """Serve's HTTP proxy port, fixed by the first service this module starts."""
    return free_port()


@pytest.fixture(scope="module")
def demo_service(ray_session, port):
    """The bundled demo model (batch 1) with two replicas at /."""
    from layercascade.serve.app import ServeSettings
    from layercascade.serve.service import start

    service = start(ServeSettings(None), port=port, replicas=2, replica_cpus=0.5, timeout_s=120)
    yield service
    service.stop()


def expected_pngs(model: Path | None, rhos: list) -> dict[tuple, bytes]:
    """What a local Cascade answers: the label PNG of every sample image at every ρ."""
    with Cascade.load(model) as cascade:
        return {(path.name, rho): png_bytes(cascade(read_rgb(path), rho).labels, cascade.palette)
                for path in SAMPLE_FILES for rho in rhos}


def post(client, url: str, path: Path, rho: float | tuple[float, float] | None, **headers: str):
    query = "" if rho is None else f"?rho={rho}" if isinstance(rho, float) else f"?rho={rho[0]},{rho[1]}"
    return client.post(f"{url}/v1/segment{query}", content=path.read_bytes(), headers=headers)


def test_health_and_model(demo_service) -> None:
    import httpx

    with httpx.Client(timeout=30) as client:
        assert client.get(f"{demo_service.url}/v1/health").json() == {"status": "ready"}
        answer = client.get(f"{demo_service.url}/v1/model")
        model = answer.json()
        assert model["classes"][0] == "background" and len(model["palette"]) == len(model["classes"])
        # The model is named (the application's name, its files' hash), never located on the serving machine.
        assert model["model"] == "demo" and len(model["model_hash"]) == 64
        assert str(DEMO_MODEL) not in answer.text and str(DEMO_MODEL.parent) not in answer.text
        assert model["input_size"] == [160, 160] and model["default_rho"] == 0.985
        assert model["default_rho_class"] == {}
        assert model["backend"] == auto_backend(None)  # lc-serve loads as lc-run does
        assert model["batch_capacity"] == 1
        missing = client.get(f"{demo_service.url}/v2/segment")
        assert missing.status_code == 404 and "POST /v1/segment" in missing.json()["error"]
        assert client.get(f"{demo_service.url}/v1/segment").status_code == 405


@pytest.mark.slow
def test_concurrent_clients_get_local_answers(demo_service) -> None:
    """8 clients × 50 requests, images and ρ varied: every answer is the local Cascade's PNG."""
    import httpx

    rhos = [None, 0.9, 1.0, (0.9, 0.97)]
    expected = expected_pngs(None, rhos)

    def client_run(client_index: int) -> list[str]:
        problems = []
        with httpx.Client(timeout=60) as client:
            for request in range(50):
                path = SAMPLE_FILES[(client_index + request) % len(SAMPLE_FILES)]
                rho = rhos[(client_index * 7 + request) % len(rhos)]
                response = post(client, demo_service.url, path, rho)
                if response.status_code != 200 or response.content != expected[path.name, rho]:
                    problems.append(f"{path.name} rho={rho}: {response.status_code} {response.text[:100]}")
                    continue
                fractions = [float(f) for f in response.headers["x-lc-stage-fractions"].split(",")]
                assert sum(fractions) == pytest.approx(1.0, abs=1e-5)
        return problems

    with ThreadPoolExecutor(8) as pool:
        problems = [problem for found in pool.map(client_run, range(8)) for problem in found]
    assert problems == []


def test_the_resize_mode_is_a_query_parameter(demo_service) -> None:
    """?resize= as Cascade's resize: a non-square sample under each mode answers the local Cascade's labels."""
    import httpx

    path = next(p for p in SAMPLE_FILES if p.name.startswith("synthetic-240x320"))
    with Cascade.load(None) as cascade, httpx.Client(timeout=60) as client:
        for mode in ("fit", "stretch", "none"):
            response = client.post(f"{demo_service.url}/v1/segment?resize={mode}&rho=0.9", content=path.read_bytes())
            labels = cascade(read_rgb(path), 0.9, resize=mode).labels
            assert response.status_code == 200 and response.content == png_bytes(labels, cascade.palette), mode
        refused = client.post(f"{demo_service.url}/v1/segment?resize=squash", content=path.read_bytes())
        assert refused.status_code == 400 and "resize 'squash' is not one of fit, stretch, none" in refused.json()["error"]


def test_the_maps_asked_for_come_in_json(demo_service) -> None:
    """?outputs=confidence,stages: JSON with the local Cascade's confidence (16-bit PNG) and stage map."""
    import io

    import httpx
    from PIL import Image

    with Cascade.load(None) as cascade, httpx.Client(timeout=60) as client:
        assert "confidence" in client.get(f"{demo_service.url}/v1/model").json()["outputs"]
        response = client.post(f"{demo_service.url}/v1/segment?outputs=confidence,stages&rho=0.9",
                               content=JPEG.read_bytes())
        result = cascade(read_rgb(JPEG), 0.9)
    answer = response.json()
    assert response.status_code == 200 and set(answer) == {"confidence_png", "stages_png", "stage_fractions", "size",
                                                           "ms", "rho", "rho_source", "expected_miou_cost"}
    assert answer["rho"] == 0.9 and answer["rho_source"] == "request"
    confidence = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["confidence_png"])))) / 65535
    assert np.abs(confidence - result.confidence_at_image_size()).max() <= 1 / 65535
    stages = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["stages_png"]))))
    assert np.array_equal(stages, result.stage_map)


def test_per_class_thresholds_are_a_query_parameter(demo_service) -> None:
    """?rho_class=NAME:R (or NAME=R, URL-encoded) as Cascade's rho_class: the answers are the local Cascade's
    stage fractions and labels; an unknown class is a 400 naming the classes."""
    import httpx

    path = SAMPLE_FILES[0]
    with Cascade.load(None) as cascade, httpx.Client(timeout=60) as client:
        local = cascade(read_rgb(path), 0.9, rho_class={"background": 1.0})
        assert local.stage_fractions != cascade(read_rgb(path), 0.9).stage_fractions  # the query changes the run
        for query in ("rho_class=background:1", "rho_class=background%3D1"):
            response = client.post(f"{demo_service.url}/v1/segment?rho=0.9&{query}", content=path.read_bytes())
            assert response.status_code == 200 and response.content == png_bytes(local.labels, cascade.palette)
            fractions = [float(f) for f in response.headers["x-lc-stage-fractions"].split(",")]
            assert fractions == pytest.approx(local.stage_fractions, abs=1e-6), query
        refused = client.post(f"{demo_service.url}/v1/segment?rho_class=unicorn:1", content=path.read_bytes())
        assert refused.status_code == 400 and "'unicorn' is not a class of this model (background, aeroplane" in \
            refused.json()["error"]


def test_bad_requests_get_their_4xx_and_the_service_keeps_serving(demo_service) -> None:
    import httpx

    expected = expected_pngs(None, [None])
    with httpx.Client(timeout=30) as client:
        for name, body, content_type, query, status in BAD_REQUESTS:
            response = client.post(f"{demo_service.url}/v1/segment{query}", content=body,
                                   headers={"content-type": content_type})
            assert response.status_code == status, (name, response.text)
            assert set(response.json()) == {"error"} and response.json()["error"], name
        oversized = client.post(f"{demo_service.url}/v1/segment", content=b"\0" * (Limits.max_body_bytes + 1))
        assert oversized.status_code == 413
        answer = post(client, demo_service.url, JPEG, None, accept="application/json")
        assert answer.status_code == 200
        assert base64.b64decode(answer.json()["labels_png"]) == expected[JPEG.name, None]


def stalled_upload(port: int, path: str, headers: str = "") -> socket.socket:
    """A client that sends a segment request's headers and the first 10 bytes of its 100 kB body, then stalls."""
    client = socket.create_connection(("127.0.0.1", port), timeout=60)
    client.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                   f"Content-Length: 100000\r\n{headers}\r\n".encode() + b"0123456789")
    return client


def answer_of(client: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the answer on ``client`` (which is then closed)."""
    data = b""
    with client:
        while b"\r\n\r\n" not in data and (chunk := client.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
        while len(body) < int(headers.get("content-length", len(body))) and (chunk := client.recv(65536)):
            body += chunk
    return int(status_line.split()[1]), headers, body


def test_stalled_uploads_hold_their_slots_only_until_their_deadline(port, demo_service) -> None:
    """Clients that send headers and a few body bytes, then stall: a replica holds at most --max-uploads of
    them and answers the others 503 with Retry-After at once, answers health and model meanwhile, and
    answers the held ones 408 once their body is overdue, which frees their slots."""
    import httpx

    from layercascade.serve.app import ServeSettings
    from layercascade.serve.service import start

    settings = ServeSettings(None, limits=Limits(body_timeout_s=5, body_idle_timeout_s=5), max_uploads=2)
    service = start(settings, port=port, replicas=1, replica_cpus=0.5, route_prefix="/stalled", name="stalled",
                    timeout_s=120)
    try:
        clients = [stalled_upload(port, "/stalled/v1/segment") for _ in range(6)]
        with ThreadPoolExecutor(len(clients)) as pool, httpx.Client(timeout=10) as client:
            answers = as_completed([pool.submit(answer_of, c) for c in clients], timeout=60)
            assert client.get(f"{service.url}/v1/health").json() == {"status": "ready"}
            assert client.get(f"{service.url}/v1/model").status_code == 200
            for _ in range(4):  # beyond the two slots: refused at once, the connection closed
                status, headers, body = next(answers).result()
                assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
                assert "--max-uploads" in json.loads(body)["error"]
            refused = post(client, service.url, JPEG, None)  # a whole upload, while both slots are held
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert set(refused.json()) == {"error"}
            for _ in range(2):  # the held ones: 408 once their body is overdue, the connection closed
                status, headers, body = next(answers).result()
                assert (status, headers["connection"]) == (408, "close")
                assert "10 bytes came" in json.loads(body)["error"]
            assert post(client, service.url, JPEG, None).status_code == 200  # the slots are free again
    finally:
        service.stop()


def test_the_proxys_own_answers_are_json(port, demo_service) -> None:
    """An answer Serve's proxy gives itself (here its 408 for a request over the deadline a client set
    with Serve's X-Request-Timeout-Seconds) is JSON like the replicas' answers."""
    status, headers, body = answer_of(stalled_upload(port, "/v1/segment", "X-Request-Timeout-Seconds: 0.5\r\n"))
    assert status == 408 and headers["content-type"] == "application/json"
    assert "timed out" in json.loads(body)["error"]


def replica_actors(application: str) -> list[dict[str, str]]:
    """The live Ray actors of an application's replicas (name and namespace)."""
    import ray

    return [actor for actor in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in actor["name"] and f"{application}#" in actor["name"]]


@pytest.mark.slow
def test_a_replica_killed_under_load_is_replaced(demo_service) -> None:
    """Requests in flight while one of two replicas is killed each end within their timeout, with the
    right answer or an error status (never a wrong answer); Serve starts a new replica, which answers."""
    import httpx
    import ray
    from ray import serve

    expected = expected_pngs(None, [None])
    outcomes: list[tuple[int, bool]] = []
    failures: list[str] = []
    media_types: set[str] = set()  # of the answers other than 200
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            for request in range(200):  # bounded: stops by itself if the kill never comes
                if stop.is_set():
                    return
                path = SAMPLE_FILES[request % len(SAMPLE_FILES)]
                try:
                    response = post(client, demo_service.url, path, None)
                except httpx.HTTPError as error:  # a timeout here is a request that hung
                    failures.append(repr(error))
                    continue
                outcomes.append((response.status_code, response.content == expected[path.name, None]))
                if response.status_code != 200:
                    media_types.add(response.headers["content-type"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    while len(outcomes) < 20 and any(thread.is_alive() for thread in threads):
        time.sleep(0.05)
    replicas = replica_actors(demo_service.name)
    assert len(replicas) == 2
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    print(f"statuses under the kill: {sorted(collections.Counter(s for s, _ in outcomes).items())}")
    assert failures == []
    assert media_types <= {"application/json"}  # Serve's proxy's answers too (a 500 for a request on the dead one)
    assert all(correct for status, correct in outcomes if status == 200)
    assert sum(status == 200 for status, _ in outcomes) > 20
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        deployment = serve.status().applications[demo_service.name].deployments["layercascade"]
        names = {actor["name"] for actor in replica_actors(demo_service.name)}
        if deployment.status == "HEALTHY" and deployment.replica_states.get("RUNNING", 0) == 2 and \
                len(names) == 2 and replicas[0]["name"] not in names:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the killed replica was not replaced: {deployment}")
    with httpx.Client(timeout=60) as client:
        for path in SAMPLE_FILES:
            assert post(client, demo_service.url, path, None).content == expected[path.name, None]


def test_dynamic_batching(dynamic_model, demo_service, port) -> None:
    """A dynamic-batch model behind one replica: concurrent requests run together (never more than the
    model takes), each answered as the model answers it alone."""
    import httpx

    from layercascade.serve.app import ServeSettings
    from layercascade.serve.service import start

    _, model = dynamic_model
    # A long wait: the requests, decoded one by one on a busy 2-core machine, still meet in a batch.
    service = start(ServeSettings(str(model), max_batch=8, batch_wait_ms=2000), port=port, replicas=1,
                    replica_cpus=0.5, route_prefix="/dynamic", timeout_s=120)
    try:
        expected = expected_pngs(model, [0.9, (0.9, 0.97)])
        assert httpx.get(f"{service.url}/v1/model", timeout=30).json()["batch_capacity"] == 3

        def one(job: tuple[Path, float | tuple[float, float]]):
            with httpx.Client(timeout=60) as client:
                return job, post(client, service.url, *job)

        jobs = [(path, rho) for path in SAMPLE_FILES for rho in (0.9, (0.9, 0.97))]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(one, jobs))
        for (path, rho), response in answers:
            assert response.status_code == 200 and response.content == expected[path.name, rho]
        batches = [int(response.headers["x-lc-batch"]) for _, response in answers]
        assert max(batches) > 1 and max(batches) <= 3  # batched, by ρ, never beyond the model's capacity
    finally:
        service.stop()


def test_a_model_that_does_not_load_is_one_line(tmp_path, ray_session, port, demo_service) -> None:
    from layercascade.serve.app import ServeSettings
    from layercascade.serve.service import start

    broken = tmp_path / "broken"
    shutil.copytree(DEMO_MODEL, broken)
    (broken / "lc.json").write_text("{ not json")
    with pytest.raises(LCError, match="failed to load: .*lc.json"):
        start(ServeSettings(str(broken)), port=port, replicas=1, replica_cpus=0.5, route_prefix="/broken",
              timeout_s=120)
    from ray import serve

    assert "broken" not in serve.status().applications


def test_a_replica_without_its_model_says_why_and_fails_its_health_check(tmp_path) -> None:
    """The replica class itself, in this process (no Ray Serve; its batching needs a replica): a model that
    does not load gives 503 with the reason and a failing health check (Serve replaces the replica); a
    loaded one answers 200, with the batch size capped by the model's capacity."""
    import asyncio

    from starlette.requests import Request

    from layercascade.serve import app

    def request(method: str, path: str, body: bytes = b"") -> Request:
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
                 "headers": [(b"content-length", str(len(body)).encode())]}
        return Request(scope, receive)

    broken = tmp_path / "broken"
    shutil.copytree(DEMO_MODEL, broken)
    (broken / "lc.json").write_text("{ not json")

    async def scenario() -> None:
        failed = app.CascadeServer(app.ServeSettings(str(broken)))
        assert failed.status() == {"ready": False, "error": failed.load_error} and "lc.json" in failed.load_error
        with pytest.raises(RuntimeError, match="the model failed to load"):
            failed.check_health()
        for method, path in (("GET", "/v1/health"), ("GET", "/v1/model"), ("POST", "/v1/segment")):
            answer = await failed(request(method, path, JPEG.read_bytes() if method == "POST" else b""))
            assert answer.status_code == 503 and b"the model failed to load: broken" in answer.body
            assert str(tmp_path).encode() not in answer.body  # the model is named, never located
        server = app.CascadeServer(app.ServeSettings(None, max_batch=8))
        server.check_health()
        assert server.status() == {"ready": True, "error": None}
        assert (await server(request("GET", "/v1/health"))).status_code == 200
        assert server.segment_many._get_max_batch_size() == 1  # the demo model takes one image per run
        assert (await server(request("GET", "/v1/model"))).status_code == 200
        refused = await server(request("POST", "/v1/segment", b"not an image"))  # refused before the batch
        assert refused.status_code == 400 and b"cannot read image" in refused.body

    asyncio.run(scenario())


def test_lc_serve_refuses_a_missing_model_before_starting_ray(capsys) -> None:
    from layercascade.cli import serve as serve_cli
    from layercascade.errors import run_cli

    assert run_cli(serve_cli.main, ["/nonexistent/model"]) == 1
    assert capsys.readouterr().err == ("error: /nonexistent/model: no such model directory, engine directory or "
                                       "checkpoint\n")


def test_a_model_on_a_gpu_reserves_one_per_copy(tmp_path) -> None:
    from layercascade.serve import gpus_per_model
    from layercascade.tests.fake_tensorrt import fake_engine_dir

    assert gpus_per_model(None, {"backend": "auto", "device": "cpu"}) == 0.0
    assert gpus_per_model(None, {"backend": "openvino"}) == 0.0
    assert gpus_per_model("ckpt.pt", {"backend": "torch", "device": "cuda"}) == 1.0
    engines = str(fake_engine_dir(tmp_path / "engines"))
    assert gpus_per_model(engines, {"backend": "auto", "device": "cpu"}) == 1.0  # auto runs engines on TensorRT
    assert gpus_per_model(engines, {"backend": "trt"}) == 1.0


# -- the latency target (lc-serve --target-ms; the controller itself: test_control.py) -----------------------------
def tuning_ms(setting) -> float:
    """The latency the tuned fixture's frontier records for each setting ((ρ₂, ρ₃), per-class thresholds; lc-tune's
    timing injected): lower thresholds run faster."""
    (rho2, rho3), _ = setting
    return round(100 * (rho2 + rho3), 3)


@pytest.fixture(scope="module")
def tuned_model(tmp_path_factory, demo_fp32: Path) -> Path:
    """The demo model tuned by lc-tune on a small grid, its latencies injected (so the frontier is the same on
    every machine); its frontier has several points."""
    from layercascade.cli import tune as tune_cli
    from layercascade.errors import run_cli
    from layercascade.runtime import tune

    def timed_blocks(steps, iters, warmup, progress):
        return {setting: [tuning_ms(setting)] * iters for setting in steps}

    output = tmp_path_factory.mktemp("tuned") / "tuned"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune, "timed_blocks", timed_blocks)
        assert run_cli(tune_cli.main, [str(demo_fp32), "--data", "synthetic", "--grid", "0.95,0.9,0.8", "--limit", "3",
                                       "--iters", "2", "--warmup", "0", "--max-miou-drop", "0", "-o", str(output),
                                       "--no-plot", "--json"]) == 0
    return output


def in_process_server(model: Path, target_ms: float | None, run_ms: Callable, runs: list | None = None) -> Callable:
    """``request(method, path, ...)`` answered by a replica in this process on a clock of its own that only the
    model's runs advance, by ``run_ms(rho)`` each (the injected latency); Serve's batching (which needs a replica)
    replaced by runs of one request; each run's (rho, rho_class) appended to ``runs``."""
    from layercascade.serve import app

    server = app.CascadeServer(app.ServeSettings(str(model), target_ms=target_ms))
    assert server.load_error is None
    now = [0.0]
    server.clock = lambda: now[0]
    segment_batch = server.cascade.segment_batch

    def timed_segment_batch(images, rho, resize, rho_class=None):
        now[0] += run_ms(rho) / 1e3
        if runs is not None:
            runs.append((rho, rho_class))
        return segment_batch(images, rho, resize, rho_class=rho_class)

    server.cascade.segment_batch = timed_segment_batch
    unbatched = app.CascadeServer.segment_many.__wrapped__

    async def one_at_a_time(item):
        return (await unbatched(server, [item]))[0]

    server.segment_many = one_at_a_time

    def request(method: str, path: str, body: bytes = b"", query: str = "", accept: str = "image/png"):
        from starlette.requests import Request

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": query.encode(),
                 "headers": [(b"content-length", str(len(body)).encode()), (b"accept", accept.encode())]}
        return server(Request(scope, receive))

    return request


def test_per_class_thresholds_to_a_model_exported_before_them_are_a_400(tmp_path: Path) -> None:
    """A version-2 model dir (one threshold per stage graph) served: ?rho_class= is a 400 saying to re-export, not
    the run's 500; without it the model answers."""
    import asyncio

    from layercascade.tests.helpers import version2_copy

    request = in_process_server(version2_copy(tmp_path / "v2"), None, lambda rho: 1.0)
    refused = asyncio.run(request("POST", "/v1/segment", JPEG.read_bytes(), query="rho_class=person:1"))
    assert refused.status_code == 400 and b"re-export it with lc-export" in refused.body
    assert asyncio.run(request("POST", "/v1/segment", JPEG.read_bytes(), query="rho=0.9")).status_code == 200


def test_a_replica_lowers_rho_to_meet_its_target_and_says_so(tuned_model) -> None:
    """Injected run times: the most accurate point takes 3 × the target, the fastest a tenth of it; the replica
    moves to a faster point after a few answers, each answer naming its ρ, source and expected mIoU cost."""
    import asyncio

    from layercascade.runtime.control import read_model_frontier

    frontier = read_model_frontier(tuned_model)
    assert len(frontier.points) >= 2
    slowest, fastest = frontier.points[0], frontier.points[-1]
    target = 30.0

    def run_ms(rho) -> float:
        return 3 * target if rho == slowest.rho else target / 10

    runs: list = []
    request = in_process_server(tuned_model, target, run_ms, runs)

    async def scenario() -> list:
        answers = []
        for _ in range(8):
            answer = await request("POST", "/v1/segment", JPEG.read_bytes())
            assert answer.status_code == 200
            answers.append(answer.headers)
        described = json.loads((await request("GET", "/v1/model")).body)["latency_target"]
        assert described["target_ms"] == target and described["moves"] == 1
        assert [p["expected_miou_cost"] for p in described["frontier"]["points"]] == [
            frontier.cost(p) for p in frontier.points]
        as_json = json.loads((await request("POST", "/v1/segment", JPEG.read_bytes(), accept=JSON)).body)
        assert as_json["rho_source"] == "controller" and as_json["expected_miou_cost"] is not None
        explicit = await request("POST", "/v1/segment", JPEG.read_bytes(), query="rho=0.5")
        assert explicit.headers["x-lc-rho-source"] == "request" and "x-lc-expected-miou-cost" not in explicit.headers
        generous = await request("POST", "/v1/segment", JPEG.read_bytes(), query="deadline_ms=600000")
        assert generous.headers["x-lc-rho-source"] == "deadline"
        assert rho_from_text(generous.headers["x-lc-rho"]) == slowest.rho  # the most accurate within the deadline
        # A request's per-class thresholds apply on top of the controller's (ρ₂, ρ₃), which stay its choice.
        per_class = await request("POST", "/v1/segment", JPEG.read_bytes(), query="rho_class=background:1")
        assert per_class.headers["x-lc-rho-source"] == "controller"
        assert runs[-1] == (rho_from_text(per_class.headers["x-lc-rho"]), {0: 1.0})
        return answers

    answers = asyncio.run(scenario())
    rhos = [rho_from_text(headers["x-lc-rho"]) for headers in answers]
    assert rhos[:4] == [slowest.rho] * 4  # min_samples answers at the start point
    assert all(rho != slowest.rho for rho in rhos[4:])  # then faster, and it stays there
    assert all(headers["x-lc-rho-source"] == "controller" for headers in answers)
    for rho, headers in zip(rhos, answers):
        point = frontier.points[frontier.find(rho)]
        assert float(headers["x-lc-expected-miou-cost"]) == pytest.approx(frontier.cost(point))
    assert fastest.median_ms < slowest.median_ms


def test_latency_target_end_to_end(tuned_model, ray_session, port, demo_service) -> None:
    """lc-serve --target-ms on a tuned dir (a target far above any latency here, so no answer depends on this
    machine's speed): answers carry ρ and its cost, /v1/model the target and frontier, bad deadlines are 400s."""
    import httpx

    from layercascade.runtime.control import read_model_frontier
    from layercascade.serve.app import ServeSettings
    from layercascade.serve.service import start

    frontier = read_model_frontier(tuned_model)
    service = start(ServeSettings(str(tuned_model), target_ms=600_000), port=port, replicas=1, replica_cpus=0.5,
                    route_prefix="/target", name="target", timeout_s=120)
    try:
        with httpx.Client(timeout=60) as client:
            described = client.get(f"{service.url}/v1/model").json()["latency_target"]
            assert described["target_ms"] == 600_000 and len(described["frontier"]["points"]) == len(frontier.points)
            answer = client.post(f"{service.url}/v1/segment", content=JPEG.read_bytes(),
                                 headers={"accept": "application/json"})
            body = answer.json()
            assert answer.status_code == 200 and body["rho_source"] == "controller"
            assert tuple(check_rho(body["rho"])) == frontier.points[0].rho  # the most accurate: room to spare
            assert body["expected_miou_cost"] == frontier.cost(frontier.points[0])
            assert answer.headers["x-lc-expected-mIoU-cost"] == f"{frontier.cost(frontier.points[0]):g}"
            tight = client.post(f"{service.url}/v1/segment?deadline_ms=0.001", content=JPEG.read_bytes())
            assert tight.status_code == 200 and tight.headers["x-lc-rho-source"] == "deadline"
            assert rho_from_text(tight.headers["x-lc-rho"]) == frontier.points[-1].rho  # none meets it: the fastest
            for query in ("deadline_ms=0", "deadline_ms=-5", "deadline_ms=nan", "deadline_ms=inf", "deadline_ms=abc",
                          "deadline_ms=600001", "deadline_ms=" + "9" * 100, "deadline_ms=5&deadline_ms=6",
                          "deadline_ms=50&rho=0.9"):
                refused = client.post(f"{service.url}/v1/segment?{query}", content=JPEG.read_bytes())
                assert refused.status_code == 400, query
                assert "deadline_ms" in refused.json()["error"] and "\n" not in refused.json()["error"]
        # Without a target, a deadline is refused (the demo service has none), and the answer says the default ρ.
        plain = httpx.post(f"{demo_service.url}/v1/segment?deadline_ms=50", content=JPEG.read_bytes(), timeout=60)
        assert plain.status_code == 400 and "--target-ms" in plain.json()["error"]
        default = httpx.post(f"{demo_service.url}/v1/segment", content=JPEG.read_bytes(), timeout=60)
        assert default.headers["x-lc-rho"] == "0.985" and default.headers["x-lc-rho-source"] == "default"
        assert httpx.get(f"{demo_service.url}/v1/model", timeout=30).json()["latency_target"] is None
    finally:
        service.stop()


def test_lc_serve_target_ms_needs_a_frontier(capsys, tmp_path) -> None:
    from layercascade.cli import serve as serve_cli
    from layercascade.errors import run_cli

    assert run_cli(serve_cli.main, ["--target-ms", "50"]) == 1  # the bundled demo is not tuned
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "records no latency frontier" in error and "lc-tune" in error
    assert error.count("\n") == 1
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    assert run_cli(serve_cli.main, [str(checkpoint), "--target-ms", "50"]) == 1
    assert "not a checkpoint; export it" in capsys.readouterr().err
    for bad in ("0", "nan", "inf", "-5", "700000", "abc"):
        assert run_cli(serve_cli.main, ["--target-ms", bad]) == 1
        assert "--target-ms: expected a finite number in [1, 600000]" in capsys.readouterr().err
