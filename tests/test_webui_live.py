"""The live page in a real Chromium: real spawned → real Mosquitto → the dashboard's stream → tiles."""

from __future__ import annotations

import signal
import time

import pytest

from contract.messages import JSON_CONTENT_TYPE, Reply
from contract.validation import parse_command
from tests.webui_helpers import (
    DeviceClient,
    collect_csp_violations,
    device_availability,
    face_with,
    log_in,
    missing_browser_reason,
    screenshot,
    start_publisher_process,
    synthetic_jpeg,
)

from tests.webui_helpers import browser, page, webui  # noqa: E402,F401 (shared fixtures)

pytestmark = pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason()))

APPEAR_WITHIN_MS = 2000




def open_live_page(page, webui, user: str) -> None:
    from playwright.sync_api import expect

    log_in(page, webui.url, user)
    expect(page.locator("#stream-state")).to_have_attribute("data-state", "open")


def test_a_published_frame_and_result_appear_in_a_new_tile_within_2_s(webui, page, mqtt_client):
    from playwright.sync_api import expect

    csp_violations = collect_csp_violations(page)
    open_live_page(page, webui, "viewer")
    expect(page.locator(".tile")).to_have_count(0)
    expect(page.locator("#no-devices")).to_be_visible()

    device = DeviceClient(mqtt_client("cam-a", availability=device_availability("cam-a")), "cam-a")
    device.publish_stats(fps=7.5)
    result = device.publish_result([face_with("happy", 0.83, track_id=4), face_with("sad", 0.6, track_id=5, box=(20, 20, 80, 80))])
    published_at = time.monotonic()
    payload = device.publish_frame(synthetic_jpeg("cam-a live"), result)

    tile = page.locator('.tile[data-device="cam-a"]')
    image = tile.locator(".frame-img")
    expect(image).to_have_attribute("src", f"data:image/jpeg;base64,{payload}", timeout=APPEAR_WITHIN_MS)
    expect(image).to_be_visible(timeout=APPEAR_WITHIN_MS)
    assert time.monotonic() - published_at < APPEAR_WITHIN_MS / 1000
    assert image.evaluate("element => element.naturalWidth") == 640, "the browser decoded the JPEG as sent"

    expect(tile).to_have_attribute("data-status", "online")
    expect(tile.locator(".fps")).to_have_text("7.5")
    faces = tile.locator(".face")
    expect(faces).to_have_count(2)
    expect(faces.first.locator(".face-label")).to_have_text("happy 83%")
    happy_bar = faces.first.locator('.bar[data-emotion="happy"]')
    expect(happy_bar.locator(".bar-value")).to_have_text("83%")
    expect(happy_bar).to_have_class("bar emo-happy top")
    assert faces.first.locator(".bar").count() == 7
    expect(tile.locator(".controls")).to_be_hidden()  # a viewer cannot send commands
    screenshot(page, "webui-live-one-device")

    # A second device joins without a reload.
    other = DeviceClient(mqtt_client("cam-b", availability=device_availability("cam-b")), "cam-b")
    other.publish_frame(synthetic_jpeg("cam-b", seed=3))
    expect(page.locator(".tile")).to_have_count(2)
    expect(page.locator(".tile .device-name")).to_have_text(["cam-a", "cam-b"])
    assert csp_violations == [], csp_violations


def test_the_tile_turns_offline_when_its_publisher_is_killed(webui, page, broker, pki_dir, tmp_path, spawned):
    from playwright.sync_api import expect

    open_live_page(page, webui, "viewer")
    process = start_publisher_process(pki_dir, broker.settings.tls_port, "cam-b", tmp_path / "publisher.log")
    spawned.append(process)
    tile = page.locator('.tile[data-device="cam-b"]')
    expect(tile).to_have_attribute("data-status", "online", timeout=15000)
    expect(tile.locator(".frame-img")).to_be_visible()
    expect(tile.locator(".face")).to_have_count(1)

    process.send_signal(signal.SIGKILL)  # no clean disconnect: the broker publishes the will
    process.wait(10)
    expect(tile).to_have_attribute("data-status", "offline", timeout=5000)
    expect(tile.locator(".status")).to_have_text("offline")
    screenshot(page, "webui-live-offline")


def test_an_admin_sends_commands_and_sees_the_device_reply(webui, page, mqtt_client, topics):
    from playwright.sync_api import expect

    device_client = mqtt_client("cam-a", availability=device_availability("cam-a"))
    device = DeviceClient(device_client, "cam-a")
    received = []

    def answer(message) -> None:
        command = parse_command(message.payload)
        received.append(command)
        result = {"fps": command.args["fps"]} if command.command == "set_fps" else {"pong": True}
        reply = Reply(id=command.id, device_id="cam-a", ok=True, result=result)
        device_client.publish(topics.command_reply("cam-a"), reply.to_json(), qos=1, content_type=JSON_CONTENT_TYPE)

    assert device_client.subscribe(topics.command("cam-a"), answer).wait(10)
    open_live_page(page, webui, "admin")
    device.publish_frame(synthetic_jpeg("cam-a"))
    tile = page.locator('.tile[data-device="cam-a"]')
    expect(tile.locator(".controls")).to_be_visible()

    tile.locator('button[data-command="ping"]').click()
    expect(tile.locator(".reply")).to_have_text('ping: ok {"pong":true}')
    tile.locator(".fps-input").fill("2.5")
    tile.locator(".fps-form button").click()
    expect(tile.locator(".reply")).to_have_text('set_fps: ok {"fps":2.5}')
    assert [(command.command, command.args) for command in received] == [("ping", {}), ("set_fps", {"fps": 2.5})]
    screenshot(page, "webui-live-command-reply")


def test_bars_of_an_earlier_frame_are_dimmed_until_the_frame_s_own_result_arrives(webui, page, mqtt_client):
    """A frame may overtake its result (results go through the device's outbox): the bars must not pass
    the previous frame's result off as this one's."""
    from playwright.sync_api import expect

    open_live_page(page, webui, "viewer")
    device = DeviceClient(mqtt_client("cam-a", availability=device_availability("cam-a")), "cam-a")
    first = device.publish_result([face_with("happy", 0.9, track_id=1)])
    device.publish_frame(synthetic_jpeg("first"), first)
    tile = page.locator('.tile[data-device="cam-a"]')
    faces = tile.locator(".faces")
    expect(tile.locator(".face-label")).to_have_text("happy 90%")
    expect(faces).not_to_have_class("faces awaiting-result")

    late = device.prepare_result([face_with("surprise", 0.7, track_id=1)])
    payload = device.publish_frame(synthetic_jpeg("second", seed=2), late)  # the frame first
    expect(tile.locator(".frame-img")).to_have_attribute("src", f"data:image/jpeg;base64,{payload}")
    expect(faces).to_have_class("faces awaiting-result")
    expect(tile.locator(".face-label")).to_have_text("happy 90%")  # still the earlier bars, dimmed

    device.publish_result(prepared=late)  # then its result
    expect(tile.locator(".face-label")).to_have_text("surprise 70%")
    expect(faces).to_have_class("faces")
