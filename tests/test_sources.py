"""Frame sources: files, folders, images, cameras, streams and pacing (no sleeps: pacing uses a fake clock)."""

from __future__ import annotations

from datetime import timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import GStreamerSettings
from edge.sources import (
    CameraSource,
    FramePacer,
    GStreamerSource,
    ImageFileSource,
    ImageFolderSource,
    SourceError,
    VideoFileSource,
    gstreamer_available,
    open_source,
    redact_url,
)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def media_path(name: str) -> Path:
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"test media {path} is missing")
    return path


def write_images(folder: Path, names: list[str]) -> list[np.ndarray]:
    images = []
    for index, name in enumerate(names):
        image = np.full((24, 32, 3), index * 40, dtype=np.uint8)
        assert cv2.imwrite(str(folder / name), image)
        images.append(image)
    return images


def test_video_ends_cleanly_with_consecutive_frame_numbers() -> None:
    with open_source(str(media_path("test.mp4"))) as source:
        assert isinstance(source, VideoFileSource)
        assert source.description == "file:test.mp4"
        frames = list(source)
    assert [number for number, _, _ in frames] == list(range(len(frames)))
    assert len(frames) == 115
    _, captured_at, frame = frames[0]
    assert captured_at.tzinfo is timezone.utc
    assert frame.shape == (336, 596, 3) and frame.dtype == np.uint8
    assert source.closed
    assert next(iter(source), None) is None  # exhausted sources stay exhausted


def test_looping_video_keeps_numbering_across_the_restart() -> None:
    source = open_source("file:" + str(media_path("test.mp4")), loop=True)
    numbers = [number for number, _, _ in (next(source) for _ in range(130))]
    source.close()
    assert numbers == list(range(130))


def test_folder_of_images_in_name_order(tmp_path: Path) -> None:
    images = write_images(tmp_path, ["b.png", "a.jpg", "c.JPEG"])
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageFolderSource)
    assert source.description == f"folder:{tmp_path.name}"
    frames = list(source)
    assert [number for number, _, _ in frames] == [0, 1, 2]
    # a.jpg was written with value 40, b.png with 0, c.JPEG with 80 (JPEG is lossy: compare means)
    assert [round(float(frame.mean()) / 40) for _, _, frame in frames] == [1, 0, 2]
    assert np.array_equal(frames[1][2], images[0])  # the PNG is exact


def test_folder_skips_unreadable_images_and_can_loop(tmp_path: Path) -> None:
    write_images(tmp_path, ["1.png", "3.png"])
    (tmp_path / "2.png").write_bytes(b"not a png")
    frames = list(ImageFolderSource(tmp_path))
    assert len(frames) == 2
    looping = ImageFolderSource(tmp_path, loop=True)
    assert [next(looping)[0] for _ in range(5)] == [0, 1, 2, 3, 4]


def test_empty_or_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="does not exist"):
        ImageFolderSource(tmp_path / "absent")


def test_single_image_once_or_looped() -> None:
    path = media_path("justin.jpg")
    source = open_source(str(path))
    assert isinstance(source, ImageFileSource)
    assert source.description == "image:justin.jpg"
    frames = list(source)
    assert len(frames) == 1 and frames[0][0] == 0 and frames[0][2].shape[2] == 3
    looped = open_source(str(path), loop=True)
    first, second = next(looped), next(looped)
    assert (first[0], second[0]) == (0, 1)
    assert first[2] is not second[2], "each frame must be its own copy: consumers draw on frames"


def test_missing_file_raises_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="does not exist"):
        VideoFileSource(tmp_path / "missing.mp4")


def test_file_that_is_not_a_video_raises_source_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError):
        open_source(str(bogus))
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"not a jpeg")
    with pytest.raises(SourceError, match="cannot decode"):
        open_source(str(broken_image))


def test_camera_that_does_not_exist_raises_source_error() -> None:
    with pytest.raises(SourceError, match="camera:99"):
        open_source("99")
    with pytest.raises(SourceError):
        open_source("camera:98")
    with pytest.raises(SourceError):
        CameraSource(97)


def test_unreachable_stream_raises_source_error_without_leaking_credentials() -> None:
    # A local port that nothing listens on: fails at once, no network traffic leaves the machine.
    with pytest.raises(SourceError) as raised:
        open_source("http://user:secret@127.0.0.1:9/none.mjpg")
    assert "secret" not in str(raised.value)


def test_redact_url() -> None:
    assert redact_url("rtsp://admin:pw@10.0.0.5:554/stream1") == "rtsp://***@10.0.0.5:554/stream1"
    assert redact_url("rtsp://camera.local/stream") == "rtsp://camera.local/stream"


def test_gstreamer_pipeline_through_opencv_needs_a_gstreamer_opencv() -> None:
    # The subprocess path, which needs no GStreamer in OpenCV, is tested in tests/test_gstreamer.py.
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer: the no-support error cannot be checked here")
    with pytest.raises(SourceError, match="GStreamer"):
        open_source("gst:videotestsrc ! appsink", gstreamer=GStreamerSettings(backend="opencv"))
    with pytest.raises(SourceError, match="GStreamer"):
        GStreamerSource("videotestsrc ! appsink")


def test_empty_spec_raises() -> None:
    with pytest.raises(SourceError):
        open_source("  ")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_pacer_holds_the_frame_rate_without_drift() -> None:
    clock = FakeClock()
    pacer = FramePacer(10.0, clock=clock, sleep=clock.sleep)
    pacer.wait()  # the first frame is due at once
    assert clock.sleeps == []
    clock.now += 0.03  # processing took 30 ms
    pacer.wait()
    assert clock.sleeps == [pytest.approx(0.07)]
    clock.now += 0.15  # a slow frame: the next one is already late, no sleep
    pacer.wait()
    assert len(clock.sleeps) == 1
    pacer.wait()  # schedule is absolute: frame 3 is due at start + 0.3
    assert clock.now == pytest.approx(100.3)


def test_paced_video_reports_its_rate() -> None:
    source = VideoFileSource(media_path("woman2.mp4"), pace=True)
    assert source._pacer is not None
    assert source._pacer.frame_interval == pytest.approx(1 / 29.97, rel=1e-3)
    source.close()
