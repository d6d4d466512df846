"""A small file-based model registry: ``<store>/registry.json`` plus the model files.

Pure Python (pydantic, hashlib, json): the edge agent reads it to find and
check the model it runs, and the edge process must never import TensorFlow.

Layout of a store::

    <store>/registry.json          every entry, and the ``current`` version
    <store>/1.0.0/model.tflite     files of one version, paths in the entry are
    <store>/1.0.0/model.keras      relative to <store> so a store can be moved

Writes are atomic (temporary file + ``os.replace``) and serialised with an
advisory lock, so a reader never sees a half-written registry and two writers
(the CLI and the retraining job) do not lose each other's updates.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.emotions import EMOTIONS

REGISTRY_FILENAME = "registry.json"
LOCK_FILENAME = ".registry.lock"
STORE_ENVIRONMENT_VARIABLE = "EMQ_MODEL_STORE"
SCHEMA_VERSION = 1

# MAJOR.MINOR.PATCH only: versions are compared numerically, so pre-release
# suffixes would need ordering rules we have no use for.
_SEMVER_PATTERN = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class RegistryError(Exception):
    """Base class of every error the registry raises."""


class ModelNotFoundError(RegistryError):
    """The requested version (or file kind) is not in the registry."""


class VersionConflictError(RegistryError):
    """A different entry is already registered under this version."""


class ModelVerificationError(RegistryError):
    """A model file is missing or its size or sha256 differs from the registry."""


# In a source checkout, `emq-model import-pretrained` fills models/store/ (git ignores it).
CHECKOUT_STORE = Path(__file__).resolve().parents[1] / "models" / "store"


def default_store() -> Path:
    """The store directory: ``$EMQ_MODEL_STORE`` if set, else the checkout's ``models/store``."""
    configured = os.environ.get(STORE_ENVIRONMENT_VARIABLE)
    return Path(configured) if configured else CHECKOUT_STORE


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_version(version: str) -> tuple[int, int, int]:
    """Split a "MAJOR.MINOR.PATCH" string into integers, for ordering."""
    match = _SEMVER_PATTERN.match(version)
    if match is None:
        raise ValueError(f"version {version!r} is not MAJOR.MINOR.PATCH (e.g. '1.0.0')")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


class _StrictModel(BaseModel):
    """Registry records reject unknown fields, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_StrictModel):
    """What the model expects for one face; the batch dimension is dynamic."""

    shape: tuple[int, int, int] = (64, 64, 1)
    dtype: str = "float32"
    color: str = "grey"
    value_range: tuple[float, float] = (-1.0, 1.0)
    normalization: str = "(x / 255 - 0.5) * 2, see runtime.preprocess.normalize_faces"
    resize: str = "cv2.resize default interpolation (INTER_LINEAR), see runtime.preprocess.resize_faces"


class ModelFile(_StrictModel):
    """One file of a model version, with what is needed to check it."""

    path: str = Field(description="path relative to the store, with '/' separators")
    sha256: str
    size_bytes: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _path_stays_inside_store(cls, path: str) -> str:
        # A relative path without '..' cannot point outside the store.
        parts = PurePosixPath(path).parts
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path:
            raise ValueError(f"file path {path!r} must be relative to the store, '/'-separated, without '..'")
        return path

    @field_validator("sha256")
    @classmethod
    def _is_hex_sha256(cls, sha256: str) -> str:
        if not _SHA256_PATTERN.match(sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return sha256


class ModelEntry(_StrictModel):
    """One registered model version."""

    name: str = Field(min_length=1)
    version: str
    parent: str | None = None
    files: dict[str, ModelFile] = Field(description="by kind: 'tflite' (edge) and 'keras' (training)")
    metrics: dict[str, float] = Field(default_factory=dict)
    data_counts: dict[str, int] = Field(default_factory=dict)
    source: str = Field(min_length=1, description="where the weights came from, in words")
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    labels: tuple[str, ...] = EMOTIONS
    input: InputSpec = Field(default_factory=InputSpec)

    @field_validator("version")
    @classmethod
    def _version_is_semver(cls, version: str) -> str:
        parse_version(version)
        return version

    @field_validator("parent")
    @classmethod
    def _parent_is_semver(cls, parent: str | None) -> str | None:
        if parent is not None:
            parse_version(parent)
        return parent

    @field_validator("created_at")
    @classmethod
    def _created_at_is_utc(cls, created_at: datetime) -> datetime:
        # A naive timestamp is ambiguous once entries come from several hosts.
        if created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (UTC)")
        return created_at.astimezone(timezone.utc)

    @field_validator("labels")
    @classmethod
    def _labels_follow_contract(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        # Every component reads probabilities in the contract's class order; a
        # model with another order would silently mislabel every face.
        if tuple(labels) != EMOTIONS:
            raise ValueError(f"labels must be contract.emotions.EMOTIONS {EMOTIONS}, got {labels}")
        return labels

    @field_validator("files")
    @classmethod
    def _has_files(cls, files: dict[str, ModelFile]) -> dict[str, ModelFile]:
        if not files:
            raise ValueError("an entry needs at least one file")
        return files


class BlockedModel(_StrictModel):
    """A model that must not become current again (it was rolled back), by version and content."""

    version: str
    sha256: str


class RegistryDocument(_StrictModel):
    """The whole content of ``registry.json``.

    The same format serves the build machine's store and a device's store of
    models installed over the air; ``previous`` (where a rollback goes) and
    ``blocked`` (rolled-back releases never to install again) matter on devices.
    """

    schema_version: int = SCHEMA_VERSION
    current: str | None = None
    previous: str | None = None
    blocked: tuple[BlockedModel, ...] = ()
    models: tuple[ModelEntry, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> RegistryDocument:
        versions = [entry.version for entry in self.models]
        if len(versions) != len(set(versions)):
            raise ValueError("a version is registered twice")
        for pointer in ("current", "previous"):
            version = getattr(self, pointer)
            if version is not None and version not in versions:
                raise ValueError(f"{pointer} version {version} is not registered")
        return self


class ModelRegistry:
    """Read and update the registry of one store directory."""

    def __init__(self, store: str | os.PathLike[str] | None = None) -> None:
        self.store = Path(store) if store is not None else default_store()

    @property
    def registry_path(self) -> Path:
        return self.store / REGISTRY_FILENAME

    # -- reading ---------------------------------------------------------

    def versions(self) -> list[str]:
        """Registered versions, oldest (lowest) first."""
        return sorted((entry.version for entry in self._load().models), key=parse_version)

    def entries(self) -> list[ModelEntry]:
        """Registered entries, lowest version first."""
        return sorted(self._load().models, key=lambda entry: parse_version(entry.version))

    def get(self, version: str) -> ModelEntry:
        """The entry of ``version``; raises ModelNotFoundError if it is not registered."""
        return self._find(self._load(), version)

    def current(self) -> ModelEntry | None:
        """The entry the ``current`` pointer names, or None if none is set."""
        document = self._load()
        return None if document.current is None else self._find(document, document.current)

    def path_of(self, entry: ModelEntry, kind: str = "tflite") -> Path:
        """Absolute path of one file of an entry ('tflite' or 'keras')."""
        if kind not in entry.files:
            raise ModelNotFoundError(
                f"model {entry.version} has no {kind!r} file (it has: {', '.join(sorted(entry.files))})"
            )
        return self.store / entry.files[kind].path

    def verify(self, entry: ModelEntry) -> None:
        """Check every file of an entry exists with the registered size and sha256.

        Raises ModelVerificationError naming the first file that does not match.
        """
        for kind, model_file in entry.files.items():
            path = self.store / model_file.path
            if not path.is_file():
                raise ModelVerificationError(f"model {entry.version}: {kind} file {path} is missing")
            size = path.stat().st_size
            if size != model_file.size_bytes:
                raise ModelVerificationError(
                    f"model {entry.version}: {kind} file {path} is {size} bytes, registry says {model_file.size_bytes}"
                )
            actual_sha256 = sha256_file(path)
            if actual_sha256 != model_file.sha256:
                raise ModelVerificationError(
                    f"model {entry.version}: {kind} file {path} has sha256 {actual_sha256}, "
                    f"registry says {model_file.sha256} (corrupted or replaced)"
                )

    def describe_file(self, relative_path: str) -> ModelFile:
        """Record of a file already in the store: its relative path, sha256 and size."""
        path = self.store / relative_path
        return ModelFile(path=relative_path, sha256=sha256_file(path), size_bytes=path.stat().st_size)

    # -- writing ---------------------------------------------------------

    def register(self, entry: ModelEntry, *, replace: bool = False) -> None:
        """Add an entry after checking its files; the parent must be registered.

        Registering the identical entry again is a no-op.  A different entry
        under an existing version raises VersionConflictError unless
        ``replace`` is true (used to repair a version whose files were rebuilt).
        """
        self.verify(entry)
        with self._locked():
            document = self._load()
            others = [existing for existing in document.models if existing.version != entry.version]
            if len(others) != len(document.models):
                existing = self._find(document, entry.version)
                if existing == entry:
                    return
                if not replace:
                    raise VersionConflictError(f"version {entry.version} is already registered with different content")
            if entry.parent is not None and entry.parent not in {other.version for other in others}:
                raise ModelNotFoundError(f"parent version {entry.parent} of {entry.version} is not registered")
            self._save(document.model_copy(update={"models": (*others, entry)}))

    def set_current(self, version: str, previous: str | None = None) -> None:
        """Point ``current`` at a registered version (the one the edge will run), and ``previous`` if given."""
        with self._locked():
            document = self._load()
            self._find(document, version)
            if previous is not None:
                self._find(document, previous)
            self._save(document.model_copy(update={"current": version, "previous": previous}))

    def previous(self) -> ModelEntry | None:
        document = self._load()
        return None if document.previous is None else self._find(document, document.previous)

    def block(self, version: str, sha256: str) -> None:
        """Remember never to make this model current again."""
        with self._locked():
            document = self._load()
            blocked = {item for item in document.blocked} | {BlockedModel(version=version, sha256=sha256)}
            self._save(document.model_copy(update={"blocked": tuple(sorted(blocked, key=lambda item: (item.version, item.sha256)))}))

    def blocked(self) -> set[tuple[str, str]]:
        return {(item.version, item.sha256) for item in self._load().blocked}

    # -- internals -------------------------------------------------------

    @staticmethod
    def _find(document: RegistryDocument, version: str) -> ModelEntry:
        for entry in document.models:
            if entry.version == version:
                return entry
        known = ", ".join(sorted((e.version for e in document.models), key=parse_version)) or "none"
        raise ModelNotFoundError(f"model version {version} is not registered (registered: {known})")

    def _load(self) -> RegistryDocument:
        """Parse registry.json; a store without one is an empty registry."""
        try:
            text = self.registry_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return RegistryDocument()
        try:
            document = RegistryDocument.model_validate_json(text)
        except ValidationError as error:
            raise RegistryError(f"{self.registry_path} is not a valid registry: {error}") from error
        if document.schema_version != SCHEMA_VERSION:
            raise RegistryError(
                f"{self.registry_path} has schema version {document.schema_version}, "
                f"this code reads version {SCHEMA_VERSION}"
            )
        return document

    def _save(self, document: RegistryDocument) -> None:
        """Write registry.json atomically: a temporary file in the store, then os.replace."""
        self.store.mkdir(parents=True, exist_ok=True)
        text = json.dumps(document.model_dump(mode="json"), indent=2) + "\n"
        file_descriptor, temporary_name = tempfile.mkstemp(prefix=".registry-", suffix=".json", dir=self.store)
        try:
            with os.fdopen(file_descriptor, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                # Data on disk before the rename, so a crash leaves old or new, never empty.
                os.fsync(stream.fileno())
            os.replace(temporary_name, self.registry_path)
        except BaseException:
            Path(temporary_name).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive advisory lock for a read-modify-write of the registry."""
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self.store / LOCK_FILENAME, "a+b") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


MODEL_NAME = "mini_xception_fer2013"
PRETRAINED_VERSION = "1.0.0"


def verified_entry(registry: ModelRegistry, version: str) -> ModelEntry | None:
    """The registered ``version`` if its files verify; None if absent or broken (then rebuild it)."""
    if version not in registry.versions():
        return None
    entry = registry.get(version)
    try:
        registry.verify(entry)
    except ModelVerificationError as error:
        logging.getLogger(__name__).warning("registered %s fails verification (%s); it must be rebuilt", version, error)
        return None
    return entry
