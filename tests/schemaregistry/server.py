"""A test-only Schema Registry: Confluent's REST protocol over ``http.server``, state in memory.

What confluent-kafka's ``SchemaRegistryClient`` and its Avro, JSON Schema and Protobuf
serializers call, answered as Confluent Schema Registry answers (paths, JSON bodies, status and
``error_code``s): register and look up a schema under a subject, schemas by global id, subjects
and their versions, global and per-subject compatibility, and compatibility tests. Rules live in
``tests.schemaregistry.store``.

Not emulated: contexts, modes, metadata and rule sets, schema GUIDs, deletes, authentication,
TLS, and Protobuf schemas given as ``.proto`` text being normalised (they are stored verbatim).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.schemaregistry.store import LEVELS, Incompatible, InvalidSchema, RegistryStore, Stored

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class _Error(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _not_found(what: str, code: int) -> _Error:
    return _Error(404, code, f"{what} not found")


Route = tuple[str, re.Pattern[str], Callable[..., Any]]


class SchemaRegistryServer:
    """``with SchemaRegistryServer() as sr: sr.url`` -- a registry on a free loopback port."""

    def __init__(self, store: RegistryStore | None = None, port: int = 0) -> None:
        """``store`` and ``port`` given, a restarted registry keeps its schemas and address."""
        self.store = store or RegistryStore()
        self.requests: list[tuple[str, str]] = []  # (method, path) as received
        self._http = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self.routes: list[Route] = [
            ("POST", re.compile(r"/subjects/([^/]+)/versions"), self._register),
            ("POST", re.compile(r"/subjects/([^/]+)"), self._lookup),
            ("GET", re.compile(r"/subjects"), lambda q: sorted(self.store.subjects)),
            ("GET", re.compile(r"/subjects/([^/]+)/versions"), self._versions),
            ("GET", re.compile(r"/subjects/([^/]+)/versions/([^/]+)"), self._version),
            ("GET", re.compile(r"/schemas/ids/(\d+)"), self._by_id),
            ("GET", re.compile(r"/schemas/ids/(\d+)/subjects"), self._subjects_of),
            ("GET", re.compile(r"/schemas/types"), lambda q: ["JSON", "PROTOBUF", "AVRO"]),
            ("GET", re.compile(r"/config"), lambda q: self._get_config(None)),
            ("GET", re.compile(r"/config/([^/]+)"), lambda q, s: self._get_config(s)),
            ("PUT", re.compile(r"/config"), lambda q, body: self._put_config(None, body)),
            ("PUT", re.compile(r"/config/([^/]+)"), lambda q, body, s: self._put_config(s, body)),
            ("POST", re.compile(r"/compatibility/subjects/([^/]+)/versions/([^/]+)"),
             self._compatibility),
        ]

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> SchemaRegistryServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    # -- handlers ----------------------------------------------------------------------------
    def _register(self, query: dict, body: dict, subject: str) -> dict:
        try:
            schema_id, version = self.store.register(subject, _stored(body))
        except Incompatible as exc:
            raise _Error(409, 409, f"Schema being registered is incompatible: {exc}") from None
        return {"id": schema_id, "subject": subject, "version": version, **_stored(body).document()}

    def _lookup(self, query: dict, body: dict, subject: str) -> dict:
        if subject not in self.store.subjects:
            raise _not_found(f"Subject '{subject}'", 40401)
        found = self.store.lookup(subject, _stored(body))
        if found is None:
            raise _not_found("Schema", 40403)
        schema_id, version = found
        return {"subject": subject, "id": schema_id, "version": version,
                **self.store.by_id[schema_id].document()}

    def _versions(self, query: dict, subject: str) -> list[int]:
        if subject not in self.store.subjects:
            raise _not_found(f"Subject '{subject}'", 40401)
        return list(range(1, len(self.store.subjects[subject]) + 1))

    def _version(self, query: dict, subject: str, version: str) -> dict:
        if subject not in self.store.subjects:
            raise _not_found(f"Subject '{subject}'", 40401)
        if not re.fullmatch(r"latest|-1|\d+", version):
            raise _Error(422, 42202, f"The specified version '{version}' is not a valid version")
        found = self.store.version(subject, version)
        if found is None:
            raise _not_found(f"Version {version}", 40402)
        schema_id, number = found
        return {"subject": subject, "id": schema_id, "version": number,
                **self.store.by_id[schema_id].document()}

    def _by_id(self, query: dict, schema_id: str) -> dict:
        stored = self.store.by_id.get(int(schema_id))
        if stored is None:
            raise _not_found("Schema", 40403)
        return stored.document()

    def _subjects_of(self, query: dict, schema_id: str) -> list[str]:
        if int(schema_id) not in self.store.by_id:
            raise _not_found("Schema", 40403)
        return sorted(s for s, ids in self.store.subjects.items() if int(schema_id) in ids)

    def _get_config(self, subject: str | None) -> dict:
        if subject is not None and subject not in self.store.levels:
            raise _not_found(f"Subject '{subject}'", 40408)
        return {"compatibilityLevel": self.store.level(subject)}

    def _put_config(self, subject: str | None, body: dict) -> dict:
        level = str(body.get("compatibility", "")).upper()
        if level not in LEVELS:
            raise _Error(422, 42203, f"Invalid compatibility level {level!r}")
        if subject is None:
            self.store.global_level = level
        else:
            self.store.levels[subject] = level
        return {"compatibility": level}

    def _compatibility(self, query: dict, body: dict, subject: str, version: str) -> dict:
        if subject not in self.store.subjects:
            raise _not_found(f"Subject '{subject}'", 40401)
        return {"is_compatible": self.store.compatible(subject, _stored(body), version)}

    # -- HTTP --------------------------------------------------------------------------------
    def dispatch(self, method: str, target: str, body: bytes) -> tuple[int, object]:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append((method, path))
        for want, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if want != method or match is None:
                continue
            args = [unquote(g) for g in match.groups()]
            try:
                if method in ("POST", "PUT"):
                    return 200, handler(query, json.loads(body or b"{}"), *args)
                return 200, handler(query, *args)
            except _Error as exc:
                return exc.status, {"error_code": exc.code, "message": exc.message}
            except InvalidSchema as exc:
                return 422, {"error_code": 42201, "message": str(exc)}
            except (ValueError, KeyError) as exc:
                return 422, {"error_code": 422, "message": f"unprocessable request: {exc}"}
        return 404, {"error_code": 404, "message": f"HTTP 404 Not Found: {method} {path}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, doc = server.dispatch(self.command, self.path, self.rfile.read(length))
                payload = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler


def _stored(body: dict) -> Stored:
    if "schema" not in body:
        raise _Error(422, 42201, "Empty schema")
    refs = tuple(
        (r["name"], r["subject"], int(r["version"])) for r in body.get("references") or []
    )
    return Stored(str(body["schema"]), str(body.get("schemaType") or "AVRO"), refs)
