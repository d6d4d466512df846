"""GStreamer pipelines for the edge agent without a GStreamer-enabled OpenCV.

pip's OpenCV wheels are built without GStreamer, and JetPack's ``python3-opencv``
exists only for JetPack's own old Python. So a ``gst:`` pipeline (or the built-in
``csi`` camera pipeline) runs as a ``gst-launch-1.0 -q … ! fdsink fd=1`` child
process, and the agent reads raw BGR frames of a known size from its stdout.

This module holds the parts that need no OpenCV: pipeline text (splitting,
the caps that fix the frame size, the Jetson CSI pipeline), and the child
process (started in its own process group, killed with the agent, stopped
cleanly). ``edge.sources`` turns them into frame sources.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import logging
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from edge.config import CsiSettings

log = logging.getLogger(__name__)

SINK_ELEMENTS = ("appsink", "fdsink")
OPENCV_SINK = "appsink drop=true max-buffers=1"
FDSINK = "fdsink fd=1"
# Keep only the newest frame between the camera and a slower consumer, so a busy agent
# processes what the camera sees now, not what it saw seconds ago.
LATEST_FRAME_QUEUE = "queue max-size-buffers=1 leaky=downstream"
# nvvidconv flip methods 1, 3, 5, 7 rotate by 90 degrees or transpose: width and height swap.
TRANSPOSING_FLIPS = frozenset({1, 3, 5, 7})
PR_SET_PDEATHSIG = 1
STDERR_LINES_KEPT = 50
INTERRUPT_WAIT_S = 3.0  # gst-launch stops in milliseconds on SIGINT; a stuck camera driver may not
KILL_WAIT_S = 2.0

_CAPS_INT = r"\s*=\s*(?:\(int\)\s*)?(\d+)"
_WIDTH = re.compile(r"\bwidth" + _CAPS_INT)
_HEIGHT = re.compile(r"\bheight" + _CAPS_INT)
_BGR_FORMAT = re.compile(r"\bformat\s*=\s*(?:\(string\)\s*)?BGR\b")
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


class PipelineError(ValueError):
    """A pipeline text that cannot be turned into a frame-delivering pipeline."""


@dataclass(frozen=True)
class FramePipeline:
    """A pipeline ending in raw BGR frames of a known size, without its sink."""

    elements: tuple[str, ...]
    width: int
    height: int

    def with_sink(self, sink: str) -> str:
        return " ! ".join((*self.elements, sink))

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3


def split_pipeline(text: str) -> list[str]:
    """The elements and caps of a gst-launch pipeline, split at each ``!`` outside double quotes."""
    parts, current, quoted = [], [], False
    for character in text:
        if character == '"':
            quoted = not quoted
        if character == "!" and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(character)
    parts.append("".join(current).strip())
    if quoted:
        raise PipelineError("unbalanced double quote in the pipeline")
    if not all(parts):
        raise PipelineError("empty element in the pipeline (two '!' in a row, or one at an end)")
    return parts


def element_name(segment: str) -> str:
    """The factory name of a pipeline element (``filesrc`` of ``filesrc location=…``)."""
    return segment.split(None, 1)[0]


def caps_size(segment: str) -> tuple[int, int] | None:
    """Width and height fixed by a system-memory raw video caps filter, else None."""
    if not segment.startswith("video/x-raw") or segment.startswith("video/x-raw("):
        return None  # not caps, or caps in a special memory (NVMM) that fdsink cannot read
    width, height = _WIDTH.search(segment), _HEIGHT.search(segment)
    if width is None or height is None:
        return None
    return int(width.group(1)), int(height.group(1))


def frame_pipeline(text: str, default_width: int, default_height: int) -> tuple[FramePipeline, str | None]:
    """The user's pipeline made to end in BGR caps with a width and height; and its own sink, if any.

    A pipeline that already ends in ``video/x-raw,format=BGR,width=W,height=H`` is kept;
    one whose last caps give only a size is converted to BGR at that size; any other
    is converted and scaled to the default size. A trailing ``appsink``/``fdsink`` is
    taken off (the caller adds the sink its backend reads).
    """
    elements = split_pipeline(text)
    sink = elements.pop() if element_name(elements[-1]) in SINK_ELEMENTS else None
    if not elements:
        raise PipelineError("the pipeline has a sink but no source")
    size = caps_size(elements[-1])
    if size is None:
        width, height = default_width, default_height
        elements += [*_converter(elements), "videoscale", bgr_caps(width, height)]
    else:
        width, height = size
        if not _BGR_FORMAT.search(elements[-1]):
            elements += [*_converter(elements), bgr_caps(width, height)]
    return FramePipeline(tuple(elements), width, height), sink


def _converter(elements: list[str]) -> list[str]:
    return [] if element_name(elements[-1]) == "videoconvert" else ["videoconvert"]


def bgr_caps(width: int, height: int) -> str:
    return f"video/x-raw,format=BGR,width={width},height={height}"


def csi_output_size(csi: CsiSettings) -> tuple[int, int]:
    """Frame size after nvvidconv: the output size if set, else the sensor size, turned by the flip method."""
    width = csi.output_width or csi.width
    height = csi.output_height or csi.height
    return (height, width) if csi.flip_method in TRANSPOSING_FLIPS else (width, height)


def csi_pipeline(csi: CsiSettings, sensor_id: int | None = None) -> FramePipeline:
    """The Jetson CSI camera pipeline (nvarguscamerasrc → nvvidconv → BGR), without its sink.

    # Arguments
        csi: sensor mode, capture size and rate, flip method, optional output size.
        sensor_id: overrides ``csi.sensor_id`` (from a ``csi:N`` source spec).
    # References
        NVIDIA, "Accelerated GStreamer" (Jetson Linux developer guide): nvarguscamerasrc, nvvidconv.
    """
    sensor = csi.sensor_id if sensor_id is None else sensor_id
    mode = "" if csi.sensor_mode is None else f" sensor-mode={csi.sensor_mode}"
    width, height = csi_output_size(csi)
    elements = (
        f"nvarguscamerasrc sensor-id={sensor}{mode}",
        f"video/x-raw(memory:NVMM),width={csi.width},height={csi.height},framerate={csi.fps}/1,format=NV12",
        f"nvvidconv flip-method={csi.flip_method}",
        f"video/x-raw,format=BGRx,width={width},height={height}",
        LATEST_FRAME_QUEUE,
        "videoconvert",
        bgr_caps(width, height),
    )
    return FramePipeline(elements, width, height)


def redact_pipeline(text: str) -> str:
    """The pipeline (or a GStreamer message) with URL credentials hidden, for logs."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def launch_arguments(launcher: str, pipeline: str) -> list[str]:
    """argv for gst-launch: the pipeline split as a shell would (gst-launch re-joins its arguments)."""
    try:
        return [launcher, "-q", *shlex.split(pipeline)]
    except ValueError as error:
        raise PipelineError(f"cannot split the pipeline into arguments: {error}") from None


def error_summary(lines: list[str], limit: int = 3) -> str:
    """GStreamer's own error text, without its source-file and element-path lines."""
    kept: list[str] = []
    for line in lines:
        if not line or line == "Additional debug info:" or line.startswith("../") or line.endswith(":"):
            continue
        if line not in kept:
            kept.append(line)
    return "; ".join(kept[:limit])


def _death_signal_setter():
    """A preexec_fn that makes the child die with this thread (Linux prctl PR_SET_PDEATHSIG), else None.

    Resolved before the fork, so the child only makes one libc call before exec.
    Linux delivers the signal when the *thread* that started the child ends: sources
    are opened in the agent's main thread, which lives as long as the agent.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()
    kill = int(signal.SIGKILL)

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return die_with_parent


class LaunchedPipeline:
    """A ``gst-launch-1.0`` child writing raw frames to its stdout; its stderr goes to the log.

    The child runs in its own session and process group (the terminal's Ctrl-C
    reaches only the agent, which then stops the child itself), dies with the agent
    on Linux even when the agent is killed, and :meth:`stop` ends it with SIGINT
    (gst-launch then releases the camera properly), SIGKILL if it does not stop.
    """

    def __init__(self, arguments: list[str], description: str) -> None:
        self.description = description
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        try:
            self.process = subprocess.Popen(
                arguments, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                bufsize=0, start_new_session=True, preexec_fn=_death_signal_setter(),
            )
        except OSError as error:
            raise PipelineError(f"cannot start {arguments[0]}: {error} (install gstreamer1.0-tools)") from None
        self._stdout = self.process.stdout.fileno()
        self.timed_out = False  # whether the last read_exactly gave up waiting (rather than hit the end)
        self._stderr_reader = threading.Thread(target=self._log_stderr, name=f"gst-stderr-{self.pid}", daemon=True)
        self._stderr_reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _log_stderr(self) -> None:
        for raw in iter(self.process.stderr.readline, b""):
            line = redact_pipeline(raw.decode("utf-8", "replace").rstrip())
            if not line:
                continue
            self.stderr_lines.append(line)
            loud = any(word in line for word in ("ERROR", "WARNING", "CRITICAL"))
            log.log(logging.WARNING if loud else logging.INFO, "%s (gst-launch): %s", self.description, line)

    def read_exactly(self, size: int, timeout: float) -> bytearray | None:
        """``size`` bytes from the child, or None at its end of output or after ``timeout`` s without them."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        deadline = time.monotonic() + timeout
        self.timed_out = False
        while filled < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._stdout], [], [], remaining)[0]:
                log.warning("%s: no complete frame within %.1f s", self.description, timeout)
                self.timed_out = True
                return None
            count = os.readv(self._stdout, [view[filled:]])
            if count == 0:
                if filled:
                    log.warning("%s: output ended inside a frame (%d of %d bytes)", self.description, filled, size)
                return None
            filled += count
        return buffer

    def exit_code(self, wait_s: float) -> int | None:
        """The child's exit code, waiting up to ``wait_s`` for it to end; None while it runs."""
        try:
            return self.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None

    def failure(self, wait_s: float = KILL_WAIT_S) -> str:
        """Why no frame came: GStreamer's own error text and the exit code (waits a little for both)."""
        code = self.exit_code(wait_s)
        if code is not None:
            self._stderr_reader.join(KILL_WAIT_S)  # the last lines, written just before the exit
        text = error_summary(list(self.stderr_lines)) or "no error text"
        status = "is still running" if code is None else f"exited with code {code}"
        return f"gst-launch-1.0 {status}: {text}"

    def stop(self) -> None:
        """SIGINT to the child's group, SIGKILL if it is still there; always reaped (no zombie)."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGINT)
            try:
                self.process.wait(INTERRUPT_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s: gst-launch (pid %d) ignored SIGINT; killing it", self.description, self.pid)
                self._signal_group(signal.SIGKILL)
                self.process.wait(KILL_WAIT_S)
        self.process.stdout.close()
        self._stderr_reader.join(KILL_WAIT_S)
        self.process.stderr.close()

    def _signal_group(self, signal_number: int) -> None:
        # Only while the child is unreaped: its pid (= its group id) cannot have been reused.
        try:
            os.killpg(self.pid, signal_number)
        except ProcessLookupError:
            pass
