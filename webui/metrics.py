"""Prometheus metrics of the dashboard: request latency, live streams and devices.

Served on their own loopback port (``server.metrics_port``), not behind the
login, so Prometheus can scrape without a session while every dashboard
route still requires one.
"""

from __future__ import annotations

import time

from flask import Flask, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class WebMetrics:
    def __init__(self, hub) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "emq_webui_request_seconds", "Time to answer a request (streams: until headers)", ["endpoint", "method"],
            registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.responses = Counter("emq_webui_responses_total", "Responses by endpoint and status", ["endpoint", "status"], registry=self.registry)
        live_streams = Gauge("emq_webui_live_streams", "Browser tabs receiving the live stream", registry=self.registry)
        live_devices = Gauge("emq_webui_live_devices", "Devices held in the live view", registry=self.registry)
        live_streams.set_function(lambda: hub.stream_count)
        live_devices.set_function(hub.device_count)

    def install(self, app: Flask) -> None:
        app.before_request(_start_timer)
        app.after_request(self._observe)

    def _observe(self, response):
        endpoint = request.endpoint or "unmatched"
        started = g.get("metrics_started")
        if started is not None:
            self.request_seconds.labels(endpoint, request.method).observe(time.perf_counter() - started)
        self.responses.labels(endpoint, str(response.status_code)).inc()
        return response

    def serve(self, port: int, address: str) -> None:
        start_http_server(port, addr=address, registry=self.registry)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()
