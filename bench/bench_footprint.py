"""Edge footprint on a small device: the real ``emq-edge`` process, as an owner starts it.

    taskset -c 0 python bench/bench_footprint.py [--video CLIP ...] [--repeat 3] [--json out.json]

Every clip given is reported (default: both shared videos, one face and one or two faces).

For each run: a fresh PKI and this repo's Mosquitto (TLS) on free ports, a
subscriber as the read-only ``monitor`` identity, then ``emq-edge`` on the video
(model on 1 LiteRT thread, results kept until the broker acknowledges them since
no ingest runs here). Measured from outside the agent:

* **first result**: seconds from starting the process until its first result
  reaches the subscriber (imports, model load, TLS connect, first frame);
* **peak RSS**: the kernel's high-water mark for the process (``ru_maxrss``);
* **CPU per frame**: user + system CPU of the whole run divided by the frames it
  processed (start-up included), and the same after the first result (steady).

Targets (issue 14): RSS <= 120 MB, first result <= 3 s. Emulation or a faster
desktop says little about a Jetson's absolute CPU time; RSS and what dominates
start-up carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker.config import BrokerSettings  # noqa: E402
from broker.identities import init_pki  # noqa: E402
from broker.runner import MosquittoProcess  # noqa: E402
from comms.mqtt import MqttClient  # noqa: E402
from comms.settings import pki_mqtt_settings  # noqa: E402
from contract.topics import Channel, Topics  # noqa: E402

DEVICE = "bench-cam"
DEFAULT_VIDEOS = [REPO.parent / "shared" / "media" / name for name in ("woman2.mp4", "test.mp4")]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_TARGET_MB, FIRST_RESULT_TARGET_S = 120.0, 3.0


@dataclass
class Footprint:
    first_result_s: float
    peak_rss_mb: float
    frames: int
    cpu_ms_per_frame: float
    steady_cpu_ms_per_frame: float


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def edge_command() -> list[str]:
    script = Path(sys.executable).parent / "emq-edge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge.cli"]


def run_once(video: Path, work: Path) -> Footprint:
    pki = work / "pki"
    if not pki.exists():
        init_pki(pki, devices=[DEVICE])
    settings = BrokerSettings(pki_dir=pki, state_dir=work / f"broker-{time.monotonic_ns()}", bind_address="127.0.0.1",
                              tls_port=free_port(), password_port=None)
    with MosquittoProcess(settings) as broker:
        first_result = threading.Event()
        subscriber = MqttClient(pki_mqtt_settings(pki, "monitor", port=broker.settings.tls_port))
        subscriber.start()
        if not subscriber.wait_connected(10):
            raise RuntimeError(f"subscriber cannot connect: {subscriber.last_error}")
        subscribed = subscriber.subscribe(Topics().device(DEVICE, Channel.RESULT), lambda _message: first_result.set(), qos=1)
        if subscribed is not None and not subscribed.wait(10):
            raise RuntimeError("subscription not acknowledged")
        env = dict(os.environ, EMQ_EDGE__DEVICE_ID=DEVICE, EMQ_EDGE__PKI_DIR=str(pki), EMQ_EDGE__DATA_DIR=str(work / "edge"),
                   EMQ_EDGE__MQTT__PORT=str(broker.settings.tls_port), EMQ_EDGE__OUTBOX__KEEP_UNTIL="acknowledged",
                   EMQ_EDGE__MODEL__NUM_THREADS="1", EMQ_EDGE__HOMEASSISTANT__ENABLED="false")
        log_path = work / "edge.log"
        started = time.perf_counter()
        with log_path.open("w") as log:
            process = subprocess.Popen([*edge_command(), "--source", str(video)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if not first_result.wait(60):
            process.kill()
            raise RuntimeError(f"no result within 60 s:\n{log_path.read_text()[-3000:]}")
        first_result_s = time.perf_counter() - started
        cpu_at_first = cpu_seconds(process.pid)
        _pid, status, usage = os.wait4(process.pid, 0)
        subscriber.stop(announce_stopped=False)
    text = log_path.read_text()
    if status != 0:
        raise RuntimeError(f"emq-edge exited with {status}:\n{text[-3000:]}")
    totals = json.loads(re.findall(r"edge totals: (\{.*\})", text)[-1])
    frames = int(totals["frames_processed"])
    cpu = usage.ru_utime + usage.ru_stime
    return Footprint(
        first_result_s=first_result_s,
        peak_rss_mb=usage.ru_maxrss / 1024,
        frames=frames,
        cpu_ms_per_frame=1000 * cpu / max(frames, 1),
        # the first result is the first frame's, so the rest of the run is frames - 1
        steady_cpu_ms_per_frame=1000 * (cpu - cpu_at_first) / max(frames - 1, 1),
    )


def measure_clip(video: Path, repeat: int) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="emq-footprint-") as temporary:
        for attempt in range(repeat):
            runs.append(run_once(video, Path(temporary)))
            run = runs[-1]
            print(f"[{video.name} {attempt + 1}/{repeat}] first result {run.first_result_s:.2f} s, peak RSS {run.peak_rss_mb:.0f} MB,"
                  f" {run.frames} frames, CPU {run.cpu_ms_per_frame:.1f} ms/frame ({run.steady_cpu_ms_per_frame:.1f} after the first result)",
                  flush=True)
    median = {field: statistics.median(getattr(run, field) for run in runs) for field in asdict(runs[0])}
    return {"median": median, "runs": [asdict(run) for run in runs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, nargs="+", default=DEFAULT_VIDEOS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    missing = [str(video) for video in args.video if not video.exists()]
    if missing:
        parser.error(f"not found: {', '.join(missing)} (the shared media live beside the repo in ../shared/media)")
    clips = {video.name: measure_clip(video, args.repeat) for video in args.video}
    cpus = sorted(os.sched_getaffinity(0))
    print(f"\nemq-edge, CPUs {cpus}, medians of {args.repeat} runs per clip:")
    print(f"{'clip':<14}{'first result s':>16}{'peak RSS MB':>13}{'CPU ms/frame':>14}{'steady':>9}")
    for name, clip in clips.items():
        median = clip["median"]
        print(f"{name:<14}{median['first_result_s']:>16.2f}{median['peak_rss_mb']:>13.0f}"
              f"{median['cpu_ms_per_frame']:>14.1f}{median['steady_cpu_ms_per_frame']:>9.1f}")
    worst_start = max(clip["median"]["first_result_s"] for clip in clips.values())
    worst_rss = max(clip["median"]["peak_rss_mb"] for clip in clips.values())
    print(f"worst clip: first result {worst_start:.2f} s (target <= {FIRST_RESULT_TARGET_S:.0f} s):"
          f" {'PASS' if worst_start <= FIRST_RESULT_TARGET_S else 'FAIL'};"
          f" peak RSS {worst_rss:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB): {'PASS' if worst_rss <= RSS_TARGET_MB else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"cpus": cpus, "clips": clips}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
