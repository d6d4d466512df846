"""Annotate the real clips (../shared/media/*.mp4) with the reference detector, and check it against Haar.

    python bench/facesets/annotate_real.py --sheets var/facesets [--write]

Every frame is searched by the reference detector (BlazeFace) and by
exhaustive Haar. Where they disagree, the boxes are grouped by place into
*clusters* (a bokeh light Haar takes for a face in 40 frames is one
cluster), and a crop sheet per clip shows samples of each cluster. The
verdicts given after looking at the sheets live in ``real_verdicts.json``
(cluster id -> verdict) and are applied here:

* ``face``: a frontal face; in the truth and findable (a reference-only
  cluster judged ``face`` is a face Haar missed; a Haar-only one, a face the
  reference missed);
* ``turned``: a face too turned (or tilted) for a frontal cascade: in the truth, not findable;
* ``not a face``: left out of the truth (a detection there is a false positive).

``--write`` writes ``real_clips.json``: per clip and frame the truth faces
(id, box in the Haar convention, findable), the clusters and their verdicts.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.facesets.photos import FACESETS, MEDIA  # noqa: E402
from bench.facesets.reference import ExhaustiveHaar, ReferenceDetector, yaw_ratio  # noqa: E402
from edge.perception.blazeface import to_haar_convention  # noqa: E402
from edge.perception.boxes import Box, greedy_matches, intersection_over_union, iou_matrix  # noqa: E402

REAL_CLIPS = ("woman2.mp4", "test.mp4")
REAL_CLIPS_FILE = FACESETS / "real_clips.json"
VERDICTS_FILE = FACESETS / "real_verdicts.json"
AGREE_IOU = 0.5
LINK_IOU = 0.3  # same face in the next frame / same cluster
VERDICTS = ("face", "turned", "not a face")


def read_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@dataclass
class Cluster:
    """Disagreements of one kind at one place: frames and boxes."""

    cluster_id: str
    kind: str  # "reference only" or "haar only"
    frames: list[int] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)

    def near(self, box: Box) -> bool:
        return intersection_over_union(self.boxes[-1], box) >= LINK_IOU


def add_to_clusters(clusters: list[Cluster], kind: str, frame: int, box: Box, prefix: str) -> Cluster:
    for cluster in clusters:
        if cluster.kind == kind and cluster.near(box):
            cluster.frames.append(frame)
            cluster.boxes.append(box)
            return cluster
    cluster = Cluster(f"{prefix}-{'R' if kind == 'reference only' else 'H'}{len(clusters) + 1}", kind, [frame], [box])
    clusters.append(cluster)
    return cluster


def compare_frame(reference: list[Box], haar: list[Box]) -> tuple[list[int], list[int], set[int]]:
    """Indices of reference-only and Haar-only boxes, and of reference boxes Haar agrees with."""
    pairs = greedy_matches(iou_matrix(reference, haar), AGREE_IOU)
    agreed = {row for row, _ in pairs}
    haar_agreed = {column for _, column in pairs}
    return ([i for i in range(len(reference)) if i not in agreed],
            [j for j in range(len(haar)) if j not in haar_agreed], agreed)


def link_identities(frames_boxes: list[list[Box]], prefix: str) -> list[list[str]]:
    """Face ids for the truth boxes: a box continues the face it overlaps in the frame before."""
    next_id, previous, ids = 1, [], []
    for boxes in frames_boxes:
        pairs = greedy_matches(iou_matrix([box for box, _ in previous], boxes), LINK_IOU)
        frame_ids: list[str | None] = [None] * len(boxes)
        for row, column in pairs:
            frame_ids[column] = previous[row][1]
        for index, face_id in enumerate(frame_ids):
            if face_id is None:
                frame_ids[index], next_id = f"{prefix}{next_id}", next_id + 1
        ids.append(frame_ids)
        previous = list(zip(boxes, frame_ids))
    return ids


def annotate_clip(name: str, reference: ReferenceDetector, haar: ExhaustiveHaar, verdicts: dict[str, str]):
    frames = read_frames(MEDIA / name)
    prefix = Path(name).stem
    clusters: list[Cluster] = []
    truth_boxes: list[list[Box]] = []
    truth_findable: list[list[bool]] = []
    counts = {"agreed": 0, "reference only": 0, "haar only": 0}
    for index, frame in enumerate(frames):
        detections = reference.detections(frame)
        reference_boxes = [to_haar_convention(d.box, reference._model.spec) for d in detections]
        haar_boxes = haar.detect(frame)
        reference_only, haar_only, agreed = compare_frame(reference_boxes, haar_boxes)
        counts["agreed"] += len(agreed)
        counts["reference only"] += len(reference_only)
        counts["haar only"] += len(haar_only)
        boxes, findable = [], []
        for i, box in enumerate(reference_boxes):
            verdict = "face"
            if i in reference_only:
                cluster = add_to_clusters(clusters, "reference only", index, box, prefix)
                verdict = verdicts.get(cluster.cluster_id, "turned" if yaw_ratio(detections[i]) >= 0.35 else "face")
            if verdict != "not a face":
                boxes.append(box)
                findable.append(verdict == "face")
        for j in haar_only:
            cluster = add_to_clusters(clusters, "haar only", index, haar_boxes[j], prefix)
            if verdicts.get(cluster.cluster_id, "not a face") != "not a face":
                boxes.append(haar_boxes[j])
                findable.append(verdicts[cluster.cluster_id] == "face")
        truth_boxes.append(boxes)
        truth_findable.append(findable)
    ids = link_identities(truth_boxes, prefix + "-f")
    truth = [[{"id": face_id, "box": list(box), "findable": ok} for face_id, box, ok in zip(*row)]
             for row in zip(ids, truth_boxes, truth_findable)]
    return frames, clusters, truth, counts


def draw_cluster_sheet(name: str, frames: list[np.ndarray], clusters: list[Cluster], path: Path) -> None:
    """One row per cluster: its id and kind, then up to 8 evenly spread samples with context."""
    rows = []
    for cluster in clusters:
        picks = np.unique(np.linspace(0, len(cluster.frames) - 1, min(8, len(cluster.frames))).round().astype(int))
        tiles = []
        for pick in picks:
            frame, (x, y, w, h) = frames[cluster.frames[pick]], cluster.boxes[pick]
            pad = w // 2
            shown = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
            cv2.rectangle(shown, (x + pad, y + pad), (x + w + pad, y + h + pad), (0, 0, 255), 1)
            tile = cv2.resize(shown[y : y + h + 2 * pad, x : x + w + 2 * pad], (120, 120))
            cv2.putText(tile, str(cluster.frames[pick]), (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
            tiles.append(tile)
        label = np.full((120, 220, 3), 255, np.uint8)
        for line, text in enumerate((cluster.cluster_id, cluster.kind, f"{len(cluster.frames)} frames")):
            cv2.putText(label, text, (4, 24 + 30 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
        rows.append(np.hstack([label] + tiles + [np.full((120, 120, 3), 255, np.uint8)] * (8 - len(tiles))))
    if rows:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.vstack(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sheets", type=Path, required=True, help="folder for the crop sheets (var/...)")
    parser.add_argument("--write", action="store_true", help=f"write {REAL_CLIPS_FILE.name}")
    arguments = parser.parse_args(argv)
    verdict_document = json.loads(VERDICTS_FILE.read_text()) if VERDICTS_FILE.is_file() else {"verdicts": {}}
    verdicts = {key: value["verdict"] for key, value in verdict_document["verdicts"].items()}
    unknown = sorted({verdict for verdict in verdicts.values()} - set(VERDICTS))
    if unknown:
        raise SystemExit(f"{VERDICTS_FILE.name}: unknown verdicts {unknown}; use {VERDICTS}")
    reference, haar = ReferenceDetector(), ExhaustiveHaar()
    document = {
        "about": "Truth of the real clips: reference detector (BlazeFace back model, whole frame + tiles, boxes in "
        "the Haar convention) with the verdicts of real_verdicts.json applied where exhaustive Haar disagreed. "
        "Written by bench/facesets/annotate_real.py.",
        "clips": {},
    }
    for name in REAL_CLIPS:
        frames, clusters, truth, counts = annotate_clip(name, reference, haar, verdicts)
        draw_cluster_sheet(name, frames, clusters, arguments.sheets / f"{Path(name).stem}-disagreements.png")
        print(f"{name}: {len(frames)} frames, {counts}")
        for cluster in clusters:
            print(f"  {cluster.cluster_id} {cluster.kind}: {len(cluster.frames)} frames "
                  f"{cluster.frames[0]}-{cluster.frames[-1]} at {cluster.boxes[0]} -> "
                  f"{verdicts.get(cluster.cluster_id, 'no verdict yet')}")
        document["clips"][name] = {
            "frames": len(frames),
            "counts": counts,
            "clusters": [
                {"id": c.cluster_id, "kind": c.kind, "frames": len(c.frames), "first": c.frames[0],
                 "last": c.frames[-1], "box": list(c.boxes[0]), "verdict": verdicts.get(c.cluster_id)}
                for c in clusters
            ],
            "truth": truth,
        }
    if arguments.write:
        missing = [c["id"] for clip in document["clips"].values() for c in clip["clusters"] if c["verdict"] is None]
        if missing:
            raise SystemExit(f"no verdict for clusters {missing}: look at the sheets and add them to {VERDICTS_FILE.name}")
        REAL_CLIPS_FILE.write_text(compact_json(document) + "\n")
    return 0


def compact_json(document: dict) -> str:
    """JSON with one cluster and one frame's truth per line: small diffs, readable."""
    lines = ["{", f' "about": {json.dumps(document["about"])},', ' "clips": {']
    for number, (name, clip) in enumerate(document["clips"].items()):
        lines.append(f"  {json.dumps(name)}: {{")
        lines.append(f'   "frames": {clip["frames"]}, "counts": {json.dumps(clip["counts"])},')
        lines.append('   "clusters": [')
        lines.append(",\n".join(f"    {json.dumps(cluster)}" for cluster in clip["clusters"]))
        lines.append("   ],")
        lines.append('   "truth": [')
        lines.append(",\n".join(f"    {json.dumps(faces)}" for faces in clip["truth"]))
        lines.append("   ]")
        lines.append("  }" + ("," if number < len(document["clips"]) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
