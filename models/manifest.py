"""The documents of a model store: ``manifest.json`` of a set and ``current.json`` of the store.

Validated with pydantic on read and write; ``models.artifacts`` saves and loads the sets they
describe.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

MANIFEST = "manifest.json"
CURRENT = "current.json"
PROMOTIONS = "promotions.jsonl"
MANIFEST_FORMAT = 1
VALIDATION_ERROR = "validation_error"  # the one metric the promotion rule compares
# One path part: no leading dot (so no "..", no hidden files), no separators, no drive letters.
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SHA256 = re.compile(r"[0-9a-f]{64}")

UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda d: d.astimezone(UTC))]
Finite = Annotated[float, Field(allow_inf_nan=False)]


def _unsafe_path(rel: str) -> bool:
    return rel == MANIFEST or not all(_PART.fullmatch(part) for part in rel.split("/"))


class TrainingSpan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: UtcDatetime
    end: UtcDatetime

    @model_validator(mode="after")
    def _ordered(self) -> TrainingSpan:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} is not after start {self.start}")
        return self


class Manifest(BaseModel):
    """``manifest.json``: what a set is, what it was trained on, and the hash of every file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal[1]
    name: str = Field(pattern=_NAME)
    version: int = Field(ge=1)
    created: UtcDatetime
    training_span: TrainingSpan
    feature_names: tuple[str, ...] = Field(min_length=1)  # in the order the models expect
    horizons_s: tuple[int, ...] = Field(min_length=1)
    # Lower is better. ``validation_error`` is the one number promotion compares; the trainer
    # defines it (see ``save_model_set``) and may add more metrics for people to read.
    metrics: dict[str, Finite]
    files: dict[str, str] = Field(min_length=1)  # relative POSIX path -> sha256 hex
    library_versions: dict[str, str]  # diagnostics: a pickle may not load under other versions
    params: dict[str, JsonValue] = Field(default_factory=dict)  # hyperparameters, for people

    @field_validator("feature_names")
    @classmethod
    def _features(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        dup = sorted(n for n, k in Counter(names).items() if k > 1)
        if dup or not all(names):
            raise ValueError(f"feature names must be unique and non-empty, repeated: {dup}")
        return names

    @field_validator("horizons_s")
    @classmethod
    def _horizons(cls, hs: tuple[int, ...]) -> tuple[int, ...]:
        if any(h <= 0 for h in hs) or len(set(hs)) != len(hs):
            raise ValueError(f"horizons must be unique positive seconds, got {list(hs)}")
        return hs

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, metrics: dict[str, float]) -> dict[str, float]:
        if metrics.get(VALIDATION_ERROR, -1.0) < 0:
            raise ValueError(f"needs {VALIDATION_ERROR!r}, a finite number >= 0 (lower is better)")
        return metrics

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str]) -> dict[str, str]:
        for rel, digest in files.items():
            if _unsafe_path(rel):
                raise ValueError(f"{rel!r} is not a safe relative path inside the set")
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"{rel!r}: {digest!r} is not a lowercase hex sha256")
        return files


class CurrentPointer(BaseModel):
    """``current.json``: which set is promoted; the rest is for people reading the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal[1]
    dir: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # one directory of the store
    ref: str
    validation_error: float
    promoted_at: UtcDatetime
