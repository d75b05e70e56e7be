"""Kafka settings: clients, created topics, input checks, and the Schema Registry.

Part of the one settings object (``streams.config.Settings``: sections ``kafka`` and
``schema_registry``); split out so each module stays readable. Defaults follow how platform teams
run Kafka: murmur2 partitioning like the Java client, zstd compression, cooperative rebalancing,
static membership, a client id that quotas and ACL audits can name.
"""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from sinks.partitioner import PARTITIONER

InputFormat = Literal["auto", "json", "json_schema", "avro", "protobuf"]


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
    replication_factor: int | None = Field(
        None, ge=1, le=16, description="replicas of created topics (default: the broker's)"
    )
    retention_ms: int | None = Field(
        None, ge=-1, description="retention.ms of created topics (default: the broker's; -1 keeps)"
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, le=16, description="min.insync.replicas of created topics (default: broker's)"
    )
    topic_config: dict[str, str] = Field(
        default_factory=dict,
        description="more configuration of created topics, e.g. {\"cleanup.policy\": \"delete\"}",
    )
    client_id: str = Field(
        "gridstream", description="client.id of every client (quotas, broker logs, ACL audits)"
    )
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "zstd", description="compression of produced records"
    )
    partitioner: Literal[
        "murmur2_random", "murmur2", "consistent_random", "consistent", "fnv1a_random", "random"
    ] = Field(
        PARTITIONER,
        description="how output keys map to partitions; murmur2_random is the Java client's, so "
        "Kafka Streams and Java consumers find an entity where they expect it",
    )
    assignment_strategy: Literal["cooperative-sticky", "range", "roundrobin"] = Field(
        "cooperative-sticky",
        description="partition assignor; cooperative-sticky moves only the partitions that "
        "change owner, the others keep processing through a rebalance",
    )
    key_check: Literal["dead_letter", "count", "off"] = Field(
        "dead_letter",
        description="input whose key is not the reading's entity id: `dead_letter` "
        "(reason key_mismatch), `count` (processed, counted, warned), or `off`",
    )
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
            "client.id": self.client_id,
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
            "partition.assignment.strategy": self.assignment_strategy,
            **({"group.instance.id": self.instance_id()} if self.static_membership else {}),
        }

    def producer_config(self) -> dict[str, object]:
        """The output producer's librdkafka settings (both engines): idempotent, acks=all."""
        return {
            **self.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression_type,
            "partitioner": self.partitioner,
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
        }

    def new_topic_config(self) -> dict[str, str]:
        """Configuration of the topics ``ensure_topics`` creates (empty: the broker's defaults)."""
        named = {
            "retention.ms": self.retention_ms,
            "min.insync.replicas": self.min_insync_replicas,
        }
        return {**{k: str(v) for k, v in named.items() if v is not None}, **self.topic_config}

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




class SchemaRegistrySettings(_Section):
    """Confluent Schema Registry: framed input (JSON Schema, Avro, Protobuf), registered output."""

    url: str | None = Field(
        None, description="Schema Registry URL, e.g. http://schema-registry:8081; unset: none"
    )
    basic_auth_user_info: SecretStr | None = Field(
        None, description="`user:password` for the registry; never logged"
    )
    ssl_ca_location: str | None = Field(None, description="CA certificate file for an https URL")
    meter_format: InputFormat = Field(
        "auto",
        description="meter topic: `auto` (plain JSON, or framed records decoded by their schema's "
        "type), `json` (plain only), `json_schema`, `avro` or `protobuf` (framed only)",
    )
    scada_format: InputFormat = Field("auto", description="SCADA topic: as `meter_format`")
    output_format: Literal["json", "json_schema"] = Field(
        "json",
        description="forecasts and anomalies: plain JSON, or framed as JSON Schema registered "
        "under <topic>-value (needs `url`)",
    )
    auto_register: bool = Field(
        True,
        description="json_schema output: register the schemas at start; false only looks them "
        "up (a registry managed by the platform team)",
    )
    compatibility: (
        Literal["BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
                "FULL_TRANSITIVE", "NONE"] | None
    ) = Field(
        None,
        description="compatibility level set on the output subjects at start (default: leave "
        "the registry's, BACKWARD unless changed)",
    )

    def client_config(self) -> dict[str, str]:
        """The ``SchemaRegistryClient`` configuration; call only with a ``url``."""
        assert self.url is not None
        conf = {"url": self.url}
        if self.basic_auth_user_info is not None:
            conf["basic.auth.user.info"] = self.basic_auth_user_info.get_secret_value()
        if self.ssl_ca_location is not None:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf
