"""Errors of the model layer, under the project's one root error.

Artifact errors are also contract errors: a model set on disk is an artifact with a contract
(its manifest), so a caller that already handles ``ContractError`` handles these too.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.exceptions import ContractError, GridstreamError


class ModelError(GridstreamError):
    """Root of the errors raised by ``models/``."""


class ArtifactError(ModelError, ContractError):
    """A model set cannot be saved, read or deserialised."""


class ManifestError(ArtifactError):
    """A manifest is missing, malformed, of an unknown format, or disagrees with its directory."""


class TamperedArtifact(ArtifactError):
    """A file's sha256 differs from the one in the manifest: corrupted or tampered."""

    def __init__(self, model_set: str, file: str, expected: str, actual: str) -> None:
        self.model_set = model_set
        self.file = file
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"model set {model_set}: file {file!r} has sha256 {actual[:12]}..., the manifest "
            f"says {expected[:12]}...; refusing to load a corrupted or tampered set"
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, str, str]]:
        return (type(self), (self.model_set, self.file, self.expected, self.actual))


class IncompatibleModel(ModelError):
    """A model set was trained on other features than the ones the caller provides."""

    def __init__(
        self,
        model_set: str,
        missing: Sequence[str],
        unexpected: Sequence[str],
        reordered: bool,
    ) -> None:
        self.model_set = model_set
        self.missing = tuple(missing)  # the model needs them, the caller does not provide them
        self.unexpected = tuple(unexpected)  # the caller provides them, the model never saw them
        self.reordered = reordered
        parts = []
        if self.missing:
            parts.append(f"missing features {list(self.missing)}")
        if self.unexpected:
            parts.append(f"features it was not trained on {list(self.unexpected)}")
        if reordered:
            parts.append("the same features in another order")
        super().__init__(f"model set {model_set} is incompatible: " + "; ".join(parts))

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.model_set, self.missing, self.unexpected, self.reordered))
