"""Topics as the settings describe them: created when missing, with the configured partitions,
replication (default: the broker's) and topic configuration (retention, ``min.insync.replicas``).
"""

from __future__ import annotations

from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Settings


def ensure_topics(settings: Settings, admin: AdminClient | None = None) -> list[str]:
    """Create the input and output topics that do not exist yet; returns the ones created."""
    admin = admin or AdminClient(settings.kafka.client_config())
    t = settings.topics
    wanted = [t.meter, t.scada, t.forecasts, t.anomalies, t.dead_letters]
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    k = settings.kafka
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                k.partitions,
                k.replication_factor or -1,  # -1: the broker's default.replication.factor
                config=k.new_topic_config(),
            )
            for name in missing
        ]
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=30)
            created.append(name)
        except Exception as exc:  # noqa: BLE001 - another worker may have created it first
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
    return created
