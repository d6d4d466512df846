"""Retention: bound the disk the data folder uses, without ever deleting a labelled crop.

* frames older than ``frame_max_age_days`` go;
* a device over ``frame_max_bytes_per_device`` loses its oldest frames first;
* unlabelled face crops older than ``crop_max_age_days`` go (their face rows
  stay, without the picture); a crop somebody labelled is kept forever,
  since labels are what retraining is made of;
* quarantine records older than ``quarantine_max_age_days`` go, and beyond
  ``quarantine_max_rows`` the oldest go (the ingest also trims to that cap
  between sweeps, so a flood of bad input cannot outgrow it by much).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cloud.config import RetentionSettings
from cloud.files import DataFolder
from cloud.store import RetentionStore as Store

log = logging.getLogger(__name__)

DAY_S = 86400.0
BATCH = 1000


@dataclass
class SweepReport:
    frames_deleted: int = 0
    crops_deleted: int = 0
    bytes_freed: int = 0
    quarantine_deleted: int = 0


def _delete_frames(store: Store, files: DataFolder, frames, report: SweepReport) -> None:
    # Files first: a crash in between leaves a row whose file is gone (the dashboard says so),
    # never a file no row names (which nothing would ever delete). Frames kept in the
    # database go with their rows (frame_data cascades).
    for frame in frames:
        report.bytes_freed += frame.size_bytes if frame.in_database else files.delete(frame.path)
    with store.transaction():
        store.delete_frames(frame.id for frame in frames)
    report.frames_deleted += len(frames)


def expire_old_frames(store: Store, files: DataFolder, settings: RetentionSettings, now: float, report: SweepReport) -> None:
    before = now - settings.frame_max_age_days * DAY_S
    while frames := store.frames_older_than(before, BATCH):
        _delete_frames(store, files, frames, report)


def cap_frame_bytes(store: Store, files: DataFolder, settings: RetentionSettings, report: SweepReport) -> None:
    for device_id, used in store.frame_bytes_by_device().items():
        while used > settings.frame_max_bytes_per_device:
            oldest = store.oldest_frames(device_id, BATCH)
            if not oldest:
                break
            victims, freed = [], 0
            for frame in oldest:
                if used - freed <= settings.frame_max_bytes_per_device:
                    break
                victims.append(frame)
                freed += frame.size_bytes
            _delete_frames(store, files, victims, report)
            used -= freed


def expire_unlabelled_crops(store: Store, settings: RetentionSettings, now: float, report: SweepReport) -> None:
    before = now - settings.crop_max_age_days * DAY_S
    while face_ids := store.unlabelled_crops_older_than(before, BATCH):
        with store.transaction():
            store.forget_crops(face_ids)
        report.crops_deleted += len(face_ids)


def expire_quarantine(store: Store, settings: RetentionSettings, now: float, report: SweepReport) -> None:
    before = now - settings.quarantine_max_age_days * DAY_S
    while True:
        with store.transaction():
            deleted = store.delete_quarantine_older_than(before, BATCH)
        report.quarantine_deleted += deleted
        if deleted < BATCH:
            return


def cap_quarantine(store: Store, settings: RetentionSettings, report: SweepReport) -> None:
    with store.transaction():
        report.quarantine_deleted += store.cap_quarantine(settings.quarantine_max_rows)


def sweep(store: Store, files: DataFolder, settings: RetentionSettings, now: float | None = None) -> SweepReport:
    now = time.time() if now is None else now
    report = SweepReport()
    expire_old_frames(store, files, settings, now, report)
    cap_frame_bytes(store, files, settings, report)
    expire_unlabelled_crops(store, settings, now, report)
    expire_quarantine(store, settings, now, report)
    cap_quarantine(store, settings, report)
    if report.frames_deleted or report.crops_deleted or report.quarantine_deleted:
        log.info("retention: deleted %d frames, %d crops and %d quarantine records, freed %d bytes",
                 report.frames_deleted, report.crops_deleted, report.quarantine_deleted, report.bytes_freed)
    return report
