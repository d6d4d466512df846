"""Clips whose layout, photos, motion and look are all drawn from a seed: footage nobody tuned for.

The five named clips of :mod:`bench.facesets.synthetic` are fixed: their
layouts were written by hand and every detection choice was measured on them,
so they are no longer a fair test. ``drawn_specs(seed, count)`` writes new
clip specifications from a seed, with the same kinds of events in random
places, sizes, orders and looks:

* 1-4 scenes joined by hard cuts, 30-90 frames each;
* a *camera* scene: a face photo seen through a view that pans and zooms
  between 2-4 keyframes (faces about 40-300 px), sometimes holding still;
* a *stage* scene: faces cut from the photos (40-250 px) walk in from an
  edge, cross, pop up or shrink away over a background, sometimes over
  one another;
* sometimes a bar passing in front; a look that is clean, dim and noisy
  (with motion blur) or hard JPEG.

The truth comes out of the same renderer as the named clips
(:func:`bench.facesets.synthetic.build_clip`), so it is exact by construction.
Names are ``drawn<seed>_<index>``; the same seed gives the same clips.

    python -m bench.facesets.drawn --seed 4711 --count 4 --out var/drawn   # previews with truth boxes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.facesets.photos import Photo, load_photos  # noqa: E402
from bench.facesets.synthetic import HEIGHT, WIDTH, Bar, ClipSpec, Key, Look, Scene, Sprite  # noqa: E402

FACE_PHOTOS = ("group", "justin", "woman2_still", "test_still")
STAGE_BACKGROUNDS = ("no_faces", "group", "woman2_still")
FACE_SIDE = (40.0, 300.0)  # output pixels of a camera scene's faces
SPRITE_SIDE = (40.0, 250.0)
MIN_VIEW_WIDTH = 160.0  # photo pixels: at most 4x enlargement, as a real camera's optics would give
SCENE_FRAMES = (30, 90)


def drawn_specs(seed: int, count: int = 4, photos: dict[str, Photo] | None = None) -> list[ClipSpec]:
    """``count`` clip specifications drawn from ``seed`` (deterministic)."""
    photos = photos if photos is not None else load_photos()
    return [_drawn_clip(np.random.default_rng([seed, index]), f"drawn{seed}_{index}", photos) for index in range(count)]


def _drawn_clip(rng: np.random.Generator, name: str, photos: dict[str, Photo]) -> ClipSpec:
    scene_count = int(rng.integers(1, 5))
    scenes = tuple(_drawn_scene(rng, photos) for _ in range(scene_count))
    kinds = ", ".join(f"{scene.photo} {len(scene.sprites)} sprite(s)" for scene in scenes)
    return ClipSpec(name, f"drawn: {scene_count} scene(s): {kinds}", scenes)


def _drawn_scene(rng: np.random.Generator, photos: dict[str, Photo]) -> Scene:
    frames = int(rng.integers(SCENE_FRAMES[0], SCENE_FRAMES[1] + 1))
    look = _drawn_look(rng)
    bars = (_drawn_bar(rng, frames),) if rng.random() < 0.3 else ()
    if rng.random() < 0.55:
        photo = str(rng.choice(FACE_PHOTOS))
        view = _camera_path(rng, photos[photo], frames)
        sprites = tuple(_drawn_sprite(rng, photos, frames) for _ in range(int(rng.integers(0, 2))))
    else:
        photo = str(rng.choice(STAGE_BACKGROUNDS))
        view = _background_view(rng, photos[photo])
        sprites = tuple(_drawn_sprite(rng, photos, frames) for _ in range(int(rng.integers(1, 5))))
    return Scene(frames, photo, view, sprites=sprites, bars=bars, look=look)


def _max_view_width(photo: Photo) -> float:
    height, width = photo.image.shape[:2]
    return float(min(width, height * WIDTH / HEIGHT))


def _camera_path(rng: np.random.Generator, photo: Photo, frames: int) -> tuple[Key, ...]:
    """2-4 keyframes, each centred near one of the photo's faces at a drawn face size; sometimes held."""
    key_count = int(rng.integers(2, 5))
    times = sorted({0, frames - 1, *map(int, rng.integers(0, frames, key_count - 2))})
    keys = []
    for t in times:
        face = photo.faces[int(rng.integers(len(photo.faces)))].box
        side = float(np.exp(rng.uniform(*np.log(FACE_SIDE))))
        view_width = float(np.clip(face[2] * WIDTH / side, MIN_VIEW_WIDTH, _max_view_width(photo)))
        view_height = view_width * HEIGHT / WIDTH
        # The face anywhere in the middle 70 % of the view.
        x = face[0] + face[2] / 2 + rng.uniform(-0.35, 0.35) * view_width
        y = face[1] + face[3] / 2 + rng.uniform(-0.35, 0.35) * view_height
        keys.append(Key(t, x, y, view_width))
    if rng.random() < 0.3:  # a still camera: the first keyframe held for the whole scene
        keys = keys[:1]
    return tuple(keys)


def _background_view(rng: np.random.Generator, photo: Photo) -> tuple[Key, ...]:
    """A still view of a stage background, somewhere on the photo."""
    height, width = photo.image.shape[:2]
    view_width = float(rng.uniform(0.5, 1.0) * _max_view_width(photo))
    return (Key(0, float(rng.uniform(0, width)), float(rng.uniform(0, height)), view_width),)


def _drawn_sprite(rng: np.random.Generator, photos: dict[str, Photo], frames: int) -> Sprite:
    """A frontal face walking in from an edge, across, popping up, or moving away (shrinking)."""
    photo, face = _random_face(rng, photos)
    side = float(np.exp(rng.uniform(*np.log(SPRITE_SIDE))))
    start = int(rng.integers(0, max(frames // 2, 1))) if rng.random() < 0.5 else 0
    stop = int(rng.integers(start + 10, frames + 1)) if rng.random() < 0.3 and start + 10 < frames else None
    motion = str(rng.choice(["enter", "cross", "leave", "pop", "away"]))
    inside = (float(rng.uniform(side, WIDTH - side)), float(rng.uniform(side / 2, HEIGHT - side / 2)))
    last = frames - 1 if stop is None else stop - 1
    arrive = int(rng.integers(start + 1, last + 1)) if last > start else start
    near, far = (-side, WIDTH + side) if rng.random() < 0.5 else (WIDTH + side, -side)
    drift = inside[1] + float(rng.uniform(-40, 40))
    paths = {
        "pop": ((start, *inside),),
        "away": ((start, *inside), (last, inside[0] + float(rng.uniform(-60, 60)), drift)),
        "enter": ((start, near, inside[1]), (arrive, *inside)),
        "cross": ((start, near, inside[1]), (arrive, far, drift)),
        "leave": ((start, *inside), (arrive, far, drift)),
    }
    sides = {"away": (side, max(side * 0.4, 30.0))}.get(motion, (side, side))
    keys = tuple(Key(t, x, y, sides[min(number, 1)]) for number, (t, x, y) in enumerate(paths[motion]))
    return Sprite(photo, face, keys, start=start, stop=stop)


def _random_face(rng: np.random.Generator, photos: dict[str, Photo]) -> tuple[str, int]:
    choices = [(name, index) for name in FACE_PHOTOS for index, face in enumerate(photos[name].faces) if face.frontal]
    return choices[int(rng.integers(len(choices)))]


def _drawn_bar(rng: np.random.Generator, frames: int) -> Bar:
    width = int(rng.integers(30, 90))
    y = float(rng.uniform(0, HEIGHT))
    start = int(rng.integers(0, max(frames - 20, 1)))
    return Bar(width, HEIGHT, (Key(start, -width, y, 0), Key(start + int(rng.integers(20, 60)), WIDTH + width, y, 0)))


def _drawn_look(rng: np.random.Generator) -> Look:
    """Clean (half the scenes), dim and noisy with motion blur, or hard JPEG."""
    kind = rng.random()
    if kind < 0.5:
        return Look(noise_sigma=float(rng.uniform(0, 3)), jpeg_quality=int(rng.integers(60, 91)))
    if kind < 0.75:
        return Look(brightness=float(rng.uniform(0.25, 0.5)), noise_sigma=float(rng.uniform(3, 8)),
                    blur_per_pixel_moved=float(rng.uniform(0, 0.6)), jpeg_quality=int(rng.integers(60, 91)))
    return Look(noise_sigma=float(rng.uniform(0, 3)), jpeg_quality=int(rng.integers(8, 41)))


def main(argv: list[str] | None = None) -> int:
    from bench.facesets.synthetic import write_previews

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True, help="folder for the previews (not committed: var/)")
    parser.add_argument("--plain", action="store_true", help="no truth boxes drawn on the frames")
    arguments = parser.parse_args(argv)
    photos = load_photos()
    write_previews(drawn_specs(arguments.seed, arguments.count, photos), arguments.seed, photos, arguments.out, arguments.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
