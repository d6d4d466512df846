"""End to end with the real edge agent: two `emq-edge` processes on the shared videos → Mosquitto → dashboard → Chromium.

Also takes the README's screenshot: it is saved under test-artifacts/, and copied to
docs/webui-live.png when EMQ_WEBUI_UPDATE_DOCS=1 (so ordinary runs leave git clean).
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.conftest import media_file
from tests.edge_helpers import agent_env, start_agent
from tests.webui_helpers import copy_to_docs, log_in, missing_browser_reason, screenshot, start_webui, webui_config

from tests.webui_helpers import browser  # noqa: E402,F401 (shared fixtures)

pytestmark = pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason()))

AGENT_START_TIMEOUT_MS = 30000
EXIT_NO_MODEL = 3




def run_agent(spawned, pki_dir, port, tmp_path, device: str, video) -> subprocess.Popen:
    env = agent_env(pki_dir, port, tmp_path / "edge", device_id=device, PUBLISH__FRAME_FPS="10", PUBLISH__HEARTBEAT_S="1")
    process = start_agent(env, tmp_path / f"{device}.log", "--source", str(video), "--loop", "--pace")
    spawned.append(process)
    return process


def test_two_real_edge_agents_live_then_one_killed(broker, pki_dir, tmp_path, browser, spawned):
    from playwright.sync_api import expect

    woman, group = media_file("woman2.mp4"), media_file("test.mp4")
    webui = start_webui(webui_config(tmp_path, pki_dir, broker.settings.tls_port))
    try:
        page = browser.new_page(color_scheme="dark", viewport={"width": 1280, "height": 860})
        log_in(page, webui.url, "admin")
        cameras = {"cam-a": run_agent(spawned, pki_dir, broker.settings.tls_port, tmp_path, "cam-a", woman),
                   "cam-b": run_agent(spawned, pki_dir, broker.settings.tls_port, tmp_path, "cam-b", group)}
        for device, process in cameras.items():
            tile = page.locator(f'.tile[data-device="{device}"]')
            try:
                expect(tile.locator(".face").first).to_be_visible(timeout=AGENT_START_TIMEOUT_MS)
            except AssertionError:
                if process.poll() == EXIT_NO_MODEL:
                    pytest.skip("the edge agent has no model (run scripts/setup.sh)")
                raise AssertionError((tmp_path / f"{device}.log").read_text(errors="replace")[-3000:]) from None
            expect(tile.locator(".frame-img")).to_be_visible()
            expect(tile).to_have_attribute("data-status", "online")
            expect(tile.locator(".fps")).not_to_have_text("–", timeout=10000)  # stats every second
        page.wait_for_function("[...document.querySelectorAll('.frame-img')].every(image => image.complete && image.naturalWidth > 0)")
        shot = screenshot(page, "webui-live-two-edge-spawned")
        copy_to_docs(shot, "webui-live.png")

        cam_a = page.locator('.tile[data-device="cam-a"]')
        cam_a.locator('button[data-command="ping"]').click()
        expect(cam_a.locator(".reply")).to_contain_text("ping: ok", timeout=10000)

        cameras["cam-b"].send_signal(signal.SIGKILL)
        cameras["cam-b"].wait(10)
        expect(page.locator('.tile[data-device="cam-b"]')).to_have_attribute("data-status", "offline", timeout=5000)
        expect(cam_a).to_have_attribute("data-status", "online")
        screenshot(page, "webui-live-edge-agent-killed")
        page.context.close()
    finally:
        webui.stop()
