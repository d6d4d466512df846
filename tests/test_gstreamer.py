"""GStreamer without a GStreamer OpenCV: pipeline text, the CSI pipeline, and real gst-launch-1.0 children.

The pipeline-text tests need nothing; the source tests run Debian's gst-launch-1.0
(gstreamer1.0-tools, -plugins-base, -plugins-good: `scripts/setup.sh --test`), or a
fake launcher script where a Jetson camera would be needed.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge import gstreamer
from edge.config import CsiSettings, GStreamerSettings, SourceSettings
from edge.gstreamer import (
    PipelineError,
    caps_size,
    csi_pipeline,
    error_summary,
    frame_pipeline,
    launch_arguments,
    redact_pipeline,
    split_pipeline,
)
from edge.sources import GstLaunchSource, SourceError, gstreamer_available, gstreamer_backend, open_source
from tests.conftest import media_file

needs_gst_launch = pytest.mark.skipif(
    shutil.which("gst-launch-1.0") is None, reason="gst-launch-1.0 missing: apt-get install gstreamer1.0-tools"
)
SUBPROCESS = GStreamerSettings(backend="subprocess")


def child_gone(pid: int) -> bool:
    """No such process, or only a zombie left for init to reap (it can run nothing any more)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] in ("Z", "X")


def fake_launcher(folder: Path, body: str) -> str:
    """A stand-in for gst-launch-1.0: records its pid and arguments, then runs ``body`` (sh)."""
    script = folder / "fake-gst-launch"
    script.write_text(f'#!/bin/sh\necho $$ > "{folder}/pid"\nprintf "%s\\n" "$@" > "{folder}/argv"\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


# -- pipeline text ---------------------------------------------------------------------------------


def test_split_pipeline_keeps_quoted_bangs_and_rejects_broken_text() -> None:
    assert split_pipeline('filesrc location="a!b.mp4" ! decodebin') == ['filesrc location="a!b.mp4"', "decodebin"]
    for broken in ('videotestsrc ! "x', "a ! ! b", "a !", "! a"):
        with pytest.raises(PipelineError):
            split_pipeline(broken)


def test_caps_size_reads_system_memory_raw_caps_only() -> None:
    assert caps_size("video/x-raw, width=(int)320, height=240, format=BGR") == (320, 240)
    assert caps_size("video/x-raw,format=BGR") is None
    assert caps_size("video/x-raw(memory:NVMM),width=1280,height=720") is None  # fdsink cannot read NVMM
    assert caps_size("videoscale width=5 height=5") is None


@pytest.mark.parametrize(
    ("pipeline", "tail", "size"),
    [
        # already BGR with a size: kept as it is
        ("videotestsrc ! video/x-raw,format=BGR,width=320,height=240", ("video/x-raw,format=BGR,width=320,height=240",), (320, 240)),
        # a size but another format: converted at that size
        ("videotestsrc ! video/x-raw,width=160,height=120", ("video/x-raw,width=160,height=120", "videoconvert",
                                                             "video/x-raw,format=BGR,width=160,height=120"), (160, 120)),
        # no size: converted and scaled to the configured one; a trailing appsink is taken off
        ("v4l2src ! videoconvert ! appsink sync=false", ("v4l2src", "videoconvert", "videoscale",
                                                          "video/x-raw,format=BGR,width=64,height=48"), (64, 48)),
        # BGR without a size is not enough: the reader must know the frame size
        ("videotestsrc ! video/x-raw,format=BGR", ("video/x-raw,format=BGR", "videoconvert", "videoscale",
                                                   "video/x-raw,format=BGR,width=64,height=48"), (64, 48)),
    ],
)
def test_frame_pipeline_ends_in_bgr_caps_with_a_size(pipeline, tail, size) -> None:
    result, _sink = frame_pipeline(pipeline, 64, 48)
    assert result.elements[-len(tail):] == tail
    assert (result.width, result.height) == size
    assert result.frame_bytes == size[0] * size[1] * 3
    assert result.with_sink("fdsink fd=1").endswith(" ! fdsink fd=1")


def test_frame_pipeline_returns_the_users_sink() -> None:
    pipeline, sink = frame_pipeline("videotestsrc ! appsink drop=true", 64, 48)
    assert sink == "appsink drop=true" and "appsink" not in pipeline.with_sink("fdsink fd=1")
    with pytest.raises(PipelineError):
        frame_pipeline("fdsink fd=1", 64, 48)


def test_launch_arguments_split_like_a_shell() -> None:
    arguments = launch_arguments("gst-launch-1.0", 'filesrc location="/media/my video.mp4" ! video/x-raw, width=2')
    assert arguments == ["gst-launch-1.0", "-q", "filesrc", "location=/media/my video.mp4", "!", "video/x-raw,", "width=2"]
    with pytest.raises(PipelineError):
        launch_arguments("gst-launch-1.0", "filesrc location='open")


def test_credentials_never_reach_the_log() -> None:
    text = "rtspsrc location=rtsp://admin:secret@10.0.0.5/stream ! decodebin"
    assert redact_pipeline(text) == "rtspsrc location=rtsp://***@10.0.0.5/stream ! decodebin"


def test_error_summary_keeps_gstreamers_words_and_drops_debug_lines() -> None:
    lines = [
        "ERROR: from element /GstPipeline:pipeline0/GstFileSrc:filesrc0: Resource not found.",
        "Additional debug info:",
        "../plugins/elements/gstfilesrc.c(553): gst_file_src_start (): /GstPipeline:pipeline0/GstFileSrc:filesrc0:",
        'No such file "/nonexistent.mp4"',
        "ERROR: pipeline doesn't want to preroll.",
        "ERROR: pipeline doesn't want to preroll.",
    ]
    assert error_summary(lines) == (
        "ERROR: from element /GstPipeline:pipeline0/GstFileSrc:filesrc0: Resource not found.; "
        "No such file \"/nonexistent.mp4\"; ERROR: pipeline doesn't want to preroll."
    )


# -- the Jetson CSI pipeline (no hardware: the text, and the argv a launcher gets) -----------------


def test_csi_pipeline_for_a_sensor_mode_size_rate_and_flip() -> None:
    csi = CsiSettings(sensor_id=1, sensor_mode=3, width=1920, height=1080, fps=30, flip_method=2)
    assert csi_pipeline(csi).with_sink("fdsink fd=1") == (
        "nvarguscamerasrc sensor-id=1 sensor-mode=3 ! "
        "video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1,format=NV12 ! "
        "nvvidconv flip-method=2 ! video/x-raw,format=BGRx,width=1920,height=1080 ! "
        "queue max-size-buffers=1 leaky=downstream ! videoconvert ! "
        "video/x-raw,format=BGR,width=1920,height=1080 ! fdsink fd=1"
    )


def test_csi_pipeline_rotation_scaling_and_sensor_override() -> None:
    rotated = csi_pipeline(CsiSettings(width=1280, height=720, fps=60, flip_method=1), sensor_id=2)
    assert rotated.elements[0] == "nvarguscamerasrc sensor-id=2"  # no sensor-mode: the driver picks one
    assert (rotated.width, rotated.height) == (720, 1280)  # a 90-degree turn swaps width and height
    assert rotated.elements[-1] == "video/x-raw,format=BGR,width=720,height=1280"
    scaled = csi_pipeline(CsiSettings(width=1920, height=1080, output_width=960, output_height=540))
    assert "video/x-raw,format=BGRx,width=960,height=540" in scaled.elements
    assert "width=1920,height=1080,framerate=30/1" in scaled.elements[1]


@pytest.mark.parametrize(
    "settings",
    [{"fps": 0}, {"flip_method": 8}, {"sensor_id": 8}, {"sensor_mode": -1}, {"width": 8}, {"output_width": 640}],
)
def test_csi_settings_are_validated(settings) -> None:
    with pytest.raises(ValidationError):
        CsiSettings(**settings)


@pytest.mark.parametrize("spec", ["csi:", "csi:x", "csi:9", "csi:1:2"])
def test_malformed_csi_specs_are_config_errors(spec) -> None:
    with pytest.raises(ValidationError, match="csi"):
        SourceSettings(spec=spec)


def test_config_takes_gstreamer_and_csi_tables() -> None:
    source = SourceSettings.model_validate({
        "spec": "csi:1", "gstreamer": {"backend": "subprocess", "width": 320, "height": 240},
        "csi": {"sensor_mode": 2, "fps": 15},
    })
    assert source.gstreamer.backend == "subprocess" and source.csi.fps == 15
    for wrong in ({"gstreamer": {"backend": "pygobject"}}, {"csi": {"exposure": 1}}):
        with pytest.raises(ValidationError):
            SourceSettings.model_validate(wrong)


def test_csi_spec_runs_the_csi_pipeline_through_the_launcher(tmp_path: Path) -> None:
    csi = CsiSettings(width=64, height=48, fps=15, sensor_mode=0)
    launcher = fake_launcher(tmp_path, f"head -c {64 * 48 * 3 * 2} /dev/zero")
    source = open_source("csi:1", csi=csi, gstreamer=GStreamerSettings(backend="subprocess", launcher=launcher))
    assert source.name == source.description == "csi:1" and source.live
    frames = list(source)
    assert len(frames) == 2 and frames[0][2].shape == (48, 64, 3)
    arguments = (tmp_path / "argv").read_text().split("\n")
    assert arguments[:4] == ["-q", "nvarguscamerasrc", "sensor-id=1", "sensor-mode=0"]
    assert " ".join(arguments).strip().endswith("video/x-raw,format=BGR,width=64,height=48 ! fdsink fd=1")


def test_opencv_backend_without_gstreamer_in_opencv_says_what_to_do() -> None:
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer")
    assert gstreamer_backend(GStreamerSettings()) == "subprocess"  # what "auto" picks here
    with pytest.raises(SourceError, match="subprocess"):
        open_source("csi", gstreamer=GStreamerSettings(backend="opencv"))


# -- real gst-launch-1.0 children ---------------------------------------------------------------


@needs_gst_launch
def test_videotestsrc_frames_arrive_whole_in_bgr_order_and_the_child_is_reaped() -> None:
    # Solid red (ARGB 0xffff0000): BGR order puts 255 in the last channel.
    pipeline = "gst:videotestsrc num-buffers=12 pattern=solid-color foreground-color=0xffff0000 ! video/x-raw,width=160,height=120"
    source = open_source(pipeline, gstreamer=SUBPROCESS)
    assert isinstance(source, GstLaunchSource) and source.name == "gst:videotestsrc"
    pid = source.pid
    frames = list(source)
    assert [number for number, _, _ in frames] == list(range(12))
    frame = frames[0][2]
    assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
    assert frame[60, 80].tolist() == [0, 0, 255]
    frame[0, 0] = 7  # writable: the agent draws on frames
    assert source.closed and child_gone(pid)


@needs_gst_launch
def test_a_shared_photo_through_decodebin_at_the_configured_size() -> None:
    photo = media_file("justin.jpg")
    settings = GStreamerSettings(backend="subprocess", width=320, height=240)
    with open_source(f'gst:filesrc location="{photo}" ! decodebin ! imagefreeze num-buffers=3', gstreamer=settings) as source:
        frames = [frame for _, _, frame in source]
    assert len(frames) == 3 and frames[0].shape == (240, 320, 3)
    assert frames[0].std() > 20  # a photo, not a blank frame


@needs_gst_launch
@pytest.mark.parametrize(
    ("pipeline", "gstreamer_says"),
    [
        ("gst:nosuchelement ! videoconvert", 'no element "nosuchelement"'),
        ("gst:filesrc location=/nonexistent/video.mp4 ! decodebin", 'No such file "/nonexistent/video.mp4"'),
    ],
)
def test_a_failing_pipeline_raises_with_gstreamers_own_error(pipeline, gstreamer_says) -> None:
    with pytest.raises(SourceError, match="exited with code") as error:
        open_source(pipeline, gstreamer=SUBPROCESS)
    assert gstreamer_says in str(error.value)


@needs_gst_launch
def test_a_silent_pipeline_ends_after_the_read_timeout_and_is_stopped() -> None:
    # A live source at one frame per 10 s: the first frame comes at once, the second not in time.
    settings = GStreamerSettings(backend="subprocess", read_timeout_s=0.5)
    source = open_source("gst:videotestsrc is-live=true ! video/x-raw,width=32,height=24,framerate=1/10", gstreamer=settings)
    started = time.monotonic()
    assert len(list(source)) == 1
    assert time.monotonic() - started < 5 and child_gone(source.pid)


def test_a_launcher_that_never_delivers_is_killed_at_the_open_timeout(tmp_path: Path) -> None:
    settings = GStreamerSettings(backend="subprocess", launcher=fake_launcher(tmp_path, "exec sleep 60"), open_timeout_s=0.3)
    with pytest.raises(SourceError, match="no frame from the pipeline; gst-launch-1.0 is still running"):
        open_source("gst:videotestsrc", gstreamer=settings)
    assert child_gone(int((tmp_path / "pid").read_text()))


def test_a_child_that_ignores_sigint_is_killed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gstreamer, "INTERRUPT_WAIT_S", 0.2)
    # Ignores SIGINT, writes one frame, then hangs like a stuck camera driver.
    launcher = fake_launcher(tmp_path, f"trap '' INT\nhead -c {8 * 8 * 3} /dev/zero\nexec sleep 60")
    source = open_source("gst:x ! video/x-raw,format=BGR,width=8,height=8", gstreamer=GStreamerSettings(backend="subprocess", launcher=launcher))
    assert next(source)[2].shape == (8, 8, 3)
    source.close()
    assert child_gone(source.pid)


def test_missing_launcher_is_a_source_error() -> None:
    settings = GStreamerSettings(backend="subprocess", launcher="/nonexistent/gst-launch-1.0")
    with pytest.raises(SourceError, match="gstreamer1.0-tools"):
        open_source("gst:videotestsrc", gstreamer=settings)


def test_the_child_runs_in_its_own_process_group(tmp_path: Path) -> None:
    launcher = fake_launcher(tmp_path, f"head -c {8 * 8 * 3 * 100} /dev/zero")
    source = open_source("gst:x ! video/x-raw,format=BGR,width=8,height=8", gstreamer=GStreamerSettings(backend="subprocess", launcher=launcher))
    try:
        assert os.getpgid(source.pid) == source.pid != os.getpgid(0)
    finally:
        source.close()
