"""Model releases over MQTT: receive, verify, install between frames, remember across restarts.

The retraining job publishes, retained, the model bytes on ``…/models/blob``
and then a manifest on ``…/models/release`` (or the same under one device's
``model/`` for a targeted rollout). Only the ``retrain`` identity may write
there (broker ACL). The network thread only keeps the latest manifest and
blob; the agent thread installs a pair whose sha256 matches, so a release
with a bad checksum is refused and the device keeps its current model.

Installed models live in ``<data_dir>/<device>/models/`` with a small
``installed.json`` naming the current and previous versions, so a restart
keeps the new model and a rollback has somewhere to go.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from comms.mqtt import Message, MqttClient
from contract.messages import ModelRelease
from contract.topics import Topics
from contract.validation import ContractError, parse_model_release
from edge.model import LoadedModel, ModelSlot, ModelUnavailable, load_tflite

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 4 * 1024 * 1024
POINTER = "installed.json"


@dataclass
class Pending:
    manifest: ModelRelease | None = None
    blob: bytes | None = None


class ModelUpdates:
    def __init__(self, topics: Topics, device_id: str, model_dir: Path, num_threads: int) -> None:
        self.topics = topics
        self.device_id = device_id
        self.model_dir = model_dir
        self.num_threads = num_threads
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {"fleet": Pending(), "device": Pending()}
        self._refused: set[tuple[str, str]] = set()

    # -- network thread: keep the latest halves ----------------------------------------
    def subscribe(self, client: MqttClient) -> None:
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
        self.model_dir.mkdir(parents=True, exist_ok=True)
        path = self.model_dir / f"{manifest.version}.tflite"
        temporary = path.with_suffix(".partial")
        temporary.write_bytes(blob)
        temporary.replace(path)
        return load_tflite(manifest.name, manifest.version, path, self.num_threads)

    # -- across restarts -------------------------------------------------------------------
    def block(self, model: LoadedModel) -> None:
        """Never re-install this model from a retained release (it was rolled back)."""
        self._refused.add((model.version, _sha256(model.path)))

    def remember(self, slot: ModelSlot) -> None:
        """Write which installed models are current and previous (registry models are not files here)."""
        def describe(model: LoadedModel | None) -> dict | None:
            if model is None:
                return None
            return {"name": model.name, "version": model.version, "path": str(model.path), "sha256": _sha256(model.path)}

        self.model_dir.mkdir(parents=True, exist_ok=True)
        document = {
            "current": describe(slot.current),
            "previous": describe(slot.previous),
            "blocked": sorted([version, sha] for version, sha in self._refused),
        }
        temporary = self.model_dir / f".{POINTER}.partial"
        temporary.write_text(json.dumps(document, indent=2))
        temporary.replace(self.model_dir / POINTER)

    def restore(self, slot: ModelSlot) -> None:
        """After a restart: go back to the model that was current, if its file still verifies."""
        pointer = self.model_dir / POINTER
        if not pointer.exists():
            return
        try:
            document = json.loads(pointer.read_text())
            self._refused.update((version, sha) for version, sha in document.get("blocked", []))
            previous = self._load_described(document.get("previous"))
            current = self._load_described(document.get("current"))
        except (ValueError, OSError, ModelUnavailable) as error:
            log.warning("ignoring %s: %s", pointer, error)
            return
        if current is not None and current.version != slot.version:
            slot.current, slot.previous = current, previous or slot.current
            log.info("restored installed model %s (previous %s)", current.version, slot.previous.version)

    def _load_described(self, described: dict | None) -> LoadedModel | None:
        if not described:
            return None
        path = Path(described["path"])
        if not path.exists() or _sha256(path) != described["sha256"]:
            raise ModelUnavailable(f"{path} is missing or changed")
        return load_tflite(described["name"], described["version"], path, self.num_threads)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
