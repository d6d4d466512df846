"""Store rows as plain dicts for JSON and templates (times as ISO-8601 UTC, probabilities in class order)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import url_for

from cloud.store import DashboardStore, DeviceRow, FaceRow, ResultRow
from contract.emotions import EMOTIONS
from webui.live import LiveHub


def iso_utc(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def result_dict(row: ResultRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "msg_id": row.msg_id,
        "device": row.device_id,
        "seq": row.seq,
        "captured_at": iso_utc(row.captured_at),
        "received_at": iso_utc(row.received_at),
        "frame_number": row.frame_number,
        "source": row.source,
        "model_version": row.model_version,
        "face_count": row.face_count,
        "top_label": row.top_label,
        "top_confidence": row.top_confidence,
        "url": url_for("pages.result_detail", result_id=row.id),
        "frame_url": url_for("assets.result_frame", result_id=row.id),
    }


def face_dict(face: FaceRow) -> dict[str, Any]:
    return {
        "id": face.id,
        "result_id": face.result_id,
        "device": face.device_id,
        "captured_at": iso_utc(face.captured_at),
        "track_id": face.track_id,
        "label": face.label,
        "confidence": face.confidence,
        "probabilities": [face.probabilities[name] for name in EMOTIONS],
        "box": list(face.box),
        "model_version": face.model_version,
        "human_label": face.human_label,
        "crop_url": url_for("assets.face_crop", face_id=face.id) if face.has_crop else None,
    }


def device_dict(row: DeviceRow) -> dict[str, Any]:
    return {
        "device": row.device_id,
        "first_seen": iso_utc(row.first_seen),
        "last_seen": iso_utc(row.last_seen),
        "status": row.status,
        "model_version": row.model_version,
    }


def known_device_ids(store: DashboardStore, hub: LiveHub) -> list[str]:
    """Devices in the store or live now: the choices of the device filters."""
    stored = {row.device_id for row in store.devices()} | set(store.result_device_ids())
    return sorted(stored | set(hub.device_ids()))
