"""The operations HTTP server: ``/health``, ``/metrics`` and ``/models``, off the hot path.

A ``ThreadingHTTPServer`` on a daemon thread: a scrape never blocks the processing loop, and the
loop never waits for a scrape. Handlers only read state (``Health.evaluate``, the registry, the
models provider); nothing here talks to Kafka or ClickHouse.

    server = start_http_server(8000, monitor.health, monitor.registry, monitor.models)
    ...
    server.stop()

``gridstream health`` probes ``/health`` on the configured port (``probe``) and exits 0 for
ok/degraded, 1 otherwise: the container HEALTHCHECK, without curl in the image.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from streams.ops.health import Health

log = logging.getLogger("gridstream.http")

ModelsProvider = Callable[[], Mapping[str, Any]]
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - scraped from other containers; nothing secret is served


class HttpServer:
    """A running server; ``port`` is the bound port (useful with port 0), ``stop`` shuts it."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a comparison
        return f"http://{host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close the socket; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout_s)
        self._server.server_close()


def _json(value: Any) -> bytes:
    return orjson.dumps(
        value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=str
    )


def _handler(
    health: Health, registry: CollectorRegistry, models: ModelsProvider | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "gridstream"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            try:
                if path == "/health":
                    report = health.evaluate()
                    self._send(report.http_status, _json(report.to_dict()), "application/json")
                elif path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._send(200, encoder(registry), content_type)
                elif path == "/models":
                    body = dict(models()) if models is not None else {"models": []}
                    self._send(200, _json(body), "application/json")
                elif path == "/":
                    links = {"endpoints": ["/health", "/metrics", "/models"]}
                    self._send(200, _json(links), "application/json")
                else:
                    body = _json({"error": f"no such endpoint: {path}"})
                    self._send(404, body, "application/json")
            except Exception as exc:  # a bug in a provider must not kill the server thread
                log.exception("GET %s failed", path)
                body = _json({"error": f"{type(exc).__name__} while serving {path}"})
                self._send(500, body, "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the API's name
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


def start_http_server(
    port: int,
    health: Health,
    registry: CollectorRegistry,
    models: ModelsProvider | None = None,
    host: str = ALL_INTERFACES,
) -> HttpServer:
    """Serve ``/health``, ``/metrics`` and ``/models`` on ``host:port`` (0 = any free port)."""
    try:
        server = ThreadingHTTPServer((host, port), _handler(health, registry, models))
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot serve HTTP on {host}:{port} (GRIDSTREAM_HTTP_PORT): {exc.strerror}"
        ) from exc
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="gridstream-http"
    )
    thread.daemon = True
    thread.start()
    running = HttpServer(server, thread)
    log.info("serving /health, /metrics and /models on %s:%d", host, running.port)
    return running


def probe(url: str, timeout_s: float = 3.0) -> int:
    """0 if ``url`` answers 200 (health ok or degraded), 1 otherwise: for container checks."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - http only
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1
