"""A real Prometheus and Alertmanager (Debian's packages) around the shipped configuration.

The test copies are the shipped files with only what a test must change: loopback targets
instead of compose's service names, 1 s scrape and evaluation intervals, and every rule's
``for:`` divided by ``FOR_DIVISOR``, at least ``FOR_FLOOR_S`` (a few scrape intervals, as 2 min
are in production: at start-up, before the first scrape, ``absent(up)`` is true). Expressions,
labels and routes stay as shipped, so what fires here is what fires in production, only sooner.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "docker/prometheus/alerts.yml"
PROMETHEUS_YML = REPO / "docker/prometheus/prometheus.yml"
ALERTMANAGER_YML = REPO / "docker/alertmanager/alertmanager.yml"
FOR_DIVISOR = 60  # 10m -> 10s, 15m -> 15s
FOR_FLOOR_S = 5
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def prometheus_binaries() -> tuple[str, str] | None:
    """(prometheus, alertmanager) paths, or None when the packages are not installed."""
    prom = shutil.which("prometheus")
    am = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    return (prom, am) if prom and am else None


def duration_s(text: str) -> float:
    """Seconds of a Prometheus duration such as ``1h30m`` or ``10m``."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def shortened_rules(source: Path = RULES) -> dict[str, Any]:
    """The shipped rules with every ``for:`` divided by FOR_DIVISOR (at least FOR_FLOOR_S);
    nothing else changes."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(FOR_FLOOR_S, round(duration_s(rule['for']) / FOR_DIVISOR))}s"
    return doc


def prometheus_config(rules: Path, target: str, alertmanager: str) -> dict[str, Any]:
    """The shipped prometheus.yml scraping ``target`` as job gridstream, alerting to ours."""
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    cfg["rule_files"] = [str(rules)]
    cfg["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "gridstream")
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": [target]}]
    cfg["scrape_configs"] = [job]  # kafka-exporter and the others do not run here
    return cfg


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """The shipped alertmanager.yml sending to ``webhook_url``, grouping in about a second."""
    cfg = yaml.safe_load(ALERTMANAGER_YML.read_text())

    def fast(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
        for child in route.get("routes", []):
            fast(child)

    fast(cfg["route"])
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
    return cfg


class Webhook:
    """An HTTP receiver on loopback that keeps every notification Alertmanager posts."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with owner._lock:
                    owner.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def firing(self) -> set[str]:
        """Names of every alert received as firing so far."""
        with self._lock:
            return {
                a["labels"]["alertname"]
                for n in self.notifications
                for a in n["alerts"]
                if a["status"] == "firing"
            }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback http
        return json.loads(resp.read())


class PrometheusStack:
    """Prometheus + Alertmanager processes in ``workdir``; stopped by ``close``."""

    def __init__(self, workdir: Path, target: str, webhook_url: str, ports: tuple[int, int]):
        found = prometheus_binaries()
        if found is None:
            raise RuntimeError("prometheus and prometheus-alertmanager are not installed")
        prom_bin, am_bin = found
        self.prom_port, self.am_port = ports
        self.url = f"http://127.0.0.1:{self.prom_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        rules = workdir / "alerts.yml"
        rules.write_text(yaml.safe_dump(shortened_rules(), sort_keys=False))
        prom_yml = workdir / "prometheus.yml"
        prom_yml.write_text(
            yaml.safe_dump(prometheus_config(rules, target, f"127.0.0.1:{self.am_port}"))
        )
        am_yml = workdir / "alertmanager.yml"
        am_yml.write_text(yaml.safe_dump(alertmanager_config(webhook_url)))
        self._logs = [open(workdir / f"{n}.log", "wb") for n in ("am", "prom")]  # noqa: SIM115
        self._procs: list[subprocess.Popen[bytes]] = []
        self._procs.append(
            subprocess.Popen(
                [
                    am_bin,
                    f"--config.file={am_yml}",
                    f"--storage.path={workdir / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{self.am_port}",
                    "--cluster.listen-address=",
                ],
                stdout=self._logs[0],
                stderr=subprocess.STDOUT,
            )
        )
        self._procs.append(
            subprocess.Popen(
                [
                    prom_bin,
                    f"--config.file={prom_yml}",
                    f"--storage.tsdb.path={workdir / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{self.prom_port}",
                    "--rules.alert.resend-delay=1s",
                ],
                stdout=self._logs[1],
                stderr=subprocess.STDOUT,
            )
        )
        self.workdir = workdir

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        for url in (f"http://127.0.0.1:{self.am_port}/-/ready", f"{self.url}/-/ready"):
            while True:
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - loopback
                    break
                if time.monotonic() > deadline or any(p.poll() is not None for p in self._procs):
                    raise RuntimeError(f"{url} not ready; logs in {self.workdir}")
                time.sleep(0.2)

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus's pending and firing alerts."""
        return _get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        q = urllib.parse.quote(promql)
        return _get_json(f"{self.url}/api/v1/query?query={q}")["data"]["result"]

    def close(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in self._logs:
            log.close()


@contextlib.contextmanager
def prometheus_stack(
    workdir: Path, target: str, webhook_url: str, ports: tuple[int, int]
) -> Iterator[PrometheusStack]:
    stack = PrometheusStack(workdir, target, webhook_url, ports)
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.close()
