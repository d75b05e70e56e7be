"""Versioned model sets on disk: manifest, saving and verified loading.

The promotion rule and hot reload live in ``models.promotion``.

A store is a directory that only the operator can write::

    STORE/
      <name>-<version>/      one model set; created by os.mkdir, so never written twice
        manifest.json        written last and atomically: its presence means the set is complete
        ...                  .skops (scikit-learn, no pickle), .npy (numpy, no pickle), .json,
                             .pkl (pickle: sets written before skops); other names: raw bytes
      current.json           the promoted set, replaced atomically (a file, not a symlink: portable)
      promotions.jsonl       every promotion decision, appended, one JSON object per line
      .lock                  serialises promotions (flock where the platform has it)

Versions are integers 1, 2, 3, ... per name, allocated by ``os.mkdir`` so two trainers never
share one. Model refs are ``name@version``.

scikit-learn models are written with skops (``.skops``): a zip of JSON and arrays, loaded only if
every type it names is in ``SKOPS_TRUSTED`` (``skops.io.get_untrusted_types``), so loading a model
constructs known classes and runs no code from the file. Sets written earlier hold ``.pkl`` files,
and unpickling runs code. The loader therefore reads every listed file into memory, compares each
sha256 with the manifest, and deserialises only after *all* files passed, from the very bytes it
hashed (nothing can be swapped between check and use). Hashes catch corruption and changed
files, not someone who can rewrite the manifest too: hence the store must be operator-only.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import uuid
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from hashlib import sha256
from importlib import metadata
from pathlib import Path
from types import MappingProxyType

from pydantic import (
    JsonValue,
    ValidationError,
)

from models.artifact_codec import decode, encode
from models.exceptions import (
    ArtifactError,
    IncompatibleModel,
    ManifestError,
    TamperedArtifact,
)
from models.manifest import (  # noqa: F401 - re-exported: the store's documents live there
    CURRENT,
    MANIFEST,
    MANIFEST_FORMAT,
    PROMOTIONS,
    VALIDATION_ERROR,
    CurrentPointer,
    Manifest,
    TrainingSpan,
    _unsafe_path,
)

_MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class LoadedModelSet:
    """A verified, deserialised model set. ``artifacts`` maps file path -> object.

    Picklable, but a processor snapshot should carry ``ref``, not the set: the store is the
    source of truth for model bytes.
    """

    path: Path
    manifest: Manifest
    artifacts: Mapping[str, object]
    warnings: tuple[str, ...] = ()  # library version drift, warnings raised while unpickling

    @property
    def ref(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    @property
    def validation_error(self) -> float:
        return self.manifest.metrics[VALIDATION_ERROR]

    def __getitem__(self, rel: str) -> object:
        return self.artifacts[rel]

    def check_features(self, expected: Sequence[str]) -> None:
        """Refuse a set trained on other features (missing, unknown or reordered) than given."""
        model, given = Counter(self.manifest.feature_names), Counter(expected)
        if list(self.manifest.feature_names) == list(expected):
            return
        missing = list((model - given).elements())
        unexpected = list((given - model).elements())
        raise IncompatibleModel(self.ref, missing, unexpected, not missing and not unexpected)

    def describe(self) -> dict[str, object]:
        """What ``/models`` shows: the ref, where it came from, its manifest, its warnings."""
        return {
            "ref": self.ref,
            "path": str(self.path),
            "manifest": self.manifest.model_dump(mode="json"),
            "warnings": list(self.warnings),
        }


# -- save -------------------------------------------------------------------------------------
def save_model_set(
    store: Path | str,
    name: str,
    artifacts: Mapping[str, object],
    *,
    feature_names: Sequence[str],
    horizons_s: Sequence[int],
    training_span: tuple[datetime, datetime],
    metrics: Mapping[str, float],
    params: Mapping[str, JsonValue] | None = None,
    created: datetime | None = None,
) -> Path:
    """Write a new version of ``name`` and return its directory; never touches other versions.

    ``artifacts`` maps relative paths to objects, serialised by suffix: ``.pkl`` pickle, ``.npy``
    an ndarray (saved without pickle), ``.json`` JSON; ``bytes`` are written verbatim under any
    name. ``metrics`` must hold ``validation_error``: for the trainer, the mean over horizons of
    the p50 absolute error on the held-out span, in the unit of the target. Everything is
    validated before the first byte is written; the manifest is written last.
    """
    store = Path(store)
    blobs = {rel: _serialise(rel, obj) for rel, obj in artifacts.items()}
    fields: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": 1,  # placeholder until a directory is reserved
        "created": created or datetime.now(UTC),
        "training_span": {"start": training_span[0], "end": training_span[1]},
        "feature_names": list(feature_names),
        "horizons_s": list(horizons_s),
        "metrics": dict(metrics),
        "files": {rel: sha256(data).hexdigest() for rel, data in blobs.items()},
        "library_versions": dict(_library_versions()),
        "params": dict(params or {}),
    }
    _validate_manifest(fields, f"new set {name!r}")
    store.mkdir(parents=True, exist_ok=True)
    version, vdir = _reserve(store, name)
    try:
        for rel, data in blobs.items():
            target = vdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        manifest = _validate_manifest({**fields, "version": version}, vdir.name)
        _atomic_write(vdir / MANIFEST, manifest.model_dump_json(indent=2).encode())
    except BaseException:
        shutil.rmtree(vdir, ignore_errors=True)  # our own reservation: never another version
        raise
    return vdir


def _serialise(rel: str, obj: object) -> bytes:
    if _unsafe_path(rel):
        raise ArtifactError(
            f"artifact name {rel!r} is not a safe relative path: parts of letters, digits and "
            f"'_.-' joined by '/', no leading dot, not {MANIFEST!r}"
        )
    return encode(rel, obj)


def _reserve(store: Path, name: str) -> tuple[int, Path]:
    prefix = f"{name}-"
    taken = [
        int(p.name[len(prefix) :])
        for p in store.iterdir()
        if p.name.startswith(prefix) and re.fullmatch(r"[0-9]+", p.name[len(prefix) :])
    ]
    version = max(taken, default=0) + 1
    while True:
        vdir = store / f"{name}-{version}"
        try:
            vdir.mkdir()
        except FileExistsError:  # a concurrent trainer, or a leftover: never reuse it
            version += 1
            continue
        return version, vdir


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- load -------------------------------------------------------------------------------------
def load_model_set(path: Path | str) -> LoadedModelSet:
    """Verify every file of a set against its manifest, then, and only then, deserialise it."""
    path = Path(path)
    manifest, blobs = _read_verified(path)
    objects: dict[str, object] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rel, data in blobs.items():
            try:
                objects[rel] = decode(rel, data)
            except Exception as exc:  # verified bytes, but this environment cannot read them
                raise ArtifactError(
                    f"model set {path.name}: file {rel!r} passed verification but cannot be "
                    f"loaded here ({type(exc).__name__}: {exc}); trained with "
                    f"{manifest.library_versions}"
                ) from exc
    running = _library_versions()
    notes = [
        f"trained with {lib} {ver}, running {running.get(lib, 'absent')}"
        for lib, ver in manifest.library_versions.items()
        if running.get(lib) != ver
    ]
    notes += [f"{w.category.__name__}: {w.message}" for w in caught]
    return LoadedModelSet(path, manifest, objects, tuple(notes))


def verify_model_set(path: Path | str) -> Manifest:
    """The manifest of a set whose every file matches its hash; deserialises nothing."""
    return _read_verified(Path(path))[0]


def _read_verified(path: Path) -> tuple[Manifest, dict[str, bytes]]:
    label = path.name
    try:
        with open(path / MANIFEST, "rb") as fh:
            raw = fh.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(
            f"model set {label}: no {MANIFEST} in {path} (not a model set, or an unfinished save)"
        ) from None
    except OSError as exc:
        raise ArtifactError(f"model set {label}: cannot read {MANIFEST}: {exc}") from exc
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise ManifestError(f"model set {label}: {MANIFEST} is larger than {_MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(f"model set {label}: {MANIFEST} is not JSON ({exc})") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if type(fmt) is not int or fmt != MANIFEST_FORMAT:
        raise ManifestError(
            f"model set {label}: manifest format {fmt!r}; this gridstream reads format "
            f"{MANIFEST_FORMAT}"
        )
    manifest = _validate_manifest(doc, label)
    if label != f"{manifest.name}-{manifest.version}":
        raise ManifestError(
            f"model set {label}: its manifest describes {manifest.name}-{manifest.version}; a "
            "manifest must describe its own directory"
        )
    present = _files_under(path, label)
    if missing := sorted(set(manifest.files) - present):
        raise ManifestError(f"model set {label}: manifest lists files that do not exist: {missing}")
    if unlisted := sorted(present - set(manifest.files)):
        raise ManifestError(
            f"model set {label}: files not in the manifest, hence unverified: {unlisted}"
        )
    blobs: dict[str, bytes] = {}
    for rel in sorted(manifest.files):
        try:
            data = (path / rel).read_bytes()
        except OSError as exc:
            raise ArtifactError(f"model set {label}: cannot read {rel!r}: {exc}") from exc
        actual = sha256(data).hexdigest()
        if actual != manifest.files[rel]:
            raise TamperedArtifact(label, rel, manifest.files[rel], actual)
        blobs[rel] = data
    return manifest, blobs


def _validate_manifest(doc: object, label: str) -> Manifest:
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(f"model set {label}: invalid {MANIFEST}: {_errors(exc)}") from None


def _files_under(path: Path, label: str) -> set[str]:
    """Every regular file of the set but the manifest; a symlink or device is refused."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(path):  # does not follow symlinks
        base = Path(dirpath)
        for entry in (*dirnames, *filenames):
            full = base / entry
            rel = full.relative_to(path).as_posix()
            if full.is_symlink() or not (full.is_dir() or full.is_file()):
                raise ManifestError(f"model set {label}: {rel!r} is not a regular file or folder")
            if full.is_file() and rel != MANIFEST:
                found.add(rel)
    return found


@cache
def _library_versions() -> Mapping[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("numpy", "scikit-learn", "river"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "absent"
    return MappingProxyType(found)


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<document>'}: {e['msg']}" for e in exc.errors()
    )
