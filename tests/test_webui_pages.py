"""Every page in a real Chromium, logged in, with live devices and stored data: no console error, no page error.

A console error is anything the browser logs at level "error": a failed script, a
Content-Security-Policy violation, a resource that did not load. A page error is an
uncaught exception in our scripts. Both fail the test, with the page and the message.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.webui_helpers import (
    DeviceClient,
    device_availability,
    face_with,
    log_in,
    missing_browser_reason,
    seed_history,
    synthetic_jpeg,
)

from tests.webui_helpers import browser, page, webui  # noqa: E402,F401 (shared fixtures)

pytestmark = pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason()))

# The HTML pages a logged-in person can open; a new page must be added here (checked below).
PAGE_ENDPOINTS = {"pages.live", "pages.history", "pages.result_detail", "pages.labelling", "auth.login"}
LIVE_DEVICES = ("cam-a", "cam-b")


class BrowserProblems:
    """Console errors and uncaught page errors, remembered with the page they happened on."""

    def __init__(self, page) -> None:
        self.page = page
        self.seen: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(f"{page.url}: uncaught {error}"))

    def _console(self, message) -> None:
        if message.type == "error":
            self.seen.append(f"{self.page.url}: console error: {message.text} (at {message.location.get('url')})")


@pytest.fixture
def live_devices(webui, mqtt_client):
    """Two devices publishing stats, results and frames, as edge agents do."""
    devices = []
    for name in LIVE_DEVICES:
        device = DeviceClient(mqtt_client(name, availability=device_availability(name)), name)
        device.publish_stats()
        devices.append(device)
    return devices


def publish_frames(devices, count: int = 3) -> None:
    for number in range(count):
        for device in devices:
            result = device.publish_result([face_with("happy", 0.7, seed=number), face_with("sad", 0.5, track_id=2, box=(20, 20, 90, 90))])
            device.publish_frame(synthetic_jpeg(f"{device.device} #{number}", seed=number), result)


def visit_live(page, webui, devices) -> None:
    from playwright.sync_api import expect

    page.goto(f"{webui.url}/")
    expect(page.locator("#stream-state")).to_have_attribute("data-state", "open")
    publish_frames(devices)
    for name in LIVE_DEVICES:
        tile = page.locator(f'.tile[data-device="{name}"]')
        expect(tile.locator(".frame-img")).to_be_visible()
        expect(tile.locator(".face")).not_to_have_count(0)
    page.reload()  # a second stream connect: its hello event lists the devices already on the page
    expect(page.locator("#stream-state")).to_have_attribute("data-state", "open")
    expect(page.locator(".tile")).to_have_count(len(LIVE_DEVICES))


def visit_history(page, webui) -> None:
    from playwright.sync_api import expect

    page.goto(f"{webui.url}/history")
    expect(page.locator("#charts")).to_have_attribute("data-rendered", "2", timeout=10000)
    page.locator("#charts .chart-plot").first.hover()  # plotly's hover labels restyle the chart too
    page.goto(f"{webui.url}/history?emotion=sad&range=24h&page=1")
    expect(page.locator(".result-row")).not_to_have_count(0)
    expect(page.locator("#charts")).to_have_attribute("data-rendered", "2", timeout=10000)


def visit_result(page, webui, result_id: int) -> None:
    from playwright.sync_api import expect

    page.goto(f"{webui.url}/results/{result_id}")
    page.wait_for_function("document.getElementById('stored-frame').complete")
    expect(page.locator(".overlay rect.face-box")).to_have_count(1)
    page.click("#back-to-history")
    expect(page.locator(".result-row")).not_to_have_count(0)


def visit_labelling(page, webui) -> None:
    from playwright.sync_api import expect

    page.goto(f"{webui.url}/labelling")
    expect(page.locator("#crop")).to_be_visible()
    face_id = page.locator("#labeller").get_attribute("data-face-id")
    page.keyboard.press("Enter")  # confirm the model's label: the POST and the next crop
    expect(page.locator("#label-status")).to_contain_text(f"Saved face {face_id}")


def test_every_page_loads_without_a_console_or_page_error(webui, page, live_devices):
    from playwright.sync_api import expect

    start = datetime.now(timezone.utc) - timedelta(hours=1)
    seeded = seed_history(webui.store, webui.data_dir, 14, start=start)
    problems = BrowserProblems(page)
    visited = set()

    page.goto(f"{webui.url}/login")
    expect(page.locator("#username")).to_be_visible()
    visited.add("auth.login")
    log_in(page, webui.url, "admin")
    visit_live(page, webui, live_devices)
    visited.add("pages.live")
    visit_history(page, webui)
    visited.add("pages.history")
    visit_result(page, webui, seeded[-1].result_id)
    visited.add("pages.result_detail")
    visit_labelling(page, webui)
    visited.add("pages.labelling")
    page.click("button:has-text('Log out')")
    expect(page.locator("#username")).to_be_visible()

    assert problems.seen == [], "\n".join(problems.seen)
    assert visited == PAGE_ENDPOINTS


def test_the_page_list_covers_every_html_page(webui):
    """Every GET route that renders a page (not /api, media, vendor or static) is in PAGE_ENDPOINTS."""
    pages = set()
    for rule in webui.app.url_map.iter_rules():
        if "GET" in rule.methods and rule.endpoint.startswith(("pages.", "auth.")):
            pages.add(rule.endpoint)
    assert pages == PAGE_ENDPOINTS
