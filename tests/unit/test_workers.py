"""The pure parts of ``gridstream run --workers N``: what is refused, each worker's command line,
and the GC policy being undone after the loop."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from streams.config import ClickHouseSettings, ConfigError, load_settings
from streams.runtime.workers import GC_GEN0_THRESHOLD, check_workers, gc_policy, worker_command


def test_embedded_chdb_is_refused_for_more_than_one_worker(tmp_path: Path) -> None:
    chdb = load_settings(clickhouse=ClickHouseSettings(path=tmp_path / "ch"))
    check_workers(chdb, 1)
    with pytest.raises(ConfigError, match="GRIDSTREAM_CLICKHOUSE__BACKEND=chdb"):
        check_workers(chdb, 2)
    check_workers(load_settings(clickhouse=ClickHouseSettings(backend="none")), 4)
    check_workers(load_settings(clickhouse=ClickHouseSettings(backend="server")), 4)
    with pytest.raises(ConfigError, match="at least 1"):
        check_workers(chdb, 0)


def test_each_worker_gets_its_own_http_port_and_index() -> None:
    cmd = worker_command(2, 3, 8000, "conf.toml")
    assert cmd[-9:] == ["--config", "conf.toml", "run", "--http-port", "8002", "--worker-index",
                        "2", "--workers", "3"]
    assert worker_command(1, 2, 0, None)[-6:] == ["--http-port", "0", "--worker-index", "1",
                                                  "--workers", "2"]


def test_gc_policy_is_undone_after_the_loop() -> None:
    before = gc.get_threshold()
    with gc_policy():
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_each_worker_has_a_stable_static_identity_of_group_host_and_index() -> None:
    import socket

    from streams.cli import _per_worker
    from streams.config import KafkaSettings
    from streams.runtime.runner import StreamRunner

    settings = load_settings(
        kafka=KafkaSettings(group_id="grid"), clickhouse=ClickHouseSettings(backend="none")
    )
    host = socket.gethostname()
    assert StreamRunner(settings).consumer_config()["group.instance.id"] == f"grid-{host}"
    worker = _per_worker(settings, 2)
    assert worker.kafka.instance_id() == f"grid-{host}-2"
    assert StreamRunner(worker).consumer_config()["group.instance.id"] == f"grid-{host}-2"
    assert _per_worker(settings, 2).kafka.instance_id() == worker.kafka.instance_id()  # stable

    named = settings.kafka.model_copy(update={"group_instance_id": "east-1"})
    assert _per_worker(settings.model_copy(update={"kafka": named}), 0).kafka.instance_id() == (
        "east-1-0"
    )
    dynamic = settings.kafka.model_copy(update={"static_membership": False})
    off = settings.model_copy(update={"kafka": dynamic})
    assert "group.instance.id" not in StreamRunner(off).consumer_config()
    assert _per_worker(off, 1).kafka.instance_id() is None
