"""Headless frame sources for the edge agent: video files, cameras, network streams, GStreamer, images.

Every source is an iterator of ``(frame_number, capture_time_utc, frame_bgr)``
with consecutive frame numbers from 0, a ``description`` for logs and
messages (e.g. ``"file:woman2.mp4"``), ``decode_seconds`` (how long reading
the latest frame took, without any pacing wait), and ``close()``; sources are also
context managers. A source that cannot be opened raises ``SourceError`` at
construction, never at the first frame. Iteration ends cleanly at the end of
the input (a live camera or stream ends when it stops delivering frames).

``open_source(spec)`` picks the source from a string:

=====================================  =======================================
``0``, ``camera:1``                    camera index (V4L2 on Linux)
``rtsp://...``, ``http(s)://...``      network stream (FFmpeg backend)
``gst:<pipeline>``, ``... ! appsink``  GStreamer pipeline (see ``edge.gstreamer``)
``csi``, ``csi:1``                     Jetson CSI camera (nvarguscamerasrc), sensor 0 or 1
a directory                            its .jpg/.jpeg/.png images, sorted by name
an image file                          that image (once, or forever with loop)
any other file, ``file:<path>``        a video file
=====================================  =======================================
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge.config import CSI_SPEC, CsiSettings, GStreamerSettings
from edge.gstreamer import (
    FDSINK,
    OPENCV_SINK,
    FramePipeline,
    LaunchedPipeline,
    PipelineError,
    csi_pipeline,
    element_name,
    frame_pipeline,
    launch_arguments,
    redact_pipeline,
)

log = logging.getLogger(__name__)

Frame = tuple[int, datetime, np.ndarray]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
CAMERA_SPEC = re.compile(r"^(?:camera:)?(\d+)$")
GSTREAMER_PREFIX = "gst:"
FILE_PREFIX = "file:"
END_WAIT_S = 1.0  # how long a gst-launch child that closed its output may take to exit


class SourceError(RuntimeError):
    """A source cannot be opened or read."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class FramePacer:
    """Delays frames so a file plays at its own frame rate instead of as fast as it decodes.

    Keeps an absolute schedule (start + n / fps), so slow frames do not
    accumulate drift. Clock and sleep are injectable for tests.
    """

    def __init__(
        self,
        frames_per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if frames_per_second <= 0:
            raise ValueError(f"frames_per_second must be positive, got {frames_per_second}")
        self.frame_interval = 1.0 / frames_per_second
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._frames = 0

    def wait(self) -> None:
        """Block until the next frame is due (the first frame is due at once)."""
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._frames * self.frame_interval
        if due > now:
            self._sleep(due - now)
        elif now - due > 1.0:
            # Far behind (a stall): restart the schedule rather than rushing to catch up.
            self._start, self._frames = now, 0
        self._frames += 1


class FrameSource:
    """Base class: numbering, timestamps, optional pacing, iteration and closing.

    ``description`` (``kind:detail``) is what logs and results call the source;
    ``name`` what results carry as ``video_file`` (a file's own name, else the
    description); ``live`` says the source keeps delivering at its own pace (a
    camera, a stream): a loop that falls behind drops its frames, and when it
    stops delivering it is reopened. Files and folders wait for the loop and end.
    """

    description: str = "source"
    live: bool = False

    @property
    def name(self) -> str:
        return getattr(self, "_name", None) or self.description

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def __init__(self, pace_fps: float | None = None) -> None:
        self._next_frame_number = 0
        self._closed = False
        self._pacer = FramePacer(pace_fps) if pace_fps else None
        self.decode_seconds = 0.0

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._closed:
            raise StopIteration
        read_started = time.perf_counter()
        frame = self._read_frame()
        # Timed apart from the pacing wait below: that wait is idle time, not decoding.
        self.decode_seconds = time.perf_counter() - read_started
        if frame is None:
            self.close()
            raise StopIteration
        if self._pacer is not None:
            self._pacer.wait()
        number = self._next_frame_number
        self._next_frame_number += 1
        return number, utc_now(), frame

    def _read_frame(self) -> np.ndarray | None:
        """The next BGR frame, or None at the end of the input."""
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class _CaptureSource(FrameSource):
    """A source read through ``cv2.VideoCapture``; the first frame is read at open to prove it works."""

    def __init__(self, capture: cv2.VideoCapture, description: str, pace_fps: float | None = None) -> None:
        super().__init__(pace_fps)
        self.description = description
        self._capture = capture
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {description}")
        first = self._grab()
        if first is None:
            capture.release()
            raise SourceError(f"{description} opened but delivered no frame")
        self._pending: np.ndarray | None = first

    @property
    def frames_per_second(self) -> float | None:
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        # Containers without a rate report 0; some report absurd values (e.g. 90000 for a timebase).
        return fps if 0.0 < fps <= 1000.0 else None

    def _grab(self) -> np.ndarray | None:
        ok, frame = self._capture.read()
        return frame if ok and frame is not None else None

    def _read_frame(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return self._grab()

    def close(self) -> None:
        if not self._closed:
            self._capture.release()
        super().close()


class VideoFileSource(_CaptureSource):
    """A video file; ``loop`` restarts it at the end, ``pace`` plays it at its own frame rate."""

    def __init__(self, path: str | os.PathLike[str], loop: bool = False, pace: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video file {self.path} does not exist")
        super().__init__(cv2.VideoCapture(str(self.path)), f"file:{self.path.name}")
        self.name = self.path.name
        self.loop = loop
        if pace:
            fps = self.frames_per_second
            if fps is None:
                raise SourceError(f"{self.description}: cannot pace, the file reports no frame rate")
            self._pacer = FramePacer(fps)

    def _read_frame(self) -> np.ndarray | None:
        frame = super()._read_frame()
        if frame is None and self.loop:
            # Rewind; a file that cannot rewind (or is empty) ends instead of spinning.
            if self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
                frame = self._grab()
        return frame


class CameraSource(_CaptureSource):
    """A local camera by index (V4L2 on Linux, e.g. a USB webcam on the Jetson)."""

    live = True

    def __init__(
        self, index: int, width: int | None = None, height: int | None = None, fps: float | None = None
    ) -> None:
        capture = cv2.VideoCapture(index, _camera_backend())
        _request_capture_format(capture, width, height, fps)
        super().__init__(capture, f"camera:{index}")


class StreamSource(_CaptureSource):
    """An RTSP/HTTP/... network stream through FFmpeg; credentials never appear in the description.

    Opening and each read give up after ``timeout_s`` so a dead camera raises
    ``SourceError`` (or ends the iteration) instead of hanging FFmpeg's default 30 s or more.
    """

    live = True

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        timeout_ms = int(timeout_s * 1000)
        parameters = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        super().__init__(cv2.VideoCapture(url, cv2.CAP_FFMPEG, parameters), f"stream:{redact_url(url)}")


class GStreamerSource(_CaptureSource):
    """A GStreamer pipeline read by OpenCV's GStreamer backend (needs an OpenCV built with GStreamer)."""

    live = True

    def __init__(self, pipeline: str, name: str | None = None) -> None:
        if not gstreamer_available():
            raise SourceError(
                "this OpenCV build has no GStreamer support (pip's opencv-python wheels do not): "
                "set source.gstreamer.backend = \"subprocess\" (or \"auto\")"
            )
        self.name = name or f"gst:{element_name(pipeline)}"
        super().__init__(cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER), self.name)


class GstLaunchSource(FrameSource):
    """A GStreamer pipeline run by a ``gst-launch-1.0`` child; raw BGR frames read from its stdout.

    Works with any OpenCV (pip's has no GStreamer). The pipeline must end in
    ``video/x-raw,format=BGR,width=W,height=H`` (``edge.gstreamer.frame_pipeline``
    makes it so); each frame is exactly W*H*3 bytes of the pipe. The first frame is
    read at construction (within ``open_timeout_s``), so a pipeline that fails raises
    ``SourceError`` with GStreamer's own error text. Later, a pipeline that ends or is
    silent for ``read_timeout_s`` ends the iteration (the agent reopens live sources).
    Closing stops the child and reaps it.
    """

    live = True

    def __init__(self, pipeline: FramePipeline, settings: GStreamerSettings, name: str) -> None:
        super().__init__()
        self.name = self.description = name
        self.pipeline = pipeline
        self.frame_shape = (pipeline.height, pipeline.width, 3)
        self._read_timeout_s = settings.read_timeout_s
        text = pipeline.with_sink(FDSINK)
        try:
            self._child = LaunchedPipeline(launch_arguments(settings.launcher, text), name)
        except PipelineError as error:
            raise SourceError(f"{name}: {error}") from None
        log.info("%s: gst-launch pid %d: %s", name, self._child.pid, redact_pipeline(text))
        first = self._read_frame_within(settings.open_timeout_s)
        if first is None:
            reason = self._child.failure(0 if self._child.timed_out else END_WAIT_S)
            self._child.stop()
            raise SourceError(f"{name}: no frame from the pipeline; {reason}")
        self._pending: np.ndarray | None = first

    @property
    def pid(self) -> int:
        """The gst-launch child's process id (for tests and operators)."""
        return self._child.pid

    def _read_frame_within(self, timeout_s: float) -> np.ndarray | None:
        data = self._child.read_exactly(self.pipeline.frame_bytes, timeout_s)
        return None if data is None else np.frombuffer(data, np.uint8).reshape(self.frame_shape)

    def _read_frame(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        frame = self._read_frame_within(self._read_timeout_s)
        # A pipeline at its end of stream exits 0; anything else is worth GStreamer's own words.
        if frame is None and not self._child.timed_out and self._child.exit_code(END_WAIT_S) != 0:
            log.warning("%s: the pipeline stopped delivering frames; %s", self.name, self._child.failure(0))
        return frame

    def close(self) -> None:
        if not self._closed:
            self._child.stop()
        super().close()


class ImageFolderSource(FrameSource):
    """The .jpg/.jpeg/.png images of a directory in name order; unreadable files are skipped with a warning.

    Raises ``SourceError`` at construction when no image in it can be decoded.
    """

    def __init__(self, folder: str | os.PathLike[str], loop: bool = False, fps: float | None = None) -> None:
        super().__init__(pace_fps=fps)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} does not exist")
        self.paths = sorted(path for path in self.folder.iterdir() if is_image_file(path))
        if not self.paths:
            raise SourceError(f"image folder {self.folder} has no {'/'.join(sorted(IMAGE_EXTENSIONS))} images")
        self.loop = loop
        self._position = 0
        self.description = f"folder:{self.folder.name}"
        self.name = self.folder.name
        # Read the first image now, as the capture sources do: a folder with no readable image
        # is a source that cannot be opened, not an input that ends before it started.
        self._pending = self._next_readable()
        if self._pending is None:
            raise SourceError(f"image folder {self.folder}: none of its {len(self.paths)} image(s) can be decoded")

    def _read_frame(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return self._next_readable()

    def _next_readable(self) -> np.ndarray | None:
        # Bounded by one pass: a folder of unreadable images ends instead of looping forever.
        for _ in range(len(self.paths)):
            if self._position >= len(self.paths):
                if not self.loop:
                    return None
                self._position = 0
            path = self.paths[self._position]
            self._position += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image
            log.warning("%s: skipping unreadable image %s", self.description, path.name)
        return None


class ImageFileSource(FrameSource):
    """One image file, yielded once (or repeatedly with ``loop``, e.g. for a benchmark)."""

    def __init__(self, path: str | os.PathLike[str], loop: bool = False, fps: float | None = None) -> None:
        super().__init__(pace_fps=fps)
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"image file {self.path} does not exist")
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot decode image file {self.path}")
        self._image = image
        self.loop = loop
        self._delivered = False
        self.description = f"image:{self.path.name}"
        self.name = self.path.name

    def _read_frame(self) -> np.ndarray | None:
        if self._delivered and not self.loop:
            return None
        self._delivered = True
        # A copy each time: the consumer may draw on the frame.
        return self._image.copy()


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def redact_url(url: str) -> str:
    """The URL without its user name and password, for logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def gstreamer_available() -> bool:
    """True if OpenCV was built with GStreamer (JetPack's is; pip wheels are not)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def gstreamer_backend(settings: GStreamerSettings) -> str:
    """'opencv' or 'subprocess': what ``auto`` means on this machine."""
    if settings.backend != "auto":
        return settings.backend
    return "opencv" if gstreamer_available() else "subprocess"


def open_gstreamer(text: str, settings: GStreamerSettings | None = None) -> FrameSource:
    """A ``gst:`` pipeline (without the prefix), on the backend the settings choose."""
    settings = settings or GStreamerSettings()
    try:
        pipeline, sink = frame_pipeline(text, settings.width, settings.height)
    except PipelineError as error:
        raise SourceError(f"gst pipeline {redact_pipeline(text)!r}: {error}") from None
    name = f"gst:{element_name(pipeline.elements[0])}"
    if gstreamer_backend(settings) == "opencv":
        opencv_sink = sink if sink and element_name(sink) == "appsink" else OPENCV_SINK
        return GStreamerSource(pipeline.with_sink(opencv_sink), name)
    return GstLaunchSource(pipeline, settings, name)


def open_csi_camera(
    sensor_id: int | None = None, csi: CsiSettings | None = None, settings: GStreamerSettings | None = None
) -> FrameSource:
    """The Jetson CSI camera ``sensor_id`` (default ``csi.sensor_id``) through nvarguscamerasrc."""
    csi, settings = csi or CsiSettings(), settings or GStreamerSettings()
    pipeline = csi_pipeline(csi, sensor_id)
    name = f"csi:{csi.sensor_id if sensor_id is None else sensor_id}"
    if gstreamer_backend(settings) == "opencv":
        return GStreamerSource(pipeline.with_sink(OPENCV_SINK), name)
    return GstLaunchSource(pipeline, settings, name)


def _camera_backend() -> int:
    # V4L2 directly on Linux: CAP_ANY would also try FFmpeg, which only logs noise for an index.
    return cv2.CAP_V4L2 if os.name == "posix" and os.uname().sysname == "Linux" else cv2.CAP_ANY


def _request_capture_format(
    capture: cv2.VideoCapture, width: int | None, height: int | None, fps: float | None
) -> None:
    """Ask the camera for a resolution/rate; drivers may pick the nearest mode they support."""
    if width:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    if height:
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    if fps:
        capture.set(cv2.CAP_PROP_FPS, fps)


def open_source(
    spec: str | int,
    loop: bool = False,
    pace: bool = False,
    image_fps: float | None = None,
    camera_width: int | None = None,
    camera_height: int | None = None,
    camera_fps: float | None = None,
    gstreamer: GStreamerSettings | None = None,
    csi: CsiSettings | None = None,
) -> FrameSource:
    """Open the frame source that ``spec`` names (see the module docstring for the forms).

    ``loop`` repeats files, folders and single images; ``pace`` plays video
    files at their frame rate (default: as fast as they decode);
    ``image_fps`` paces folders and single images; ``gstreamer`` and ``csi``
    configure ``gst:`` pipelines and the CSI camera. Raises ``SourceError``
    when the source cannot be opened.
    """
    if isinstance(spec, int):
        return CameraSource(spec, camera_width, camera_height, camera_fps)
    text = spec.strip()
    if not text:
        raise SourceError("empty source spec")
    camera = CAMERA_SPEC.match(text)
    if camera:
        return CameraSource(int(camera.group(1)), camera_width, camera_height, camera_fps)
    csi_camera = CSI_SPEC.match(text)
    if csi_camera:
        sensor = csi_camera.group(1)
        return open_csi_camera(None if sensor is None else int(sensor), csi, gstreamer)
    if text.startswith(GSTREAMER_PREFIX):
        return open_gstreamer(text[len(GSTREAMER_PREFIX) :].strip(), gstreamer)
    if "!" in text and "appsink" in text:
        return open_gstreamer(text, gstreamer)
    if urlsplit(text).scheme.lower() in STREAM_SCHEMES:
        return StreamSource(text)
    path = Path(text[len(FILE_PREFIX) :] if text.startswith(FILE_PREFIX) else text).expanduser()
    return _open_path(path, loop, pace, image_fps)


def _open_path(path: Path, loop: bool, pace: bool, image_fps: float | None) -> FrameSource:
    if path.is_dir():
        return ImageFolderSource(path, loop=loop, fps=image_fps)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFileSource(path, loop=loop, fps=image_fps)
    return VideoFileSource(path, loop=loop, pace=pace)
