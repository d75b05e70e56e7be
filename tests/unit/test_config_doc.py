"""docs/configuration.md is what the Settings descriptions generate now, and every setting has
a description (as tests/unit/test_schemas.py does for the JSON Schema files)."""

from __future__ import annotations

from streams import config_doc
from streams.config import env_names


def test_every_setting_is_described() -> None:
    assert config_doc.undocumented() == []


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    assert config_doc.DOC.read_text() == config_doc.render(), (
        "docs/configuration.md is out of date: run python -m streams.config_doc"
    )
    assert config_doc.main(["--check"]) == 0


def test_the_reference_names_every_environment_variable() -> None:
    text = config_doc.DOC.read_text()
    names = ("KAFKA", "SCHEMA_REGISTRY", "TOPICS", "CLICKHOUSE", "PROCESSING", "BALANCE")
    sections = {f"GRIDSTREAM_{s}" for s in names}
    for name in env_names() - sections:  # a whole section as one JSON value is not listed
        assert f"`{name}`" in text, name
