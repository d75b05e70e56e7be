"""A plain aligned text table for query results (``gridstream query``); pure, no I/O.

>>> print(format_table(["entity_id", "p50"], [("m1", 1.5), ("feeder-7", None)]))
entity_id   p50
---------  ----
m1          1.5
feeder-7   NULL
(2 rows)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime

_ESCAPES = {i: f"\\x{i:02x}" for i in range(0x20)} | {0x7F: "\\x7f"}
_ESCAPES.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def _datetime(value: datetime) -> str:
    if value.microsecond == 0:
        spec = "seconds"
    elif value.microsecond % 1000 == 0:
        spec = "milliseconds"
    else:
        spec = "microseconds"
    text = value.isoformat(sep=" ", timespec=spec)
    return text.removesuffix("+00:00") + ("Z" if text.endswith("+00:00") else "")


def _float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)  # shortest text that reads back as the same float


def render_value(value: object, *, nested: bool = False) -> str:
    """One value as text: NULL for None, ISO times with Z for UTC, bytes with \\x escapes."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, datetime):
        return _datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        return f"'{value}'" if nested else value
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{render_value(k, nested=True)}: {render_value(v, nested=True)}"
            for k, v in value.items()
        )
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render_value(v, nested=True) for v in value) + "]"
    return str(value)


def _cell(text: str, max_width: int) -> str:
    text = text.translate(_ESCAPES)  # a newline in a value must not break the table
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


def _numeric(values: list[object]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in present
    )


def format_table(
    column_names: Sequence[str],
    rows: Sequence[Sequence[object]],
    max_width: int = 40,
    max_rows: int | None = None,
) -> str:
    """Columns padded to their widest cell, numbers right-aligned, cells cut at ``max_width``;
    with ``max_rows``, only the first rows are shown and the footer says how many there were."""
    if max_width < 4:
        raise ValueError(f"max_width must be at least 4, got {max_width}")
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    count = f"({len(rows)} row{'' if len(rows) == 1 else 's'})"
    if max_rows is not None and len(rows) > max_rows:
        count = f"({len(rows)} rows, first {max_rows} shown)"
        rows = rows[:max_rows]
    if not column_names:
        return count
    header = [_cell(str(name), max_width) for name in column_names]
    body = [[_cell(render_value(v), max_width) for v in row] for row in rows]
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} values for {len(header)} columns")
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]
    right = [_numeric([row[i] for row in rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        )
        return "  ".join(padded).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in body), count]
    return "\n".join(out)
