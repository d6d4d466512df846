"""Synthetic clips with exact face boxes, made from the face-set photos (seeded, deterministic).

A clip is a list of scenes joined by hard cuts. A scene shows one photo
through a moving camera (pans and zooms: a view rectangle interpolated
between keyframes), optionally with faces cut out of other photos pasted on
top (moving in, across and out of the frame), bars passing in front of faces,
low light, sensor noise, motion blur and JPEG compression. Every face box is
the photo's verified box (``photos.json``) through the same scale and shift
that made the pixels, so the truth is known by construction.

A truth face is *findable* when a frontal face detector could see it: at
least ``MIN_INSIDE`` of its box inside the frame, at most ``MAX_COVERED``
of it hidden by what is drawn over it, and at least ``MIN_FACE_SIDE`` wide
(the issue's range is 40-300 px; a zoomed-out group photo shows smaller faces too). The others are listed too (a detector
finding them is neither right nor wrong).

    python -m bench.facesets.synthetic --out var/facesets [--plain]   # each clip as .mp4 + truth .json, to look at
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.facesets.photos import Photo, load_photos  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 360, 30
MIN_INSIDE = 0.95  # fraction of a face box inside the frame for it to count as findable
MAX_COVERED = 0.15  # fraction of a face box that may be hidden by sprites or bars
MIN_FACE_SIDE = 40  # pixels: smaller faces are listed as "small", neither found nor missed
SPRITE_CONTEXT = 1.1  # a pasted face brings this many face sides of its photo on every side (hair, neck)
DEFAULT_SEED = 2026


# -- clip description ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A keyframe: at scene frame ``t``, centre (x, y) and size (view width, or face side for a sprite)."""

    t: int
    x: float
    y: float
    size: float


@dataclass(frozen=True)
class Sprite:
    """Face ``face`` of photo ``photo`` pasted at the keyframed centre and face side (output pixels)."""

    photo: str
    face: int
    keys: tuple[Key, ...]
    start: int = 0
    stop: int | None = None  # scene frames [start, stop) in which it is shown


@dataclass(frozen=True)
class Bar:
    """A solid bar (an arm, a pole) passing in front: its rectangle's centre keyframed, fixed size."""

    width: int
    height: int
    keys: tuple[Key, ...]
    color: tuple[int, int, int] = (60, 70, 80)


@dataclass(frozen=True)
class Look:
    """Picture degradations of a scene."""

    brightness: float = 1.0  # gain on every pixel (0.3: a dim room)
    noise_sigma: float = 0.0  # Gaussian sensor noise, grey levels
    blur_per_pixel_moved: float = 0.0  # motion blur length per output pixel the camera moves per frame
    jpeg_quality: int = 85


@dataclass(frozen=True)
class Scene:
    frames: int
    photo: str
    view: tuple[Key, ...]  # view rectangle centre and width in photo pixels (height = width * 9 / 16)
    sprites: tuple[Sprite, ...] = ()
    bars: tuple[Bar, ...] = ()
    look: Look = Look()


@dataclass(frozen=True)
class ClipSpec:
    name: str
    about: str
    scenes: tuple[Scene, ...]


# -- truth ---------------------------------------------------------------------------------------


@dataclass
class TruthFace:
    """One face in one frame: identity (unique within the clip), box (Haar convention), findable or why not."""

    face_id: str
    box: tuple[int, int, int, int]
    findable: bool
    reason: str = ""  # "partial", "covered", "turned", "small" when not findable

    def as_json(self) -> dict:
        entry = {"id": self.face_id, "box": list(self.box), "findable": self.findable}
        if self.reason:
            entry["reason"] = self.reason
        return entry


@dataclass
class Clip:
    name: str
    frames: list[np.ndarray]
    truth: list[list[TruthFace]]
    cuts: list[int] = field(default_factory=list)  # frame indices where a new scene starts (not 0)

    def digest(self) -> str:
        """SHA-256 over every frame's pixels and every truth box: equal digests, equal clips."""
        hasher = hashlib.sha256()
        for frame, faces in zip(self.frames, self.truth):
            hasher.update(frame.tobytes())
            hasher.update(json.dumps([face.as_json() for face in faces]).encode())
        return hasher.hexdigest()


# -- rendering -----------------------------------------------------------------------------------


def interpolate(keys: tuple[Key, ...], t: int) -> tuple[float, float, float]:
    """Linear interpolation of (x, y, size) between keyframes; held before the first and after the last."""
    if t <= keys[0].t:
        return keys[0].x, keys[0].y, keys[0].size
    for before, after in zip(keys, keys[1:]):
        if t <= after.t:
            weight = (t - before.t) / max(after.t - before.t, 1)
            return tuple(a + (b - a) * weight for a, b in
                         ((before.x, after.x), (before.y, after.y), (before.size, after.size)))
    return keys[-1].x, keys[-1].y, keys[-1].size


def render_view(photo: Photo, centre_x: float, centre_y: float, view_width: float) -> tuple[np.ndarray, tuple]:
    """The photo seen through a 16:9 view rectangle, resized to the frame; returns pixels and (x0, y0, sx, sy)."""
    image = photo.image
    photo_height, photo_width = image.shape[:2]
    view_width = min(view_width, photo_width, photo_height * WIDTH / HEIGHT)
    view_height = view_width * HEIGHT / WIDTH
    left = int(round(np.clip(centre_x - view_width / 2, 0, photo_width - view_width)))
    top = int(round(np.clip(centre_y - view_height / 2, 0, photo_height - view_height)))
    crop_width, crop_height = int(round(view_width)), int(round(view_height))
    crop = image[top : top + crop_height, left : left + crop_width]
    interpolation = cv2.INTER_AREA if crop_width > WIDTH else cv2.INTER_LINEAR
    frame = cv2.resize(crop, (WIDTH, HEIGHT), interpolation=interpolation)
    return frame, (left, top, WIDTH / crop_width, HEIGHT / crop_height)


def map_box(box: tuple, transform: tuple) -> tuple[float, float, float, float]:
    left, top, scale_x, scale_y = transform
    x, y, width, height = box
    return (x - left) * scale_x, (y - top) * scale_y, width * scale_x, height * scale_y


def sprite_patch(photo: Photo, face_index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A face with SPRITE_CONTEXT of its surroundings, an elliptic soft mask, and the face box's offset in it."""
    x, y, width, height = photo.faces[face_index].box
    margin = int(round(SPRITE_CONTEXT * width))
    image_height, image_width = photo.image.shape[:2]
    left, top = max(x - margin, 0), max(y - margin, 0)
    right, bottom = min(x + width + margin, image_width), min(y + height + margin, image_height)
    patch = photo.image[top:bottom, left:right]
    mask = np.zeros(patch.shape[:2], np.float32)
    centre = (int(x + width / 2 - left), int(y + height * 0.45 - top))
    axes = (int(width * 0.72), int(height * 0.95))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), width * 0.08)
    return patch, mask, (x - left, y - top)


def paste(frame: np.ndarray, owner: np.ndarray, owner_id: int, patch: np.ndarray, mask: np.ndarray,
          left: int, top: int) -> None:
    """Alpha-blend ``patch`` at (left, top), clipped to the frame; pixels mostly covered change owner."""
    height, width = patch.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, WIDTH), min(top + height, HEIGHT)
    if x1 <= x0 or y1 <= y0:
        return
    part = patch[y0 - top : y1 - top, x0 - left : x1 - left].astype(np.float32)
    alpha = mask[y0 - top : y1 - top, x0 - left : x1 - left, None]
    region = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + part * alpha + 0.5, 0, 255).astype(np.uint8)
    owner[y0:y1, x0:x1][alpha[..., 0] > 0.5] = owner_id


def draw_sprite(frame: np.ndarray, owner: np.ndarray, owner_id: int, photo: Photo, sprite: Sprite,
                t: int) -> tuple[float, float, float, float]:
    """Paste a sprite at scene frame t; returns its face box in frame pixels."""
    centre_x, centre_y, side = interpolate(sprite.keys, t)
    patch, mask, (face_x, face_y) = sprite_patch(photo, sprite.face)
    face_side = photo.faces[sprite.face].box[2]
    size = (max(int(round(patch.shape[1] * side / face_side)), 1), max(int(round(patch.shape[0] * side / face_side)), 1))
    scale_x, scale_y = size[0] / patch.shape[1], size[1] / patch.shape[0]
    interpolation = cv2.INTER_AREA if scale_x < 1 else cv2.INTER_LINEAR
    patch, mask = cv2.resize(patch, size, interpolation=interpolation), cv2.resize(mask, size)
    face_box = photo.faces[sprite.face].box
    box_width, box_height = face_box[2] * scale_x, face_box[3] * scale_y
    left = int(round(centre_x - box_width / 2 - face_x * scale_x))
    top = int(round(centre_y - box_height / 2 - face_y * scale_y))
    paste(frame, owner, owner_id, patch, mask, left, top)
    return left + face_x * scale_x, top + face_y * scale_y, box_width, box_height


def draw_bar(frame: np.ndarray, owner: np.ndarray, owner_id: int, bar: Bar, t: int) -> None:
    centre_x, centre_y, _ = interpolate(bar.keys, t)
    left, top = int(round(centre_x - bar.width / 2)), int(round(centre_y - bar.height / 2))
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + bar.width, WIDTH), min(top + bar.height, HEIGHT)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = bar.color
        owner[y0:y1, x0:x1] = owner_id


def apply_look(frame: np.ndarray, look: Look, camera_speed: float, rng: np.random.Generator,
               direction: tuple[float, float]) -> np.ndarray:
    """Motion blur along the camera's motion, low light, noise, then JPEG, in the order a camera makes them."""
    length = int(round(look.blur_per_pixel_moved * camera_speed))
    if length >= 2:
        kernel = np.zeros((length, length), np.float32)
        dx, dy = direction
        centre = (length - 1) / 2
        for step in np.linspace(-centre, centre, 4 * length):
            kernel[int(round(centre + step * dy)), int(round(centre + step * dx))] = 1.0
        frame = cv2.filter2D(frame, -1, kernel / kernel.sum())
    image = frame.astype(np.float32)
    if look.brightness != 1.0:
        image *= look.brightness
    if look.noise_sigma > 0:
        image += rng.normal(0.0, look.noise_sigma, image.shape).astype(np.float32)
    frame = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    if look.jpeg_quality < 100:
        ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, look.jpeg_quality])
        frame = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return frame


def truth_of(face_id: str, box: tuple[float, float, float, float], frontal: bool, owner: np.ndarray,
             owner_id: int) -> TruthFace | None:
    """The truth entry of a face drawn by layer ``owner_id``, or None when it is wholly outside the frame."""
    x, y, width, height = box
    x0, y0 = int(np.floor(max(x, 0))), int(np.floor(max(y, 0)))
    x1, y1 = int(np.ceil(min(x + width, WIDTH))), int(np.ceil(min(y + height, HEIGHT)))
    if x1 <= x0 or y1 <= y0:
        return None
    inside = (x1 - x0) * (y1 - y0) / max(width * height, 1e-9)
    covered = float(np.mean(owner[y0:y1, x0:x1] != owner_id))
    rounded = tuple(int(round(value)) for value in box)
    if not frontal:
        return TruthFace(face_id, rounded, False, "turned")
    if width < MIN_FACE_SIDE:
        return TruthFace(face_id, rounded, False, "small")
    if inside < MIN_INSIDE:
        return TruthFace(face_id, rounded, False, "partial")
    if covered > MAX_COVERED:
        return TruthFace(face_id, rounded, False, "covered")
    return TruthFace(face_id, rounded, True)


def render_scene(scene: Scene, scene_index: int, photos: dict[str, Photo], rng: np.random.Generator):
    """Frames and truth of one scene."""
    background = photos[scene.photo]
    previous_origin = None
    for t in range(scene.frames):
        centre_x, centre_y, view_width = interpolate(scene.view, t)
        frame, transform = render_view(background, centre_x, centre_y, view_width)
        owner = np.zeros((HEIGHT, WIDTH), np.int16)
        drawn: list[tuple[str, tuple, bool, int]] = [
            (f"s{scene_index}:{scene.photo}:{index}", map_box(face.box, transform), face.frontal, 0)
            for index, face in enumerate(background.faces)
        ]
        for number, sprite in enumerate(scene.sprites, start=1):
            if sprite.start <= t < (sprite.stop if sprite.stop is not None else scene.frames):
                photo = photos[sprite.photo]
                box = draw_sprite(frame, owner, number, photo, sprite, t)
                drawn.append((f"s{scene_index}:sprite{number}:{sprite.photo}:{sprite.face}", box,
                              photo.faces[sprite.face].frontal, number))
        for number, bar in enumerate(scene.bars, start=len(scene.sprites) + 1):
            draw_bar(frame, owner, number, bar, t)
        # The camera's speed (the view's shift, in output pixels per frame) drives the motion blur.
        origin = np.array([transform[0] * transform[2], transform[1] * transform[3]])
        motion = origin - previous_origin if previous_origin is not None else np.zeros(2)
        previous_origin = origin
        speed = float(np.linalg.norm(motion))
        direction = (float(motion[0] / speed), float(motion[1] / speed)) if speed > 0 else (1.0, 0.0)
        frame = apply_look(frame, scene.look, speed, rng, direction)
        faces = [truth_of(face_id, box, frontal, owner, layer) for face_id, box, frontal, layer in drawn]
        yield frame, [face for face in faces if face is not None]


def build_clip(spec: ClipSpec, seed: int = DEFAULT_SEED, photos: dict[str, Photo] | None = None) -> Clip:
    """Render every scene of ``spec``; the same seed gives the same pixels and boxes."""
    photos = photos if photos is not None else load_photos()
    rng = np.random.default_rng([seed, sum(spec.name.encode())])
    clip = Clip(spec.name, [], [])
    for scene_index, scene in enumerate(spec.scenes):
        if scene_index:
            clip.cuts.append(len(clip.frames))
        for frame, faces in render_scene(scene, scene_index, photos, rng):
            clip.frames.append(frame)
            clip.truth.append(faces)
    return clip


# -- the clips -----------------------------------------------------------------------------------


def still(t: int, x: float, y: float, size: float) -> tuple[Key, ...]:
    return (Key(t, x, y, size),)


def walk(*points: tuple[int, float, float, float]) -> tuple[Key, ...]:
    return tuple(Key(*point) for point in points)


GROUP_FACES_LEFT = (560, 470, 1000)  # view on the group photo's three left faces (~73 px)
GROUP_FACES_RIGHT = (1330, 470, 1000)  # the three right faces

CLIPS: dict[str, ClipSpec] = {}


def clip(spec: ClipSpec) -> ClipSpec:
    CLIPS[spec.name] = spec
    return spec


clip(ClipSpec(
    "group_pan_zoom",
    "The group photo: pan from the three left faces to the three right ones (faces leave and enter at the "
    "edges), zoom out until the faces are ~42 px, then into the selfie face (~300 px).",
    (Scene(240, "group", walk((0, 500, 470, 900), (20, 500, 470, 900), (80, 1330, 470, 900),
                              (100, 1330, 470, 900), (150, 1024, 760, 1500), (170, 1024, 760, 1500),
                              (215, 1060, 1128, 1245))),),
))

clip(ClipSpec(
    "cuts",
    "Hard cuts every 30-40 frames between different photos and views, including cuts that put a new face "
    "where the last scene had one, and a cut back to an earlier view.",
    (
        Scene(35, "woman2_still", still(0, 298, 168, 596)),
        Scene(35, "group", walk((0, *GROUP_FACES_LEFT), (34, 600, 480, 1000))),
        Scene(30, "no_faces", still(0, 100, 74, 199),
              sprites=(Sprite("justin", 0, still(0, 380, 170, 150)), Sprite("group", 1, still(0, 150, 130, 80)))),
        Scene(35, "test_still", still(0, 298, 168, 596)),
        Scene(35, "group", walk((0, *GROUP_FACES_RIGHT), (34, 1300, 470, 1000))),
        Scene(35, "woman2_still", still(0, 293, 160, 400)),
        Scene(35, "group", still(0, *GROUP_FACES_LEFT)),
    ),
))

clip(ClipSpec(
    "enter_leave_occlude",
    "A static cartoon background (no faces); faces walk in from the sides, cross, one moves away (shrinks), "
    "one pops up mid-frame, a bar passes in front of a face, and they leave.",
    (Scene(240, "no_faces", still(0, 100, 74, 199), sprites=(
        Sprite("justin", 0, walk((0, -80, 150, 120), (70, 200, 150, 120), (150, 420, 160, 120), (200, 740, 160, 120))),
        Sprite("group", 1, walk((20, 720, 120, 70), (90, 470, 110, 70), (180, 150, 110, 70), (230, -60, 110, 70)),
               start=20),
        Sprite("woman2_still", 0, walk((60, 520, 240, 180), (140, 520, 230, 60)), start=60, stop=200),
        Sprite("group", 3, still(0, 120, 260, 90), start=110, stop=210),
    ), bars=(Bar(60, 360, walk((40, -40, 180, 0), (100, 420, 180, 0), (130, 720, 180, 0))),),
    ),),
))

clip(ClipSpec(
    "dark_noise_blur",
    "Dim light (35 % brightness) with sensor noise, a fast pan with motion blur, then a cut to a noisier, "
    "darker scene.",
    (
        Scene(110, "group", walk((0, *GROUP_FACES_LEFT), (30, *GROUP_FACES_LEFT), (60, 1330, 470, 1000),
                                 (110, 1300, 480, 1000)),
              look=Look(brightness=0.35, noise_sigma=5.0, blur_per_pixel_moved=0.5)),
        Scene(90, "woman2_still", walk((0, 298, 168, 596), (89, 293, 160, 460)),
              look=Look(brightness=0.25, noise_sigma=8.0)),
    ),
))

clip(ClipSpec(
    "jpeg_quality",
    "The same kinds of scenes compressed harder and harder: JPEG quality 60, 30, 15 and 8.",
    tuple(
        Scene(50, photo, view, sprites=sprites, look=Look(jpeg_quality=quality))
        for quality, photo, view, sprites in (
            (60, "woman2_still", still(0, 298, 168, 596), (Sprite("justin", 0, still(0, 520, 90, 60)),)),
            (30, "group", walk((0, *GROUP_FACES_LEFT), (49, 640, 470, 1000)), ()),
            (15, "test_still", still(0, 298, 168, 596), ()),
            (8, "group", walk((0, *GROUP_FACES_RIGHT), (49, 1250, 470, 1000)), ()),
        )
    ),
))


# -- writing clips to look at --------------------------------------------------------------------


def write_preview(clip: Clip, folder: Path, plain: bool = False) -> None:
    """An .mp4 with truth boxes drawn (green findable, grey not; ``plain``: no boxes, e.g. for
    bench/bench_edge.py) and the truth as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(folder / f"{clip.name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for frame, faces in zip(clip.frames, clip.truth):
        shown = frame.copy()
        for face in [] if plain else faces:
            x, y, w, h = face.box
            cv2.rectangle(shown, (x, y), (x + w, y + h), (0, 220, 0) if face.findable else (160, 160, 160), 1)
        writer.write(shown)
    writer.release()
    truth = {"cuts": clip.cuts, "frames": [[face.as_json() for face in faces] for faces in clip.truth]}
    (folder / f"{clip.name}.json").write_text(json.dumps(truth))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the previews (not committed: var/)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--clip", action="append", choices=sorted(CLIPS), help="only these clips")
    parser.add_argument("--plain", action="store_true", help="no truth boxes drawn on the frames")
    arguments = parser.parse_args(argv)
    photos = load_photos()
    write_previews([CLIPS[name] for name in arguments.clip or CLIPS], arguments.seed, photos, arguments.out, arguments.plain)
    return 0


def write_previews(specs: list[ClipSpec], seed: int, photos: dict[str, Photo], folder: Path, plain: bool) -> None:
    """Render each clip, write its preview and truth, and print one line about it."""
    for spec in specs:
        built = build_clip(spec, seed, photos)
        write_preview(built, folder, plain)
        findable = sum(face.findable for faces in built.truth for face in faces)
        print(f"{spec.name}: {len(built.frames)} frames, {findable} findable faces, cuts {built.cuts}, "
              f"{built.digest()[:16]}; {spec.about}")


if __name__ == "__main__":
    sys.exit(main())
