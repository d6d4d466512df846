"""Cloud ingest: every device's results, frames, status and stats into the store. Loses nothing.

How nothing is lost:
* a fixed client id and a persistent MQTT 5 session (``clean_start=False``,
  long session expiry), QoS 1, so the broker keeps what arrives while we are away;
* **manual acknowledgement**: a message is acknowledged only after the
  transaction holding it has committed. Killed mid-batch, we get the batch
  again after restarting;
* idempotent on ``msg_id`` and on ``(device_id, epoch, seq)``: a redelivered
  or resent result is stored once;
* **end to end**: after each commit it publishes, per device, the retained
  *stored mark* (:mod:`cloud.marks`): the highest seq of an epoch up to which
  everything is committed. Only that lets an edge forget a result; a broker
  acknowledgement does not survive a broker crash.

How bad input is survived: a batch is first judged message by message
against the contract, touching neither database nor disk; anything rejected
(or failing to decode) becomes a quarantine record with the reason, a counter
and a log line, and the rest of the batch commits. Should storing trip on a
fault that is not the database's, the batch is stored again one message per
savepoint so only the culprit is quarantined. Nothing is written outside the
data folder (:mod:`cloud.files`), and a flood of bad input cannot fill the
disk or the log: a quarantine record keeps the payload's first bytes, size
and SHA-256, never the payload; records are capped in number and age
(:mod:`cloud.retention`); log lines are rate-limited per reason and a
traceback is shown once per cause (:mod:`cloud.ratelimit`).

How it keeps up (``bench/bench_ingest.py``): paho's network thread leaves
messages in a :class:`~cloud.inbox.BatchInbox`; the main thread validates a
batch while a writer thread commits the previous one in a few multi-row
statements and acknowledges it with one write.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from cloud.config import IngestConfig
from cloud.files import DataFolder, UnsafePath
from cloud.inbox import BatchInbox
from cloud.jpeg import NotAJpeg, jpeg_size
from cloud.marks import MarkPublisher, mqtt_publisher
from cloud.metrics import IngestMetrics
from cloud.ratelimit import RateLimitedLog
from cloud.retention import sweep
from cloud.store import IngestStore, NewFrame, NewResult, RetentionStore
from comms.mqtt import MqttClient
from comms.transport import Availability, Message, Transport
from contract.topics import Channel, InvalidDeviceId, Topics
from contract.messages import Stats, utc_millis_epoch
from contract.validation import ContractError, FrameMeta, parse_frame, parse_result, parse_stats, parse_status

log = logging.getLogger(__name__)

SUBSCRIBED = (Channel.RESULT, Channel.FRAME, Channel.STATUS, Channel.STATS)
FRAME_NAME_DIGEST_CHARS = 32  # 128 bits of the JPEG's SHA-256: no two different frames share a name
DB_RETRY_S = 1.0
RETIRE_QUIET_S = 3.0  # a retiring worker's session is drained once nothing has arrived for this long
RETIRE_CONNECT_S = 30.0
_SWEEP, _STOP = object(), object()  # writer-thread orders besides batches


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


def frame_size(jpeg: bytes, max_width: int, max_height: int) -> tuple[int, int]:
    """(width, height) of a whole JPEG frame of sane size, or Rejected (see :mod:`cloud.jpeg`).

    The size is what the header declares: a tiny file may claim 65535x65535,
    which would make whoever decodes it later allocate gigabytes.
    """
    try:
        width, height = jpeg_size(jpeg)
    except NotAJpeg as error:
        raise Rejected(f"frame is not a decodable JPEG: {error}") from None
    if width > max_width or height > max_height:
        raise Rejected(f"frame too large: its JPEG header declares {width}x{height}, the limit is {max_width}x{max_height}")
    return width, height


def frame_file_name(captured_at: float, frame_number: int, jpeg: bytes) -> str:
    """``<HHMMSSmmm>-f<number>-<digest>.jpg``: readable, and unique to the frame's bytes.

    Two different frames stamped with the same millisecond and number get two
    names; the same frame delivered twice gets the same name, and is stored once.
    """
    moment = datetime.fromtimestamp(captured_at, timezone.utc)
    stamp = moment.strftime("%H%M%S") + f"{moment.microsecond // 1000:03d}"
    return f"{stamp}-f{frame_number}-{hashlib.sha256(jpeg).hexdigest()[:FRAME_NAME_DIGEST_CHARS]}.jpg"


def _calm_the_garbage_collector() -> None:
    """Keep CPython's cycle collector from rescanning the same objects thousands of times a second.

    Every message allocates a few dozen short-lived objects, so the default
    thresholds run a young collection every few messages, and older ones keep
    walking every long-lived object loaded at start-up (paho, pydantic schemas,
    SQL drivers): ~5 % of the ingest's CPU under load. Objects alive now are
    frozen out of collection for good, and collections run less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


class IngestService:
    def __init__(self, config: IngestConfig, stop_event: threading.Event | None = None) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.topic_prefix)
        self.stop_event = stop_event or threading.Event()
        self.counters = IngestCounters()
        self.metrics = IngestMetrics()
        self.inbox: BatchInbox[Message] = BatchInbox(config.batch_max)
        self._planned: queue.Queue = queue.Queue(maxsize=2)  # validated batches waiting for the writer thread
        self.store: IngestStore | None = None
        self.retention: RetentionStore | None = None
        self.files = DataFolder(config.data_dir)
        self.client: Transport | None = None
        self.marks: MarkPublisher | None = None
        self.bad_input_log = RateLimitedLog(log, config.bad_input_log_interval_s)
        self._quarantined_since_trim = 0
        self._planners = {
            Channel.RESULT: self._plan_result,
            Channel.FRAME: self._plan_frame,
            Channel.STATUS: self._plan_status,
            Channel.STATS: self._plan_stats,
        }

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.open_store()
        _calm_the_garbage_collector()
        # Retained online/offline(LWT)/stopped: an edge that sees a worker come online resends
        # what the cloud has not confirmed (the broker may have lost it meanwhile).
        availability = Availability(self.topics.service_status(self.config.identity))
        self.client = MqttClient(self.config.mqtt, manual_ack=True, availability=availability)
        self.marks = self._mark_publisher()
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

    def retire(self, quiet_s: float = RETIRE_QUIET_S) -> dict:
        """Take this worker out of service for good, leaving nothing behind in the broker.

        While a worker with a persistent session is away, the broker keeps its
        round-robin share of a shared subscription for it (Mosquitto does), to
        deliver when it comes back. A worker that will not come back hands that
        share in here: it connects under its own client id, ends its
        subscriptions (no new messages come its way), stores and acknowledges
        what the session still holds until nothing has arrived for ``quiet_s``,
        then has the broker discard the session. Stop the worker first: two
        clients with one id would keep taking the connection from each other.
        """
        self.open_store()
        self.client = MqttClient(self.config.mqtt, manual_ack=True)
        self.marks = self._mark_publisher()
        filters = subscription_filters(self.topics, self.config.shared_group)
        for topic_filter in filters:
            self.client.route(topic_filter, self.inbox.put)
        self.client.start()
        drained = False
        try:
            if not self.client.wait_connected(RETIRE_CONNECT_S):
                raise RuntimeError(f"cannot reach the broker: {self.client.last_error}")
            for topic_filter in filters:
                delivery = self.client.unsubscribe(topic_filter)
                if delivery is None or not delivery.wait(RETIRE_CONNECT_S) or delivery.reason:
                    raise RuntimeError(f"could not unsubscribe {topic_filter}: {delivery.reason if delivery else 'connection lost'}")
            while batch := self.inbox.take(first_wait_s=quiet_s, fill_wait_s=self.config.batch_wait_ms / 1000.0):
                self._commit_with_retry(self.plan(batch, time.time()))
            self.marks.publish_due(float("inf"))  # the last marks, unthrottled, before the session ends
            if self.client.connect_count != 1 or not self.client.connected:
                # Another client with this id (the worker itself, still running) took the
                # connection over, or the broker went away: the session may hold more.
                raise RuntimeError("the connection was taken over or lost while draining; is the worker still running? "
                                   "Stop it, then retire again (what was stored stays stored, the session is kept)")
            drained = True
        finally:
            self.client.stop(announce_stopped=False, end_session=drained)
            self.store.close()
        log.info("retired %s: session ended after storing what it held: %s", self.config.mqtt.client_id, json.dumps(self.counters.snapshot()))
        return self.counters.snapshot()

    def open_store(self) -> None:
        """The ingest's part of the store, migrating the schema (the ingest owns it), and retention's on the same database."""
        self.store = IngestStore(self.config.database_url, migrate=True)
        self.retention = RetentionStore(self.store.db)

    def _mark_publisher(self) -> MarkPublisher:
        settings = self.config.stored_marks
        return MarkPublisher(self.topics, mqtt_publisher(self.client), settings.min_interval_s, settings.repeat_s)

    def stop(self) -> None:
        if self.client is not None:
            self.client.stop()
        self.bad_input_log.close()
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
        """Validate batches here while a writer thread commits and acknowledges the previous ones.

        SQLite and PostgreSQL drivers and file writes release the GIL, so the
        commit of batch n overlaps the receiving and validation of batch n+1.
        Batches are committed, and acknowledged, in the order they were received.
        """
        writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        writer.start()
        last_report = last_sweep = time.monotonic()
        try:
            while not self.stop_event.is_set():
                batch = self._next_batch()
                if batch:
                    self._hand_over(self.plan(batch, time.time()))
                now = time.monotonic()
                if now - last_report >= self.config.report_interval_s:
                    log.info("ingest totals: %s", json.dumps(self.counters.snapshot()))
                    last_report = now
                if self.config.retention.enabled and now - last_sweep >= self.config.retention.interval_s:
                    self._hand_over(_SWEEP)  # on the writer thread, between two batches
                    last_sweep = now
        finally:
            self._planned.put(_STOP)
            writer.join()

    def _hand_over(self, work: "BatchPlan | object") -> None:
        """Queue work for the writer; blocks while it is two batches behind (back-pressure to the broker)."""
        while not self.stop_event.is_set():
            try:
                self._planned.put(work, timeout=0.2)
                return
            except queue.Full:
                continue
        # Stopping: a batch not handed over is not acknowledged either, so the broker sends it again.

    def _write_loop(self) -> None:
        while True:
            try:
                work = self._planned.get(timeout=self.config.stored_marks.min_interval_s)
            except queue.Empty:
                self.marks.publish_due(time.monotonic())  # marks a throttle held back
                continue
            if work is _STOP:
                self.marks.publish_due(float("inf"))
                return
            if work is _SWEEP:
                self._sweep()
            else:
                self._commit_with_retry(work)

    def _sweep(self) -> None:
        try:
            sweep(self.retention, self.files, self.config.retention)
        except Exception:  # retention must never stop ingestion
            log.exception("retention sweep failed")

    # -- batching ---------------------------------------------------------------------------
    def _next_batch(self) -> list[Message]:
        return self.inbox.take(first_wait_s=0.2, fill_wait_s=self.config.batch_wait_ms / 1000.0)

    def _commit_with_retry(self, plan: "BatchPlan") -> None:
        """Store the batch in one transaction, then acknowledge it. A database outage is retried, never acked.

        Batches already validated when a stop is asked for are still stored (a
        clean stop leaves nothing for the broker to resend); a failing one is
        then left unacknowledged for the next start.
        """
        while True:
            try:
                self.store_plan(plan)
            except Exception:
                log.exception("storing a batch of %d failed; retrying in %.0f s (nothing acknowledged)", len(plan.messages), DB_RETRY_S)
                if self.stop_event.wait(DB_RETRY_S):
                    return
                continue
            self.client.ack_all(plan.messages)
            self._advance_marks(plan)
            return

    def _advance_marks(self, plan: "BatchPlan") -> None:
        """Tell the edges what is stored now; a failure here only delays a mark (nothing to retry)."""
        if not plan.epochs:
            return
        try:
            marks = self.store.advance_marks(sorted(plan.epochs))
        except Exception:
            log.exception("computing stored marks failed; they go out after a later commit")
            return
        self.marks.update(marks, time.monotonic())

    def process_batch(self, batch: list[Message]) -> None:
        """Validate and store a batch in one go (raises if the database fails)."""
        self.store_plan(self.plan(batch, time.time()))

    def store_plan(self, plan: "BatchPlan") -> None:
        """Store a validated batch in one transaction (raises if the database fails).

        Validation touched neither the database nor the disk, so this is a
        handful of multi-row statements instead of a savepoint per message.
        Should the bulk write hit a fault that is not the database's (a bug
        tripped by one odd message), the batch is stored again message by
        message so only the culprit is quarantined.
        """
        started = time.perf_counter()
        try:
            with self.store.db.pipeline(), self.store.transaction():
                self._write(plan)
        except self.store.db.errors:
            raise  # the database failed, not the messages: retry, acknowledge nothing
        except Exception as error:
            self.bad_input_log.error(error, "storing a batch failed outside the database; storing it message by message")
            plan = self._write_one_by_one(plan.messages, plan.received_at)
        self._count(plan, time.perf_counter() - started)

    def plan(self, batch: list[Message], received_at: float) -> "BatchPlan":
        """Judge every message against the contract: what to store, what to quarantine and why."""
        plan = BatchPlan(messages=batch, received_at=received_at)
        for message in batch:
            try:
                self._plan_one(message, plan, received_at)
            except Rejected as rejected:
                plan.rejected.append(Quarantined(message, rejected.reason))
            except Exception as error:  # a bug must not lose the batch: quarantine the message, with the cause
                plan.rejected.append(self._internal_error(message, error))
        return plan

    def _internal_error(self, message: Message, error: Exception) -> "Quarantined":
        cause = self.bad_input_log.error(error, f"unexpected error on {message.topic[:120]}")
        return Quarantined(message, f"internal error: {cause}: {error}")

    def _plan_one(self, message: Message, plan: "BatchPlan", received_at: float) -> None:
        try:
            parsed = self.topics.parse(message.topic)
        except InvalidDeviceId as error:
            raise Rejected(str(error)) from None
        if parsed is None or parsed.channel not in self._planners:
            raise Rejected("not a device data topic")
        try:
            self._planners[parsed.channel](parsed.device_id, message, plan, received_at)
        except ContractError as error:
            raise Rejected(error.reason) from None
        except (UnsafePath, InvalidDeviceId) as error:
            raise Rejected(str(error)) from None

    def _write(self, plan: "BatchPlan") -> None:
        """Every write of a planned batch; call inside a transaction."""
        received_at = plan.received_at
        plan.results_stored = self.store.add_results(plan.results, received_at)
        self._write_frames(plan, received_at)
        self._write_quarantine(plan)
        # The device rows last: every worker updates the same row of a device, and the row stays locked
        # until this transaction commits, so the other workers wait only for the commit, not for the writes.
        for device_id, (seen_at, seq, model_version) in plan.seen.items():
            self.store.touch_device(device_id, seen_at, seq, model_version)
        for device_id, status in plan.statuses:
            self.store.set_device_status(device_id, status, received_at)
        for device_id, stats in plan.stats:
            self.store.set_device_stats(device_id, stats.model_dump_json(by_alias=True), received_at)

    def _write_frames(self, plan: "BatchPlan", received_at: float) -> None:
        # Files first, rows after: a row never points at a file that is not there. A name
        # already taken holds these very bytes (names come from them): never overwritten.
        for frame, jpeg in plan.frames:
            if not frame.jpeg:  # kept as a file (frames.backend = "files")
                self.files.write(Path(frame.path), jpeg)
        plan.frames_stored = self.store.add_frames(self._own_results_only(plan.frames), received_at)

    def _own_results_only(self, frames: list[tuple[NewFrame, bytes]]) -> list[NewFrame]:
        """Frames whose claimed result is another device's lose that link (they are stored, unlinked).

        A link to a result not stored yet is kept (a frame may overtake its
        result); the store only follows a link to a result of the same device.
        """
        owners = self.store.result_devices(frame.result_msg_id for frame, _jpeg in frames if frame.result_msg_id)
        checked = []
        for frame, _jpeg in frames:
            owner = owners.get(frame.result_msg_id, frame.device_id)
            if owner != frame.device_id:
                self.bad_input_log.warning("frame names another device's result", (
                    f"frame from {frame.device_id} names result {frame.result_msg_id} of {owner}: stored without the link"))
                frame = replace(frame, result_msg_id=None)
            checked.append(frame)
        return checked

    def _write_quarantine(self, plan: "BatchPlan") -> None:
        """Quarantine records for the rejected messages; the retention worker also trims them to their cap
        every so often, so a flood of bad input between two sweeps cannot outgrow it by much."""
        if not plan.rejected:
            return
        self.store.quarantine_many([(item.message.topic, item.reason, item.message.payload) for item in plan.rejected], plan.received_at)
        retention = self.config.retention
        self._quarantined_since_trim += len(plan.rejected)
        trim_every = max(100, retention.quarantine_max_rows // 10)  # between trims: a tenth of the cap, plus a batch, over it
        if retention.enabled and self._quarantined_since_trim >= trim_every:
            self.retention.cap_quarantine(retention.quarantine_max_rows)
            self._quarantined_since_trim = 0

    def _write_one_by_one(self, batch: list[Message], received_at: float) -> "BatchPlan":
        """The slow, fault-isolating path: each message in its own savepoint."""
        total = BatchPlan(messages=batch, received_at=received_at)
        with self.store.transaction():
            for message in batch:
                plan = self.plan([message], received_at)
                try:
                    with self.store.db.savepoint():
                        self._write(plan)
                except self.store.db.errors:
                    raise
                except Exception as error:
                    plan = BatchPlan(messages=[message], received_at=received_at, rejected=[self._internal_error(message, error)])
                    self._write(plan)
                total.absorb(plan)
        return total

    def _count(self, plan: "BatchPlan", seconds: float) -> None:
        counters, metrics = self.counters, self.metrics
        duplicates = len(plan.results) - plan.results_stored + len(plan.frames) - plan.frames_stored
        counters.stored["result"] += plan.results_stored
        counters.stored["frame"] += plan.frames_stored
        counters.stored["status"] += len(plan.statuses)
        counters.stored["stats"] += len(plan.stats)
        counters.duplicates += duplicates
        counters.quarantined += len(plan.rejected)
        counters.batches += 1
        if plan.results:
            counters.last_lag_s = max(plan.seen_at - plan.latest_capture, 0.0)
        metrics.stored.labels("result").inc(plan.results_stored)
        metrics.stored.labels("frame").inc(plan.frames_stored)
        metrics.duplicates.inc(duplicates)
        metrics.quarantined.inc(len(plan.rejected))
        metrics.batch_seconds.observe(seconds)
        metrics.lag_seconds.set(counters.last_lag_s)
        metrics.queue_depth.set(self.inbox.qsize())
        for device_id, status in plan.statuses:
            metrics.set_status(device_id, status)
        for _device_id, stats in plan.stats:
            metrics.bridge_stats(stats)
        for item in plan.rejected:
            self._log_quarantine(item)
        self.bad_input_log.flush()

    def _log_quarantine(self, item: "Quarantined") -> None:
        line = f"quarantined {item.message.topic[:120]} ({len(item.message.payload)} bytes): {item.reason}"
        self.bad_input_log.warning(item.reason, line)

    # -- per channel: validate and plan, no writes ----------------------------------------------------
    def _plan_result(self, device_id: str, message: Message, plan: "BatchPlan", received_at: float) -> None:
        result = parse_result(message.payload, expected_device=device_id)
        crops = [face.crop_png for face in result.faces]
        # The stored JSON keeps everything but the pixels, which go to the faces' crop column.
        document = result.model_dump_json(by_alias=True, exclude={"faces": {"__all__": {"crop_png_b64"}}})
        plan.results.append(NewResult(result, crops, document))
        plan.seen[device_id] = (received_at, result.seq, result.model.version)
        plan.epochs.add((device_id, result.epoch))
        plan.seen_at, plan.latest_capture = received_at, max(plan.latest_capture, result.captured_epoch)

    def _plan_frame(self, device_id: str, message: Message, plan: "BatchPlan", received_at: float) -> None:
        jpeg = parse_frame(message.payload)
        width, height = frame_size(jpeg, self.config.frame_max_width, self.config.frame_max_height)
        if not self.config.store_frames:
            return
        meta = FrameMeta.from_properties(list(message.user_properties)) if message.user_properties else None
        captured_at = utc_millis_epoch(meta.captured_at) if meta else received_at
        frame_number = meta.frame_number if meta else 0
        relative = self.files.relative_path("frames", device_id, captured_at, frame_file_name(captured_at, frame_number, jpeg))
        frame = NewFrame(device_id, frame_number, captured_at, (meta.result_msg_id or None) if meta else None,
                         width, height, len(jpeg), relative.as_posix(), jpeg if self.config.frames.backend == "database" else None)
        plan.frames.append((frame, jpeg))

    def _plan_status(self, device_id: str, message: Message, plan: "BatchPlan", received_at: float) -> None:
        plan.statuses.append((device_id, parse_status(message.payload)))

    def _plan_stats(self, device_id: str, message: Message, plan: "BatchPlan", received_at: float) -> None:
        plan.stats.append((device_id, parse_stats(message.payload, expected_device=device_id)))


@dataclass
class Quarantined:
    message: Message
    reason: str


@dataclass
class BatchPlan:
    """What one batch will write, decided before the transaction opens."""

    messages: list[Message] = field(default_factory=list)  # acknowledged once all this is committed
    received_at: float = 0.0
    results: list[NewResult] = field(default_factory=list)
    frames: list[tuple[NewFrame, bytes]] = field(default_factory=list)
    statuses: list[tuple[str, str]] = field(default_factory=list)
    stats: list[tuple[str, Stats]] = field(default_factory=list)
    rejected: list[Quarantined] = field(default_factory=list)
    seen: dict[str, tuple[float, int, str]] = field(default_factory=dict)  # device -> (when, last seq, model version)
    epochs: set[tuple[str, str]] = field(default_factory=set)  # (device, epoch) pairs whose stored marks may move
    seen_at: float = 0.0
    latest_capture: float = 0.0
    results_stored: int = 0  # set by the write: results new to the store (the rest were redeliveries)
    frames_stored: int = 0  # likewise for frames (a redelivered frame has the same file name)

    def absorb(self, other: "BatchPlan") -> None:
        self.results += other.results
        self.frames += other.frames
        self.statuses += other.statuses
        self.stats += other.stats
        self.rejected += other.rejected
        self.seen.update(other.seen)
        self.epochs |= other.epochs
        self.seen_at = max(self.seen_at, other.seen_at)
        self.latest_capture = max(self.latest_capture, other.latest_capture)
        self.results_stored += other.results_stored
        self.frames_stored += other.frames_stored
