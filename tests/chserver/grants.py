"""Users and privileges of the test endpoint: what ClickHouse's GRANTs decide, minimally.

chDB runs every statement as its one ``default`` user: its access storage is read-only and it
cannot impersonate (``EXECUTE AS`` is disabled), so the engine cannot check grants here. The
endpoint checks them itself, before executing, with the rules a ClickHouse server applies to the
statements gridstream sends:

- ``ddl``: CREATE, ALTER, DROP, RENAME, TRUNCATE, OPTIMIZE, GRANT, SYSTEM, ... (anything that is
  not a read, an insert, ``USE`` or ``SET``);
- ``insert``: INSERT;
- ``select``: SELECT / WITH / SHOW / DESCRIBE / EXISTS / EXPLAIN reading a table outside
  ``system``. A statement that reads only ``system.*`` tables, or no table (``SELECT 1``), needs
  nothing: a server lets every user read the system tables, filtered to what it has grants on
  (not emulated: here every user sees every row).

A refused statement gets ClickHouse's answer, code 497 ``ACCESS_DENIED``, and is not executed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRIVILEGES = frozenset({"ddl", "insert", "select"})
_READS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
_FREE = frozenset({"USE", "SET"})
_LEADING = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*", re.S)
_SOURCE = re.compile(r"\b(?:FROM|JOIN)\s+([`\"A-Za-z_][`\"\w.]*)", re.I)


@dataclass(frozen=True, slots=True)
class User:
    password: str
    privileges: frozenset[str] = PRIVILEGES

    def __post_init__(self) -> None:
        unknown = set(self.privileges) - PRIVILEGES
        if unknown:
            raise ValueError(f"unknown privileges {sorted(unknown)}")


def needed(sql: str) -> str | None:
    """The privilege a statement needs, or None when every user may run it."""
    text = _LEADING.sub("", sql)
    keyword = (text.split(None, 1) or [""])[0].upper().rstrip("(")
    if keyword in _FREE:
        return None
    if keyword == "INSERT":
        return "insert"
    if keyword in _READS:
        if keyword in ("SHOW", "DESCRIBE", "DESC", "EXISTS"):
            return None  # shows what the user may see; EXISTS answers 0 for what it may not
        sources = [s.replace("`", "").replace('"', "") for s in _SOURCE.findall(text)]
        reads_tables = [s for s in sources if not s.lower().startswith("system.")]
        return "select" if reads_tables else None
    return "ddl"


def denial(user: str, privilege: str) -> str:
    grant = {"ddl": "CREATE/ALTER/DROP", "insert": "INSERT", "select": "SELECT"}[privilege]
    return (
        f"{user}: Not enough privileges. To execute this query, it's necessary to have the "
        f"grant {grant}. (ACCESS_DENIED)"
    )
