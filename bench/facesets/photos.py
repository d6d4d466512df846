"""The face photos the synthetic clips are made of, and their verified face boxes (``photos.json``).

Photos are read in place from ``../shared/media`` (stills of the two videos count as photos too).
``photos.json`` holds, per photo, each face's box in the Haar convention
(what OpenCV's frontal-face cascade draws), found once by
``python bench/facesets/annotate_photos.py`` and checked by eye on the contact
sheet that script writes. Boxes are committed; the photos are not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.perception.boxes import Box

FACESETS = Path(__file__).resolve().parent
REPOSITORY = FACESETS.parents[1]
MEDIA = REPOSITORY.parent / "shared" / "media"
PHOTO_BOXES_FILE = FACESETS / "photos.json"


@dataclass(frozen=True)
class PhotoSource:
    """Where a photo comes from: an image file, or one frame of a video."""

    name: str
    file: str
    frame: int | None = None


PHOTO_SOURCES = (
    PhotoSource("group", "group_photo.jpg"),
    PhotoSource("justin", "justin.jpg"),
    PhotoSource("woman2_still", "woman2.mp4", frame=120),
    PhotoSource("test_still", "test.mp4", frame=81),
    PhotoSource("no_faces", "no-faces.jpg"),
)


class MediaMissing(FileNotFoundError):
    """../shared/media is not beside the repository."""


def read_photo(source: PhotoSource, media: Path = MEDIA) -> np.ndarray:
    """The photo as a BGR array."""
    path = media / source.file
    if not path.is_file():
        raise MediaMissing(f"{path} is missing (the face set is built from ../shared/media)")
    if source.frame is None:
        image = cv2.imread(str(path))
    else:
        capture = cv2.VideoCapture(str(path))
        capture.set(cv2.CAP_PROP_POS_FRAMES, source.frame)
        ok, image = capture.read()
        capture.release()
        image = image if ok else None
    if image is None:
        raise MediaMissing(f"cannot read {source} from {path}")
    return image


@dataclass(frozen=True)
class PhotoFace:
    """A verified face of a photo: its box (Haar convention) and whether the cascade can find it at all."""

    box: Box
    frontal: bool = True


@dataclass(frozen=True)
class Photo:
    source: PhotoSource
    image: np.ndarray
    faces: tuple[PhotoFace, ...]


def load_photo_boxes(path: Path = PHOTO_BOXES_FILE) -> dict[str, list[PhotoFace]]:
    """photos.json: name -> faces."""
    entries = json.loads(path.read_text())["photos"]
    return {
        name: [PhotoFace(tuple(face["box"]), face.get("frontal", True)) for face in entry["faces"]]
        for name, entry in entries.items()
    }


def load_photos(media: Path = MEDIA) -> dict[str, Photo]:
    """Every photo with its verified faces."""
    boxes = load_photo_boxes()
    return {
        source.name: Photo(source, read_photo(source, media), tuple(boxes[source.name]))
        for source in PHOTO_SOURCES
    }
