"""Labelling in a real Chromium: the queue order, keyboard shortcuts, labels stored with who and when."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.webui_helpers import face_with, log_in, missing_browser_reason, screenshot, seed_result

from tests.webui_helpers import browser, page, webui  # noqa: E402,F401 (shared fixtures)

pytestmark = pytest.mark.skipif(missing_browser_reason() is not None, reason=str(missing_browser_reason()))

# (label the model gave, its confidence): the queue must come least confident first.
FACES = [("happy", 0.9), ("sad", 0.31), ("angry", 0.52), ("neutral", 0.45), ("surprise", 0.7)]


@pytest.fixture
def faces(webui) -> dict[str, int]:
    """Face id by model label."""
    start = datetime.now(timezone.utc) - timedelta(minutes=10)
    ids = {}
    for index, (label, confidence) in enumerate(FACES):
        seeded = seed_result(webui.store, webui.data_dir, "cam-a", index, [face_with(label, confidence, seed=index)], start + timedelta(seconds=index))
        ids[label] = seeded.face_ids[0]
    return ids


def stored_labels(store) -> list[tuple]:
    return store.db.query("SELECT face_id, label, labelled_by, labelled_at FROM labels ORDER BY id")


def test_labels_from_keyboard_shortcuts_are_stored_with_who_and_when(webui, faces, page):
    from playwright.sync_api import expect

    log_in(page, webui.url, "lab", "/labelling")
    labeller = page.locator("#labeller")
    expect(labeller).to_have_attribute("data-face-id", str(faces["sad"]))  # 0.31: least confident first
    expect(page.locator("#crop")).to_be_visible()
    expect(page.locator("#model-label")).to_have_text("sad")
    expect(page.locator("#progress-labelled")).to_have_text("0")
    screenshot(page, "webui-labelling")
    before = time.time()

    page.keyboard.press("7")  # correct it: neutral
    expect(page.locator("#label-status")).to_have_text(f"Saved face {faces['sad']} as neutral.")
    expect(labeller).to_have_attribute("data-face-id", str(faces["neutral"]))  # 0.45 next
    page.keyboard.press("Enter")  # confirm the model: neutral
    expect(page.locator("#label-status")).to_have_text(f"Saved face {faces['neutral']} as neutral.")
    expect(labeller).to_have_attribute("data-face-id", str(faces["angry"]))
    page.keyboard.press("s")  # skip angry
    expect(labeller).to_have_attribute("data-face-id", str(faces["surprise"]))
    page.keyboard.press("4")  # happy
    expect(page.locator("#label-status")).to_have_text(f"Saved face {faces['surprise']} as happy.")
    expect(page.locator("#progress-labelled")).to_have_text("3")
    expect(page.locator("#session-count")).to_have_text("3")
    expect(page.locator("#recent li").first).to_have_text(f"Face {faces['surprise']}: happy (corrected from surprise)")

    labels = stored_labels(webui.store)
    assert [(face_id, label, who) for face_id, label, who, _ in labels] == [
        (faces["sad"], "neutral", "lab"), (faces["neutral"], "neutral", "lab"), (faces["surprise"], "happy", "lab"),
    ]
    assert all(before - 1 <= when <= time.time() + 1 for *_, when in labels)
    assert webui.store.face(faces["sad"]).human_label == "neutral"
    assert webui.store.label_progress() == (3, 5)


def test_the_queue_ends_and_says_so(webui, faces, page):
    from playwright.sync_api import expect

    for face_id in faces.values():
        webui.store.add_label(face_id, "happy", "someone-else")
    log_in(page, webui.url, "lab", "/labelling")
    expect(page.locator("#labeller")).to_have_attribute("data-state", "empty")
    expect(page.locator("#queue-message")).to_contain_text("Nothing to label")
    expect(page.locator("#progress-labelled")).to_have_text("5")
