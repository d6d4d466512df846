"""The frame loop: read the source at its pace, hand each frame on, honour pause and the frame-rate cap.

It knows nothing of MQTT or of what is done with a frame: :class:`FrameLoop`
calls ``handle(frame_number, captured_at, frame, decode_ms)`` for each frame it
keeps and ``between_frames()`` before each read (commands, model installs,
stats). What commands change lives in :class:`LoopControl`, read before every
frame. The loop also keeps the facts the progress watchdog judges health by.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from common.backoff import backoff_delay
from contract.messages import StageTimings
from edge.sources import FrameSource, SourceError

log = logging.getLogger(__name__)

RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 5.0  # a camera back after a glitch is read again within ~5 s
PAUSED_POLL_S = 0.05
STAGES = ("decode", "detect", "classify", "draw", "encode", "publish")

FrameHandler = Callable[[int, datetime, np.ndarray, float], None]


@dataclass
class StageClock:
    """Mean milliseconds per processed frame for each stage over one stats interval."""

    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0

    def add(self, stage: str, milliseconds: float) -> None:
        self.totals[stage] += milliseconds

    def means(self) -> StageTimings:
        divisor = max(self.frames, 1)
        return StageTimings(**{stage: round(total / divisor, 3) for stage, total in self.totals.items()})


@dataclass
class Counters:
    processed: int = 0
    dropped: int = 0


@dataclass
class LoopControl:
    """What remote commands change; the loop reads it before every frame."""

    paused: bool = False
    max_fps: float | None = None
    snapshot_requested: bool = False
    _pacing_reset: bool = False

    def set_fps(self, fps: float | None) -> None:
        self.max_fps = fps
        self._pacing_reset = True  # the new rate applies from the next frame, not after the old slot

    def take_pacing_reset(self) -> bool:
        reset, self._pacing_reset = self._pacing_reset, False
        return reset


@dataclass
class Progress:
    """What the watchdog needs: when a frame was last processed, and whether one is expected now."""

    started_at: float = field(default_factory=time.monotonic)
    last_frame_at: float | None = None
    waiting_for_source: bool = False  # reopening a live source, or paused: no frame is due
    ended: bool = False

    def frame_done(self) -> None:
        self.last_frame_at = time.monotonic()


class FrameLoop:
    """Reads ``source`` until it ends (files, folders) or a stop is requested; live sources are reopened."""

    def __init__(
        self,
        source: FrameSource,
        reopen: Callable[[], FrameSource],
        handle: FrameHandler,
        control: LoopControl,
        stop_event: threading.Event,
        *,
        between_frames: Callable[[], None] = lambda: None,
        on_reopened: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._reopen = reopen
        self._handle = handle
        self.control = control
        self.stop_event = stop_event
        self.between_frames = between_frames  # the assembly's commands, model installs, stats
        self._on_reopened = on_reopened
        self.counters = Counters()
        self.clock = StageClock()
        self.progress = Progress()
        self._next_due = 0.0
        self._clock = clock  # tests pass a fake one with a stop event whose waits advance it

    def run(self) -> None:
        frames = iter(self.source)
        try:
            while not self.stop_event.is_set():
                self.between_frames()
                if self.control.paused and not self.source.live:
                    self.progress.waiting_for_source = True  # a paused file simply waits
                    self.stop_event.wait(PAUSED_POLL_S)
                    continue
                self.progress.waiting_for_source = self.control.paused
                item = next(frames, None)
                if item is None:
                    if not self.source.live or not self._reopen_live_source():
                        log.info("end of input after %d frames", self.counters.processed)
                        return
                    frames = iter(self.source)
                    continue
                decode_ms = self.source.decode_seconds * 1000.0  # without the pacing wait of --pace
                if self._skip_frame():
                    continue
                self._handle(*item, decode_ms)
                self.counters.processed += 1
                self.progress.frame_done()
        finally:
            self.progress.ended = True

    def _reopen_live_source(self) -> bool:
        """A camera or stream that stops delivering is reopened with backoff, until it works or we stop."""
        self.source.close()
        self.progress.waiting_for_source = False  # the watchdog should notice a source that stays away
        attempt = 0
        while not self.stop_event.is_set():
            delay = backoff_delay(attempt, RECONNECT_MIN_S, RECONNECT_MAX_S)
            log.warning("source %s stopped delivering frames; reopening in %.1f s", self.source.description, delay)
            if self.stop_event.wait(delay):
                return False
            try:
                self.source = self._reopen()
            except SourceError as error:
                log.warning("cannot reopen the source: %s", error)
                attempt += 1
                continue
            self._on_reopened()  # e.g. tracks from before the gap mean nothing now
            return True
        return False

    def _skip_frame(self) -> bool:
        """Pause and frame-rate cap: live sources drop frames, files wait their turn."""
        if self.control.paused:
            self.counters.dropped += 1
            return True
        if self.control.take_pacing_reset():
            self._next_due = 0.0
        max_fps = self.control.max_fps
        if max_fps is None:
            return False
        now = self._clock()
        if now < self._next_due:
            if self.source.live:
                self.counters.dropped += 1
                return True
            self.stop_event.wait(self._next_due - now)
        # The next slot: one interval after this frame's slot, or after now if we fell behind (no bursts to catch up).
        self._next_due = max(self._next_due, self._clock()) + 1.0 / max_fps
        return False
