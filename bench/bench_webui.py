"""Web UI benchmark: publish → on-screen latency of live frames, and the dashboard's CPU, under load.

    python bench/bench_webui.py [--devices 4] [--fps 10] [--seconds 20] [--json bench-webui.json]

Everything is real and on this machine: this repo's Mosquitto (TLS, a PKI made
for the run) on a free port, the dashboard as its own process (``python -m
webui serve``: waitress, the ``webui`` identity), ``--devices`` publishers
each sending a result (QoS 1) and an annotated frame (QoS 0, base64 JPEG,
frames of woman2.mp4 when ../shared/media has it) ``--fps`` times a second,
and Debian's Chromium (Playwright) logged in on the live page.

Latency is measured in the browser, per frame: from ``captured_at`` (set by
the publisher right before publishing, same machine clock) to the first
animation frame after the tile's <img> has loaded the new JPEG (the page's
``emq:frame-shown`` event, then requestAnimationFrame). Frames the browser
skipped (a newer one replaced them first) count as skipped, not as latency.
Server CPU is the dashboard process's user+system time over the measured
window (/proc/<pid>/stat), in % of one core. Target: p95 ≤ 250 ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))  # run as a script from anywhere

TARGET_P95_MS = 250.0
WARM_UP_S = 3.0
VIDEO = REPOSITORY.parent / "shared" / "media" / "woman2.mp4"
BENCH_USER, BENCH_PASSWORD = "bench", "bench-password-1"
SERVER_START_TIMEOUT_S = 30.0

# Runs in the page before its own scripts: one record per frame that reached the screen.
RECORDER = """
window.__shown = [];
window.__results = [];
document.addEventListener("emq:frame-shown", (event) => {
  const detail = event.detail;
  requestAnimationFrame(() => window.__shown.push({ ...detail, painted_at: Date.now() }));
});
document.addEventListener("emq:result-received", (event) => window.__results.push(event.detail));
"""


# -- the parts ------------------------------------------------------------------------------------
def start_broker(folder: Path, devices: list[str]):
    from broker.config import BrokerSettings
    from broker.identities import init_pki
    from broker.runner import MosquittoProcess
    from tests.conftest import free_port

    init_pki(folder / "pki", devices=devices)
    settings = BrokerSettings(
        pki_dir=folder / "pki", state_dir=folder / "broker", bind_address="127.0.0.1", tls_port=free_port(), password_port=None
    )
    return MosquittoProcess(settings).start()


def start_dashboard(folder: Path, broker_port: int) -> tuple[subprocess.Popen, str]:
    """``python -m webui serve`` configured through its environment; returns the process and its URL."""
    from webui.users import hash_password

    env = dict(os.environ)
    env.update({
        "EMQ_WEBUI__PKI_DIR": str(folder / "pki"),
        "EMQ_WEBUI__MQTT__PORT": str(broker_port),
        "EMQ_WEBUI__SERVER__PORT": "0",
        "EMQ_WEBUI__STORE__URL": f"sqlite:///{folder / 'emotion.db'}",
        "EMQ_WEBUI__STORE__DATA_DIR": str(folder / "data"),
        "EMQ_WEBUI__AUTH__USERS_FILE": str(folder / "users.json"),
        "EMQ_WEBUI__AUTH__SECRET_KEY_FILE": str(folder / "secret_key"),
        f"EMQ_WEBUI__AUTH__USERS__{BENCH_USER.upper()}__ROLE": "viewer",
        f"EMQ_WEBUI__AUTH__USERS__{BENCH_USER.upper()}__PASSWORD_HASH": hash_password(BENCH_PASSWORD),
    })
    log = (folder / "webui.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "webui", "serve"], env=env, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=log, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=SERVER_START_TIMEOUT_S)
    except queue.Empty:
        process.kill()
        raise SystemExit(f"the dashboard did not start; see {folder / 'webui.log'}") from None
    match = re.search(r"serving on (http://\S+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"unexpected dashboard output: {line!r}")
    return process, match.group(1)


def frame_payloads(count: int) -> list[bytes]:
    """Base64 JPEGs as an edge agent publishes them: frames of woman2.mp4 if present, else synthetic."""
    import cv2

    from tests.webui_helpers import synthetic_jpeg

    payloads = []
    capture = cv2.VideoCapture(str(VIDEO)) if VIDEO.exists() else None
    for number in range(count):
        ok, image = capture.read() if capture is not None else (False, None)
        if ok:
            encoded, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
            jpeg_bytes = jpeg.tobytes()
        else:
            jpeg_bytes = synthetic_jpeg(f"frame {number}", seed=number)
        payloads.append(base64.b64encode(jpeg_bytes))
    return payloads


class Publishers:
    """``devices`` device connections publishing a result and a frame each, ``fps`` times a second, staggered."""

    def __init__(self, pki_dir: Path, port: int, devices: list[str], fps: float) -> None:
        from comms.mqtt import Availability, MqttClient
        from comms.settings import pki_mqtt_settings
        from contract.topics import Topics

        self.topics = Topics()
        self.fps = fps
        self.devices = devices
        self.clients = {
            device: MqttClient(pki_mqtt_settings(pki_dir, device, port=port), availability=Availability(self.topics.status(device))).start()
            for device in devices
        }
        for device, client in self.clients.items():
            if not client.wait_connected(10):
                raise SystemExit(f"{device} cannot connect: {client.last_error}")
        self.payloads = frame_payloads(60)
        self.published: dict[str, int] = {device: 0 for device in devices}
        self.publish_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publishers", daemon=True)

    def start(self) -> "Publishers":
        self._thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.fps
        offset = period / len(self.devices)
        started = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            for index, device in enumerate(self.devices):
                due = started + tick * period + index * offset
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                self._publish(device, tick)
            tick += 1

    def _publish(self, device: str, number: int) -> None:
        from contract.messages import FRAME_CONTENT_TYPE, JSON_CONTENT_TYPE, utc_millis
        from contract.validation import FrameMeta
        from tests.webui_helpers import face_with, result_with

        began = time.perf_counter()
        result = result_with(device, number, [face_with("happy", 0.5 + 0.4 * (number % 10) / 10, seed=number, crop=False)])
        client = self.clients[device]
        client.publish(self.topics.result(device), result.to_json(), qos=1, content_type=JSON_CONTENT_TYPE)
        meta = FrameMeta(frame_number=number, captured_at=utc_millis(), result_seq=result.seq, result_msg_id=result.msg_id)
        payload = self.payloads[number % len(self.payloads)]
        client.publish(self.topics.frame(device), payload, qos=0, user_properties=meta.to_properties(), content_type=FRAME_CONTENT_TYPE)
        self.published[device] += 1
        self.publish_ms.append((time.perf_counter() - began) * 1000)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for client in self.clients.values():
            client.stop(timeout=2)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_live_page(url: str):
    from playwright.sync_api import sync_playwright

    from tests.webui_helpers import CHROMIUM, CHROMIUM_ARGS

    manager = sync_playwright()
    playwright = manager.start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
    page.add_init_script(RECORDER)
    page.goto(f"{url}/login")
    page.fill("#username", BENCH_USER)
    page.fill("#password", BENCH_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    page.wait_for_selector('#stream-state[data-state="open"]')
    return manager, browser, page


# -- figures -------------------------------------------------------------------------------------------
def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def epoch_ms(text: str) -> float:
    from contract.messages import parse_utc_millis

    return parse_utc_millis(text).timestamp() * 1000


def summarise(shown: list[dict], results: list[dict], published: dict[str, int], window: tuple[float, float]) -> dict[str, Any]:
    start_ms, end_ms = window[0] * 1000, window[1] * 1000
    in_window = [record for record in shown if start_ms <= epoch_ms(record["captured_at"]) < end_ms]
    latencies = [record["painted_at"] - epoch_ms(record["captured_at"]) for record in in_window]
    received = [record["received_at"] - epoch_ms(record["captured_at"]) for record in results if start_ms <= epoch_ms(record["captured_at"]) < end_ms]
    seconds = window[1] - window[0]
    return {
        "frames_on_screen": len(in_window),
        "frames_on_screen_per_s": len(in_window) / seconds,
        "frames_published": dict(published),
        "frame_latency_ms": {
            "p50": percentile(latencies, 0.50), "p95": percentile(latencies, 0.95), "p99": percentile(latencies, 0.99),
            "max": max(latencies, default=float("nan")), "mean": statistics.fmean(latencies) if latencies else float("nan"),
        },
        "result_event_latency_ms": {"p50": percentile(received, 0.50), "p95": percentile(received, 0.95)},
        "per_device_on_screen": {device: sum(1 for record in in_window if record["device"] == device) for device in published},
    }


def print_table(report: dict[str, Any]) -> None:
    latency = report["frame_latency_ms"]
    rows = [
        ("load", f"{report['devices']} devices × {report['fps']:g} fps (frame + result), {report['frame_kb']:.0f} KB frames"),
        ("frames on screen", f"{report['frames_on_screen']} in {report['seconds']:g} s ({report['frames_on_screen_per_s']:.1f}/s)"),
        ("publish → screen p50", f"{latency['p50']:.0f} ms"),
        ("publish → screen p95", f"{latency['p95']:.0f} ms  (target ≤ {TARGET_P95_MS:.0f} ms: {'PASS' if latency['p95'] <= TARGET_P95_MS else 'FAIL'})"),
        ("publish → screen p99 / max", f"{latency['p99']:.0f} / {latency['max']:.0f} ms"),
        ("result → browser p50 / p95", f"{report['result_event_latency_ms']['p50']:.0f} / {report['result_event_latency_ms']['p95']:.0f} ms"),
        ("dashboard CPU", f"{report['server_cpu_percent']:.1f} % of one core"),
        ("dashboard RSS", f"{report['server_rss_mb']:.0f} MB"),
        ("machine", f"{os.cpu_count()} cores, broker + publishers + Chromium on the same machine"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    devices = [f"bench-{index + 1}" for index in range(arguments.devices)]
    with tempfile.TemporaryDirectory(prefix="bench-webui-") as folder_name:
        folder = Path(folder_name)
        broker = start_broker(folder, devices)
        server, url = start_dashboard(folder, broker.settings.tls_port)
        manager = browser = publishers = None
        try:
            manager, browser, page = open_live_page(url)
            publishers = Publishers(folder / "pki", broker.settings.tls_port, devices, arguments.fps).start()
            time.sleep(WARM_UP_S)  # a benchmark's warm-up: no test waits on this
            cpu_before, window_start = process_cpu_seconds(server.pid), time.time()
            time.sleep(arguments.seconds)
            cpu_after, window_end = process_cpu_seconds(server.pid), time.time()
            rss = process_rss_mb(server.pid)
            publishers.stop()
            shown = page.evaluate("window.__shown")
            results = page.evaluate("window.__results")
            report = summarise(shown, results, publishers.published, (window_start, window_end))
            report.update(
                devices=arguments.devices, fps=arguments.fps, seconds=arguments.seconds,
                frame_kb=statistics.fmean(len(payload) for payload in publishers.payloads) / 1024,
                server_cpu_percent=100.0 * (cpu_after - cpu_before) / (window_end - window_start),
                server_rss_mb=rss,
                publish_call_ms_p95=percentile(publishers.publish_ms, 0.95),
                browser=browser.version,
                tiles=page.locator(".tile").count(),
            )
            return report
        finally:
            if publishers is not None and not publishers._stop.is_set():
                publishers.stop()
            if browser is not None:
                browser.close()
                manager.__exit__(None, None, None)
            server.terminate()
            server.wait(10)
            broker.stop()


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--fps", type=float, default=10.0, help="frames (and results) per second per device")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window, after a 3 s warm-up")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    from tests.webui_helpers import missing_browser_reason

    reason = missing_browser_reason()
    if reason:
        print(f"bench_webui: {reason}", file=sys.stderr)
        return 2
    report = run(arguments)
    print_table(report)
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2))
    return 0 if report["frame_latency_ms"]["p95"] <= TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
