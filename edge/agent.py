"""The edge agent: source → perception → outbox/MQTT, with commands, stats and clean shutdown.

``EdgeAgent.run()`` is one flat start order and the reverse stop order
(Frigate style). Results go through the on-disk outbox (QoS 1, nothing
lost offline); frames and stats are live data (QoS 0, dropped offline).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pybase64

from common.backoff import backoff_delay
from comms.mqtt import MqttClient
from comms.transport import Availability, MqttError, Transport
from contract.messages import (
    FRAME_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    Box,
    Command,
    Face,
    ModelInfo,
    Probabilities,
    StageTimings,
    Stats,
    make_result,
    utc_millis,
)
from contract.topics import Topics
from contract.validation import FrameMeta
from edge.commands import CommandError, CommandInbox, execute
from edge.config import EdgeConfig
from edge.forwarder import Forwarder
from edge.homeassistant import discovery_messages
from edge.model import ModelSlot, ModelUnavailable, load_model
from edge.model_updates import ModelUpdates
from edge.outbox import Outbox, OutboxLimits
from edge.perception.codec import encode_jpeg, encode_png
from edge.perception.pipeline import FaceResult, FrameAnalysis, PerceptionPipeline
from edge.sources import CameraSource, FrameSource, SourceError, StreamSource, open_source

log = logging.getLogger(__name__)

FRAME_EXPIRY_S = 10
PROGRESS_LOG_S = 5.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 5.0  # a camera back after a glitch is read again within ~5 s
STAGES = ("decode", "detect", "classify", "draw", "encode", "publish")


@dataclass
class StageClock:
    """Mean milliseconds per processed frame for each stage over one stats interval."""

    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0

    def add(self, stage: str, milliseconds: float) -> None:
        self.totals[stage] += milliseconds

    def means(self) -> StageTimings:
        divisor = max(self.frames, 1)
        return StageTimings(**{stage: round(total / divisor, 3) for stage, total in self.totals.items()})


@dataclass
class Counters:
    processed: int = 0
    dropped: int = 0


def is_live(source: FrameSource) -> bool:
    """Live sources drop frames they cannot keep up with; files wait instead."""
    return isinstance(source, (CameraSource, StreamSource)) or getattr(source, "live", False)


def to_contract_face(face: FaceResult, frame_width: int, frame_height: int, include_crop: bool) -> Face:
    probabilities = Probabilities.from_sequence(face.probabilities)
    label, confidence = probabilities.top()
    x, y, w, h = (int(value) for value in face.box)
    x, y = max(x, 0), max(y, 0)
    w, h = max(min(w, frame_width - x), 1), max(min(h, frame_height - y), 1)
    crop = pybase64.b64encode(encode_png(face.crop64)).decode() if include_crop else None
    return Face(
        box=Box(x=x, y=y, w=w, h=h),
        probabilities=probabilities,
        label=label,
        confidence=confidence,
        track_id=int(face.track_id),
        smoothed_label=face.smoothed_label,
        crop_png_b64=crop,
    )


class EdgeAgent:
    def __init__(self, config: EdgeConfig, stop_event: threading.Event | None = None) -> None:
        self.config = config
        self.device_id = config.device_id
        self.topics = Topics(config.mqtt.topic_prefix)
        self.stop_event = stop_event or threading.Event()
        self.paused = False
        self.max_fps = config.processing.max_fps
        self.counters = Counters()
        self.clock = StageClock()
        self._snapshot_requested = False
        self._started_at = time.monotonic()
        self._last_result_at = 0.0
        self._last_frame_at = 0.0
        self._last_stats_at = time.monotonic()
        self._last_progress_at = time.monotonic()
        self._next_due = 0.0
        self._interval_frames = 0
        self.model: ModelSlot | None = None
        self.updates: ModelUpdates | None = None
        self.source: FrameSource | None = None
        self.outbox: Outbox | None = None
        self.client: Transport | None = None
        self.forwarder: Forwarder | None = None
        self.pipeline: PerceptionPipeline | None = None
        self.inbox = CommandInbox(config.commands.allowed)

    # -- start / stop ------------------------------------------------------------
    def start(self) -> None:
        """Flat start order; each step fails with a clear error before anything is sent."""
        self.model = ModelSlot(load_model(self.config.model.store, self.config.model.version, self.config.model.num_threads))
        self.updates = ModelUpdates(
            self.topics, self.device_id, self.config.data_dir / self.device_id / "models", self.config.model.num_threads
        )
        if self.config.model.version is None:  # a pinned version wins over what was installed over the air
            self.updates.restore(self.model)
        self.pipeline = PerceptionPipeline(
            self.config.detection, self.config.tracking, self.config.annotation, self.model, self.config.classification
        )
        self.source = self._open_source()
        self.outbox = Outbox(
            self.config.outbox.path,
            OutboxLimits(self.config.outbox.max_messages, self.config.outbox.max_bytes, self.config.outbox.max_age_s),
            self.config.outbox.durability,
        )
        self.client = MqttClient(
            self.config.mqtt, availability=Availability(self.topics.status(self.device_id)),
            on_connection_change=self._announce_to_home_assistant,
        )
        settings = self.config.outbox
        self.forwarder = Forwarder(
            self.outbox, self.client, settings.window, settings.keep_until, self.device_id, settings.resend_after_s
        )
        self.client.subscribe(self.topics.command(self.device_id), self.inbox.on_message, qos=1)
        self.client.subscribe(self.topics.stored(self.device_id), self.forwarder.on_stored_mark, qos=1)
        self.client.subscribe(self.topics.all_service_status, self.forwarder.on_ingest_status, qos=1)
        self.updates.subscribe(self.client)
        self.client.start()
        self.forwarder.start()
        log.info(
            "edge agent %s: model %s %s, source %s, outbox %s (%d pending, epoch %s, kept until %s), broker %s:%s",
            self.device_id, self.model.name, self.model.version, self.source.description, self.config.outbox.path,
            self.outbox.depth(), self.outbox.epoch, settings.keep_until, self.config.mqtt.host, self.config.mqtt.port,
        )

    def _announce_to_home_assistant(self, connected: bool, _reason: str) -> None:
        """On every (re)connect, publish the retained discovery configs (paho's thread: publish, never wait)."""
        settings = self.config.homeassistant
        if not (connected and settings.enabled):
            return
        for message in discovery_messages(self.device_id, self.topics, discovery_prefix=settings.discovery_prefix):
            self.client.publish(message.topic, message.payload_bytes(), qos=1, retain=True)

    def _open_source(self) -> FrameSource:
        settings = self.config.source
        return open_source(
            settings.spec, loop=settings.loop, pace=settings.pace, image_fps=settings.image_fps,
            camera_width=settings.camera_width, camera_height=settings.camera_height, camera_fps=settings.camera_fps,
            gstreamer=settings.gstreamer, csi=settings.csi,
        )

    def stop(self) -> None:
        """Reverse order: flush the outbox (bounded), announce 'stopped', close everything."""
        if self.forwarder is not None and self.client is not None:
            flushed = self._flush(self.config.outbox.flush_timeout_s)
            if not flushed and self.outbox.depth():
                log.warning("%d result(s) stay in the outbox; they are sent on the next start", self.outbox.depth())
            self.forwarder.stop()
        self._log_totals()
        if self.client is not None:
            self.client.stop()
        if self.outbox is not None:
            self.outbox.close()
        if self.source is not None:
            self.source.close()

    def _log_totals(self) -> None:
        """One line an operator (or a test) can read after a stop: what this run did, and what is left."""
        totals = {
            "frames_processed": self.counters.processed,
            "frames_dropped": self.counters.dropped,
            "results_published": self.forwarder.published if self.forwarder else 0,
            "outbox_depth": self.outbox.depth() if self.outbox else 0,
            "duration_s": round(time.monotonic() - self._started_at, 3),
        }
        log.info("edge totals: %s", json.dumps(totals))

    def _flush(self, timeout: float) -> bool:
        """Give pending results a bounded chance to reach the cloud (connecting first if needed)."""
        deadline = time.monotonic() + timeout
        if self.outbox.depth() and not self.client.wait_connected(timeout):
            return False
        return self.forwarder.drain(max(deadline - time.monotonic(), 0.0))

    def run(self) -> None:
        self.start()
        try:
            self.process_frames()
        finally:
            self.stop()

    # -- the frame loop -------------------------------------------------------------
    def process_frames(self) -> None:
        """Process the source until it ends or a stop is requested (after :meth:`start`)."""
        frames = iter(self.source)
        while not self.stop_event.is_set():
            self._handle_commands()
            self.updates.install_ready(self.model)
            if self.paused and not is_live(self.source):
                self.stop_event.wait(0.05)
                continue
            item = next(frames, None)
            if item is None:
                if not is_live(self.source) or not self._reopen_live_source():
                    log.info("end of input after %d frames", self.counters.processed)
                    return
                frames = iter(self.source)
                continue
            decode_ms = self.source.decode_seconds * 1000.0  # without the pacing wait of --pace
            if self._skip_frame():
                continue
            self._process(*item, decode_ms=decode_ms)
            self._publish_stats_if_due()
            self._log_progress_if_due()

    def _reopen_live_source(self) -> bool:
        """A camera or stream that stops delivering is reopened with backoff, until it works or we stop."""
        self.source.close()
        attempt = 0
        while not self.stop_event.is_set():
            delay = backoff_delay(attempt, RECONNECT_MIN_S, RECONNECT_MAX_S)
            log.warning("source %s stopped delivering frames; reopening in %.1f s", self.source.description, delay)
            if self.stop_event.wait(delay):
                return False
            try:
                self.source = self._open_source()
            except SourceError as error:
                log.warning("cannot reopen the source: %s", error)
                attempt += 1
                continue
            self.pipeline.reset()  # tracks from before the gap mean nothing now
            return True
        return False

    def _skip_frame(self) -> bool:
        """Pause and frame-rate cap: live sources drop frames, files wait their turn."""
        if self.paused:
            self.counters.dropped += 1
            return True
        if self.max_fps is None:
            return False
        now = time.monotonic()
        if now < self._next_due:
            if is_live(self.source):
                self.counters.dropped += 1
                return True
            self.stop_event.wait(self._next_due - now)
        self._next_due = max(self._next_due, time.monotonic() - 1.0 / self.max_fps) + 1.0 / self.max_fps
        return False

    def _process(self, frame_number: int, captured_at: datetime, frame: np.ndarray, decode_ms: float) -> None:
        analysis = self.pipeline.process(frame)
        for stage, milliseconds in analysis.timings_ms.items():
            self.clock.add(stage, milliseconds)
        self.clock.add("decode", decode_ms)
        publish_started = time.perf_counter()
        result_ref = self._store_result_if_due(frame_number, captured_at, frame, analysis)
        publish_ms = (time.perf_counter() - publish_started) * 1000.0
        encode_ms, frame_publish_ms = self._publish_frame_if_due(frame_number, captured_at, analysis, result_ref)
        self.clock.add("encode", encode_ms)
        self.clock.add("publish", publish_ms + frame_publish_ms)
        self.clock.frames += 1
        self.counters.processed += 1
        self._interval_frames += 1

    def _store_result_if_due(self, frame_number, captured_at, frame, analysis: FrameAnalysis) -> tuple[int, str] | None:
        now = time.monotonic()
        heartbeat = self.config.publish.heartbeat_s
        if not analysis.faces and not (heartbeat and now - self._last_result_at >= heartbeat):
            return None
        height, width = frame.shape[:2]
        seq = self.outbox.next_seq()
        result = make_result(
            device_id=self.device_id,
            epoch=self.outbox.epoch,
            seq=seq,
            source=self.source.description,
            video_file=Path(self.source.description.split(":", 1)[-1]).name,
            frame_number=frame_number,
            captured_at=captured_at,
            frame_width=width,
            frame_height=height,
            model_name=self.model.name,
            model_version=self.model.version,
            faces=[to_contract_face(face, width, height, self.config.publish.include_crops) for face in analysis.faces],
        )
        self.outbox.append(seq, self.topics.result(self.device_id), result.to_json())
        self._last_result_at = now
        return seq, result.msg_id

    def _publish_frame_if_due(self, frame_number, captured_at, analysis: FrameAnalysis, result_ref) -> tuple[float, float]:
        """Encode and publish the annotated frame at its own rate; only while connected."""
        rate = self.config.publish.frame_fps
        now = time.monotonic()
        due = self._snapshot_requested or (rate > 0 and now - self._last_frame_at >= 1.0 / rate)
        if not due or not self.client.connected:
            return 0.0, 0.0
        encode_started = time.perf_counter()
        jpeg = encode_jpeg(analysis.annotated, self.config.publish.jpeg_quality, self.config.publish.frame_max_width)
        payload = pybase64.b64encode(jpeg)
        encoded = time.perf_counter()
        seq, msg_id = result_ref if result_ref else (None, "")
        meta = FrameMeta(frame_number=frame_number, captured_at=utc_millis(captured_at), result_seq=seq, result_msg_id=msg_id)
        try:
            self.client.publish(
                self.topics.frame(self.device_id), payload, qos=0, user_properties=meta.to_properties(),
                content_type=FRAME_CONTENT_TYPE, expiry_s=FRAME_EXPIRY_S,
            )
        except MqttError as error:
            log.warning("frame not published: %s", error)
        self._last_frame_at = now
        self._snapshot_requested = False
        return (encoded - encode_started) * 1000.0, (time.perf_counter() - encoded) * 1000.0

    # -- stats and progress ----------------------------------------------------------
    def stats(self) -> Stats:
        elapsed = max(time.monotonic() - self._last_stats_at, 1e-6)
        return Stats(
            device_id=self.device_id,
            sent_at=utc_millis(),
            uptime_s=round(time.monotonic() - self._started_at, 3),
            fps=round(self._interval_frames / elapsed, 3),
            frames_processed=self.counters.processed,
            frames_dropped=self.counters.dropped,
            results_published=self.forwarder.published if self.forwarder else 0,
            outbox_depth=self.outbox.depth(),
            outbox_dropped=self.outbox.dropped,
            stage_ms=self.clock.means(),
            model=ModelInfo(name=self.model.name, version=self.model.version),
            source=self.source.description,
            paused=self.paused,
            model_error=self.updates.last_error,
        )

    def _publish_stats_if_due(self) -> None:
        if time.monotonic() - self._last_stats_at < self.config.publish.stats_interval_s:
            return
        stats = self.stats()
        if self.client.connected:
            self.client.publish(self.topics.stats(self.device_id), stats.to_json(), qos=0, retain=True, content_type=JSON_CONTENT_TYPE)
        self._last_stats_at = time.monotonic()
        self._interval_frames = 0
        self.clock = StageClock()

    def _log_progress_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_progress_at < PROGRESS_LOG_S:
            return
        elapsed = now - self._started_at
        total = getattr(self.source, "frame_count", None)
        position = f"{self.counters.processed}/{total}" if total else str(self.counters.processed)
        log.info(
            "frames %s, %.1f fps, outbox %d, %s", position, self.counters.processed / max(elapsed, 1e-6),
            self.outbox.depth(), "connected" if self.client.connected else f"offline ({self.client.last_error})",
        )
        self._last_progress_at = now

    # -- commands ---------------------------------------------------------------------
    def _handle_commands(self) -> None:
        for incoming in self.inbox.drain():
            reply = execute(incoming, self.device_id, self._executors())
            self.client.publish(self.topics.command_reply(self.device_id), reply.to_json(), qos=1, content_type=JSON_CONTENT_TYPE)
            log.info("command %r → %s", incoming.raw_id, "ok" if reply.ok else reply.error)

    def _executors(self):
        return {
            "pause": self._pause,
            "resume": self._resume,
            "set_fps": self._set_fps,
            "snapshot": self._snapshot,
            "rollback_model": self._rollback_model,
            "ping": self._ping,
        }

    def _pause(self, command: Command) -> dict:
        self.paused = True
        return {"paused": True}

    def _resume(self, command: Command) -> dict:
        self.paused = False
        return {"paused": False}

    def _set_fps(self, command: Command) -> dict:
        self.max_fps = float(command.args["fps"])
        self._next_due = 0.0
        return {"fps": self.max_fps}

    def _snapshot(self, command: Command) -> dict:
        self._snapshot_requested = True
        return {"snapshot": "next frame"}

    def _rollback_model(self, command: Command) -> dict:
        rolled_back = self.model.current
        try:
            restored = self.model.rollback()
        except ModelUnavailable as error:
            raise CommandError(str(error)) from None
        self.updates.block(rolled_back)  # or the retained release would install it again
        self.updates.remember(self.model)
        return {"model_version": restored.version}

    def _ping(self, command: Command) -> dict:
        return {"model_version": self.model.version, "paused": self.paused, "outbox_depth": self.outbox.depth()}
