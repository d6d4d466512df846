"""Find the face boxes of the face-set photos once, and draw a contact sheet to check them by eye.

    python bench/facesets/annotate_photos.py --sheet var/facesets/photos-sheet.png [--write]

Each face is found by the reference detector (BlazeFace, on the photo and on
tiles small enough for the group photo's faces) and by exhaustive Haar. The
box kept is Haar's own where both found the face (IoU >= 0.5): the synthetic
truth is then exactly what the cascade draws on the untransformed photo; a
face only BlazeFace finds keeps its box mapped to the Haar convention and is
marked not frontal when it is turned (nose far from the eyes' midpoint).
``--write`` writes photos.json; check the sheet first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.facesets.photos import PHOTO_BOXES_FILE, PHOTO_SOURCES, read_photo  # noqa: E402
from bench.facesets.reference import ExhaustiveHaar, ReferenceDetector, yaw_ratio  # noqa: E402
from edge.perception.blazeface import BlazeFace, to_haar_convention, weighted_nms  # noqa: E402
from edge.perception.boxes import intersection_over_union  # noqa: E402

TURNED_YAW_RATIO = 0.35
TILE_SIDES = (None, 768, 512)  # whole photo, then tiles: the group photo's faces are ~110 px of 2048


def tiles(width: int, height: int, side: int) -> list[tuple[int, int, int, int]]:
    """Square tiles of ``side`` with half overlap covering the image."""
    if side >= min(width, height):
        return []
    xs = np.unique(np.linspace(0, width - side, max(int(np.ceil(2 * width / side)) - 1, 1)).round().astype(int))
    ys = np.unique(np.linspace(0, height - side, max(int(np.ceil(2 * height / side)) - 1, 1)).round().astype(int))
    return [(int(x), int(y), side, side) for y in ys for x in xs]


def photo_faces(image: np.ndarray, model: BlazeFace, haar: ExhaustiveHaar) -> list[dict]:
    height, width = image.shape[:2]
    found = []
    for side in TILE_SIDES:
        regions = [None] if side is None else tiles(width, height, side)
        for region in regions:
            found.extend(model.detect(image, region))
    haar_boxes = haar.detect(image)
    faces = []
    for detection in weighted_nms(found):
        reference_box = to_haar_convention(detection.box, model.spec)
        best = max(haar_boxes, key=lambda box: intersection_over_union(box, reference_box), default=None)
        both = best is not None and intersection_over_union(best, reference_box) >= 0.5
        yaw = yaw_ratio(detection)
        faces.append({
            "box": list(best if both else reference_box),
            "frontal": bool(both or yaw < TURNED_YAW_RATIO),
            "found_by": "reference+haar" if both else "reference",
            "reference_score": round(detection.score, 3),
            "yaw_ratio": round(yaw, 3),
        })
    faces.sort(key=lambda face: (face["box"][0], face["box"][1]))
    haar_only = [list(box) for box in haar_boxes
                 if all(intersection_over_union(box, tuple(face["box"])) < 0.3 for face in faces)]
    return faces, haar_only


def draw_sheet(entries: dict, images: dict, path: Path) -> None:
    """One row per photo: the photo with numbered boxes (green: both, orange: reference only, red: Haar only)
    and each face's crop at 96 px."""
    rows = []
    for name, entry in entries.items():
        image = images[name].copy()
        scale = 480 / image.shape[0]
        for number, face in enumerate(entry["faces"]):
            x, y, w, h = face["box"]
            color = (0, 200, 0) if face["found_by"] == "reference+haar" else (0, 140, 255)
            cv2.rectangle(image, (x, y), (x + w, y + h), color, max(int(3 / scale), 1))
            cv2.putText(image, str(number), (x, y - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6 / scale, color, max(int(2 / scale), 1))
        for x, y, w, h in entry["haar_only"]:
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 0, 255), max(int(2 / scale), 1))
        shown = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        crops = [cv2.resize(_crop(images[name], face["box"]), (96, 96)) for face in entry["faces"]]
        strip = np.hstack(crops) if crops else np.zeros((96, 96, 3), np.uint8)
        canvas = np.full((480 + 100, max(shown.shape[1], strip.shape[1]), 3), 255, np.uint8)
        canvas[:480, : shown.shape[1]] = shown
        canvas[482 : 482 + 96, : strip.shape[1]] = strip
        cv2.putText(canvas, name, (6, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 0, 255), 2)
        rows.append(canvas)
    width = max(row.shape[1] for row in rows)
    sheet = np.vstack([np.pad(row, ((0, 10), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet)


def _crop(image: np.ndarray, box: list[int]) -> np.ndarray:
    x, y, w, h = box
    return image[max(y, 0) : y + h, max(x, 0) : x + w]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sheet", type=Path, required=True, help="contact sheet PNG to write")
    parser.add_argument("--write", action="store_true", help=f"write {PHOTO_BOXES_FILE.name}")
    arguments = parser.parse_args(argv)
    model, haar = ReferenceDetector()._model, ExhaustiveHaar()
    entries, images = {}, {}
    for source in PHOTO_SOURCES:
        images[source.name] = read_photo(source)
        faces, haar_only = photo_faces(images[source.name], model, haar)
        entries[source.name] = {"source": source.file, "frame": source.frame, "faces": faces, "haar_only": haar_only}
        print(source.name, json.dumps(faces), "haar only:", haar_only)
    draw_sheet(entries, images, arguments.sheet)
    if arguments.write:
        document = {
            "about": "Face boxes of the face-set photos, Haar convention (x, y, w, h pixels); found by "
            "bench/facesets/annotate_photos.py, checked by eye on its contact sheet.",
            "photos": {name: {key: entry[key] for key in ("source", "frame", "faces", "haar_only")}
                       for name, entry in entries.items()},
        }
        PHOTO_BOXES_FILE.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
