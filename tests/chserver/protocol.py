"""The parts of ClickHouse's HTTP interface the test endpoint speaks, as pure functions.

Reference: https://clickhouse.com/docs/interfaces/http and what clickhouse-connect 1.x sends
(``clickhouse_connect/driver/_backend/httpcommon.py``): the SQL in the ``query`` URL parameter, in
the body, or both (parameter first, then the body); ``INSERT ... FORMAT f`` followed by the data;
settings as URL parameters; ``param_*`` bound parameters; ``Content-Encoding`` on request bodies
and ``enable_http_compression=1`` + ``Accept-Encoding`` for compressed responses.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass, field

import lz4.frame

# URL parameters that belong to the HTTP transport, never to the query's settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "session_id",
        "session_check",
        "session_timeout",
        "query_id",
        "compress",
        "decompress",
        "enable_http_compression",
        "http_zlib_compression_level",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "client_protocol_version",
        "buffer_size",
        "role",
        "quota_key",
        "user",
        "password",
        "stacktrace",
        "close_session",
    }
)

# The statements that produce a result set (and so a format and X-ClickHouse-Format).
_RESULT_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK"}
)
_LEADING = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/|\()*", re.S)
_KEYWORD = re.compile(r"[A-Za-z]+")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.I)
# The head of an insert with data after it; the data starts after the first newline (if any)
# that follows the format name, as ClickHouse's ParserInsertQuery does.
_INSERT_HEAD = re.compile(
    rb"^\s*INSERT\s+INTO\s+(.+?)\s+FORMAT\s+([A-Za-z0-9_]+)[ \t\r]*\n?", re.S | re.I
)
_USE = re.compile(r"^\s*USE\s+`?([A-Za-z0-9_]+)`?\s*;?\s*$", re.I)
_SET = re.compile(r"^\s*SET\s+(.+?)\s*;?\s*$", re.I | re.S)
_ASSIGN = re.compile(r"\s*([A-Za-z0-9_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^,]+)\s*(?:,|$)")

# https://github.com/ClickHouse/ClickHouse/blob/master/src/Server/HTTPHandler.cpp
# (exceptionCodeToHTTPStatus), the codes the endpoint can meet.
_STATUS = {
    194: 401,  # REQUIRED_PASSWORD
    192: 403,  # UNKNOWN_USER
    193: 403,  # WRONG_PASSWORD
    516: 403,  # AUTHENTICATION_FAILED
    36: 400,  # BAD_ARGUMENTS
    27: 400,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    62: 400,  # SYNTAX_ERROR
    6: 400,  # CANNOT_PARSE_TEXT
    60: 404,  # UNKNOWN_TABLE
    46: 404,  # UNKNOWN_FUNCTION
    47: 404,  # UNKNOWN_IDENTIFIER
    50: 404,  # UNKNOWN_TYPE
    56: 404,  # UNKNOWN_STORAGE
    81: 404,  # UNKNOWN_DATABASE
    115: 404,  # UNKNOWN_SETTING
    73: 404,  # UNKNOWN_FORMAT
    48: 501,  # NOT_IMPLEMENTED
    209: 503,  # SOCKET_TIMEOUT
    159: 408,  # TIMEOUT_EXCEEDED
}
_CODE = re.compile(r"Code:\s*(\d+)")

COMPRESSIONS = ("lz4", "zstd", "gzip", "deflate")


class HttpError(Exception):
    """An error the endpoint answers with, in ClickHouse's shape."""

    def __init__(self, code: int, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status or http_status(code)


def http_status(code: int) -> int:
    return _STATUS.get(code, 500)


def error_body(code: int, message: str, version: str) -> bytes:
    """``Code: N. DB::Exception: ... (version X)`` as a ClickHouse server writes it."""
    text = message.strip()
    if not text.startswith("Code:"):
        text = f"Code: {code}. DB::Exception: {text}"
    if "(version " not in text:
        text = f"{text} (version {version})"
    return (text + "\n").encode()


def code_of(message: str, default: int = 1001) -> int:
    """The ClickHouse error code in an engine message (1001 STD_EXCEPTION if none)."""
    match = _CODE.search(message)
    return int(match.group(1)) if match else default


@dataclass(slots=True)
class Request:
    """What one HTTP request asks for, split the way ClickHouse splits it."""

    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # bound query parameters
    transport: dict[str, str] = field(default_factory=dict)


def split_params(query: dict[str, str]) -> Request:
    """URL parameters into transport parameters, bound query parameters and settings."""
    req = Request()
    for key, value in query.items():
        if key in TRANSPORT_PARAMS:
            req.transport[key] = value
        elif key.startswith("param_"):
            req.params[key.removeprefix("param_")] = value
        else:
            req.settings[key] = value
    return req


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement: its kind, its SQL text, and for inserts with data the format and bytes."""

    kind: str  # "insert_data" | "result" | "use" | "set" | "command"
    sql: str
    fmt: str | None = None
    data: bytes = b""
    target: str = ""  # USE: the database; SET: the assignments text


def parse_statement(text: bytes) -> Statement:
    """Classify the SQL (+ data) of a request; raises HttpError(62) on an empty query."""
    head = _INSERT_HEAD.match(text)
    if head is not None:
        target = head.group(1).decode("utf-8")
        return Statement(
            "insert_data", f"INSERT INTO {target}", head.group(2).decode(), text[head.end() :]
        )
    try:
        sql = text.decode("utf-8").strip().rstrip(";").strip()
    except UnicodeDecodeError as exc:
        raise HttpError(62, f"Syntax error: the query is not valid UTF-8 ({exc.reason})") from exc
    if not sql:
        raise HttpError(62, "Syntax error: Empty query.")
    stripped = _LEADING.sub("", sql)
    word = _KEYWORD.match(stripped)
    keyword = word.group(0).upper() if word else ""
    if (use := _USE.match(sql)) is not None:
        return Statement("use", sql, target=use.group(1))
    if keyword == "SET" and (assign := _SET.match(sql)) is not None:
        return Statement("set", sql, target=assign.group(1))
    if keyword in _RESULT_KEYWORDS:
        fmt = _TRAILING_FORMAT.search(sql)
        return Statement("result", sql, fmt.group(1) if fmt else None)
    return Statement("command", sql)


def parse_assignments(text: str) -> dict[str, str]:
    """``a = 1, b = 'x'`` of a SET statement; raises HttpError(62) on anything else."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _ASSIGN.match(text, pos)
        if match is None:
            raise HttpError(62, f"Syntax error in SET at position {pos}: {text[pos : pos + 40]!r}")
        value = match.group(2).strip()
        if value.startswith("'") and value.endswith("'"):
            value = value[1:-1].replace("\\'", "'").replace("\\\\", "\\")
        out[match.group(1)] = value
        pos = match.end()
    return out


def sql_literal(value: str) -> str:
    """A setting value as SQL: numbers as they are, anything else as a quoted string."""
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def settings_clause(settings: dict[str, str], existing_sql: str) -> str:
    """`` SETTINGS a=1, b='x'`` to append (``, ...`` when the insert head already has one)."""
    if not settings:
        return ""
    items = ", ".join(f"{k} = {sql_literal(v)}" for k, v in settings.items())
    if existing_sql.upper().startswith("INSERT") and re.search(r"\bSETTINGS\b", existing_sql, re.I):
        return f", {items}"
    return f" SETTINGS {items}"


def content_type(fmt: str) -> str:
    low = fmt.lower()
    if low.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if low.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if low.startswith("json"):
        return "application/json; charset=UTF-8"
    if low.startswith(("pretty", "vertical", "markdown")):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


def decompress(body: bytes, encoding: str | None) -> bytes:
    """A request body by its ``Content-Encoding``; HttpError(48) for ones not supported here."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        return body
    try:
        if enc == "lz4":
            return lz4.frame.decompress(body)
        if enc == "zstd":
            from backports import zstd

            return zstd.decompress(body)
        if enc == "gzip":
            return gzip.decompress(body)
        if enc == "deflate":
            return zlib.decompress(body)
    except Exception as exc:  # noqa: BLE001 - any corrupt stream is the client's error
        # 271 CANNOT_DECOMPRESS
        raise HttpError(271, f"Cannot decompress the request body ({enc}): {exc}") from exc
    raise HttpError(48, f"Unknown HTTP compression method: {encoding}")


def choose_encoding(accept: str | None) -> str | None:
    """The first of the client's accepted encodings this endpoint can write."""
    for item in (accept or "").split(","):
        name = item.split(";", 1)[0].strip().lower()
        if name in COMPRESSIONS:
            return name
    return None


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "lz4":
        return lz4.frame.compress(body)
    if encoding == "zstd":
        from backports import zstd

        return zstd.compress(body)
    if encoding == "gzip":
        return gzip.compress(body)
    return zlib.compress(body)
