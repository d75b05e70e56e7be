"""``gridstream config show``: the effective settings, as TOML or JSON, with secrets masked.

What the processor would run with, from environment, file and defaults together, so an operator
can check a deployment without reading its environment. Every ``SecretStr`` is masked, and so is
any ``kafka.extra`` value whose librdkafka name says it is secret (``sasl.password``,
``ssl.key.password``, ``sasl.oauthbearer.client.secret``, ...).
"""

from __future__ import annotations

import json
from typing import Any

from streams.config import Settings

MASK = "**********"
_SECRET_WORDS = ("password", "secret", "token", "user.info", "credentials")


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as plain data, secrets replaced by ``MASK``."""
    doc = settings.model_dump(mode="json")  # SecretStr dumps as its mask already
    extra = doc["kafka"]["extra"]
    doc["kafka"]["extra"] = {
        k: MASK if any(w in k.lower() for w in _SECRET_WORDS) else v for k, v in extra.items()
    }
    return doc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) \
            + " }" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # numbers, and strings with TOML-compatible escapes


def _toml_lines(doc: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in doc.items():
        if value is None:
            lines.append(f"# {key} = (unset)")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines


def render(settings: Settings, fmt: str = "toml") -> str:
    doc = masked(settings)
    if fmt == "json":
        return json.dumps(doc, indent=2)
    sections = {k: v for k, v in doc.items() if isinstance(v, dict)}
    top = {k: v for k, v in doc.items() if k not in sections}
    out = ["# gridstream: effective settings (environment > file > defaults); secrets masked"]
    out += _toml_lines(top)
    for name, section in sections.items():
        out += ["", f"[{name}]", *_toml_lines(section)]
    return "\n".join(out) + "\n"
