"""Starting and stopping lc-serve: Ray (a new local instance, or a cluster's address), Serve's HTTP
proxy on the chosen host and port, and the model's application, up once its replicas have loaded it."""

from __future__ import annotations

import inspect
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from layercascade.errors import fail
from layercascade.serve import connect, last_line
from layercascade.serve.app import ServeSettings, app_name, application
from layercascade.serve.http import PROXY_CALLBACK


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

        if serve.status().applications.get(self.name) is not None:
            serve.delete(self.name)
        if self.started_ray:
            serve.shutdown()
            ray.shutdown()


def start(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
          replica_cpus: float = 1.0, address: str | None = None, route_prefix: str = "/", name: str | None = None,
          timeout_s: float = 600.0) -> Service:
    """Deploy the model as application ``name`` (default: the model dir's name) under ``route_prefix``
    and return once every replica has loaded it. Serve's HTTP proxy listens on ``host:port`` if this
    call starts Serve; a Serve already running keeps its own.

    Fails (one line, the application removed, the Ray this call started stopped) if Serve's proxy cannot
    listen on ``host:port``, the replicas do not fit this Ray's CPUs, the deployment fails, the model does
    not load, or the replicas are not up within ``timeout_s``.
    """
    import ray
    from ray import serve

    started_ray = connect(address)
    name = name or app_name(settings.model)
    prefix = "/" + route_prefix.strip("/")
    local_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    service = Service(name, f"http://{local_host}:{port}{prefix.rstrip('/')}", started_ray)
    try:
        available = ray.available_resources().get("CPU", 0.0)
        if started_ray and replicas * replica_cpus > available:
            fail(f"{replicas} replica(s) of {replica_cpus:g} CPU(s) do not fit the {available:g} CPUs Ray has "
                 "here; lower --replicas or --replica-cpus")
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # lc-serve prints its own lines
        start_serve(host, port)
        deploy(application(settings, replicas, replica_cpus), name, prefix, timeout_s)
        status = serve.get_app_handle(name).status.remote().result(timeout_s=timeout_s)
        if not status["ready"]:
            fail(f"the model failed to load: {status['error']}")
    except BaseException:
        service.stop()
        raise
    return service


def check_port(host: str, port: int) -> None:
    """One line unless ``host:port`` can be listened on now: lc-serve checks before it starts a local Ray
    (seconds), where Serve's proxy will listen."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: a port whose old connections linger in TIME_WAIT (a restart) is free to listen on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            fail(f"cannot listen on {host}:{port} ({error.strerror or error}); is another server using the "
                 "port? choose another --port (or --host)")


def start_serve(host: str, port: int) -> None:
    """Start Serve with its HTTP proxy on ``host:port`` (a Serve already running keeps its own), the proxy
    answering its own errors as JSON (``http.JSONErrors``, through the environment of Serve's controller,
    which its proxies inherit; Rays older than 2.60 take no such option and their proxies answer text)."""
    from ray import serve

    options: dict[str, Any] = {"http_options": {"host": host, "port": port}}
    if "controller_options" in inspect.signature(serve.start).parameters:
        options["controller_options"] = {"runtime_env": {"env_vars": PROXY_CALLBACK}}
    try:
        serve.start(**options)
    except Exception as error:  # Ray's own error types; the last line is the cause ("Failed to bind to ...")
        fail(f"Serve's HTTP proxy did not start on {host}:{port}: {last_line(error)}; is another server using "
             "the port? choose another --port (or --host)")


def deploy(app: Any, name: str, prefix: str, timeout_s: float) -> None:
    """``serve.run`` with a deadline: it waits for the application without one (replicas that cannot be
    placed would hang the start); a deployment that fails is one line."""
    from ray import serve

    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name=name, route_prefix=prefix, blocking=False)
        except BaseException as error:  # noqa: BLE001 - reported by the caller
            failure.append(error)

    runner = threading.Thread(target=run, name="lc-serve-deploy", daemon=True)
    runner.start()
    runner.join(timeout_s)
    if failure:
        # Why: a replica's failed health check (its model did not load) is in the deployment's status message.
        status = serve.status().applications.get(name)
        details = "\n".join(d.message for d in status.deployments.values()) if status else ""
        causes = [line.strip() for line in details.splitlines() if "the model failed to load:" in line]
        first = ([line for line in str(failure[0]).splitlines() if line.strip()] or [type(failure[0]).__name__])[0]
        fail(causes[-1][causes[-1].index("the model failed to load:"):] if causes
             else f"the deployment failed: {first}")
    if runner.is_alive():
        fail(f"the replicas were not up within {timeout_s:.0f} s; is the cluster short of CPUs or GPUs for "
             "them (--replicas, --replica-cpus)?")
