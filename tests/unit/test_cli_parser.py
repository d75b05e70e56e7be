"""The command line as containers and operators use it: every option documented, global options
on either side of the command, --version, config show, Kubernetes service-link variables."""

from __future__ import annotations

import argparse
import tomllib

import pytest

from streams.cli import main
from streams.cli_config import MASK, render
from streams.cli_parser import build_parser
from streams.config import ConfigError, load_settings

HIDDEN = {"--worker-index"}  # internal: how `run --workers N` starts its children


def _parsers(parser: argparse.ArgumentParser, path: str = "gridstream"
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _parsers(child, f"{path} {name}")
    return found


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            if name in HIDDEN:
                assert action.help == argparse.SUPPRESS
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {name}")
    assert missing == []
    commands = {p.split(" ")[1] for p, _ in _parsers(build_parser()) if " " in p}
    assert {"run", "train", "backtest", "simulate", "bench", "config", "query"} <= commands


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "x.toml", "run"],
        ["run", "--config", "x.toml"],
        ["--config", "other.toml", "run", "--config", "x.toml"],  # after the command wins
    ],
)
def test_config_works_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.config == "x.toml" and args.command == "run"


def test_global_options_default_when_given_nowhere() -> None:
    args = build_parser().parse_args(["query", "SELECT 1", "--log-level", "debug"])
    assert args.config is None and args.log_level == "DEBUG" and args.quiet is False
    assert build_parser().parse_args(["--quiet", "train", "--input", "a", "--output", "b"]).quiet


def test_version_prints_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("gridstream ")


def test_config_show_masks_secrets_and_reads_back_as_toml(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRIDSTREAM_KAFKA__SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("GRIDSTREAM_CLICKHOUSE__PASSWORD", "hunter2-clickhouse")
    monkeypatch.setenv("GRIDSTREAM_SCHEMA_REGISTRY__BASIC_AUTH_USER_INFO", "sr:hunter2-sr")
    monkeypatch.setenv("GRIDSTREAM_KAFKA__EXTRA", '{"ssl.key.password": "hunter2-key", '
                                                  '"linger.ms": "7"}')
    monkeypatch.setenv("GRIDSTREAM_KAFKA__PARTITIONS", "12")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    doc = tomllib.loads(out)
    assert doc["kafka"]["partitions"] == 12
    assert doc["kafka"]["sasl_password"] == MASK
    assert doc["kafka"]["extra"] == {"ssl.key.password": MASK, "linger.ms": "7"}
    assert doc["clickhouse"]["password"] == MASK
    assert doc["schema_registry"]["basic_auth_user_info"] == MASK
    assert "hunter2" not in render(load_settings(), "json")


def test_kubernetes_service_links_are_not_taken_for_misspelt_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what a Service "gridstream" (port 8000) and "gridstream-metrics" inject into every pod
    links = {
        "GRIDSTREAM_SERVICE_HOST": "10.96.14.2",
        "GRIDSTREAM_SERVICE_PORT": "8000",
        "GRIDSTREAM_SERVICE_PORT_HTTP": "8000",
        "GRIDSTREAM_PORT": "tcp://10.96.14.2:8000",
        "GRIDSTREAM_PORT_8000_TCP": "tcp://10.96.14.2:8000",
        "GRIDSTREAM_PORT_8000_TCP_PROTO": "tcp",
        "GRIDSTREAM_PORT_8000_TCP_PORT": "8000",
        "GRIDSTREAM_PORT_8000_TCP_ADDR": "10.96.14.2",
        "GRIDSTREAM_METRICS_SERVICE_HOST": "fd00:10:96::1f",
        "GRIDSTREAM_METRICS_PORT": "tcp://[fd00:10:96::1f]:9100",
    }
    for name, value in links.items():
        monkeypatch.setenv(name, value)
    assert load_settings().http_port == 8000
    monkeypatch.setenv("GRIDSTREAM_KAFKA_PORT", "9092")  # looks like a link, is a typo
    with pytest.raises(ConfigError, match="GRIDSTREAM_KAFKA_PORT"):
        load_settings()


def test_weekend_days_come_from_the_environment_and_bad_days_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRIDSTREAM_PROCESSING__WEEKEND_DAYS", "[4, 5]")  # Friday and Saturday
    assert load_settings().processing.params().weekend_days == (4, 5)
    monkeypatch.setenv("GRIDSTREAM_PROCESSING__WEEKEND_DAYS", "[]")
    assert load_settings().processing.params().weekend_days == ()
    monkeypatch.setenv("GRIDSTREAM_PROCESSING__WEEKEND_DAYS", "[6, 7]")
    with pytest.raises(ConfigError, match=r"PROCESSING__WEEKEND_DAYS: .* 0 \(Monday\) to 6"):
        load_settings()
