"""Prometheus metrics of the ingest service, and the edges' stats bridged as per-device gauges.

Served by ``prometheus_client``'s own HTTP server on ``metrics_port``
(``/metrics``), in a registry of our own so several workers in one test
process never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from contract.messages import Stats


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stored = Counter("emq_ingest_stored_total", "Messages stored, by kind", ["kind"], registry=self.registry)
        self.duplicates = Counter("emq_ingest_duplicates_total", "Redelivered results and frames already stored", registry=self.registry)
        self.quarantined = Counter("emq_ingest_quarantined_total", "Messages quarantined as bad input", registry=self.registry)
        self.batch_seconds = Histogram(
            "emq_ingest_batch_seconds", "Time to store and commit one batch", registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.lag_seconds = Gauge("emq_ingest_lag_seconds", "Receive time minus capture time of the latest result", registry=self.registry)
        self.queue_depth = Gauge("emq_ingest_queue_depth", "Messages received but not yet stored", registry=self.registry)
        self.device_fps = Gauge("emq_edge_fps", "Frames/s the edge processed (from its stats)", ["device"], registry=self.registry)
        self.device_outbox = Gauge("emq_edge_outbox_depth", "Results waiting in the edge's outbox", ["device"], registry=self.registry)
        self.device_dropped = Gauge("emq_edge_frames_dropped", "Frames the edge dropped", ["device"], registry=self.registry)
        # Base units (seconds), as Prometheus names want; the stats message itself keeps milliseconds.
        self.device_stage_seconds = Gauge(
            "emq_edge_stage_seconds", "Mean time per frame of each edge stage", ["device", "stage"], registry=self.registry
        )
        self.device_online = Gauge("emq_edge_online", "1 while the device's status is online", ["device"], registry=self.registry)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

    def bridge_stats(self, stats: Stats) -> None:
        device = stats.device_id
        self.device_fps.labels(device).set(stats.fps)
        self.device_outbox.labels(device).set(stats.outbox_depth)
        self.device_dropped.labels(device).set(stats.frames_dropped)
        for stage, milliseconds in stats.stage_ms.model_dump().items():
            self.device_stage_seconds.labels(device, stage).set(milliseconds / 1000.0)

    def set_status(self, device_id: str, status: str) -> None:
        self.device_online.labels(device_id).set(1 if status == "online" else 0)
