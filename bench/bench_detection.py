"""Face detection against ground truth: the edge's detector and tracker schedule beside three baselines.

    python bench/bench_detection.py [--json docs/bench-detection.json] [--clip NAME ...]
    python bench/bench_detection.py --drawn 6 --no-named --seed 4711   # clips nobody tuned for

The clips are the face set of ``bench/facesets``: synthetic clips with exact
truth (pans, zooms, scene cuts, faces entering and leaving, occlusion, dim
light, noise, blur, JPEG), rendered in memory from ../shared/media's photos,
and the real clips of ../shared/media annotated with a reference detector
and verdicts (``real_clips.json``). The five named synthetic clips and the two
real ones were looked at while the schedule was chosen; ``--drawn N`` adds N
clips whose layouts, motion and looks are drawn from ``--seed``
(:mod:`bench.facesets.drawn`), so a new seed is footage nobody tuned for. On every clip, one core (the process pins
itself to it), each side is scored frame by frame:

* ``edge haar`` / ``edge blazeface``: ``PerceptionPipeline.detect_and_track``,
  the real detection schedule (whole-frame and local searches, scene cuts,
  tracking), with the default settings and ``detection.backend`` set;
* ``exhaustive``: the same cascade at full resolution, 5 % steps, 24 px up;
* ``fer``: the ``fer`` package's own Haar call (its parameters, without TensorFlow);
* ``reference``: BlazeFace on the frame and tiles (what annotated the real clips).

Reported per clip and side: recall of the findable truth faces, recall of the
*Haar-findable* ones (the truth faces the exhaustive search finds in that
frame: what the recall target is judged on, when ``exhaustive`` runs) and
precision (IoU >= 0.5), frames until a face that appears is first reported (p50, p95,
max; and faces never found), the worst scene cut (frames until every face of
the new scene is reported), frames/s of CPU time (the process's own time on
its core, which other processes on a shared machine do not inflate the way
they do wall time), and the ratio to fer's frames/s in the same run.
Exhaustive and reference results are cached in var/facesets/cache by clip
digest (they are slow and never change); ``--no-cache`` recomputes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))  # run as a script from anywhere, without installing the package

from bench.facesets.metrics import Truth, score_clip, score_frame  # noqa: E402
from bench.facesets.photos import MEDIA  # noqa: E402
from bench.overrides import add_set_option, detection_overrides  # noqa: E402

CACHE = REPOSITORY / "var" / "facesets" / "cache"
CACHED_SIDES = ("exhaustive", "reference")
CACHE_VERSIONS = {"exhaustive": 2, "reference": 1}  # bump when a cached detector changes
TARGETS = {"recall": 0.97, "precision": 0.97, "latency_p95": 3, "cut_cost_max": 2, "ratio_to_fer_end_to_end": 6.0}
EDGE_SIDES = ("edge haar", "edge blazeface")
SIDES = EDGE_SIDES + ("exhaustive", "fer", "reference")


# -- clips --------------------------------------------------------------------------------------


class EvaluationClip:
    """Frames, truth and cut frames of one clip of the face set."""

    def __init__(self, name: str, kind: str, frames: list[np.ndarray], truth: list[list[dict]], cuts: list[int],
                 digest: str) -> None:
        self.name, self.kind, self.frames, self.cuts, self.digest = name, kind, frames, cuts, digest
        self.truth = [[Truth(face["id"], tuple(face["box"]), face["findable"]) for face in faces] for faces in truth]
        self.not_findable = sum(not face.findable for faces in self.truth for face in faces)


def synthetic_clips(names: Iterable[str], seed: int, drawn: int = 0) -> Iterable[EvaluationClip]:
    """The named synthetic clips, then ``drawn`` clips whose layouts are drawn from ``seed``."""
    from bench.facesets.drawn import drawn_specs
    from bench.facesets.photos import load_photos
    from bench.facesets.synthetic import CLIPS, build_clip

    photos = load_photos()
    specs = [(CLIPS[name], "synthetic") for name in names]
    specs += [(spec, "drawn") for spec in (drawn_specs(seed, drawn, photos) if drawn else [])]
    for spec, kind in specs:
        clip = build_clip(spec, seed, photos)
        truth = [[face.as_json() for face in faces] for faces in clip.truth]
        yield EvaluationClip(spec.name, kind, clip.frames, truth, clip.cuts, clip.digest())


def real_clips(names: Iterable[str]) -> Iterable[EvaluationClip]:
    import hashlib

    from bench.facesets.annotate_real import REAL_CLIPS_FILE, read_frames

    annotations = json.loads(REAL_CLIPS_FILE.read_text())["clips"]
    for name in names:
        frames = read_frames(MEDIA / name)
        truth = annotations[name]["truth"]
        if len(frames) != len(truth):
            raise SystemExit(f"{name}: {len(frames)} frames but {len(truth)} annotated")
        digest = hashlib.sha256(b"".join(frame.tobytes() for frame in frames)).hexdigest()
        yield EvaluationClip(name, "real", frames, truth, [], digest)


# -- sides --------------------------------------------------------------------------------------


def uniform_predict(batch: np.ndarray) -> np.ndarray:
    return np.full((len(batch), 7), 1.0 / 7, dtype=np.float32)


# Detection settings for the edge sides (--set KEY=VALUE): to try a schedule on the face set.
EDGE_OVERRIDES: dict[str, str] = {}


def edge_side(backend: str) -> Callable[[], Callable[[np.ndarray], list]]:
    """A fresh pipeline per clip (its schedule starts over), detection and tracking only."""

    def make() -> Callable[[np.ndarray], list]:
        from edge.perception.pipeline import PerceptionPipeline
        from edge.perception.settings import DetectionSettings

        settings = DetectionSettings.model_validate({**EDGE_OVERRIDES, "backend": backend})
        pipeline = PerceptionPipeline(settings, None, None, uniform_predict)
        return lambda frame: pipeline.detect_and_track(frame)[1]

    return make


def baseline_side(name: str) -> Callable[[], Callable[[np.ndarray], list]]:
    def make() -> Callable[[np.ndarray], list]:
        from bench.facesets import reference

        detector = {"exhaustive": reference.ExhaustiveHaar, "fer": reference.FerHaar,
                    "reference": reference.ReferenceDetector}[name]()
        return detector.detect

    return make


SIDE_FACTORIES = {"edge haar": edge_side("haar"), "edge blazeface": edge_side("blazeface"),
                  "exhaustive": baseline_side("exhaustive"), "fer": baseline_side("fer"),
                  "reference": baseline_side("reference")}


def run_side(make: Callable[[], Callable[[np.ndarray], list]], frames: list[np.ndarray]) -> dict:
    """Every frame's boxes and the CPU time the side took for them (warm-up on the first frame excluded)."""
    detect = make()
    make()(frames[0])  # warm-up on a throwaway instance: first calls build caches and kernels
    boxes, cpu_ns = [], 0
    for frame in frames:
        started = time.thread_time_ns()
        found = detect(frame)
        cpu_ns += time.thread_time_ns() - started
        boxes.append([list(map(int, box)) for box in found])
    return {"boxes": boxes, "cpu_s": cpu_ns / 1e9}


def cached_run(side: str, clip: EvaluationClip, use_cache: bool) -> dict:
    path = CACHE / f"{clip.name}-{side}-v{CACHE_VERSIONS[side]}-{clip.digest[:16]}.json"
    if use_cache and path.is_file():
        return json.loads(path.read_text()) | {"cached": True}
    result = run_side(SIDE_FACTORIES[side], clip.frames)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


# -- one clip -----------------------------------------------------------------------------------


def evaluate_clip(clip: EvaluationClip, sides: list[str], use_cache: bool) -> dict:
    results, boxes = {}, {}
    for side in sides:
        run = cached_run(side, clip, use_cache) if side in CACHED_SIDES else run_side(SIDE_FACTORIES[side], clip.frames)
        boxes[side] = [[tuple(box) for box in frame] for frame in run["boxes"]]
        summary = score_clip(clip.truth, boxes[side], clip.cuts).summary()
        summary["fps"] = len(clip.frames) / run["cpu_s"] if run["cpu_s"] > 0 else math.inf
        summary["cached"] = bool(run.get("cached"))
        results[side] = summary
    if "exhaustive" in boxes:
        haar_truth = haar_findable_truth(clip.truth, boxes["exhaustive"])
        for side in boxes:
            results[side]["recall_haar_findable"] = score_clip(haar_truth, boxes[side], clip.cuts).recall
    if "fer" in results:
        for summary in results.values():
            summary["ratio_to_fer"] = summary["fps"] / results["fer"]["fps"]
    return {"kind": clip.kind, "frames": len(clip.frames), "cuts": clip.cuts, "not_findable_faces": clip.not_findable,
            "sides": results}


def haar_findable_truth(truth: list[list[Truth]], exhaustive: list[list[tuple]]) -> list[list[Truth]]:
    """The truth with only the faces the exhaustive Haar search found in each frame left findable (the
    others are ignored either way, as turned or covered faces are): the issue's "Haar-findable" faces."""
    kept = []
    for faces, found in zip(truth, exhaustive):
        found_ids = score_frame(faces, found).found_ids
        kept.append([face if face.face_id in found_ids or not face.findable else Truth(face.face_id, face.box, False)
                     for face in faces])
    return kept


def judged_recall(summary: dict) -> float:
    """Recall of the Haar-findable faces where the exhaustive side ran, else of every findable face."""
    haar = summary.get("recall_haar_findable")
    return summary["recall"] if haar is None or math.isnan(haar) else haar


def misses(summary: dict, edge: bool) -> list[str]:
    """Which targets a side misses on a clip. The 6x fps target is end to end (bench/bench_edge.py: fer's
    figure includes its emotion model); here only detection is timed, so the ratio is shown, not judged."""
    failed = []
    if judged_recall(summary) < TARGETS["recall"]:
        failed.append("recall")
    if summary["precision"] < TARGETS["precision"]:
        failed.append("precision")
    if summary["latency_p95"] > TARGETS["latency_p95"]:
        failed.append("latency")
    if summary["cut_cost_max"] > TARGETS["cut_cost_max"]:
        failed.append("cut")
    return failed


# -- report -------------------------------------------------------------------------------------

HEADER = ("clip", "side", "recall", "recall Haar-findable", "precision", "FP", "new face p50/p95/max", "never", "worst cut", "CPU fps",
          "x fer (detection)")


def table_rows(report: dict) -> list[tuple[str, ...]]:
    rows = []
    for name, clip in report["clips"].items():
        for side, summary in clip["sides"].items():
            failed = misses(summary, side in EDGE_SIDES) if side in EDGE_SIDES else []
            latency = "/".join(_number(summary[key]) for key in ("latency_p50", "latency_p95", "latency_max"))
            rows.append((
                name, side, f"{summary['recall']:.3f}", _fraction(summary.get("recall_haar_findable")),
                f"{summary['precision']:.3f}", str(summary["false_positives"]),
                latency, str(summary["never_found"]), str(summary["cut_cost_max"]) if clip["cuts"] else "-",
                f"{summary['fps']:.1f}", f"{summary.get('ratio_to_fer', math.nan):.2f}" + (" !" + ",".join(failed) if failed else ""),
            ))
    return rows


def _fraction(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _number(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:g}"


def print_table(report: dict, file=sys.stdout) -> None:
    rows = [HEADER] + table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    for number, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)), file=file)
        if number == 0:
            print("  ".join("-" * width for width in widths), file=file)


def markdown_table(report: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return "\n".join(lines)


def pin_to_one_core(core: int | None) -> int:
    """Run on one core, as the edge does on a busy device."""
    chosen = core if core is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {chosen})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    return chosen


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    from bench.facesets.annotate_real import REAL_CLIPS
    from bench.facesets.synthetic import CLIPS, DEFAULT_SEED

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here (docs/bench-detection.json)")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    parser.add_argument("--clip", action="append", choices=sorted(CLIPS) + list(REAL_CLIPS), help="only these clips")
    parser.add_argument("--side", action="append", choices=SIDES, help="only these sides (fer is always run)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="seed of the drawn clips' layouts, photos, motion and looks, and of every synthetic clip's "
                        "sensor noise (the named clips' layouts are fixed)")
    parser.add_argument("--drawn", type=int, default=0, metavar="N", help="add N clips drawn from --seed (bench/facesets/drawn.py)")
    parser.add_argument("--no-named", action="store_true", help="skip the named synthetic and the real clips (with --drawn)")
    add_set_option(parser)
    parser.add_argument("--core", type=int, help="CPU core to run on (default: the first allowed)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the exhaustive and reference sides")
    parser.add_argument("--skip-fer", action="store_true", help="do not run fer (no ratio; to fill the cache)")
    parser.add_argument("--report", type=Path, help="only print (and --markdown) the table of an earlier --json")
    arguments = parser.parse_args(argv)
    EDGE_OVERRIDES.update(detection_overrides(parser, arguments.set))
    if "backend" in EDGE_OVERRIDES:
        parser.error("--set backend: each edge side has its own backend; choose them with --side")
    if arguments.drawn < 0 or (arguments.no_named and not arguments.drawn):
        parser.error("--drawn takes a positive count; --no-named needs --drawn")
    named = not arguments.no_named
    arguments.synthetic = [name for name in CLIPS if named and (not arguments.clip or name in arguments.clip)]
    arguments.real = [name for name in REAL_CLIPS if named and (not arguments.clip or name in arguments.clip)]
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.report:
        report = json.loads(arguments.report.read_text())
        print_table(report)
        if arguments.markdown:
            arguments.markdown.write_text(markdown_table(report) + "\n")
        return 0
    core = pin_to_one_core(arguments.core)
    sides = [side for side in SIDES if not arguments.side or side in arguments.side or side == "fer"]
    if arguments.skip_fer:
        sides.remove("fer")
    report = {
        "about": "bench/bench_detection.py: recall/precision (IoU >= 0.5) against the face set's truth, frames until "
        "a new face is reported, worst scene cut, CPU frames/s on one core, ratio to fer's settings in the same run.",
        "targets": TARGETS,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "core": core, "load_average_at_start": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d"),
        "seed": arguments.seed,
        "drawn_clips": arguments.drawn,
        "edge_settings": dict(EDGE_OVERRIDES),
        "clips": {},
    }
    started = time.perf_counter()
    for clip in _all_clips(arguments):
        report["clips"][clip.name] = evaluate_clip(clip, sides, not arguments.no_cache)
        print(f"[{time.perf_counter() - started:6.0f} s] {clip.name}", file=sys.stderr)
        print_table({"clips": {clip.name: report["clips"][clip.name]}}, file=sys.stderr)
    print_table(report)
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=1) + "\n")
    if arguments.markdown:
        arguments.markdown.write_text(markdown_table(report) + "\n")
    return 0


def _all_clips(arguments: argparse.Namespace) -> Iterable[EvaluationClip]:
    """One clip at a time (a clip's frames are ~170 MB)."""
    yield from synthetic_clips(arguments.synthetic, arguments.seed, arguments.drawn)
    yield from real_clips(arguments.real)


if __name__ == "__main__":
    sys.exit(main())
