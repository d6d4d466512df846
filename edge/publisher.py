"""What the edge sends for each frame: the result into the outbox, the annotated frame at its own rate, stats.

Results go through the on-disk outbox (the forwarder sends them at QoS 1 and
keeps them until the cloud has stored them); frames and stats are live data
(QoS 0, published only while connected). Everything goes through a
:class:`comms.transport.Transport`, so these units are tested in-process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pybase64

from comms.transport import MqttError, Transport
from contract.messages import (
    FRAME_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    Box,
    Face,
    ModelInfo,
    Probabilities,
    Stats,
    make_result,
    utc_millis,
)
from contract.topics import Topics
from contract.validation import FrameMeta
from edge.config import PublishSettings
from edge.loop import FrameLoop, LoopControl, StageClock
from edge.model import ModelSlot
from edge.outbox import Outbox
from edge.perception.codec import encode_jpeg, encode_png
from edge.perception.pipeline import FaceResult, FrameAnalysis, PerceptionPipeline

log = logging.getLogger(__name__)

FRAME_EXPIRY_S = 10


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


@dataclass(frozen=True)
class ResultRef:
    seq: int
    msg_id: str


class ResultPublisher:
    """Results (with faces, or a heartbeat) into the outbox; annotated frames at ``frame_fps`` or on request."""

    def __init__(self, device_id: str, topics: Topics, outbox: Outbox, transport: Transport, model: ModelSlot,
                 settings: PublishSettings, control: LoopControl) -> None:
        self.device_id, self.topics, self.outbox, self.transport = device_id, topics, outbox, transport
        self.model, self.settings, self.control = model, settings, control
        self._last_result_at = 0.0
        self._last_frame_at = 0.0

    def store_result(self, frame_number: int, captured_at: datetime, frame: np.ndarray, analysis: FrameAnalysis,
                     source_description: str, source_name: str) -> ResultRef | None:
        """The frame's result into the outbox: when it has faces, or as a heartbeat after ``heartbeat_s``."""
        now = time.monotonic()
        heartbeat = self.settings.heartbeat_s
        if not analysis.faces and not (heartbeat and now - self._last_result_at >= heartbeat):
            return None
        height, width = frame.shape[:2]
        seq = self.outbox.next_seq()
        result = make_result(
            device_id=self.device_id, epoch=self.outbox.epoch, seq=seq, source=source_description, video_file=source_name,
            frame_number=frame_number, captured_at=captured_at, frame_width=width, frame_height=height,
            model_name=self.model.name, model_version=self.model.version,
            faces=[to_contract_face(face, width, height, self.settings.include_crops) for face in analysis.faces],
        )
        self.outbox.append(seq, self.topics.result(self.device_id), result.to_json())
        self._last_result_at = now
        return ResultRef(seq, result.msg_id)

    def publish_frame(self, frame_number: int, captured_at: datetime, analysis: FrameAnalysis,
                      result: ResultRef | None) -> tuple[float, float]:
        """Encode and publish the annotated frame when due; only while connected. Returns (encode, publish) ms."""
        rate = self.settings.frame_fps
        now = time.monotonic()
        due = self.control.snapshot_requested or (rate > 0 and now - self._last_frame_at >= 1.0 / rate)
        if not due or not self.transport.connected:
            return 0.0, 0.0
        encode_started = time.perf_counter()
        payload = pybase64.b64encode(encode_jpeg(analysis.annotated, self.settings.jpeg_quality, self.settings.frame_max_width))
        encoded = time.perf_counter()
        meta = FrameMeta(frame_number=frame_number, captured_at=utc_millis(captured_at),
                         result_seq=result.seq if result else None, result_msg_id=result.msg_id if result else "")
        try:
            self.transport.publish(self.topics.frame(self.device_id), payload, qos=0, user_properties=meta.to_properties(),
                                   content_type=FRAME_CONTENT_TYPE, expiry_s=FRAME_EXPIRY_S)
        except MqttError as error:
            log.warning("frame not published: %s", error)
        self._last_frame_at = now
        self.control.snapshot_requested = False
        return (encoded - encode_started) * 1000.0, (time.perf_counter() - encoded) * 1000.0


class FrameProcessor:
    """One frame through perception and out: the frame loop's handler; times every stage."""

    def __init__(self, pipeline: PerceptionPipeline, publisher: ResultPublisher, loop: "FrameLoop | None" = None) -> None:
        self.pipeline = pipeline
        self.publisher = publisher
        self.loop = loop  # set by the assembly (the loop needs the handler first)

    def __call__(self, frame_number: int, captured_at: datetime, frame: np.ndarray, decode_ms: float) -> None:
        clock: StageClock = self.loop.clock
        analysis = self.pipeline.process(frame)
        for stage, milliseconds in analysis.timings_ms.items():
            clock.add(stage, milliseconds)
        clock.add("decode", decode_ms)
        publish_started = time.perf_counter()
        source = self.loop.source
        result = self.publisher.store_result(frame_number, captured_at, frame, analysis, source.description, source.name)
        publish_ms = (time.perf_counter() - publish_started) * 1000.0
        encode_ms, frame_publish_ms = self.publisher.publish_frame(frame_number, captured_at, analysis, result)
        clock.add("encode", encode_ms)
        clock.add("publish", publish_ms + frame_publish_ms)
        clock.frames += 1


class StatsReporter:
    """The retained stats message every ``stats_interval_s``: rates, counters, stage times, health."""

    def __init__(self, device_id: str, topics: Topics, transport: Transport, interval_s: float, *, loop: FrameLoop,
                 model: ModelSlot, outbox: Outbox, forwarder, updates, watchdog) -> None:
        self.device_id, self.topics, self.transport, self.interval_s = device_id, topics, transport, interval_s
        self.loop, self.model, self.outbox, self.forwarder, self.updates, self.watchdog = loop, model, outbox, forwarder, updates, watchdog
        self._last_at = time.monotonic()
        self._frames_at_last = 0

    def build(self) -> Stats:
        loop, now = self.loop, time.monotonic()
        health = self.watchdog.check()
        return Stats(
            device_id=self.device_id, sent_at=utc_millis(), uptime_s=round(now - loop.progress.started_at, 3),
            fps=round((loop.counters.processed - self._frames_at_last) / max(now - self._last_at, 1e-6), 3),
            frames_processed=loop.counters.processed, frames_dropped=loop.counters.dropped,
            results_published=self.forwarder.published, outbox_depth=self.outbox.depth(), outbox_dropped=self.outbox.dropped,
            stage_ms=loop.clock.means(), model=ModelInfo(name=self.model.name, version=self.model.version),
            source=loop.source.description, paused=loop.control.paused, model_error=self.updates.last_error,
            healthy=health.healthy, last_frame_age_s=health.last_frame_age_s,
        )

    def publish_if_due(self) -> Stats | None:
        if time.monotonic() - self._last_at < self.interval_s:
            return None
        stats = self.build()
        if self.transport.connected:
            self.transport.publish(self.topics.stats(self.device_id), stats.to_json(), qos=0, retain=True,
                                   content_type=JSON_CONTENT_TYPE)
        self._last_at = time.monotonic()
        self._frames_at_last = self.loop.counters.processed
        self.loop.clock = StageClock()
        return stats
