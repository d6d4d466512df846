"""The edge agent assembled from its parts: source → perception → outbox/MQTT, commands, stats, watchdog.

``build_edge(config)`` composes the parts (as ``webui/services.py`` does for
the dashboard); :meth:`Edge.run` is one flat start order and the reverse stop
order (Frigate style). Each part is a unit of its own with in-process tests:

* :class:`edge.loop.FrameLoop` — reading, pacing, pause, the fps cap, reopening live sources;
* :class:`edge.publisher.FrameProcessor` / :class:`~edge.publisher.ResultPublisher` — perception,
  the result into the outbox, the annotated frame; :class:`~edge.publisher.StatsReporter`;
* :class:`edge.commands.CommandResponder` / :class:`~edge.commands.CommandHandlers`;
* :class:`edge.forwarder.Forwarder` — the outbox to the broker until the cloud has stored it;
* :class:`edge.watchdog.ProgressWatchdog` — healthy only while frames are processed.

Everything that talks MQTT gets a :class:`comms.transport.Transport`; the
default is the paho client, a test may pass its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from comms.mqtt import MqttClient
from comms.transport import Availability, Transport
from contract.topics import Topics
from edge.commands import CommandHandlers, CommandInbox, CommandResponder
from edge.config import EdgeConfig
from edge.forwarder import Forwarder
from edge.homeassistant import discovery_messages
from edge.loop import FrameLoop, LoopControl
from edge.model import ModelSlot, load_model
from edge.model_updates import ModelUpdates
from edge.outbox import Outbox, OutboxLimits
from edge.perception.pipeline import PerceptionPipeline
from edge.publisher import FrameProcessor, ResultPublisher, StatsReporter
from edge.sources import FrameSource, open_source
from edge.watchdog import ProgressWatchdog

log = logging.getLogger(__name__)

PROGRESS_LOG_S = 5.0
TransportFactory = Callable[[EdgeConfig, Topics, Callable[[bool, str], None]], Transport]


def paho_transport(config: EdgeConfig, topics: Topics, on_connection_change: Callable[[bool, str], None]) -> Transport:
    return MqttClient(config.mqtt, availability=Availability(topics.status(config.device_id)),
                      on_connection_change=on_connection_change)


def open_configured_source(config: EdgeConfig) -> FrameSource:
    settings = config.source
    return open_source(
        settings.spec, loop=settings.loop, pace=settings.pace, image_fps=settings.image_fps,
        camera_width=settings.camera_width, camera_height=settings.camera_height, camera_fps=settings.camera_fps,
        gstreamer=settings.gstreamer, csi=settings.csi,
    )


@dataclass
class Edge:
    """The running parts of one agent; built by :func:`build_edge`, started and stopped by :meth:`run`."""

    config: EdgeConfig
    topics: Topics
    model: ModelSlot
    updates: ModelUpdates
    pipeline: PerceptionPipeline
    outbox: Outbox
    transport: Transport
    forwarder: Forwarder
    inbox: CommandInbox
    control: LoopControl
    loop: FrameLoop
    publisher: ResultPublisher
    responder: CommandResponder
    stats: StatsReporter
    watchdog: ProgressWatchdog
    stop_event: threading.Event
    _last_progress_log: float = field(default_factory=time.monotonic)

    @property
    def device_id(self) -> str:
        return self.config.device_id

    # -- start / stop ------------------------------------------------------------
    def start(self) -> None:
        """Subscriptions, then the connection, the forwarder and the watchdog; nothing was sent before."""
        device = self.device_id
        self.transport.subscribe(self.topics.command(device), self.inbox.on_message, qos=1)
        self.transport.subscribe(self.topics.stored(device), self.forwarder.on_stored_mark, qos=1)
        self.transport.subscribe(self.topics.all_service_status, self.forwarder.on_ingest_status, qos=1)
        self.updates.subscribe(self.transport)
        self.transport.start()
        self.forwarder.start()
        self.watchdog.start()
        settings = self.config.outbox
        log.info(
            "edge agent %s: model %s %s, source %s, outbox %s (%d pending, epoch %s, kept until %s), broker %s:%s",
            device, self.model.name, self.model.version, self.loop.source.description, settings.path,
            self.outbox.depth(), self.outbox.epoch, settings.keep_until, self.config.mqtt.host, self.config.mqtt.port,
        )

    def process_frames(self) -> None:
        """Run the frame loop until the source ends or a stop is requested (after :meth:`start`)."""
        self.loop.run()

    def stop(self) -> None:
        """Reverse order: flush the outbox (bounded), announce 'stopped', close everything."""
        flushed = self._flush(self.config.outbox.flush_timeout_s)
        if not flushed and self.outbox.depth():
            log.warning("%d result(s) stay in the outbox; they are sent on the next start", self.outbox.depth())
        self.forwarder.stop()
        self.watchdog.stop()
        self._log_totals()
        self.transport.stop()
        self.outbox.close()
        self.loop.source.close()

    def run(self) -> None:
        self.start()
        try:
            self.process_frames()
        finally:
            self.stop()

    # -- between frames ------------------------------------------------------------
    def between_frames(self) -> None:
        self.responder.handle_pending()
        self.updates.install_ready(self.model)
        self.stats.publish_if_due()
        self._log_progress_if_due()

    def announce_to_home_assistant(self, connected: bool, _reason: str) -> None:
        """On every (re)connect, publish the retained discovery configs (the network thread: publish, never wait)."""
        settings = self.config.homeassistant
        if not (connected and settings.enabled):
            return
        for message in discovery_messages(self.device_id, self.topics, discovery_prefix=settings.discovery_prefix):
            self.transport.publish(message.topic, message.payload_bytes(), qos=1, retain=True)

    def _flush(self, timeout: float) -> bool:
        """Give pending results a bounded chance to reach the cloud (connecting first if needed)."""
        deadline = time.monotonic() + timeout
        if self.outbox.depth() and not self.transport.wait_connected(timeout):
            return False
        return self.forwarder.drain(max(deadline - time.monotonic(), 0.0))

    def _log_progress_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_progress_log < PROGRESS_LOG_S:
            return
        processed = self.loop.counters.processed
        total = getattr(self.loop.source, "frame_count", None)
        position = f"{processed}/{total}" if total else str(processed)
        elapsed = now - self.loop.progress.started_at
        log.info("frames %s, %.1f fps, outbox %d, %s", position, processed / max(elapsed, 1e-6), self.outbox.depth(),
                 "connected" if self.transport.connected else f"offline ({self.transport.last_error})")
        self._last_progress_log = now

    def _log_totals(self) -> None:
        """One line an operator (or a test) can read after a stop: what this run did, and what is left."""
        totals = {
            "frames_processed": self.loop.counters.processed,
            "frames_dropped": self.loop.counters.dropped,
            "results_published": self.forwarder.published,
            "outbox_depth": self.outbox.depth(),
            "duration_s": round(time.monotonic() - self.loop.progress.started_at, 3),
        }
        log.info("edge totals: %s", json.dumps(totals))


def build_edge(config: EdgeConfig, stop_event: threading.Event | None = None,
               transport_factory: TransportFactory = paho_transport) -> Edge:
    """Every part, in dependency order; each fails with a clear error before anything is sent.

    Raises ``edge.model.ModelUnavailable`` (no usable model) or
    ``edge.sources.SourceError`` (the input cannot be opened).
    """
    stop_event = stop_event or threading.Event()
    topics = Topics(config.mqtt.topic_prefix)
    device = config.device_id
    model = ModelSlot(load_model(config.model.store, config.model.version, config.model.num_threads))
    updates = ModelUpdates(topics, device, config.data_dir / device / "models", config.model.num_threads)
    if config.model.version is None:  # a pinned version wins over what was installed over the air
        updates.restore(model)
    pipeline = PerceptionPipeline(config.detection, config.tracking, config.annotation, model, config.classification)
    source = open_configured_source(config)
    try:
        return _assemble(config, stop_event, transport_factory, topics, model, updates, pipeline, source)
    except BaseException:
        source.close()  # e.g. a gst-launch child: never left behind by a failed start
        raise


def _assemble(config: EdgeConfig, stop_event: threading.Event, transport_factory: TransportFactory, topics: Topics,
              model: ModelSlot, updates: ModelUpdates, pipeline: PerceptionPipeline, source: FrameSource) -> Edge:
    device = config.device_id
    limits = OutboxLimits(config.outbox.max_messages, config.outbox.max_bytes, config.outbox.max_age_s)
    outbox = Outbox(config.outbox.path, limits, config.outbox.durability)

    edge_ref: list[Edge] = []  # the transport's connection callback needs the finished Edge
    transport = transport_factory(config, topics, lambda connected, reason: edge_ref[0].announce_to_home_assistant(connected, reason)
                                  if edge_ref else None)
    settings = config.outbox
    forwarder = Forwarder(outbox, transport, settings.window, settings.keep_until, device, settings.resend_after_s)
    control = LoopControl(max_fps=config.processing.max_fps)
    publisher = ResultPublisher(device, topics, outbox, transport, model, config.publish, control)
    processor = FrameProcessor(pipeline, publisher)
    inbox = CommandInbox(config.commands.allowed)
    responder = CommandResponder(inbox, CommandHandlers(control, model, updates, outbox), transport,
                                 topics.command_reply(device), device)
    loop = FrameLoop(source, lambda: open_configured_source(config), processor, control, stop_event,
                     on_reopened=pipeline.reset)
    processor.loop = loop
    watchdog = ProgressWatchdog(loop.progress, config.watchdog.stall_s, config.watchdog.interval_s, config.watchdog.health_file)
    stats = StatsReporter(device, topics, transport, config.publish.stats_interval_s, loop=loop, model=model, outbox=outbox,
                          forwarder=forwarder, updates=updates, watchdog=watchdog)
    edge = Edge(config, topics, model, updates, pipeline, outbox, transport, forwarder, inbox, control, loop, publisher,
                responder, stats, watchdog, stop_event)
    loop.between_frames = edge.between_frames
    edge_ref.append(edge)
    return edge
