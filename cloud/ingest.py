"""Cloud ingest: every device's results, frames, status and stats into the store. Loses nothing.

How nothing is lost:
* a fixed client id and a persistent MQTT 5 session (``clean_start=False``,
  long session expiry), QoS 1, so the broker keeps what arrives while we are away;
* **manual acknowledgement**: a message is acknowledged only after the
  transaction holding it has committed. Killed mid-batch, we get the batch
  again after restarting;
* idempotent on ``msg_id``: a redelivered result is stored once.

How bad input is survived: each message is handled inside its own savepoint;
anything the contract rejects (or that fails to decode) becomes a quarantine
record with the reason, a counter and a log line, and the rest of the batch
commits. Nothing is written outside the data folder (:mod:`cloud.files`).
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import imageio.v3 as iio

from cloud.config import IngestConfig
from cloud.files import DataFolder, UnsafePath
from cloud.metrics import IngestMetrics
from cloud.retention import sweep
from cloud.store import NewFrame, NewResult, Store, epoch
from comms.mqtt import Message, MqttClient
from contract.topics import Channel, InvalidDeviceId, Topics
from contract.validation import ContractError, FrameMeta, parse_frame, parse_result, parse_stats, parse_status

log = logging.getLogger(__name__)

SUBSCRIBED = (Channel.RESULT, Channel.FRAME, Channel.STATUS, Channel.STATS)
QUARANTINE_LOGS_PER_MINUTE = 20
DB_RETRY_S = 1.0
_JPEG_END = b"\xff\xd9"


class Rejected(Exception):
    """A message that goes to quarantine; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class IngestCounters:
    stored: Counter = field(default_factory=Counter)
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    last_lag_s: float = 0.0

    def snapshot(self) -> dict:
        return {
            "results": self.stored["result"], "frames": self.stored["frame"], "status": self.stored["status"],
            "stats": self.stored["stats"], "duplicates": self.duplicates, "quarantined": self.quarantined,
            "batches": self.batches, "lag_s": round(self.last_lag_s, 3),
        }


def subscription_filters(topics: Topics, shared_group: str | None) -> list[str]:
    filters = [topics.all_devices(channel) for channel in SUBSCRIBED]
    return [f"$share/{shared_group}/{topic_filter}" for topic_filter in filters] if shared_group else filters


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """Check that the bytes are a whole JPEG and return (width, height).

    imageio (Pillow) reads the header, which proves it is a JPEG with sane
    dimensions; the end-of-image marker catches truncated files. A full
    decode would cost ~2.7 ms per 640x360 frame, 15x more, for no extra safety
    here: the browser and the retraining job decode what they use.
    """
    try:
        properties = iio.improps(jpeg, plugin="pillow", extension=".jpg")
    except Exception as error:  # imageio raises many types for garbage
        raise Rejected(f"frame is not a decodable JPEG: {type(error).__name__}") from None
    if len(properties.shape) not in (2, 3) or min(properties.shape[:2]) < 1:
        raise Rejected("frame decodes to something that is not an image")
    if not jpeg.rstrip(b"\x00").endswith(_JPEG_END):
        raise Rejected("frame JPEG is truncated (no end-of-image marker)")
    return properties.shape[1], properties.shape[0]


class IngestService:
    def __init__(self, config: IngestConfig, stop_event: threading.Event | None = None) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.topic_prefix)
        self.stop_event = stop_event or threading.Event()
        self.counters = IngestCounters()
        self.metrics = IngestMetrics()
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.store: Store | None = None
        self.files = DataFolder(config.data_dir)
        self.client: MqttClient | None = None
        self._quarantine_log_budget = (time.monotonic(), 0)
        self._seen: dict[str, tuple[float, int, str]] = {}
        self._pending: list[NewResult] = []
        self._handlers = {
            Channel.RESULT: self._store_result,
            Channel.FRAME: self._store_frame,
            Channel.STATUS: self._store_status,
            Channel.STATS: self._store_stats,
        }

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.store = Store(self.config.database_url)
        self.client = MqttClient(self.config.mqtt, manual_ack=True)
        for topic_filter in subscription_filters(self.topics, self.config.shared_group):
            self.client.subscribe(topic_filter, self.inbox.put, qos=1)
        self.client.start()
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_address)
        log.info(
            "ingest %s: store %s, data %s, broker %s:%s%s", self.config.mqtt.client_id, self.store.db.url.redacted(),
            self.files.root, self.config.mqtt.host, self.config.mqtt.port,
            f", shared group {self.config.shared_group}" if self.config.shared_group else "",
        )

    def stop(self) -> None:
        if self.client is not None:
            self.client.stop(announce_stopped=False)
        log.info("ingest totals: %s", json.dumps(self.counters.snapshot()))
        if self.store is not None:
            self.store.close()

    def run(self) -> None:
        self.start()
        try:
            self._loop()
        finally:
            self.stop()

    def _loop(self) -> None:
        last_report = last_sweep = time.monotonic()
        while not self.stop_event.is_set():
            batch = self._next_batch()
            if batch:
                self._commit_with_retry(batch)
            now = time.monotonic()
            if now - last_report >= self.config.report_interval_s:
                log.info("ingest totals: %s", json.dumps(self.counters.snapshot()))
                last_report = now
            if self.config.retention.enabled and now - last_sweep >= self.config.retention.interval_s:
                self._sweep()
                last_sweep = now

    def _sweep(self) -> None:
        try:
            sweep(self.store, self.files, self.config.retention)
        except Exception:  # retention must never stop ingestion
            log.exception("retention sweep failed")

    # -- batching ---------------------------------------------------------------------------
    def _next_batch(self) -> list[Message]:
        try:
            batch = [self.inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.config.batch_wait_ms / 1000.0
        while len(batch) < self.config.batch_max:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=remaining) if remaining > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _commit_with_retry(self, batch: list[Message]) -> None:
        """Store the batch in one transaction, then acknowledge it. A database outage is retried, never acked."""
        while not self.stop_event.is_set():
            try:
                self.process_batch(batch)
            except Exception:
                log.exception("storing a batch of %d failed; retrying in %.0f s (nothing acknowledged)", len(batch), DB_RETRY_S)
                self.stop_event.wait(DB_RETRY_S)
                continue
            for message in batch:
                self.client.ack(message)
            return

    def process_batch(self, batch: list[Message]) -> None:
        started = time.perf_counter()
        received_at = time.time()
        self._seen, self._pending = {}, []
        with self.store.transaction():
            for message in batch:
                self._process_one(message, received_at)
            stored = self.store.add_results(self._pending, received_at)
            for device_id, (seen_at, seq, model_version) in self._seen.items():
                self.store.touch_device(device_id, seen_at, seq, model_version)
        self.counters.stored["result"] += stored
        self.counters.duplicates += len(self._pending) - stored
        self.counters.batches += 1
        self._update_metrics(stored, time.perf_counter() - started)

    def _update_metrics(self, results_stored: int, seconds: float) -> None:
        self.metrics.stored.labels("result").inc(results_stored)
        self.metrics.duplicates.inc(len(self._pending) - results_stored)
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.lag_seconds.set(self.counters.last_lag_s)
        self.metrics.queue_depth.set(self.inbox.qsize())

    # -- one message ---------------------------------------------------------------------------
    def _process_one(self, message: Message, received_at: float) -> None:
        try:
            with self.store.db.savepoint():
                self._dispatch(message, received_at)
        except Rejected as rejected:
            self._quarantine(message, rejected.reason, received_at)
        except self.store.db.errors:
            raise  # the database failed, not the message: fail the batch, retry, acknowledge nothing
        except Exception as error:  # a bug must not lose the batch: keep the whole message, with the reason
            log.exception("unexpected error on %s", message.topic)
            self._quarantine(message, f"internal error: {type(error).__name__}: {error}", received_at, keep_whole=True)

    def _dispatch(self, message: Message, received_at: float) -> None:
        try:
            parsed = self.topics.parse(message.topic)
        except InvalidDeviceId as error:
            raise Rejected(str(error)) from None
        if parsed is None or parsed.channel not in self._handlers:
            raise Rejected("not a device data topic")
        try:
            self._handlers[parsed.channel](parsed.device_id, message, received_at)
        except ContractError as error:
            raise Rejected(error.reason) from None
        except (UnsafePath, InvalidDeviceId) as error:
            raise Rejected(str(error)) from None

    def _quarantine(self, message: Message, reason: str, received_at: float, keep_whole: bool = False) -> None:
        self.store.quarantine(message.topic, reason, message.payload, received_at, keep_whole=keep_whole)
        self.counters.quarantined += 1
        self.metrics.quarantined.inc()
        started, logged = self._quarantine_log_budget
        if time.monotonic() - started > 60:
            started, logged = time.monotonic(), 0
        if logged < QUARANTINE_LOGS_PER_MINUTE:
            log.warning("quarantined %s (%d bytes): %s", message.topic[:120], len(message.payload), reason)
        self._quarantine_log_budget = (started, logged + 1)

    # -- per channel ------------------------------------------------------------------------------
    def _store_result(self, device_id: str, message: Message, received_at: float) -> None:
        """Validate now; the batch's results are inserted together at the end (see process_batch)."""
        result = parse_result(message.payload, expected_device=device_id)
        self.counters.last_lag_s = max(received_at - epoch(result.captured_at), 0.0)
        crops = [base64.b64decode(face.crop_png_b64) if face.crop_png_b64 else None for face in result.faces]
        # The stored JSON keeps everything but the pixels, which go to the faces' crop column.
        document = result.model_dump_json(by_alias=True, exclude={"faces": {"__all__": {"crop_png_b64"}}})
        self._pending.append(NewResult(result, crops, document))
        self._seen[device_id] = (received_at, result.seq, result.model.version)

    def _store_frame(self, device_id: str, message: Message, received_at: float) -> None:
        jpeg = parse_frame(message.payload)
        width, height = jpeg_size(jpeg)
        if not self.config.store_frames:
            return
        meta = FrameMeta.from_properties(list(message.user_properties)) if message.user_properties else None
        captured_at = epoch(meta.captured_at) if meta else received_at
        frame_number = meta.frame_number if meta else 0
        stamp = time.strftime("%H%M%S", time.gmtime(captured_at)) + f"{int(captured_at * 1000) % 1000:03d}"
        relative = self.files.relative_path("frames", device_id, captured_at, f"{stamp}-f{frame_number}.jpg")
        self.files.write(relative, jpeg)
        self.metrics.stored.labels("frame").inc()
        self.store.add_frame(
            NewFrame(device_id, frame_number, captured_at, (meta.result_msg_id or None) if meta else None,
                     width, height, len(jpeg), relative.as_posix()),
            received_at,
        )
        self.counters.stored["frame"] += 1

    def _store_status(self, device_id: str, message: Message, received_at: float) -> None:
        status = parse_status(message.payload)
        self.store.set_device_status(device_id, status, received_at)
        self.metrics.set_status(device_id, status)
        self.counters.stored["status"] += 1

    def _store_stats(self, device_id: str, message: Message, received_at: float) -> None:
        stats = parse_stats(message.payload, expected_device=device_id)
        self.store.set_device_stats(device_id, stats.model_dump_json(by_alias=True), received_at)
        self.metrics.bridge_stats(stats)
        self.counters.stored["stats"] += 1
