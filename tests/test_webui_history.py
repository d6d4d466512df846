"""History in a real Chromium: filters, pagination, stored frames (served safely) and the emotion-share chart."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from cloud.store import NewFrame
from contract.emotions import EMOTIONS
from tests.webui_helpers import (
    HttpSession,
    collect_csp_violations,
    log_in,
    missing_browser_reason,
    screenshot,
    seed_history,
)

from tests.webui_helpers import browser, webui  # noqa: E402,F401 (shared fixtures)

pytestmark = pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason()))

SEEDED = 28  # 4 of each emotion, alternating cam-a / cam-b, one minute apart
BROWSER_ZONE = "Europe/Paris"  # not the server's: local-time filters must still be right


@pytest.fixture
def page(browser):
    page = browser.new_page(timezone_id=BROWSER_ZONE)
    yield page
    page.context.close()


@pytest.fixture
def seeded(webui):
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    return seed_history(webui.store, webui.data_dir, SEEDED, start=start)


def local_input_value(moment_epoch: float) -> str:
    """What a person in BROWSER_ZONE types into a datetime-local field for this moment."""
    return datetime.fromtimestamp(moment_epoch, ZoneInfo(BROWSER_ZONE)).strftime("%Y-%m-%dT%H:%M:%S")


def test_the_emotion_filter_shows_only_that_emotion(webui, seeded, page):
    from playwright.sync_api import expect

    log_in(page, webui.url, "viewer", "/history")
    rows = page.locator(".result-row")
    expect(rows).to_have_count(SEEDED)
    page.select_option("#filter-emotion", "sad")
    page.click("#apply-filters")
    expect(page).to_have_url(re.compile(r"emotion=sad"))
    expect(rows).to_have_count(SEEDED // len(EMOTIONS))
    assert set(rows.locator(".emotion-chip").all_text_contents()) == {"sad"}
    assert {seeded_result.result_id for seeded_result in seeded if seeded_result.label == "sad"} == {
        int(urlsplit(href).path.rsplit("/", 1)[1]) for href in rows.evaluate_all("rows => rows.map(row => row.dataset.href)")
    }

    page.select_option("#filter-device", "cam-a")
    page.click("#apply-filters")
    devices = rows.locator("td:nth-child(2)")
    expect(devices).not_to_have_count(0)
    assert set(devices.all_text_contents()) == {"cam-a"}
    assert set(rows.locator(".emotion-chip").all_text_contents()) == {"sad"}
    screenshot(page, "webui-history-filtered", full_page=True)


def test_the_time_filter_uses_the_browsers_local_time(webui, seeded, page):
    from playwright.sync_api import expect

    log_in(page, webui.url, "viewer", "/history")
    since = webui.store.result(seeded[20].result_id)[0].captured_at
    page.fill("#filter-since", local_input_value(since))
    page.click("#apply-filters")
    expect(page.locator(".result-row")).to_have_count(SEEDED - 20)


def test_pages_of_fifty(webui, page):
    from playwright.sync_api import expect

    seed_history(webui.store, webui.data_dir, 60, step_s=5)
    log_in(page, webui.url, "viewer", "/history")
    expect(page.locator(".result-row")).to_have_count(50)
    page.click("a[rel=next]")
    expect(page.locator(".result-row")).to_have_count(10)
    expect(page.locator(".pager")).to_contain_text("Page 2 of 2 · 51–60 of 60")


def test_a_result_shows_its_stored_frame_and_faces(webui, seeded, page):
    from playwright.sync_api import expect

    csp_violations = collect_csp_violations(page)
    log_in(page, webui.url, "viewer", "/history")
    page.locator(".result-row").first.locator("td").nth(1).click()  # the newest result, by clicking its row
    newest = seeded[-1]
    expect(page).to_have_url(re.compile(rf"/results/{newest.result_id}(\?|$)"))
    assert csp_violations == [], "the history page (plotly included) keeps to the CSP"
    page.reload()
    frame = page.locator("#stored-frame")
    expect(frame).to_be_visible()
    page.wait_for_function("document.getElementById('stored-frame').complete")
    assert frame.evaluate("image => image.naturalWidth") == 640
    expect(page.locator(".overlay rect.face-box")).to_have_count(1)
    face = page.locator(".stored-face")
    expect(face.locator(".bar")).to_have_count(7)
    expect(face.locator(".face-label")).to_contain_text(newest.label)
    assert face.locator(".crop-thumb").evaluate("image => image.complete && image.naturalWidth") == 64
    width = face.locator(f".bar.emo-{newest.label} .bar-fill").evaluate("fill => fill.style.width")
    assert width.endswith("%") and float(width[:-1]) > 25
    screenshot(page, "webui-result-detail")
    assert csp_violations == [], csp_violations


def test_back_from_a_result_returns_to_the_same_filtered_page(webui, seeded, page):
    from playwright.sync_api import expect

    log_in(page, webui.url, "viewer", "/history")
    page.goto(f"{webui.url}/history?emotion=happy&device=cam-b")
    rows = page.locator(".result-row")
    expect(rows).not_to_have_count(0)
    shown = rows.count()
    rows.first.locator("td").nth(1).click()
    expect(page).to_have_url(re.compile(r"/results/\d+\?history="))
    page.click("#back-to-history")
    expect(page).to_have_url(re.compile(r"/history\?device=cam-b&emotion=happy$"))
    expect(rows).to_have_count(shown)
    assert set(rows.locator(".emotion-chip").all_text_contents()) == {"happy"}


def test_the_emotion_share_chart_is_drawn_per_device(webui, seeded, page):
    from playwright.sync_api import expect

    log_in(page, webui.url, "viewer", "/history")
    charts = page.locator("#charts")
    expect(charts).to_have_attribute("data-rendered", "2", timeout=10000)
    expect(charts.locator(".chart h3")).to_have_text(["cam-a", "cam-b"])
    expect(charts.locator(".chart .main-svg").first).to_be_visible()
    assert charts.locator(".chart").first.locator("path.js-fill").count() >= 1, "stacked areas drawn"
    screenshot(page, "webui-history-chart", full_page=True)


def test_stored_files_are_served_only_from_inside_the_data_folder(webui, seeded, tmp_path):
    store, data_dir = webui.store, webui.data_dir
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"\xff\xd8\xff secret")
    (data_dir / "frames" / "escape.jpg").symlink_to(outside)
    hostile = {"../../secret.jpg": seeded[0], str(outside): seeded[1], "frames/escape.jpg": seeded[2]}
    store.db.execute("DELETE FROM frames WHERE result_msg_id IN (?, ?, ?)", [entry.msg_id for entry in hostile.values()])
    for path, entry in hostile.items():
        store.add_frame(NewFrame(entry.device, 0, 0.0, entry.msg_id, 640, 360, 10, path), 0.0)
    not_an_image = data_dir / "frames" / "notes.txt"
    not_an_image.write_text("<script>alert(1)</script>")
    store.db.execute("UPDATE frames SET path = ? WHERE result_msg_id = ?", ("frames/notes.txt", seeded[3].msg_id))

    client = HttpSession(webui.url)
    client.log_in("viewer")
    good = client.get(f"/media/results/{seeded[4].result_id}/frame")
    assert good.status == 200 and good.headers["Content-Type"] == "image/jpeg" and good.body.startswith(b"\xff\xd8\xff")
    crop = client.get(f"/media/faces/{seeded[4].face_ids[0]}/crop")
    assert crop.status == 200 and crop.headers["Content-Type"] == "image/png"
    for entry in (*hostile.values(), seeded[3]):
        response = client.get(f"/media/results/{entry.result_id}/frame")
        assert response.status == 404, (entry, response.text)
        assert b"secret" not in response.body
    assert client.get("/media/results/999999/frame").status == 404
    assert client.get("/media/faces/999999/crop").status == 404
    assert os.path.exists(outside)


def test_a_frame_kept_in_the_database_is_served_without_the_data_folder(webui, seeded):
    """frames.backend = "database": the dashboard needs no disk shared with the ingest."""
    store, entry, other = webui.store, seeded[5], seeded[6]
    jpeg = b"\xff\xd8\xff\xe0" + b"frame bytes in the database" + b"\xff\xd9"
    store.db.execute("DELETE FROM frames WHERE result_msg_id IN (?, ?)", (entry.msg_id, other.msg_id))
    store.add_frame(NewFrame(entry.device, 0, 0.0, entry.msg_id, 640, 360, len(jpeg), "frames/db/kept.jpg", jpeg), 0.0)
    store.add_frame(NewFrame(other.device, 0, 0.0, other.msg_id, 640, 360, 10, "frames/db/not-a-jpeg.jpg", b"<script>"), 0.0)

    client = HttpSession(webui.url)
    client.log_in("viewer")
    served = client.get(f"/media/results/{entry.result_id}/frame")
    assert served.status == 200 and served.headers["Content-Type"] == "image/jpeg" and served.body == jpeg
    assert client.get(f"/media/results/{other.result_id}/frame").status == 404  # bytes that are not a JPEG are refused
