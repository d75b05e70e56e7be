"""The docker files parse and agree with the code: settings, CLI, ports, metric names, paths.

Docker does not run here, so this is what can be checked without it; the integration test
``test_operations`` checks the same metric names against a live processor's /metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.cli import build_parser
from streams.config import Settings, env_names, load_settings
from streams.ops.metrics import GridMetrics

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
METRIC = re.compile(r"\bgridstream_[a-z0-9_]+")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(REPO / "docker-compose.yml")


@pytest.fixture(scope="module")
def alerts() -> list[dict[str, Any]]:
    doc = load_yaml(DOCKER / "prometheus/alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DOCKER / "grafana/dashboards/gridstream.json").read_text())


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Names a processor exports (family names plus their sample suffixes), before any data."""
    metrics = GridMetrics(CollectorRegistry())
    metrics.bind(health_level=lambda: 0.0)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        names.add(fam.name)
        names.update(fam.name + s for s in suffixes.get(fam.type, ()))
    return names


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> repository path of a service's ./ bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = source[2:]
    return out


# -- docker-compose.yml ------------------------------------------------------------------------
def test_compose_has_every_service_with_pinned_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "kafka",
        "clickhouse",
        "migrate",
        "processor",
        "simulator",
        "prometheus",
        "alertmanager",
        "kafka-exporter",
        "grafana",
    }
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["simulator"]["profiles"] == ["simulator"]


def test_compose_health_checks_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        check = svc.get("healthcheck", {})
        if name in ("simulator", "migrate"):
            assert check.get("disable") is True  # it serves no HTTP
        else:
            assert check.get("test"), f"{name} has no health check"
    for name in ("kafka", "clickhouse", "prometheus", "alertmanager", "grafana"):
        named = [v.split(":")[0] for v in services[name]["volumes"] if not v.startswith(".")]
        assert named and set(named) <= set(compose["volumes"]), name
    for svc in services.values():
        for path in bind_mounts(svc).values():
            assert (REPO / path).exists(), path
        for dep in svc.get("depends_on", {}):
            assert dep in services
    for secret in compose["secrets"].values():
        assert (REPO / secret["file"]).is_file()


def test_kafka_runs_in_kraft_mode_where_the_processors_look(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in k for k in env)
    bootstrap = compose["services"]["processor"]["environment"][
        "GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS"
    ]
    assert f"PLAINTEXT://{bootstrap}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")


@pytest.mark.parametrize("service", ["processor", "simulator", "migrate"])
def test_gridstream_environment_is_valid_configuration(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: str(v) for k, v in compose["services"][service]["environment"].items()}
    unknown = {k for k in env if k.startswith("GRIDSTREAM_")} - env_names()
    assert not unknown, f"{service} sets settings gridstream does not know: {unknown}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()  # raises ConfigError on any bad value
    assert settings.log_format == "json"
    if service in ("processor", "migrate"):
        assert settings.clickhouse.backend == "server"
        assert settings.clickhouse.host == "clickhouse"
        assert settings.clickhouse.password_file is not None
        assert settings.kafka.partitions >= compose["services"]["processor"]["deploy"]["replicas"]


def test_processor_and_simulator_commands_parse(compose: dict[str, Any]) -> None:
    parser = build_parser()
    run = parser.parse_args(compose["services"]["processor"]["command"])
    assert run.command == "run" and run.no_migrate  # the migrate job owns the schema
    assert parser.parse_args(compose["services"]["migrate"]["command"]).command == "migrate"
    depends = compose["services"]["processor"]["depends_on"]["migrate"]
    assert depends["condition"] == "service_completed_successfully"
    migrate_env = compose["services"]["migrate"]["environment"]
    processor_env = compose["services"]["processor"]["environment"]
    for key in ("HOST", "PORT", "DATABASE"):
        name = f"GRIDSTREAM_CLICKHOUSE__{key}"
        assert migrate_env[name] == processor_env[name]
    args = parser.parse_args(compose["services"]["simulator"]["command"])
    assert args.command == "simulate" and args.meters > 0


def test_clickhouse_credentials_agree(compose: dict[str, Any]) -> None:
    ch = compose["services"]["clickhouse"]
    env = compose["services"]["processor"]["environment"]
    assert env["GRIDSTREAM_CLICKHOUSE__USERNAME"] == ch["environment"]["CLICKHOUSE_USER"]
    assert int(env["GRIDSTREAM_CLICKHOUSE__PORT"]) == 8123
    secret = Path(env["GRIDSTREAM_CLICKHOUSE__PASSWORD_FILE"]).name
    assert secret in ch["secrets"] and secret in compose["services"]["processor"]["secrets"]
    assert f"/run/secrets/{secret}" in " ".join(ch["entrypoint"])


def test_http_port_is_the_same_everywhere(compose: dict[str, Any]) -> None:
    default = Settings.model_fields["http_port"].default
    env = compose["services"]["processor"]["environment"]
    assert int(env["GRIDSTREAM_HTTP_PORT"]) == default
    assert compose["services"]["processor"]["expose"] == [str(default)]
    prometheus = load_yaml(DOCKER / "prometheus/prometheus.yml")
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "gridstream")
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["processor"] and sd["port"] == default
    assert re.search(rf"^EXPOSE {default}$", (DOCKER / "Dockerfile").read_text(), re.M)


# -- Dockerfile --------------------------------------------------------------------------------
def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim"] * 2
    (user,) = re.findall(r"^USER (\S+)", text, re.M)
    assert user.split(":")[0] not in ("root", "0")
    assert re.search(r'^HEALTHCHECK .*\n?.*CMD \["gridstream", "health"\]', text, re.M)
    assert "pip wheel" in text and "pip install" in text
    assert re.search(r'^ENTRYPOINT \["gridstream"\]', text, re.M)
    assert re.search(r'^CMD \["run"\]', text, re.M)
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    packages = sorted({package.split(".")[0] for package in packages})  # subpackages ride along
    for package in packages:
        assert f"COPY {package} ./{package}" in text
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    for package in packages:
        assert f"!{package}/**" in ignore


# -- Prometheus and alert rules ----------------------------------------------------------------
def test_prometheus_loads_the_mounted_rules(compose: dict[str, Any]) -> None:
    prometheus = load_yaml(DOCKER / "prometheus/prometheus.yml")
    mounts = bind_mounts(compose["services"]["prometheus"])
    for rule_file in prometheus["rule_files"]:
        directory, name = rule_file.rsplit("/", 1)
        assert (REPO / mounts[directory] / name).is_file(), rule_file
    config_flag = next(a for a in compose["services"]["prometheus"]["command"] if "config" in a)
    directory, name = config_flag.split("=", 1)[1].rsplit("/", 1)
    assert (REPO / mounts[directory] / name).is_file()


def test_alert_rules_cover_the_issue_and_parse(alerts: list[dict[str, Any]]) -> None:
    names = {rule["alert"] for rule in alerts if "alert" in rule}
    assert names >= {
        "GridstreamProcessorDown",
        "GridstreamConsumerLagGrowing",
        "GridstreamConsumerGroupLagGrowing",
        "GridstreamDeadLetterRateHigh",
        "GridstreamBatchLatencyHigh",
        "GridstreamMemoryHigh",
        "GridstreamModelDrift",
        "GridstreamForecastMapeDegraded",
        "GridstreamClickHouseInsertFailures",
        "GridstreamKafkaPublishFailures",
        "GridstreamCheckpointErrors",
        "GridstreamLastBatchStale",
        "GridstreamConsumerErrors",
        "GridstreamModelStoreStale",
    }
    for rule in alerts:
        promql_parser.parse(rule["expr"])  # ValueError on a syntax error
        if "record" in rule:
            continue
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    down = next(r for r in alerts if r.get("alert") == "GridstreamProcessorDown")
    assert 'job="gridstream"' in down["expr"]


def test_the_mape_alert_compares_the_fleet_with_its_own_baseline(
    alerts: list[dict[str, Any]],
) -> None:
    """No fixed percentage (meters sit at 15-18 %): the fleet's MAPE against its 7-day past."""
    mape = next(r for r in alerts if r.get("alert") == "GridstreamForecastMapeDegraded")
    assert not any(r.get("alert") == "GridstreamForecastMapeHigh" for r in alerts)
    assert "avg_over_time(gridstream:forecast_mape:ratio_1h[7d]" in mape["expr"]
    recorded = next(r for r in alerts if r.get("record") == "gridstream:forecast_mape:ratio_1h")
    assert "sum by (horizon_s)" in recorded["expr"]  # fleet level: no instance, no entity


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")
    return path


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    rules = DOCKER / "prometheus"
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"], cwd=rules, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = sorted(p.name for p in rules.glob("*.test.yml"))
    assert len(tests) >= 2
    run = subprocess.run(
        [promtool, "test", "rules", *tests], cwd=rules, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_checks_the_prometheus_config(tmp_path: Path) -> None:
    """The shipped prometheus.yml with its /etc path pointed at the repository's rules."""
    promtool = _tool("promtool")
    text = (DOCKER / "prometheus/prometheus.yml").read_text()
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/", f"{DOCKER / 'prometheus'}/"))
    check = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_alertmanager_config_is_valid_and_prometheus_sends_to_it(compose: dict[str, Any]) -> None:
    amtool = _tool("amtool")
    config = DOCKER / "alertmanager/alertmanager.yml"
    check = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    prometheus = load_yaml(DOCKER / "prometheus/prometheus.yml")
    (am,) = prometheus["alerting"]["alertmanagers"]
    host, port = am["static_configs"][0]["targets"][0].split(":")
    assert host in compose["services"]
    mounts = bind_mounts(compose["services"]["alertmanager"])
    flag = next(a for a in compose["services"]["alertmanager"]["command"] if "config" in a)
    directory, name = flag.split("=", 1)[1].rsplit("/", 1)
    assert (REPO / mounts[directory] / name).samefile(config)
    assert f"{port}" in str(compose["services"]["alertmanager"]["ports"])


def test_kafka_exporter_is_scraped_where_the_lag_alert_looks(
    compose: dict[str, Any], alerts: list[dict[str, Any]]
) -> None:
    exporter = compose["services"]["kafka-exporter"]
    assert "--kafka.server=kafka:9092" in exporter["command"]
    prometheus = load_yaml(DOCKER / "prometheus/prometheus.yml")
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "kafka")
    assert job["static_configs"][0]["targets"] == ["kafka-exporter:9308"]
    lag = next(r for r in alerts if r.get("alert") == "GridstreamConsumerGroupLagGrowing")
    group = compose["services"]["processor"]["environment"]["GRIDSTREAM_KAFKA__GROUP_ID"]
    assert f'consumergroup="{group}"' in lag["expr"]


def test_alerts_and_dashboard_use_only_exported_metrics(
    alerts: list[dict[str, Any]], dashboard: dict[str, Any], exported: set[str]
) -> None:
    used = set()
    for rule in alerts:
        used.update(METRIC.findall(rule["expr"]))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(METRIC.findall(target["expr"]))
    assert used, "no gridstream metric referenced"
    assert not used - exported, f"not exported by the processor: {sorted(used - exported)}"


# -- Grafana -----------------------------------------------------------------------------------
def test_grafana_provisioning_points_at_the_dashboard(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    mounts = bind_mounts(compose["services"]["grafana"])
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    (source,) = load_yaml(provisioning / "datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(provisioning / "dashboards/gridstream.yml")["providers"]
    dashboards = REPO / mounts[provider["options"]["path"]]
    assert (dashboards / "gridstream.json").is_file()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            promql_parser.parse(target["expr"])


def test_dashboard_shows_what_the_issue_asks_and_panels_do_not_overlap(
    dashboard: dict[str, Any],
) -> None:
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "gridstream_readings_consumed_total",  # throughput
        "gridstream_consumer_lag",
        "gridstream_end_to_end_latency_seconds_bucket",
        "gridstream_anomalies_total",
        "gridstream_forecast_ape_ratio_sum",
        "gridstream_dead_letters_total",
    ):
        assert metric in exprs, metric
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def _stat_shows(panel: dict[str, Any], value: float) -> tuple[str, str]:
    """(text, colour) a Grafana stat panel shows for ``value``: a value mapping if one matches,
    else the number coloured by the highest threshold step at or below it (Grafana's rule)."""
    defaults = panel["fieldConfig"]["defaults"]
    for mapping in defaults.get("mappings", []):
        if mapping["type"] == "value":
            for key, shown in mapping["options"].items():
                if float(key) == value:
                    return shown.get("text", f"{value:g}"), shown["color"]
    colour = None
    for step in defaults["thresholds"]["steps"]:
        if step["value"] is None or value >= step["value"]:
            colour = step["color"]
    assert colour is not None, panel["title"]
    return f"{value:g}", colour


def test_stat_panels_show_health_words_only_on_the_health_panel(dashboard: dict[str, Any]) -> None:
    stats = {p["title"]: p for p in dashboard["panels"] if p["type"] == "stat"}
    health = stats.pop("Health (worst replica)")
    assert [_stat_shows(health, v) for v in (0, 1, 2)] == [
        ("ok", "green"),
        ("degraded", "orange"),
        ("critical", "red"),
    ]
    assert set(stats) == {"Replicas up", "Partitions assigned", "Entities"}
    words = {"ok", "degraded", "critical"}
    for title, panel in stats.items():
        for value in (0, 1, 2, 3, 12, 100_000):
            text, _ = _stat_shows(panel, value)
            assert text not in words, (title, value, text)
    assert _stat_shows(stats["Replicas up"], 2) == ("2", "green")
    assert _stat_shows(stats["Replicas up"], 0)[1] == "red"
    assert _stat_shows(stats["Partitions assigned"], 12) == ("12", "green")
    assert _stat_shows(stats["Partitions assigned"], 0)[1] == "red"
    assert _stat_shows(stats["Entities"], 1_000_000)[1] not in ("red", "orange")


# -- exposure ----------------------------------------------------------------------------------
def test_published_ports_listen_on_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str), f"{name}: use the string form with 127.0.0.1"
            host, _, _ = port.rpartition(":")
            assert host.split(":")[0] == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published += 1
    assert published >= 5  # kafka, clickhouse, prometheus, alertmanager, grafana


def test_no_lifecycle_or_admin_api_is_enabled(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        command = " ".join(map(str, svc.get("command", [])))
        assert "--web.enable-lifecycle" not in command, name
        assert "--web.enable-admin-api" not in command, name


def test_the_simulator_service_resumes_instead_of_backfilling_again(
    compose: dict[str, Any],
) -> None:
    args = build_parser().parse_args(compose["services"]["simulator"]["command"])
    assert args.backfill_hours > 0 and args.resume
    assert compose["services"]["simulator"]["restart"] == "unless-stopped"


def test_the_entity_explorer_uses_the_provisioned_clickhouse_datasource(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    plugin = grafana["environment"]["GF_INSTALL_PLUGINS"]
    assert re.fullmatch(r"grafana-clickhouse-datasource \d+\.\d+\.\d+", plugin)  # pinned
    provisioning = REPO / bind_mounts(grafana)["/etc/grafana/provisioning"]
    (source,) = load_yaml(provisioning / "datasources/clickhouse.yml")["datasources"]
    assert source["type"] == "grafana-clickhouse-datasource"
    server = compose["services"]["clickhouse"]["environment"]
    settings = source["jsonData"]
    assert (settings["host"], settings["port"]) == ("clickhouse", 8123)
    assert settings["protocol"] == "http"
    assert settings["username"] == server["CLICKHOUSE_USER"]
    assert settings["defaultDatabase"] == server["CLICKHOUSE_DB"]
    # the password is read from the secret file at start-up, never written here
    assert source["secureJsonData"]["password"] == "$__file{/run/secrets/clickhouse_password}"  # noqa: S105
    assert "clickhouse_password" in grafana["secrets"] and "clickhouse" in grafana["depends_on"]
    explorer = json.loads((DOCKER / "grafana/dashboards/gridstream-explorer.json").read_text())
    sources = [v["datasource"] for v in explorer["templating"]["list"]]
    sources += [a["datasource"] for a in explorer["annotations"]["list"]]
    sources += [t["datasource"] for p in explorer["panels"] for t in p["targets"]]
    assert {s["uid"] for s in sources} == {source["uid"]}
    assert {s["type"] for s in sources} == {source["type"]}
    assert "entity" in {v["name"] for v in explorer["templating"]["list"]}
    assert {p["type"] for p in explorer["panels"]} >= {"timeseries", "heatmap", "table"}
    cells: set[tuple[int, int]] = set()
    for panel in explorer["panels"]:
        g = panel["gridPos"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        area = {(x, y) for x in xs for y in ys}
        assert g["x"] + g["w"] <= 24 and not area & cells, panel["title"]
        cells |= area
