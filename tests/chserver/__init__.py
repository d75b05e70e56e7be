"""A test-only ClickHouse HTTP endpoint that executes in chDB (see ``tests.chserver.server``)."""

from tests.chserver.grants import User
from tests.chserver.server import ChServer, Seen

USER = "gridstream"
PASSWORD = "test-Secret-9f3"  # noqa: S105 -- the test endpoint's, to look for in messages

__all__ = ["PASSWORD", "USER", "ChServer", "Seen", "User"]
