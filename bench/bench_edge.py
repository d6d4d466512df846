"""Edge perception benchmark: our pipeline against the ``fer`` package on the same video.

Run pinned to one core, as on a busy Jetson::

    taskset -c 0 python bench/bench_edge.py --video ../shared/media/woman2.mp4 [--json bench.json]

Each side runs in its own subprocess, so the peak RSS of ours is measured in
a process that never imports TensorFlow (``fer`` needs it):

* ours: the real edge agent (``edge.assembly.build_edge``) on the video,
  publishing over TLS to this repo's Mosquitto (started by the benchmark on
  a free port with a PKI made for the run): decode -> detect -> classify ->
  draw -> encode (JPEG + base64 of every annotated frame, PNG crops) ->
  publish (result into the on-disk outbox, QoS 1 via the forwarder; frame
  QoS 0). ``--no-broker`` times the perception pipeline alone instead;
* fer:  decode -> ``fer.fer.FER(mtcnn=False).detect_emotions(frame)``.

Reported: mean ms per stage, frames/s, the ratio ours/fer (end to end, both
from decode to results, ours also drawing and encoding; and on the analysis
alone), our face recall against fer's boxes (IoU >= 0.5), label agreement on
matched faces, and each side's peak RSS. ``fer`` is a benchmark-only
dependency: ``pip install --no-deps fer==25.10.3`` (everything it imports is
already in the dev environment).

Stage times come from the agent's own per-stage clock (what its stats
message reports); frames/s is measured on the wall clock around the frame
loop, so everything the agent does per frame counts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))  # run as a script from anywhere, without installing the package

from bench.overrides import add_set_option, detection_overrides  # noqa: E402

OUR_STAGES = ("decode", "detect", "classify", "draw", "encode", "publish")
RECALL_IOU = 0.5
TARGET_RATIO = 6.0
TARGET_RECALL = 0.95
TARGET_OUR_RSS_MB = 150.0


# -- shared helpers (both workers; numpy/OpenCV only) -----------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def decoded_frames(video: str, max_frames: int | None) -> Iterator[tuple[Any, float]]:
    """Frames of the video with the milliseconds each took to decode."""
    import cv2

    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise SystemExit(f"cannot open video {video}")
    count = 0
    try:
        while max_frames is None or count < max_frames:
            started = time.perf_counter()
            ok, frame = capture.read()
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            if not ok:
                return
            count += 1
            yield frame, elapsed_ms
    finally:
        capture.release()


def first_frame(video: str) -> Any:
    for frame, _ in decoded_frames(video, 1):
        return frame
    raise SystemExit(f"video {video} has no frames")


# -- our side -------------------------------------------------------------------------------


def run_ours(arguments: argparse.Namespace) -> dict:
    """Time our pipeline stage by stage; never imports TensorFlow."""
    from edge.perception import PerceptionPipeline, encode_jpeg, encode_png
    from edge.model import load_model, load_tflite

    model = (load_tflite("custom", "custom", Path(arguments.model), arguments.threads) if arguments.model
             else load_model(None, None, arguments.threads))
    # Warm-up on a throwaway pipeline: LiteRT's first invoke builds its kernels.
    PerceptionPipeline(None, None, None, model).process(first_frame(arguments.video))
    pipeline = PerceptionPipeline(detection_settings(arguments), None, None, model)

    totals = dict.fromkeys(OUR_STAGES, 0.0)
    boxes: list[list[list[int]]] = []
    labels: list[list[str]] = []
    frames = full_detections = 0
    for frame_number, (frame, decode_ms) in enumerate(decoded_frames(arguments.video, arguments.max_frames)):
        analysis = pipeline.process(frame)
        started = time.perf_counter()
        # Encoded only to be timed: without a broker nothing is sent.
        base64.b64encode(encode_jpeg(analysis.annotated, arguments.jpeg_quality, arguments.jpeg_max_width))
        [base64.b64encode(encode_png(face.crop64)) for face in analysis.faces]
        encoded = published = time.perf_counter()
        stage_ms = dict(analysis.timings_ms, decode=decode_ms)
        stage_ms["encode"] = (encoded - started) * 1000.0
        stage_ms["publish"] = (published - encoded) * 1000.0
        for stage in OUR_STAGES:
            totals[stage] += stage_ms[stage]
        boxes.append([list(face.box) for face in analysis.faces])
        labels.append([face.label for face in analysis.faces])
        full_detections += pipeline.detector.last_search_was_full
        frames += 1
    heavy_modules = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
    if heavy_modules:
        raise SystemExit(f"our pipeline imported {heavy_modules}: its RSS figure would be meaningless")
    return {
        "side": "ours",
        "frames": frames,
        "stage_ms": {stage: totals[stage] / max(frames, 1) for stage in OUR_STAGES},
        "full_detections": full_detections,
        "published_over_tls": False,
        "peak_rss_mb": peak_rss_mb(),
        "boxes": boxes,
        "labels": labels,
    }


BENCH_DEVICE = "bench-cam"


def run_agent(arguments: argparse.Namespace) -> dict:
    """The real edge agent on the video, publishing to the benchmark's Mosquitto; never imports TensorFlow."""
    from edge.assembly import build_edge
    from edge.config import EdgeConfig
    from edge.perception import PerceptionPipeline

    with tempfile.TemporaryDirectory() as state:
        publish = {"heartbeat_s": 0.0, "stats_interval_s": 1e6, "jpeg_quality": arguments.jpeg_quality}
        if arguments.frame_fps is not None:
            publish["frame_fps"] = arguments.frame_fps
        if arguments.jpeg_max_width:
            publish["frame_max_width"] = arguments.jpeg_max_width
        config = EdgeConfig(
            device_id=BENCH_DEVICE, pki_dir=Path(arguments.pki_dir), data_dir=Path(state),
            mqtt={"host": "localhost", "port": arguments.broker_port, "reconnect_min_delay_s": 0.1},
            source={"spec": str(arguments.video)}, model={"num_threads": arguments.threads}, publish=publish,
            detection=detection_settings(arguments),
        )
        agent = build_edge(config)
        agent.start()
        if not agent.transport.wait_connected(10):
            raise SystemExit(f"agent cannot reach the benchmark broker: {agent.transport.last_error}")
        # Warm-up on a throwaway pipeline: LiteRT's first invoke builds its kernels.
        PerceptionPipeline(None, None, None, agent.model).process(first_frame(arguments.video))
        boxes, labels = record_detections(agent)
        started = time.perf_counter()
        agent.process_frames()
        elapsed = time.perf_counter() - started
        drained = agent.forwarder.drain(60)
        stage_ms = agent.loop.clock.means().model_dump()
        processed, published = agent.loop.counters.processed, agent.forwarder.published
        agent.stop()
    heavy_modules = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
    if heavy_modules:
        raise SystemExit(f"the agent imported {heavy_modules}: its RSS figure would be meaningless")
    return {
        "side": "ours", "frames": processed, "stage_ms": stage_ms, "wall_fps": processed / elapsed,
        "results_acknowledged": published, "outbox_drained": drained, "published_over_tls": True,
        "full_detections": None, "peak_rss_mb": peak_rss_mb(), "boxes": boxes, "labels": labels,
    }


def record_detections(agent) -> tuple[list, list]:
    """Keep each frame's boxes and labels for the recall comparison (a list append per frame)."""
    boxes: list[list[list[int]]] = []
    labels: list[list[str]] = []
    process = agent.pipeline.process

    def recording(frame):
        analysis = process(frame)
        boxes.append([list(face.box) for face in analysis.faces])
        labels.append([face.label for face in analysis.faces])
        return analysis

    agent.pipeline.process = recording
    return boxes, labels


# -- fer's side -----------------------------------------------------------------------------


def run_fer(arguments: argparse.Namespace) -> dict:
    """Time fer's detect_emotions on the same frames (imports TensorFlow)."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from fer.fer import FER

    logging.getLogger("fer").setLevel(logging.WARNING)
    detector = FER(mtcnn=False)
    detector.detect_emotions(first_frame(arguments.video))  # warm-up, as for ours

    totals = {"decode": 0.0, "detect_emotions": 0.0}
    boxes: list[list[list[int]]] = []
    labels: list[list[str]] = []
    frames = 0
    for frame, decode_ms in decoded_frames(arguments.video, arguments.max_frames):
        started = time.perf_counter()
        faces = detector.detect_emotions(frame)
        totals["detect_emotions"] += (time.perf_counter() - started) * 1000.0
        totals["decode"] += decode_ms
        boxes.append([[int(value) for value in face["box"]] for face in faces])
        labels.append([max(face["emotions"], key=face["emotions"].get) for face in faces])
        frames += 1
    return {
        "side": "fer",
        "frames": frames,
        "stage_ms": {stage: total / max(frames, 1) for stage, total in totals.items()},
        "peak_rss_mb": peak_rss_mb(),
        "boxes": boxes,
        "labels": labels,
    }


# -- comparison -----------------------------------------------------------------------------


def intersection_over_union(first: list[int], second: list[int]) -> float:
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    intersection = max(width, 0) * max(height, 0)
    union = first[2] * first[3] + second[2] * second[3] - intersection
    return intersection / union if union > 0 else 0.0


def match_faces(reference: list[list[int]], found: list[list[int]]) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (reference index, found index) with IoU >= RECALL_IOU, best first."""
    pairs = sorted(
        ((intersection_over_union(ref, box), r, f) for r, ref in enumerate(reference) for f, box in enumerate(found)),
        reverse=True,
    )
    used_reference: set[int] = set()
    used_found: set[int] = set()
    matches = []
    for iou, r, f in pairs:
        if iou < RECALL_IOU:
            break
        if r not in used_reference and f not in used_found:
            used_reference.add(r)
            used_found.add(f)
            matches.append((r, f))
    return matches


def compare(ours: dict, fer: dict) -> dict:
    """Recall of our boxes against fer's, label agreement on matched faces, and the fps ratios."""
    matched = reference_total = agreeing = largest_matched = frames_with_faces = 0
    for fer_boxes, our_boxes, fer_labels, our_labels in zip(fer["boxes"], ours["boxes"], fer["labels"], ours["labels"]):
        pairs = match_faces(fer_boxes, our_boxes)
        matched += len(pairs)
        reference_total += len(fer_boxes)
        agreeing += sum(fer_labels[r] == our_labels[f] for r, f in pairs)
        if fer_boxes:
            # fer's smaller extra boxes are mostly Haar false positives (lights, a mouth inside a face).
            largest = max(range(len(fer_boxes)), key=lambda index: fer_boxes[index][2] * fer_boxes[index][3])
            largest_matched += any(r == largest for r, _ in pairs)
            frames_with_faces += 1
    our_total_ms = sum(ours["stage_ms"].values())
    our_analysis_ms = sum(ours["stage_ms"][stage] for stage in ("detect", "classify", "draw"))
    fer_total_ms = sum(fer["stage_ms"].values())
    fer_analysis_ms = fer["stage_ms"]["detect_emotions"]
    ours_fps = ours.get("wall_fps") or 1000.0 / our_total_ms
    return {
        "ours_fps_end_to_end": ours_fps,
        "ours_fps_analysis": 1000.0 / our_analysis_ms,
        "fer_fps_end_to_end": 1000.0 / fer_total_ms,
        "fer_fps_analysis": 1000.0 / fer_analysis_ms,
        "ratio_end_to_end": ours_fps / (1000.0 / fer_total_ms),
        "ratio_analysis": fer_analysis_ms / our_analysis_ms,
        "recall_vs_fer": matched / reference_total if reference_total else float("nan"),
        "recall_vs_fer_largest_face": largest_matched / frames_with_faces if frames_with_faces else float("nan"),
        "fer_faces": reference_total,
        "our_faces": sum(len(frame) for frame in ours["boxes"]),
        "label_agreement": agreeing / matched if matched else float("nan"),
    }


# -- orchestration --------------------------------------------------------------------------


def run_worker(side: str, arguments: argparse.Namespace) -> dict:
    """Run one side in a fresh interpreter (same CPU affinity) and read its JSON figures."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / f"{side}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--worker-output", str(output)]
        command += worker_arguments(arguments)
        completed = subprocess.run(
            command, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if completed.returncode != 0:
            raise SystemExit(f"{side} worker failed:\n{completed.stderr[-4000:]}")
        return json.loads(output.read_text())


def detection_settings(arguments: argparse.Namespace):
    from edge.perception.settings import DetectionSettings

    return DetectionSettings.model_validate(arguments.detection)


def worker_arguments(arguments: argparse.Namespace) -> list[str]:
    forwarded = ["--video", str(Path(arguments.video).resolve()), "--threads", str(arguments.threads)]
    for key, value in arguments.detection.items():
        forwarded += ["--set", f"{key}={value}"]
    forwarded += ["--jpeg-quality", str(arguments.jpeg_quality)]
    for option, value in (
        ("--model", arguments.model),
        ("--max-frames", arguments.max_frames),
        ("--jpeg-max-width", arguments.jpeg_max_width),
        ("--broker-port", arguments.broker_port),
        ("--frame-fps", arguments.frame_fps),
        ("--pki-dir", arguments.pki_dir),
    ):
        if value is not None:
            forwarded += [option, str(value)]
    return forwarded


def best_run(runs: list[dict]) -> dict:
    """The fastest of repeated runs: other processes on a shared machine only ever slow a run down."""
    return min(runs, key=lambda run: sum(run["stage_ms"].values()))


def print_table(ours: dict, fer: dict, comparison: dict, repeats: int) -> None:
    stage_ms = ours["stage_ms"]
    print(f"frames: {ours['frames']} (best of {repeats} run(s) per side)"
          + (f", results acknowledged by the broker: {ours['results_acknowledged']}" if ours.get("published_over_tls") else ""))
    print(f"{'stage (mean ms/frame)':<28}{'ours':>9}{'fer':>9}")
    print(f"{'decode':<28}{stage_ms['decode']:>9.2f}{fer['stage_ms']['decode']:>9.2f}")
    for stage in ("detect", "classify", "draw"):
        print(f"{stage:<28}{stage_ms[stage]:>9.2f}{'':>9}")
    print(f"{'  fer detect_emotions':<28}{'':>9}{fer['stage_ms']['detect_emotions']:>9.2f}")
    print(f"{'encode (frame jpeg+b64)':<28}{stage_ms['encode']:>9.2f}{'':>9}")
    print(f"{'publish' + (' (TLS, outbox)' if ours['published_over_tls'] else ' (none)'):<28}{stage_ms['publish']:>9.2f}{'':>9}")
    print(f"{'fps end to end':<28}{comparison['ours_fps_end_to_end']:>9.1f}{comparison['fer_fps_end_to_end']:>9.1f}")
    print(f"{'fps analysis only':<28}{comparison['ours_fps_analysis']:>9.1f}{comparison['fer_fps_analysis']:>9.1f}")
    print(f"{'peak RSS MB':<28}{ours['peak_rss_mb']:>9.1f}{fer['peak_rss_mb']:>9.1f}")
    print(
        f"ratio ours/fer: end to end {comparison['ratio_end_to_end']:.2f}x, "
        f"analysis {comparison['ratio_analysis']:.2f}x"
        f" (target >= {TARGET_RATIO:g})"
    )
    print(
        f"recall vs fer (IoU >= {RECALL_IOU}): {comparison['recall_vs_fer']:.3f} "
        f"({comparison['our_faces']} our faces, {comparison['fer_faces']} fer faces; target >= {TARGET_RECALL})"
    )
    print(f"recall of fer's largest face per frame: {comparison['recall_vs_fer_largest_face']:.3f}")
    print(f"label agreement with fer on matched faces: {comparison['label_agreement']:.3f}")
    print(f"our peak RSS {ours['peak_rss_mb']:.1f} MB (target <= {TARGET_OUR_RSS_MB:g})")


def strip_per_frame(run: dict) -> dict:
    return {key: value for key, value in run.items() if key not in ("boxes", "labels")}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, help="video file to run both sides on")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--model", help="TFLite emotion model (default: the registry's current model)")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads (default 1)")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each side this many times, alternating; keep the fastest"
    )
    parser.add_argument("--jpeg-quality", type=int, default=80)
    parser.add_argument("--jpeg-max-width", type=int, help="shrink wider frames before JPEG encoding")
    parser.add_argument(
        "--frame-fps", type=float, help="annotated frames published per second (default: the agent's default; 240 = every frame)"
    )
    parser.add_argument("--no-broker", action="store_true", help="time the perception pipeline alone (no agent, no MQTT)")
    parser.add_argument("--broker-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki-dir", help=argparse.SUPPRESS)
    parser.add_argument("--skip-fer", action="store_true", help="run our side only")
    parser.add_argument("--worker", choices=("ours", "fer"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    add_set_option(parser)
    arguments = parser.parse_args(argv)
    arguments.detection = detection_overrides(parser, arguments.set)
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Run both sides in subprocesses, print the table, optionally write JSON."""
    arguments = parse_arguments(argv)
    if arguments.worker:
        if arguments.worker == "fer":
            figures = run_fer(arguments)
        else:
            figures = run_agent(arguments) if arguments.broker_port else run_ours(arguments)
        arguments.worker_output.write_text(json.dumps(figures))
        return 0
    if arguments.no_broker:
        return compare_sides(arguments)
    with tempfile.TemporaryDirectory(prefix="emq-bench-edge-") as folder:
        with benchmark_broker(Path(folder)) as broker:
            keep_broker_off_our_core(broker.process.pid)
            arguments.broker_port, arguments.pki_dir = broker.settings.tls_port, str(broker.settings.pki_dir)
            return compare_sides(arguments)


def keep_broker_off_our_core(broker_pid: int) -> None:
    """The broker stands in for another machine: move it off the core the edge is pinned to."""
    ours = os.sched_getaffinity(0)
    others = set(range(os.cpu_count() or 1)) - ours
    if others:
        os.sched_setaffinity(broker_pid, others)


def benchmark_broker(folder: Path):
    """This repo's Mosquitto config on a free port, with a PKI made for this run."""
    from broker.config import BrokerSettings
    from broker.identities import init_pki
    from broker.runner import MosquittoProcess
    from tests.conftest import free_port

    init_pki(folder / "pki", devices=[BENCH_DEVICE])
    settings = BrokerSettings(
        pki_dir=folder / "pki", state_dir=folder / "broker", bind_address="127.0.0.1", tls_port=free_port(), password_port=None
    )
    return MosquittoProcess(settings)


def compare_sides(arguments: argparse.Namespace) -> int:
    our_runs: list[dict] = []
    fer_runs: list[dict] = []
    for _ in range(max(arguments.repeat, 1)):
        our_runs.append(run_worker("ours", arguments))
        if not arguments.skip_fer:
            fer_runs.append(run_worker("fer", arguments))
    ours = best_run(our_runs)
    report: dict[str, Any] = {"video": str(arguments.video), "ours": strip_per_frame(ours)}
    if fer_runs:
        fer = best_run(fer_runs)
        comparison = compare(ours, fer)
        report.update(fer=strip_per_frame(fer), comparison=comparison)
        print_table(ours, fer, comparison, len(our_runs))
    else:
        print(json.dumps(strip_per_frame(ours), indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
