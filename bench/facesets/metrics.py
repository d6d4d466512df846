"""Scoring detections against a face set's truth: recall, precision, time to find a new face, cut cost.

Per frame, detections are matched one-to-one to the findable truth faces,
best IoU first, IoU >= 0.5 (a match is a true positive). Detections left over
that overlap a face the truth marks not findable (turned, partly outside
the frame, covered) by IoU >= ``IGNORE_IOU`` are ignored: finding such a face
is neither right nor wrong. Every other detection is a false positive.

A face *appears* at the first frame of each run of frames in which it is
findable (the clip's first frame, a scene cut, entering the frame, coming out
from behind something). Its *latency* is the number of frames from there to
the first frame it is matched (0: found at once); a face never matched in its
run counts as the run's length and is also counted as *never found*.
The *cost of a cut* is the largest latency of the faces appearing at it.
Percentiles are nearest-rank (p95 of 20 values is the 19th smallest).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge.perception.boxes import Box, greedy_matches, iou_matrix

MATCH_IOU = 0.5
IGNORE_IOU = 0.3


@dataclass(frozen=True)
class Truth:
    """One truth face of a frame (the subset of a face set's entry scoring needs)."""

    face_id: str
    box: Box
    findable: bool = True


@dataclass
class FrameScore:
    true_positives: int
    false_negatives: int
    false_positives: int
    ignored: int
    found_ids: set[str] = field(default_factory=set)


def score_frame(truth: Sequence[Truth], detections: Sequence[Box]) -> FrameScore:
    """Match one frame's detections to its truth."""
    findable = [face for face in truth if face.findable]
    others = [face for face in truth if not face.findable]
    pairs = greedy_matches(iou_matrix([face.box for face in findable], list(detections)), MATCH_IOU)
    found_ids = {findable[row].face_id for row, _ in pairs}
    unmatched = [box for index, box in enumerate(detections) if index not in {column for _, column in pairs}]
    overlaps = iou_matrix(unmatched, [face.box for face in others])
    ignored = int((overlaps >= IGNORE_IOU).any(axis=1).sum()) if others and unmatched else 0
    return FrameScore(
        true_positives=len(pairs),
        false_negatives=len(findable) - len(pairs),
        false_positives=len(unmatched) - ignored,
        ignored=ignored,
        found_ids=found_ids,
    )


@dataclass(frozen=True)
class Appearance:
    face_id: str
    start: int
    length: int  # frames of the findable run


def appearances(truth_frames: Sequence[Sequence[Truth]]) -> list[Appearance]:
    """Every run of consecutive frames in which a face is findable, in order of start."""
    runs: list[Appearance] = []
    open_runs: dict[str, int] = {}
    for index, faces in enumerate(truth_frames):
        present = {face.face_id for face in faces if face.findable}
        for face_id in [face_id for face_id in open_runs if face_id not in present]:
            start = open_runs.pop(face_id)
            runs.append(Appearance(face_id, start, index - start))
        for face_id in sorted(present - set(open_runs)):
            open_runs[face_id] = index
    for face_id, start in open_runs.items():
        runs.append(Appearance(face_id, start, len(truth_frames) - start))
    return sorted(runs, key=lambda run: (run.start, run.face_id))


def latency(run: Appearance, found_ids: Sequence[set[str]]) -> tuple[int, bool]:
    """(frames until first found, found at all) for one appearance."""
    for offset in range(run.length):
        if run.face_id in found_ids[run.start + offset]:
            return offset, True
    return run.length, False


def nearest_rank(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (fraction 0.95 for p95); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


@dataclass
class ClipScore:
    frames: int
    true_positives: int
    false_negatives: int
    false_positives: int
    ignored: int
    latencies: list[int]
    never_found: int
    cut_costs: list[int]

    @property
    def recall(self) -> float:
        total = self.true_positives + self.false_negatives
        return self.true_positives / total if total else math.nan

    @property
    def precision(self) -> float:
        total = self.true_positives + self.false_positives
        return self.true_positives / total if total else math.nan

    def summary(self) -> dict:
        return {
            "frames": self.frames,
            "truth_faces": self.true_positives + self.false_negatives,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "ignored": self.ignored,
            "recall": self.recall,
            "precision": self.precision,
            "appearances": len(self.latencies),
            "latency_p50": nearest_rank(self.latencies, 0.5),
            "latency_p95": nearest_rank(self.latencies, 0.95),
            "latency_max": max(self.latencies, default=math.nan),
            "never_found": self.never_found,
            "cut_costs": self.cut_costs,
            "cut_cost_max": max(self.cut_costs, default=0),
        }


def score_clip(truth_frames: Sequence[Sequence[Truth]], detections: Sequence[Sequence[Box]],
               cuts: Sequence[int] = ()) -> ClipScore:
    """Score a whole clip: per-frame matching, appearance latencies, and the cost of each scene cut."""
    if len(truth_frames) != len(detections):
        raise ValueError(f"{len(truth_frames)} truth frames but {len(detections)} detection frames")
    frames = [score_frame(truth, boxes) for truth, boxes in zip(truth_frames, detections)]
    found_ids = [frame.found_ids for frame in frames]
    runs = appearances(truth_frames)
    results = [latency(run, found_ids) for run in runs]
    cut_costs = []
    for cut in cuts:
        at_cut = [frames_late for run, (frames_late, _) in zip(runs, results) if run.start == cut]
        cut_costs.append(max(at_cut, default=0))
    return ClipScore(
        frames=len(frames),
        true_positives=sum(frame.true_positives for frame in frames),
        false_negatives=sum(frame.false_negatives for frame in frames),
        false_positives=sum(frame.false_positives for frame in frames),
        ignored=sum(frame.ignored for frame in frames),
        latencies=[frames_late for frames_late, _ in results],
        never_found=sum(not found for _, found in results),
        cut_costs=cut_costs,
    )
