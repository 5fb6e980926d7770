"""Starting and stopping lc-serve: Ray (a local instance, or a cluster's address), Serve's HTTP proxy
on the chosen host and port, the model's application, and the wait until a replica has loaded it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from layercascade.errors import fail
from layercascade.serve.app import ServeSettings, app_name, application


@dataclass
class Service:
    """A running application: its name, the base URL of its HTTP proxy, and whether this process
    started Ray (and so shuts it down on :meth:`stop`)."""

    name: str
    url: str
    started_ray: bool

    def stop(self) -> None:
        """Remove the application; shut Serve and Ray down if this process started them."""
        import ray
        from ray import serve

        serve.delete(self.name)
        if self.started_ray:
            serve.shutdown()
            ray.shutdown()


def connect(address: str | None, quiet: bool = True) -> bool:
    """Join the Ray cluster at ``address`` (e.g. ``ray://head:10001`` or ``auto``), or start a local
    instance; returns whether one was started. A Ray already initialised in this process is used as is."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
                 logging_level="ERROR" if quiet else "INFO")
    except ConnectionError as error:
        fail(f"cannot reach the Ray cluster at {address!r} ({error}); start it (`ray start --head`) or leave "
             "--address out to run a local Ray")
    return address is None


def start(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
          replica_cpus: float = 1.0, address: str | None = None, route_prefix: str = "/", name: str | None = None,
          timeout_s: float = 600.0) -> Service:
    """Deploy the model as application ``name`` (default: the model dir's name) under ``route_prefix``
    and return once a replica answers ``GET /v1/health`` with 200. Serve's HTTP proxy listens on
    ``host:port`` if this call starts Serve; a Serve already running keeps its own.

    Fails (one line, the application removed) if the model does not load or no replica is ready
    within ``timeout_s``.
    """
    from ray import serve

    started_ray = connect(address)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # lc-serve prints its own lines
    serve.start(http_options={"host": host, "port": port})
    name = name or app_name(settings.model)
    prefix = "/" + route_prefix.strip("/")
    serve.run(application(settings, replicas, replica_cpus), name=name, route_prefix=prefix, blocking=False)
    local_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    service = Service(name, f"http://{local_host}:{port}{prefix.rstrip('/')}", started_ray)
    try:
        wait_ready(service.url, timeout_s)
    except BaseException:
        service.stop()
        raise
    return service


def wait_ready(url: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``GET /v1/health`` until it is 200; a load failure or the timeout is one line."""
    import httpx

    deadline = time.monotonic() + timeout_s
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/v1/health", timeout=10.0)
            answer = response.json()
            if response.status_code == 200:
                return answer
            if "failed to load" in answer.get("error", ""):
                fail(answer["error"])
        except (httpx.HTTPError, ValueError):
            pass  # the proxy is still starting, or answered before the application was routed
        time.sleep(0.2)
    fail(f"no replica was ready within {timeout_s:.0f} s ({answer.get('error', 'no answer')}); is the "
         "cluster short of CPUs for the replicas (--replica-cpus)?")
