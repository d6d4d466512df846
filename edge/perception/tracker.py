"""IoU tracker: stable integer ids for faces across frames, and optional label smoothing.

Each new detection is matched to the existing track whose last box overlaps it
most (IoU >= ``iou_match``), greedily, best overlap first. Unmatched
detections start new tracks; a track that goes unmatched survives
``max_missed`` frames so a short detector drop-out does not change the id.

Smoothing: we average the probability vectors of the last
``smoothing_window`` frames of a track and take the arg-max, rather than the
mode of the last labels (the 2019 demo). The mean keeps the confidence of
each frame: one confidently happy frame among uncertain ones counts for more
than a 40/35 split, a seven-class mode over a short window often ties, and
the mean changes smoothly instead of flipping when one vote moves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.perception.boxes import Box, greedy_matches, iou_matrix
from edge.perception.settings import TrackingSettings


@dataclass
class Track:
    """One face followed across frames.

    ``anchor_side`` is the face size at the last whole-frame detection. The
    local search looks for that size (around the latest position) rather than
    the latest size: the cascade's size error is then not fed back frame after
    frame, where it would compound into a box that slowly grows or shrinks.
    """

    track_id: int
    box: Box
    anchor_side: int
    missed: int = 0
    hits: int = 1
    probability_history: deque[np.ndarray] = field(default_factory=deque)

    def search_box(self) -> Box:
        """Square box of the anchor size centred on the latest box."""
        x, y, width, height = self.box
        side = self.anchor_side
        return x + (width - side) // 2, y + (height - side) // 2, side, side


class FaceTracker:
    """Assigns track ids to each frame's detections; call ``update`` once per frame."""

    def __init__(self, settings: TrackingSettings | None = None) -> None:
        self.settings = settings or TrackingSettings()
        self._tracks: list[Track] = []
        self._next_track_id = 1
        self.track_lost = False

    def reset(self) -> None:
        """Drop every track (new video source); ids keep increasing so they never repeat within a run."""
        self._tracks = []
        self.track_lost = False

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks)

    def live_boxes(self) -> list[Box]:
        """Last boxes of every live track (including those missed for a few frames)."""
        return [track.box for track in self._tracks]

    def search_boxes(self) -> list[Box]:
        """Where the local search should look next: each live track's anchor-size box at its latest position."""
        return [track.search_box() for track in self._tracks]

    def update(self, boxes: Sequence[Box], whole_frame: bool | Sequence[bool] = True) -> list[int]:
        """Match this frame's detections to tracks; returns the track id of each box, in order.

        ``whole_frame`` says the boxes (all, or each one) come from a search
        over every face size (whole frame or region), whose sizes become the
        tracks' new anchor sizes.
        """
        searched = [whole_frame] * len(boxes) if isinstance(whole_frame, bool) else list(whole_frame)
        scores = iou_matrix([track.box for track in self._tracks], list(boxes))
        matches = greedy_matches(scores, self.settings.iou_match)
        track_ids: list[int | None] = [None] * len(boxes)
        matched_tracks: set[int] = set()
        for track_index, box_index in matches:
            track = self._tracks[track_index]
            track.box, track.missed, track.hits = boxes[box_index], 0, track.hits + 1
            side = max(track.box[2], track.box[3])
            if searched[box_index] or abs(side / track.anchor_side - 1.0) > self.settings.anchor_follow:
                # A local-search box far from the anchor size is a real change of size (a zoom, a person
                # walking away), not the cascade's jitter of one pyramid step around it.
                track.anchor_side = side
            track_ids[box_index] = track.track_id
            matched_tracks.add(track_index)
        self.track_lost = self._age_unmatched(matched_tracks)
        for box_index, track_id in enumerate(track_ids):
            if track_id is None:
                track_ids[box_index] = self._start_track(boxes[box_index])
        return [int(track_id) for track_id in track_ids if track_id is not None]

    def _age_unmatched(self, matched_tracks: set[int]) -> bool:
        """Count a miss for unmatched tracks, drop expired ones; True if a track seen last frame was missed."""
        newly_lost = False
        survivors: list[Track] = []
        for index, track in enumerate(self._tracks):
            if index not in matched_tracks:
                newly_lost = newly_lost or track.missed == 0
                track.missed += 1
            if track.missed <= self.settings.max_missed:
                survivors.append(track)
        self._tracks = survivors
        return newly_lost

    def _start_track(self, box: Box) -> int:
        track = Track(track_id=self._next_track_id, box=box, anchor_side=max(box[2], box[3]))
        self._next_track_id += 1
        self._tracks.append(track)
        return track.track_id

    def smoothed_probabilities(self, track_id: int, probabilities: np.ndarray) -> np.ndarray | None:
        """Add this frame's probabilities to the track and return their mean over the window.

        Returns None when smoothing is off (``smoothing_window`` 0) or the id is unknown.
        """
        window = self.settings.smoothing_window
        track = self._find(track_id)
        if window == 0 or track is None:
            return None
        history = track.probability_history
        history.append(np.asarray(probabilities, dtype=np.float32))
        while len(history) > window:
            history.popleft()
        return np.mean(np.stack(history), axis=0)

    def _find(self, track_id: int) -> Track | None:
        for track in self._tracks:
            if track.track_id == track_id:
                return track
        return None
