"""Helpers for the web UI tests: a real dashboard on the test broker, headless Chromium, device publishers.

The dashboard runs as the production server (waitress, :class:`webui.server.WebServer`) in a
thread of the test process, subscribed to the ``broker`` fixture's Mosquitto as ``webui``, on a
SQLite store in ``tmp_path``. Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright's
Python API; tests skip with the reason when either is missing.

Run as a script, this module is a stand-alone device (a separate process the tests can SIGKILL)::

    python -m tests.webui_helpers publish --pki-dir DIR --port PORT --device cam-b --fps 5
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.cookiejar
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from cloud.store import NewFrame, Store
from comms.mqtt import Availability, MqttClient
from comms.settings import pki_mqtt_settings
from contract.emotions import EMOTIONS
from contract.messages import (
    FRAME_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    Box,
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

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("EMQ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PASSWORDS = {"admin": "admin-password-1", "lab": "labeller-password-1", "viewer": "viewer-password-1"}
ROLES = {"admin": "admin", "lab": "labeller", "viewer": "viewer"}
WAIT_S = 10.0
FRAME_SIZE = (640, 360)
_HASHES: dict[str, str] = {}


# == browser ========================================================================================
def missing_browser_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


@dataclass
class BrowserSession:
    playwright: object
    browser: object

    def new_page(self, **options):
        options.setdefault("viewport", {"width": 1400, "height": 900})
        context = self.browser.new_context(**options)
        return context.new_page()


def launch_browser() -> Iterator[BrowserSession]:
    """Headless Debian Chromium through Playwright; for a module-scoped fixture (one per module)."""
    from playwright.sync_api import sync_playwright

    manager = sync_playwright()
    playwright = manager.start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    try:
        yield BrowserSession(playwright, browser)
    finally:
        browser.close()
        manager.__exit__(None, None, None)


def screenshot(page, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot under test-artifacts/ (git-ignored) for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def log_in(page, base_url: str, user: str, path: str = "/") -> None:
    page.goto(f"{base_url}/login?next={path}")
    page.fill("#username", user)
    page.fill("#password", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}{path}*")


def collect_csp_violations(page) -> list[str]:
    """Console errors about the Content-Security-Policy, appended as they happen."""
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None)
    return violations


# == shared fixtures (imported by the test modules that use them) ======================================
@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.context.close()


@pytest.fixture
def webui(broker, pki_dir, tmp_path):
    """The dashboard on the test broker, a store in tmp_path, users admin / lab / viewer."""
    running = start_webui(webui_config(tmp_path, pki_dir, broker.settings.tls_port))
    yield running
    running.stop()


@pytest.fixture
def webui_app(pki_dir, tmp_path):
    """The dashboard's Flask app without a server or broker connection, for Flask's test client."""
    from webui.app import create_app
    from webui.services import build_services

    config = webui_config(tmp_path, pki_dir, broker_port=8883)
    app = create_app(config, services=build_services(config, connect=False))
    yield app
    app.extensions["emq"].stop()


class FakeClock:
    """A clock the test moves by hand (for the login throttle's delays)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def csrf_of(client, page: str = "/") -> str:
    """The CSRF token of a test client's session; fetches ``page`` first if there is none yet (as after a login)."""
    with client.session_transaction() as session:
        token = session.get("csrf")
    if token:
        return token
    client.get(page)
    with client.session_transaction() as session:
        return session["csrf"]


def form_log_in(client, user: str, password: str | None = None, *, address: str = "127.0.0.1"):
    """Log a Flask test client in through the form, as a browser at ``address`` would."""
    environ = {"REMOTE_ADDR": address}
    client.get("/login", environ_base=environ)
    fields = {"username": user, "password": password or PASSWORDS[user], "csrf_token": csrf_of(client)}
    return client.post("/login", data=fields, environ_base=environ)


def copy_session_cookie(app, client, name: str = "emq_session"):
    """A second client holding a copy of ``client``'s session cookie (a stolen cookie)."""
    thief = app.test_client()
    thief.set_cookie(name, client.get_cookie(name).value)
    return thief


# == the dashboard ===================================================================================
def password_hash(user: str) -> str:
    """Hashes are slow by design (scrypt): make each once per test process."""
    from webui.users import hash_password

    if user not in _HASHES:
        _HASHES[user] = hash_password(PASSWORDS[user])
    return _HASHES[user]


def webui_config(tmp_path: Path, pki_dir: Path, broker_port: int, **sections):
    """A config for the test broker and a store in tmp_path, with users admin, lab (labeller) and viewer."""
    from webui.config import WebUIConfig

    users = {name: {"role": ROLES[name], "password_hash": password_hash(name)} for name in PASSWORDS}
    data = {
        "pki_dir": str(pki_dir),
        "mqtt": {"host": "localhost", "port": broker_port, "reconnect_min_delay_s": 0.1, "reconnect_max_delay_s": 1.0},
        "server": {"host": "127.0.0.1", "port": 0, "max_streams": 8, "request_threads": 6},
        "auth": {"users_file": str(tmp_path / "webui" / "users.json"), "secret_key_file": str(tmp_path / "webui" / "secret_key"), "users": users},
        "store": {"url": f"sqlite:///{tmp_path / 'cloud' / 'emotion.db'}", "data_dir": str(tmp_path / "cloud" / "data")},
        "live": {"keepalive_s": 1.0},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    config = WebUIConfig.model_validate(data)
    create_schema(config.store.url)
    return config


def full_store(services) -> Store:
    """Every part of the store on the dashboard's database: tests seed what the ingest would have written."""
    return Store(services.store.db)


def create_schema(url: str) -> None:
    """What the ingest does on its first start: the dashboard only reads a schema someone else made."""
    from cloud.store import Store

    Store(url).close()


@dataclass
class RunningWebUI:
    url: str
    app: object
    services: object
    server: object

    @property
    def store(self) -> Store:
        return full_store(self.services)

    @property
    def data_dir(self) -> Path:
        return self.services.config.store.data_dir

    def stop(self) -> None:
        self.server.stop()


def start_webui(config, *, wait_for_broker: bool = True) -> RunningWebUI:
    """The production server in a thread, connected to the broker (waits for the subscription)."""
    from webui.app import create_app
    from webui.server import WebServer
    from webui.services import build_services

    services = build_services(config)
    app = create_app(config, services=services)
    server = WebServer(app, config.server).start()
    running = RunningWebUI(server.url, app, services, server)
    if wait_for_broker and not services.broker.client.wait_connected(WAIT_S):
        running.stop()
        raise AssertionError(f"web UI did not connect to the broker: {services.broker.last_error}")
    return running


# == frames, results, device clients ================================================================
def synthetic_jpeg(text: str, seed: int = 0, size: tuple[int, int] = FRAME_SIZE) -> bytes:
    """A real JPEG (OpenCV-encoded): a gradient, a face-like disc and a caption."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 160, width, dtype=np.uint8)
    image = np.dstack([np.tile(ramp, (height, 1)), np.full((height, width), 60 + seed % 100, np.uint8), np.tile(ramp[::-1], (height, 1))])
    centre = (int(width * 0.5), int(height * 0.45))
    cv2.circle(image, centre, height // 5, (180, 200, 230), -1)
    cv2.rectangle(image, (centre[0] - 80, centre[1] - 80), (centre[0] + 80, centre[1] + 80), (40, 220, 40), 3)
    cv2.putText(image, text, (20, height - 24), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    image += rng.integers(0, 8, image.shape, dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return jpeg.tobytes()


def crop_png_b64(seed: int) -> str:
    grey = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
    cv2.circle(grey, (32, 30), 18, 200, -1)
    ok, png = cv2.imencode(".png", grey)
    assert ok
    return base64.b64encode(png.tobytes()).decode()


def face_with(label: str, confidence: float, *, track_id: int = 1, box=(240, 80, 160, 160), seed: int = 0, crop: bool = True) -> Face:
    """A face whose top class is ``label`` with exactly ``confidence`` (the rest shared evenly)."""
    rest = (1.0 - confidence) / (len(EMOTIONS) - 1)
    values = [confidence if name == label else rest for name in EMOTIONS]
    x, y, w, h = box
    return Face(
        box=Box(x=x, y=y, w=w, h=h),
        probabilities=Probabilities.from_sequence(values),
        label=label,
        confidence=round(confidence, 5),
        track_id=track_id,
        crop_png_b64=crop_png_b64(seed) if crop else None,
    )


def result_with(device: str, seq: int, faces: list[Face], captured_at: datetime | None = None, epoch: str | None = None):
    return make_result(
        device_id=device, epoch=epoch or uuid.uuid4().hex[:16], seq=seq, source="file:synthetic", video_file="synthetic", frame_number=seq,
        captured_at=captured_at or datetime.now(timezone.utc), frame_width=FRAME_SIZE[0], frame_height=FRAME_SIZE[1],
        model_name="mini_xception_fer2013", model_version="1.0.0", faces=faces,
    )


def stats_for(device: str, fps: float = 5.0, paused: bool = False) -> Stats:
    return Stats(
        device_id=device, sent_at=utc_millis(), uptime_s=1.0, fps=fps, frames_processed=10, frames_dropped=0,
        results_published=10, outbox_depth=0, outbox_dropped=0, stage_ms=StageTimings(),
        model=ModelInfo(name="mini_xception_fer2013", version="1.0.0"), source="file:synthetic", paused=paused,
    )


class DeviceClient:
    """A device identity on the broker that publishes like the edge agent (status with LWT, stats, frames, results)."""

    def __init__(self, client: MqttClient, device: str, topics: Topics | None = None) -> None:
        self.client = client
        self.device = device
        self.topics = topics or Topics()
        self.seq = 0

    def publish_stats(self, fps: float = 5.0, paused: bool = False) -> None:
        stats = stats_for(self.device, fps, paused)
        self.client.publish(self.topics.stats(self.device), stats.to_json(), qos=0, retain=True, content_type=JSON_CONTENT_TYPE)

    def prepare_result(self, faces: list[Face]):
        """The next result, not yet published (to send its frame first, as a real device may)."""
        result = result_with(self.device, self.seq, faces)
        self.seq += 1
        return result

    def publish_result(self, faces: list[Face] | None = None, prepared=None):
        result = prepared or self.prepare_result(faces or [])
        delivery = self.client.publish(self.topics.result(self.device), result.to_json(), qos=1, content_type=JSON_CONTENT_TYPE)
        assert delivery.wait(WAIT_S), "result not acknowledged"
        return result

    def publish_frame(self, jpeg: bytes, result=None, captured_at: str | None = None, extra_properties=(), frame_number: int | None = None) -> str:
        payload = base64.b64encode(jpeg).decode()
        if frame_number is None:
            frame_number = result.frame_number if result else self.seq
        meta = FrameMeta(
            frame_number=frame_number,
            captured_at=captured_at or (result.captured_at if result else utc_millis()),
            result_seq=result.seq if result else None,
            result_msg_id=result.msg_id if result else "",
        )
        self.client.publish(
            self.topics.frame(self.device), payload, qos=0,
            user_properties=[*meta.to_properties(), *extra_properties], content_type=FRAME_CONTENT_TYPE,
        )
        return payload


def device_availability(device: str, topics: Topics | None = None) -> Availability:
    return Availability(topic=(topics or Topics()).status(device))


def start_publisher_process(pki_dir: Path, port: int, device: str, log_path: Path, fps: float = 5.0) -> subprocess.Popen:
    """A separate device process (this module's ``publish`` command), for SIGKILL tests."""
    command = [sys.executable, "-m", "tests.webui_helpers", "publish", "--pki-dir", str(pki_dir), "--port", str(port), "--device", device, "--fps", str(fps)]
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


# == seeding the store ================================================================================
@dataclass(frozen=True)
class Seeded:
    result_id: int
    msg_id: str
    device: str
    label: str | None
    face_ids: list[int]


def seed_result(store: Store, data_dir: Path, device: str, seq: int, faces: list[Face], captured_at: datetime, *, with_frame: bool = True) -> Seeded:
    """Store a result as the ingest does: crops (PNG bytes) in the store, the frame as a JPEG file under data_dir."""
    import json

    result = result_with(device, seq, faces, captured_at)
    crops = [face.crop_png for face in result.faces]
    document = json.loads(result.to_json())
    for face in document["faces"]:
        face["crop_png_b64"] = None  # the document is kept without pixels
    received = captured_at.timestamp() + 0.05
    assert store.add_result(result, received, crops, json.dumps(document))
    if with_frame:
        relative = Path("frames") / device / f"{result.frame_number:08d}-{result.msg_id[:8]}.jpg"
        (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        jpeg = synthetic_jpeg(f"{device} #{seq}", seed=seq)
        (data_dir / relative).write_bytes(jpeg)
        store.add_frame(NewFrame(device, result.frame_number, captured_at.timestamp(), result.msg_id, *FRAME_SIZE, len(jpeg), str(relative)), received)
    row = store.result_by_msg_id(result.msg_id)
    _, face_rows = store.result(row.id)
    return Seeded(row.id, result.msg_id, device, result.emotion_text, [face.id for face in face_rows])


def seed_history(store: Store, data_dir: Path, count: int, *, start: datetime | None = None, step_s: float = 60.0) -> list[Seeded]:
    """``count`` results over two devices, cycling through the emotions, one minute apart."""
    start = start or datetime.now(timezone.utc) - timedelta(seconds=count * step_s)
    seeded = []
    for index in range(count):
        device = ("cam-a", "cam-b")[index % 2]
        label = EMOTIONS[index % len(EMOTIONS)]
        confidence = 0.3 + 0.6 * ((index * 37) % 100) / 100
        faces = [face_with(label, confidence, seed=index)]
        seeded.append(seed_result(store, data_dir, device, index, faces, start + timedelta(seconds=index * step_s)))
    return seeded


def copy_to_docs(source: Path, name: str) -> Path | None:
    """Refresh a README screenshot only when asked (EMQ_WEBUI_UPDATE_DOCS=1), so test runs leave git clean."""
    if os.environ.get("EMQ_WEBUI_UPDATE_DOCS") != "1":
        return None
    target = REPO_ROOT / "docs" / name
    shutil.copyfile(source, target)
    return target



# == the stand-alone device process ======================================================================
def publish_forever(pki_dir: Path, port: int, device: str, fps: float) -> None:
    """Publish like an edge agent until killed: online status (LWT offline), stats, frames with results."""
    settings = pki_mqtt_settings(pki_dir, device, port=port, client_id=f"{device}-{uuid.uuid4().hex[:6]}")
    client = MqttClient(settings, availability=device_availability(device)).start()
    if not client.wait_connected(WAIT_S):
        raise SystemExit(f"cannot connect: {client.last_error}")
    publisher = DeviceClient(client, device)
    publisher.publish_stats(fps)
    print("ready", flush=True)
    stop = threading.Event()
    frame_number = 0
    while not stop.wait(1.0 / fps):
        label = EMOTIONS[frame_number // 10 % len(EMOTIONS)]
        result = publisher.publish_result([face_with(label, 0.8, seed=frame_number)])
        publisher.publish_frame(synthetic_jpeg(f"{device} #{frame_number}", seed=frame_number), result)
        frame_number += 1
        if frame_number % int(max(fps, 1)) == 0:
            publisher.publish_stats(fps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.webui_helpers")
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish", help="be a device until killed")
    publish.add_argument("--pki-dir", type=Path, required=True)
    publish.add_argument("--port", type=int, required=True)
    publish.add_argument("--device", required=True)
    publish.add_argument("--fps", type=float, default=5.0)
    args = parser.parse_args(argv)
    publish_forever(args.pki_dir, args.port, args.device, args.fps)
    return 0




# == plain HTTP (no browser) ============================================================================
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@dataclass
class HttpResponse:
    status: int
    headers: object
    body: bytes

    def json(self):
        import json

        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class HttpSession:
    """A cookie-keeping HTTP client that does not follow redirects (to see 302s and 401s as they are)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies), NoRedirect)
        self.csrf_token: str | None = None

    def request(self, method: str, path: str, *, data: bytes | None = None, headers: dict | None = None) -> HttpResponse:
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=WAIT_S) as response:
                return HttpResponse(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return HttpResponse(error.code, error.headers, error.read())

    def get(self, path: str, **kwargs) -> HttpResponse:
        return self.request("GET", path, **kwargs)

    def post_form(self, path: str, fields: dict) -> HttpResponse:
        body = urllib.parse.urlencode(fields).encode()
        return self.request("POST", path, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"})

    def post_json(self, path: str, body: dict, *, csrf: str | None = None) -> HttpResponse:
        import json

        headers = {"Content-Type": "application/json"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return self.request("POST", path, data=json.dumps(body).encode(), headers=headers)

    def page_csrf_token(self, path: str = "/login") -> str:
        page = self.get(path).text
        match = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert match, f"no CSRF token on {path}"
        return match.group(1)

    def log_in(self, user: str, password: str | None = None, next_path: str = "/") -> HttpResponse:
        token = self.page_csrf_token("/login")
        response = self.post_form("/login", {"username": user, "password": password or PASSWORDS[user], "csrf_token": token, "next": next_path})
        if response.status == 302:
            self.csrf_token = self.page_csrf_token("/")
        return response


if __name__ == "__main__":
    sys.exit(main())


class SseReader:
    """Reads a live stream over HTTP on a thread, decoding events as a browser's EventSource would."""

    def __init__(self, base_url: str, cookie: str, path: str = "/api/stream") -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT_S)
        self.connection.request("GET", path, headers={"Cookie": cookie, "Accept": "text/event-stream"})
        self._socket = self.connection.sock  # getresponse() may let go of it; close() needs it
        self.response = self.connection.getresponse()
        self.events: list[tuple[str, dict]] = []
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.response.status == 200:
            self._thread.start()

    def _read(self) -> None:
        import json

        name, data = "message", ""
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif not line and data:
                    with self._condition:
                        self.events.append((name, json.loads(data)))
                        self._condition.notify_all()
                    name, data = "message", ""
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # hung up (AttributeError: http.client after its response was closed)

    def wait_for(self, predicate, timeout: float = WAIT_S) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: predicate(self.events), timeout)

    def close(self) -> None:
        """Hang up for real: the reading thread still holds the socket, so shut it down, not just close it."""
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(WAIT_S)
        self.response.close()
        self.connection.close()


def session_cookie(session: HttpSession) -> str:
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in session.cookies)
