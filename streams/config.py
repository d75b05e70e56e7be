"""Configuration: one frozen settings object, from env (``GRIDSTREAM_…``) and an optional TOML file.

Read once at the CLI edge and passed down; library code never reads the environment. Precedence:
explicit overrides > environment > TOML file (``--config`` or ``GRIDSTREAM_CONFIG``) > defaults.
Nested settings use ``__`` in env names: ``GRIDSTREAM_KAFKA__BOOTSTRAP_SERVERS=host:9092``.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from models.params import ProcessorParams
from schemas.exceptions import GridstreamError

ENV_PREFIX = "GRIDSTREAM_"


class ConfigError(GridstreamError):
    """A setting is missing or has a bad value; the message names the setting."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    group_id: str = Field(
        "gridstream", description="consumer group; replicas in one group share the partitions"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL PLAIN or SCRAM-SHA-256/512"
    )
    sasl_username: str | None = Field(None, description="SASL user")
    sasl_password: SecretStr | None = Field(None, description="SASL password; never logged")
    ssl_ca_location: str | None = Field(None, description="CA certificate file (TLS)")
    ssl_certificate_location: str | None = Field(None, description="client certificate (TLS)")
    ssl_key_location: str | None = Field(None, description="client key (TLS)")
    batch_size: int = Field(5000, ge=1, le=100_000, description="max records per batch")
    batch_timeout_s: float = Field(
        0.02,
        gt=0,
        le=60,
        description="max wait to fill a batch; short on purpose: under load a batch is what "
        "arrived while the previous one was processed, at low rates every reading waits this long",
    )
    fetch_wait_max_ms: int = Field(
        10,
        ge=0,
        le=300_000,
        description="longest a fetch waits at the broker for data (librdkafka's default, 500, "
        "adds up to that much latency at low rates); GRIDSTREAM_KAFKA__EXTRA overrides it",
    )
    create_topics: bool = Field(True, description="create missing input and output topics at start")
    partitions: int = Field(6, ge=1, le=10_000, description="partitions of created topics")
    replication_factor: int = Field(1, ge=1, le=16, description="replicas of created topics")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a new consumer group starts"
    )
    session_timeout_ms: int = Field(
        45_000,
        ge=1_000,
        le=3_600_000,
        description="consumer group session timeout; the embedded broker joins in about half",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="exactly_once: outputs and input offsets in one Kafka transaction per batch",
    )
    transactional_id: str | None = Field(
        None,
        description="exactly_once: stable id per worker (default <group_id>-<hostname>; "
        "`--workers` appends -<index>); a restarted worker with the same id fences its predecessor",
    )
    static_membership: bool = Field(
        True,
        description="join the group as a static member (group.instance.id), so a restarted "
        "worker gets its partitions back without waiting out the session of its predecessor",
    )
    group_instance_id: str | None = Field(
        None,
        description="static membership: stable id per worker (default <group_id>-<hostname>, "
        "--workers appends -<index>); two live consumers with one id fence each other",
    )
    extra: dict[str, str] = Field(
        default_factory=dict, description="passed verbatim to librdkafka (consumer and producer)"
    )

    def instance_id(self) -> str | None:
        """The consumer's group.instance.id, None without static membership."""
        if not self.static_membership:
            return None
        return self.group_instance_id or f"{self.group_id}-{socket.gethostname()}"

    def client_config(self) -> dict[str, str]:
        """librdkafka settings shared by consumer, producer and admin client."""
        conf: dict[str, str] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        conf.update(self.extra)
        return conf

    def consumer_config(self) -> dict[str, object]:
        """The consumer's librdkafka settings: defaults < security/``extra`` < fixed by the loop.

        The loop commits offsets itself, after a batch's outputs are acknowledged, and reads
        committed records only (exactly-once outputs of an aborted transaction never count).
        """
        return {
            "fetch.wait.max.ms": self.fetch_wait_max_ms,  # a default: ``extra`` may override it
            **self.client_config(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.auto_offset_reset,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(100, self.session_timeout_ms // 5),
            **({"group.instance.id": self.instance_id()} if self.static_membership else {}),
        }

    def producer_config(self) -> dict[str, object]:
        """The output producer's librdkafka settings (both engines): idempotent, acks=all."""
        return {
            **self.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
        }

    def transactional_config(self, transactional_id: str) -> dict[str, object]:
        """The exactly-once producer: ``producer_config`` with one stable id per worker."""
        return {
            **self.producer_config(),
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 60_000,
        }

    def default_transactional_id(self, host: str) -> str:
        """The configured transactional id, else ``<group_id>-<host>`` (the CLI passes it in)."""
        return self.transactional_id or f"{self.group_id}-{host}"


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

    def params(self) -> ProcessorParams:
        return ProcessorParams(
            horizons_s=tuple(self.horizons_s),
            emit_threshold=self.emit_threshold,
            cooldown_s=self.cooldown_s,
            warmup=self.warmup,
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


def _reject_unknown_env(environ: os._Environ[str] | dict[str, str]) -> None:
    """A misspelt variable would otherwise be ignored without a word; refuse it instead."""
    known = env_names()
    unknown = sorted(
        k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
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
