"""The schema as data: engines a server may report, ON CLUSTER rendering, released migrations."""

from __future__ import annotations

import pytest

from sinks.clickhouse import _table_problems
from sinks.ddl import (
    BOOTSTRAP,
    FORECASTS,
    MIGRATIONS,
    READINGS,
    SCHEMA_MIGRATIONS,
    render,
)
from sinks.exceptions import SinkConfigError
from sinks.views import VIEWS


@pytest.mark.parametrize(
    "engine",
    ["ReplacingMergeTree", "ReplicatedReplacingMergeTree", "SharedReplacingMergeTree"],
)
def test_replicated_and_shared_engines_pass_the_schema_check(engine: str) -> None:
    """ClickHouse Cloud reports SharedReplacingMergeTree, a cluster ReplicatedReplacingMergeTree."""
    columns = FORECASTS.column_types()
    assert _table_problems(FORECASTS, (engine, FORECASTS.sorting_key), columns) == []


@pytest.mark.parametrize("engine", ["MergeTree", "ReplicatedMergeTree", "SharedSummingMergeTree"])
def test_other_engines_are_still_refused(engine: str) -> None:
    (problem,) = _table_problems(
        FORECASTS, (engine, FORECASTS.sorting_key), FORECASTS.column_types()
    )
    assert problem.startswith(f"engine {engine}, expected ReplacingMergeTree")


def test_entity_ids_are_strings_not_low_cardinality() -> None:
    assert READINGS.column_types()["entity_id"] == "String"
    assert READINGS.column_types()["entity_kind"] == "LowCardinality(String)"
    assert "ttl_only_drop_parts = 1" in READINGS.create_sql()


def test_on_cluster_goes_after_the_name_of_every_ddl_statement() -> None:
    statements = [
        *BOOTSTRAP,
        *(s for m in MIGRATIONS for s in m.statements),
        *(v.create_sql() for v in VIEWS),
    ]
    for statement in statements:
        plain, clustered = render(statement, "gs"), render(statement, "gs", "grid")
        assert "ON CLUSTER" not in plain
        if statement.startswith("INSERT"):  # a rollup's backfill: data, not DDL
            assert clustered == plain
            continue
        assert clustered.count(" ON CLUSTER `grid`") == 1, statement[:80]
        assert "ENGINE = Replacing" not in clustered  # replicated on a cluster
    assert (
        render(BOOTSTRAP[0], "gs", "grid") == "CREATE DATABASE IF NOT EXISTS `gs` ON CLUSTER `grid`"
    )
    created = render(SCHEMA_MIGRATIONS.create_sql(), "gs", "grid")
    assert created.startswith("CREATE TABLE IF NOT EXISTS `gs`.`schema_migrations` ON CLUSTER")
    assert "ENGINE = ReplicatedReplacingMergeTree(applied_at)" in created


def test_inserts_and_reads_never_take_on_cluster() -> None:
    for sql in ("INSERT INTO {db}.`t` VALUES (1)", "SELECT max(version) FROM {db}.`t`"):
        assert "ON CLUSTER" not in render(sql, "gs", "grid")


def test_cluster_names_are_identifiers_only() -> None:
    with pytest.raises(SinkConfigError, match="cluster"):
        render(BOOTSTRAP[0], "gs", "grid`; DROP")


def test_released_migrations_keep_their_text() -> None:
    """Version 2 as released: LowCardinality ids and the severity index, whatever the code says."""
    v2 = "\n".join(MIGRATIONS[1].statements)
    assert "`entity_id` LowCardinality(String)" in v2
    assert "ADD INDEX IF NOT EXISTS idx_severity severity TYPE set(3) GRANULARITY 4" in v2
    assert "ttl_only_drop_parts" not in v2
