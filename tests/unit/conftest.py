"""Unit tests see none of the developer's ``GRIDSTREAM_*`` environment: settings built in a test
are the defaults plus what the test sets, on every machine."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_gridstream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GRIDSTREAM_"):
            monkeypatch.delenv(name)
