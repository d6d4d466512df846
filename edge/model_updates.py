"""Model releases over MQTT: receive, verify, install between frames, remember across restarts.

The retraining job publishes, retained, the model bytes on ``…/models/blob``
and then a manifest on ``…/models/release`` (or the same under one device's
``model/`` for a targeted rollout). Only the ``retrain`` identity may write
there (broker ACL). The network thread only keeps the latest manifest and
blob; the agent thread installs a pair whose sha256 matches, so a release
with a bad checksum is refused and the device keeps its current model.

Installed models live in the device's model store, ``<data_dir>/<device>/models/``,
in the same format as the build machine's (:mod:`runtime.registry`:
``registry.json`` plus ``<version>/model.tflite``, each file with its sha256).
Its ``current`` and ``previous`` pointers say what runs after a restart and
where a rollback goes (the built-in model is copied in on the first install,
so the store is complete on its own); ``blocked`` lists rolled-back releases
that a retained manifest must not install again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from comms.transport import Message, Transport
from contract.messages import ModelRelease
from contract.topics import Topics
from contract.validation import ContractError, parse_model_release
from edge.model import LoadedModel, ModelSlot, ModelUnavailable, load_tflite
from runtime.registry import ModelEntry, ModelRegistry, RegistryError, sha256_file

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 4 * 1024 * 1024
MODEL_FILE = "model.tflite"


@dataclass
class Pending:
    manifest: ModelRelease | None = None
    blob: bytes | None = None


class ModelUpdates:
    def __init__(self, topics: Topics, device_id: str, model_dir: Path, num_threads: int) -> None:
        self.topics = topics
        self.device_id = device_id
        self.model_dir = model_dir
        self.store = ModelRegistry(model_dir)
        self.num_threads = num_threads
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {"fleet": Pending(), "device": Pending()}
        self._refused: set[tuple[str, str]] = set()

    # -- network thread: keep the latest halves ----------------------------------------
    def subscribe(self, client: Transport) -> None:
        client.subscribe(self.topics.model_release, lambda message: self._on_manifest("fleet", message))
        client.subscribe(self.topics.model_blob, lambda message: self._on_blob("fleet", message))
        client.subscribe(self.topics.device_model_release(self.device_id), lambda message: self._on_manifest("device", message))
        client.subscribe(self.topics.device_model_blob(self.device_id), lambda message: self._on_blob("device", message))

    def _on_manifest(self, scope: str, message: Message) -> None:
        try:
            manifest = parse_model_release(message.payload)
        except ContractError as error:
            self.last_error = f"invalid model release: {error.reason}"
            log.warning(self.last_error)
            return
        with self._lock:
            self._pending[scope].manifest = manifest

    def _on_blob(self, scope: str, message: Message) -> None:
        if len(message.payload) > MAX_MODEL_BYTES:
            self.last_error = f"model blob of {len(message.payload)} bytes is over the {MAX_MODEL_BYTES} limit"
            log.warning(self.last_error)
            return
        with self._lock:
            self._pending[scope].blob = bytes(message.payload)

    # -- agent thread: verify and install -------------------------------------------------
    def install_ready(self, slot: ModelSlot) -> str | None:
        """Install a complete, verified release newer than the slot's model; returns its version."""
        # A release aimed at this device wins over the fleet's.
        for scope in ("device", "fleet"):
            with self._lock:
                pending = self._pending[scope]
                manifest, blob = pending.manifest, pending.blob
            if manifest is None or blob is None or manifest.version == slot.version:
                continue
            if (manifest.version, manifest.sha256) in self._refused:
                continue
            if hashlib.sha256(blob).hexdigest() != manifest.sha256 or len(blob) != manifest.size:
                self._refuse(manifest, "checksum or size does not match the manifest")
                continue
            try:
                loaded = self._install(manifest, blob)
            except (ModelUnavailable, ValueError, RuntimeError, OSError) as error:
                self._refuse(manifest, f"does not load: {error}")
                continue
            slot.swap(loaded)
            self.remember(slot)
            self.last_error = None
            log.info("model %s %s installed (%s release); previous %s kept for rollback", manifest.name, manifest.version, scope, slot.previous.version)
            return manifest.version
        return None

    def _refuse(self, manifest: ModelRelease, reason: str) -> None:
        self._refused.add((manifest.version, manifest.sha256))
        self.last_error = f"model release {manifest.version} refused: {reason}"
        log.error("%s; keeping the current model", self.last_error)

    def _install(self, manifest: ModelRelease, blob: bytes) -> LoadedModel:
        relative = f"{manifest.version}/{MODEL_FILE}"
        path = self.model_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial")
        temporary.write_bytes(blob)
        temporary.replace(path)
        loaded = load_tflite(manifest.name, manifest.version, path, self.num_threads)  # proves it runs first
        entry = ModelEntry(
            name=manifest.name, version=manifest.version, files={"tflite": self.store.describe_file(relative)},
            metrics=manifest.metrics, source=f"release over MQTT (parent {manifest.parent or 'none'})",
        )
        self._register(entry)
        return loaded

    def _register(self, entry: ModelEntry) -> None:
        try:
            self.store.register(entry, replace=True)  # a re-release of a version replaces what we had
        except (RegistryError, ValueError) as error:
            raise ModelUnavailable(f"cannot record model {entry.version} in {self.model_dir}: {error}") from None

    # -- across restarts -------------------------------------------------------------------
    def block(self, model: LoadedModel) -> None:
        """Never re-install this model from a retained release (it was rolled back)."""
        sha256 = sha256_file(model.path)
        self._refused.add((model.version, sha256))
        self.store.block(model.version, sha256)

    def remember(self, slot: ModelSlot) -> None:
        """Record which models are current and previous, copying in any that are not in the store yet."""
        for model in (slot.current, slot.previous):
            if model is not None:
                self._adopt(model)
        self.store.set_current(slot.current.version, slot.previous.version if slot.previous else None)

    def _adopt(self, model: LoadedModel) -> None:
        """Make sure the device store holds this model's file (the built-in one comes from elsewhere)."""
        relative = f"{model.version}/{MODEL_FILE}"
        target = self.model_dir / relative
        if target.resolve() != model.path.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model.path, target.with_suffix(".partial"))
            target.with_suffix(".partial").replace(target)
        file = self.store.describe_file(relative)
        if model.version in self.store.versions() and self.store.get(model.version).files.get("tflite") == file:
            return
        self._register(ModelEntry(name=model.name, version=model.version, files={"tflite": file},
                                  source=f"copied from {model.path} when a release was installed"))

    def restore(self, slot: ModelSlot) -> None:
        """After a restart: go back to the model that was current, if its file still verifies."""
        try:
            self._refused.update(self.store.blocked())
            current, previous = self.store.current(), self.store.previous()
            if current is None:
                return
            loaded = self._load_entry(current)
            before = self._load_entry(previous) if previous is not None else None
        except (RegistryError, ValueError, OSError, ModelUnavailable) as error:
            log.warning("ignoring the device model store %s: %s", self.model_dir, error)
            return
        if loaded.version != slot.version:
            slot.current, slot.previous = loaded, before or slot.current
            log.info("restored installed model %s (previous %s)", loaded.version, slot.previous.version)

    def _load_entry(self, entry: ModelEntry) -> LoadedModel:
        self.store.verify(entry)
        return load_tflite(entry.name, entry.version, self.store.path_of(entry), self.num_threads)
