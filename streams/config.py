"""Configuration: one frozen settings object, from env (``GRIDSTREAM_…``) and an optional TOML file.

Read once at the CLI edge and passed down; library code never reads the environment. Precedence:
explicit overrides > environment > TOML file (``--config`` or ``GRIDSTREAM_CONFIG``) > defaults.
Nested settings use ``__`` in env names: ``GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=host:9092``.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from models.params import ProcessorParams
from schemas.exceptions import GridstreamError
from streams.config_kafka import KafkaSettings, SchemaRegistrySettings, _Section

ENV_PREFIX = "GRIDSTREAM_"


class ConfigError(GridstreamError):
    """A setting is missing or has a bad value; the message names the setting."""


class TopicSettings(_Section):
    meter: str = Field("gridstream.readings.meter", description="input: meter readings")
    scada: str = Field("gridstream.readings.scada", description="input: SCADA readings")
    forecasts: str = Field("gridstream.forecasts", description="output: forecasts")
    anomalies: str = Field("gridstream.anomalies", description="output: anomaly events")
    dead_letters: str = Field("gridstream.deadletter", description="output: dead letters")
    labels: str = Field(
        "gridstream.sim.labels", description="`gridstream simulate`: injected-anomaly labels"
    )

    @field_validator("*")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not value or len(value) > 249 or not all(ch.isalnum() or ch in "._-" for ch in value):
            raise ValueError(f"{value!r} is not a legal Kafka topic name (letters, digits, . _ -)")
        return value


class ClickHouseSettings(_Section):
    backend: Literal["chdb", "server", "none"] = Field(
        "chdb", description="`chdb` (embedded), `server` (clickhouse-connect) or `none`"
    )
    path: Path = Field(
        Path("gridstream-data/chdb"), description="chDB data directory (one process at a time)"
    )
    database: str = Field(
        "gridstream",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="database of every table",
    )
    host: str = Field("localhost", description="server host")
    port: int = Field(8123, ge=1, le=65535, description="server HTTP port")
    username: str = Field("default", description="server user")
    password: SecretStr = Field(SecretStr(""), description="server password; never logged")
    password_file: Path | None = Field(None, description="read the password from this file")
    secure: bool = Field(False, description="HTTPS to the server")
    verify: bool = Field(True, description="check the server's certificate")
    connect_timeout_s: float = Field(10.0, gt=0, description="server connect timeout")
    send_receive_timeout_s: float = Field(60.0, gt=0, description="server request timeout")
    store_readings: bool = Field(True, description="write valid readings (load/accuracy views)")
    migrate: bool = Field(
        True,
        description="apply the schema at start; false (`run --no-migrate`) only checks it, so the "
        "processor can run as a user with INSERT rights only (`gridstream migrate` applies it)",
    )
    cluster: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="run the schema's DDL ON CLUSTER this cluster, with Replicated engines "
        "(not for ClickHouse Cloud or a Replicated database, which replicate by themselves)",
    )
    async_insert: bool = Field(
        False,
        description="server: insert with async_insert (the server batches many small writers' "
        "inserts into fewer parts) and wait_for_async_insert (acknowledged once written)",
    )
    readings_ttl_days: int = Field(90, ge=0, le=36_500, description="0 keeps rows forever")
    forecasts_ttl_days: int = Field(90, ge=0, le=36_500, description="0 keeps rows forever")
    anomalies_ttl_days: int = Field(0, ge=0, le=36_500, description="0 keeps rows forever")
    drift_events_ttl_days: int = Field(0, ge=0, le=36_500, description="0 keeps rows forever")
    dead_letters_ttl_days: int = Field(30, ge=0, le=36_500, description="0 keeps rows forever")

    def secret(self) -> str:
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"GRIDSTREAM_CLICKHOUSE__PASSWORD_FILE: cannot read {self.password_file}: "
                    f"{exc.strerror}"
                ) from exc
        return self.password.get_secret_value()


class ProcessingSettings(_Section):
    max_age_s: int = Field(35 * 86400, gt=0, description="older readings are dead-lettered")
    max_future_s: int = Field(300, ge=0, description="readings further ahead are dead-lettered")
    horizons_s: tuple[int, ...] = Field(
        (900, 3600), description="forecast horizons (a JSON list in the environment)"
    )
    emit_threshold: float = Field(
        0.5, ge=0, le=1, description="fused score from which an anomaly event is published"
    )
    cooldown_s: int = Field(
        3600, ge=0, description="one event per entity per cooldown unless the severity rises"
    )
    warmup: int = Field(12, ge=1, description="readings an entity needs before it is scored")
    weekend_days: tuple[int, ...] = Field(
        (5, 6),
        description="days of the week (0 = Monday, UTC) with their own expected shape once "
        "seen; [] for one profile every day (a JSON list in the environment)",
    )
    models_dir: Path | None = Field(
        None, description="model store from `gridstream train`; its promoted set is served"
    )
    models_poll_s: float = Field(10.0, gt=0, description="how often the store is checked")
    state_dir: Path | None = Field(
        None,
        description="checkpoints of each partition's state; shared by the workers of a group "
        "so a restarted or rebalanced partition resumes its windows instead of warming up",
    )
    checkpoint_interval_s: float = Field(
        30.0, gt=0, description="how often each partition's state is checkpointed"
    )
    on_partition_change: Literal["refuse", "reset"] = Field(
        "refuse",
        description="an input topic's partition count differs from the one its state was built "
        "with: `refuse` stops with a message; `reset` discards that topic's state (entities warm "
        "up again)",
    )

    @field_validator("weekend_days")
    @classmethod
    def _days_of_the_week(cls, days: tuple[int, ...]) -> tuple[int, ...]:
        if any(d not in range(7) for d in days) or len(set(days)) != len(days) or len(days) > 5:
            raise ValueError(f"at most 5 distinct days, 0 (Monday) to 6 (Sunday), got {list(days)}")
        return days

    def params(self) -> ProcessorParams:
        return ProcessorParams(
            horizons_s=tuple(self.horizons_s),
            emit_threshold=self.emit_threshold,
            cooldown_s=self.cooldown_s,
            warmup=self.warmup,
            weekend_days=tuple(self.weekend_days),
        )


class BalanceSettings(_Section):
    enabled: bool = Field(
        False, description="`gridstream run` also balances transformers against their meters"
    )
    topology_topic: str = Field(
        "grid.topology", description="compacted topic of meter/transformer/feeder links"
    )
    internal_topic: str = Field(
        "gridstream.balance.readings",
        description="readings re-keyed by their transformer (the balance's second stage)",
    )
    interval_s: int = Field(900, gt=0, description="balance interval")
    lateness_s: int = Field(3600, ge=0, description="readings this far behind still count")
    checkpoint_every: int = Field(
        20, gt=0, description="balance state is checkpointed every this many batches"
    )


class Settings(BaseSettings):
    """Every setting of ``gridstream run``; docs/configuration.md is generated from the field
    descriptions (``python -m streams.config_doc``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    topics: TopicSettings = TopicSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    processing: ProcessingSettings = ProcessingSettings()
    balance: BalanceSettings = BalanceSettings()
    http_port: int = Field(8000, ge=0, le=65535, description="0 disables the HTTP server")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level"
    )
    log_format: Literal["text", "json"] = Field("text", description="`json` gives JSON lines")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning every validation problem into a ConfigError naming the setting.

    ``config_file`` defaults to ``$GRIDSTREAM_CONFIG``; ``overrides`` win over everything.
    """
    _reject_unknown_env(os.environ)
    path = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    cls: type[Settings] = Settings
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        cls = type(
            "Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}}
        )
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # a malformed TOML file or nested JSON in an env var
        raise ConfigError(f"cannot read configuration: {exc}") from None


def env_names() -> set[str]:
    """Every environment variable name the settings understand."""
    names = {f"{ENV_PREFIX}CONFIG"}
    # read by streams.cli.failpoints_from_env (crash points of the fault-injection tests)
    names |= {f"{ENV_PREFIX}FAILPOINTS", f"{ENV_PREFIX}FAILPOINTS_SEED"}
    for name, info in Settings.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names.update(f"{ENV_PREFIX}{name}__{sub}".upper() for sub in section.model_fields)
            names.add(f"{ENV_PREFIX}{name}".upper())
        else:
            names.add(f"{ENV_PREFIX}{name}".upper())
    return names


# Kubernetes gives every pod variables for each Service of its namespace (enableServiceLinks): a
# Service "gridstream" or "gridstream-metrics" yields GRIDSTREAM_SERVICE_HOST, GRIDSTREAM_PORT,
# GRIDSTREAM_METRICS_PORT_8000_TCP_ADDR, ... Recognised by name and value together, so a
# misspelt setting (GRIDSTREAM_KAFKA_PORT=9092) is still refused.
_IP = r"(\d{1,3}(\.\d{1,3}){3}|\[?[0-9a-fA-F:]+\]?)"
_URL = rf"(tcp|udp|sctp)://{_IP}:\d+"
_SERVICE_LINK = (
    (re.compile(r"(_[A-Z0-9_]+)?_SERVICE_HOST"), re.compile(_IP)),
    (re.compile(r"(_[A-Z0-9_]+)?_SERVICE_PORT(_[A-Z0-9_]+)?"), re.compile(r"\d+")),
    (re.compile(r"(_[A-Z0-9_]+)?_PORT"), re.compile(_URL)),
    (re.compile(r"(_[A-Z0-9_]+)?_PORT_\d+_(TCP|UDP|SCTP)"), re.compile(_URL)),
    (re.compile(r"(_[A-Z0-9_]+)?_PORT_\d+_(TCP|UDP|SCTP)_PROTO"), re.compile(r"tcp|udp|sctp")),
    (re.compile(r"(_[A-Z0-9_]+)?_PORT_\d+_(TCP|UDP|SCTP)_PORT"), re.compile(r"\d+")),
    (re.compile(r"(_[A-Z0-9_]+)?_PORT_\d+_(TCP|UDP|SCTP)_ADDR"), re.compile(_IP)),
)


def is_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is a Kubernetes service-link variable of a ``gridstream*`` Service.

    >>> is_service_link("GRIDSTREAM_PORT_8000_TCP", "tcp://10.96.0.12:8000")
    True
    >>> is_service_link("GRIDSTREAM_KAFKA_PORT", "9092")
    False
    """
    rest = name.upper().removeprefix("GRIDSTREAM")
    return any(
        n.fullmatch(rest) is not None and v.fullmatch(value.strip()) is not None
        for n, v in _SERVICE_LINK
    )


def _reject_unknown_env(environ: os._Environ[str] | dict[str, str]) -> None:
    """A misspelt variable would otherwise be ignored without a word; refuse it instead.

    Kubernetes service-link variables (``is_service_link``) are not settings and pass.
    """
    known = env_names()
    unknown = sorted(
        k for k, v in environ.items()
        if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
        and not is_service_link(k, v)
    )
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name.upper(), known, n=1)
            hints.append(f"  {name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ConfigError("unknown settings in the environment:\n" + "\n".join(hints))


def _describe(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        env_name = ENV_PREFIX + "__".join(loc).upper()
        got = err.get("input")
        shown = "" if isinstance(got, dict) or "password" in env_name.lower() else f" (got {got!r})"
        lines.append(f"  {env_name}: {err['msg']}{shown}")
    return "\n".join(lines)
