"""Benchmark: how fast the cloud ingest stores a full-speed stream, against the broker's own ceiling.

    python bench/bench_ingest.py [--results 5000] [--frames 500] [--json out.json]

1. Records a real stream: the edge perception pipeline runs on woman2.mp4
   (../shared/media) or on the demo sample video, giving real results with
   face crops and real annotated JPEG frames.
2. Starts this repo's Mosquitto (TLS, generated PKI) on free ports.
3. Each run publishes the stream at full speed over TLS while the stock
   ``mosquitto_sub`` (QoS 1) *and* ``emq-ingest`` are subscribed to it. In
   the same run, on the same CPUs, we get the broker's ceiling (results/s until
   mosquitto_sub has them all) and the stored rate (results/s until the last
   one is committed). Runs: SQLite with 1 and 2 workers (shared
   subscription), and PostgreSQL when reachable.
4. For context, the ceiling with no ingest running at all (mosquitto_sub
   alone): on a two-core machine the ingest's own CPU use slows the Python
   publisher, so that figure is higher than the same-run one.

Prints a table; target: stored results >= 80 % of the same-run ceiling on SQLite.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker.config import BrokerSettings  # noqa: E402
from broker.identities import IdentityRegistry, Role, init_pki  # noqa: E402
from broker.pki import PkiPaths  # noqa: E402
from broker.runner import MosquittoProcess  # noqa: E402
from comms.mqtt import MqttClient  # noqa: E402
from comms.settings import pki_mqtt_settings  # noqa: E402
from contract.messages import FRAME_CONTENT_TYPE, make_result, utc_millis  # noqa: E402
from contract.topics import Channel, Topics  # noqa: E402
from contract.validation import FrameMeta  # noqa: E402

DEVICE = "bench-cam"
SHARED_VIDEO = REPO.parent / "shared" / "media" / "woman2.mp4"
TIMEOUT_S = 300.0


@dataclass
class Recorded:
    faces: list          # per recorded frame: contract Face objects
    frames_b64: list[bytes]
    width: int
    height: int


@dataclass
class Stream:
    results: list[bytes]
    frames: list[tuple[bytes, list[tuple[str, str]]]]

    @property
    def result_bytes(self) -> int:
        return sum(len(payload) for payload in self.results)


def record(max_frames: int) -> Recorded:
    """Run the real perception pipeline on a real video (no MQTT) and keep its output."""
    from edge.publisher import to_contract_face
    from edge.model import load_model
    from edge.perception.codec import encode_jpeg
    from edge.perception.pipeline import PerceptionPipeline
    sys.path.insert(0, str(REPO / "scripts"))
    from sample_video import write_sample
    from edge.sources import open_source

    video = SHARED_VIDEO if SHARED_VIDEO.exists() else write_sample(Path(tempfile.gettempdir()) / "emq-bench-sample.mp4")
    pipeline = PerceptionPipeline(None, None, None, load_model(None, None, 1))
    faces, frames = [], []
    with open_source(str(video)) as source:
        for frame_number, _captured, frame in source:
            analysis = pipeline.process(frame)
            height, width = frame.shape[:2]
            faces.append([to_contract_face(face, width, height, True) for face in analysis.faces])
            frames.append(base64.b64encode(encode_jpeg(analysis.annotated, 80, 640)))
            if frame_number + 1 >= max_frames:
                break
    print(f"recorded {len(faces)} frames of {video.name}: {sum(map(len, faces))} faces", flush=True)
    return Recorded(faces, frames, width, height)


def build_stream(recorded: Recorded, results: int, frames: int) -> Stream:
    """Cycle the recording into a stream with fresh ids, contiguous seqs and times."""
    start = datetime.now(timezone.utc)
    epoch = uuid.uuid4().hex[:16]
    payloads = []
    for seq in range(results):
        index = seq % len(recorded.faces)
        result = make_result(
            device_id=DEVICE, epoch=epoch, seq=seq, source="file:woman2.mp4", video_file="woman2.mp4", frame_number=seq,
            captured_at=start + timedelta(milliseconds=33 * seq), frame_width=recorded.width, frame_height=recorded.height,
            model_name="mini_xception_fer2013", model_version="1.0.0", faces=recorded.faces[index],
        )
        payloads.append(result.to_json())
    frame_messages = []
    for number in range(frames):
        meta = FrameMeta(frame_number=number, captured_at=utc_millis(start + timedelta(milliseconds=33 * number)))
        frame_messages.append((recorded.frames_b64[number % len(recorded.frames_b64)], meta.to_properties()))
    return Stream(payloads, frame_messages)


def publish_stream(client: MqttClient, topics: Topics, stream: Stream, frame_qos: int = 0) -> float:
    """Publish everything at full speed; returns the start time. Results QoS 1, frames QoS 0 (as the edge does;
    QoS 1 when the stream is queued for offline workers, since Mosquitto queues no QoS 0 for them)."""
    started = time.perf_counter()
    every = max(len(stream.results) // max(len(stream.frames), 1), 1)
    frames = iter(stream.frames)
    deliveries = []
    for index, payload in enumerate(stream.results):
        deliveries.append(client.publish(topics.result(DEVICE), payload, qos=1))
        if index % every == 0:
            frame = next(frames, None)
            if frame is not None:
                delivery = client.publish(topics.frame(DEVICE), frame[0], qos=frame_qos, user_properties=frame[1],
                                          content_type=FRAME_CONTENT_TYPE)
                if frame_qos:
                    deliveries.append(delivery)
    for delivery in deliveries:
        if not delivery.wait(TIMEOUT_S):
            raise RuntimeError("publisher: a result was not acknowledged")
    return started


def on_cpu(cpu: int | None):
    """A preexec_fn pinning a child process to one CPU (None: leave it where the scheduler puts it)."""
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def start_mosquitto_sub(broker: MosquittoProcess, pki: Path, topics: Topics, count: int, log: Path, cpu: int | None = None) -> subprocess.Popen:
    """The stock client, subscribed at QoS 1 and exiting after ``count`` results; returns once its SUBACK arrived."""
    command = [
        "stdbuf", "-oL",  # line-buffered, so its SUBACK line shows up while it runs
        "mosquitto_sub", "-d", "-h", "localhost", "-p", str(broker.settings.tls_port), "--cafile", str(pki / "ca.crt"),
        "--cert", str(pki / "clients" / "ingest.crt"), "--key", str(pki / "clients" / "ingest.key"),
        "-q", "1", "-t", topics.all_devices(Channel.RESULT), "-C", str(count), "-W", str(int(TIMEOUT_S)),
        "-F", "%m",  # print only the message id: the payloads would cost it more than receiving them
    ]
    subscriber = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, preexec_fn=on_cpu(cpu))
    deadline = time.monotonic() + 10
    while "SUBACK" not in log.read_text():
        if time.monotonic() > deadline or subscriber.poll() is not None:
            raise RuntimeError(f"mosquitto_sub did not subscribe:\n{log.read_text()[-2000:]}")
        time.sleep(0.01)
    return subscriber


def measure_ceiling_alone(broker: MosquittoProcess, pki: Path, topics: Topics, stream: Stream, publisher: MqttClient, work: Path,
                          cpu: int | None = None) -> float:
    """Results/s that mosquitto_sub receives with nothing else subscribed."""
    subscriber = start_mosquitto_sub(broker, pki, topics, len(stream.results), work / "mosquitto_sub-alone.log", cpu)
    started = publish_stream(publisher, topics, stream)
    if subscriber.wait(TIMEOUT_S) != 0:
        raise RuntimeError(f"mosquitto_sub failed: {(work / 'mosquitto_sub-alone.log').read_text()[-2000:]}")
    return len(stream.results) / (time.perf_counter() - started)


_COUNTING: dict[str, object] = {}  # database URL -> the one PostgreSQL connection the polls use


def count_rows(database_url: str, table: str) -> int:
    """Rows in ``table`` now (0 while the ingest has not created it).

    PostgreSQL is polled over one kept connection: a new connection per poll
    (every 10 ms) is a new server process each time, and that cost the
    server, which shares the two cores with the ingest, more CPU than the
    ingest's own writes (the PostgreSQL figures of the first sessions paid it).
    """
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url[len("sqlite:///"):], timeout=30) as connection:
            try:
                return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            except sqlite3.OperationalError:
                return 0
    import psycopg

    connection = _COUNTING.get(database_url)
    if connection is None:
        connection = _COUNTING[database_url] = psycopg.connect(database_url, autocommit=True)
    try:
        return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except psycopg.errors.UndefinedTable:
        return 0


def close_counting() -> None:
    for connection in _COUNTING.values():
        connection.close()
    _COUNTING.clear()


def add_worker_identities(pki: Path, workers: int) -> None:
    registry = IdentityRegistry(PkiPaths(pki))
    for index in range(workers):
        registry.ensure(f"ingest-{index + 1}", Role.INGEST)
    registry.save()


def start_workers(workers: int, broker: MosquittoProcess, pki: Path, work: Path, database_url: str, data_dir: Path,
                  cpu: int | None = None, session: str = "per-run", frames_backend: str = "files") -> list[subprocess.Popen]:
    """``session``: "per-run" (ends when the worker stops), "keep" (persists: the broker queues for it),
    "end" (a clean start that ends a kept session)."""
    processes = []
    for index in range(workers):
        log = work / f"ingest-{index}.log"
        sessions = {"per-run": ("0", "true"), "keep": ("3600", "false"), "end": ("0", "true")}[session]
        env = dict(os.environ)
        env.update({
            "EMQ_INGEST__PKI_DIR": str(pki), "EMQ_INGEST__DATA_DIR": str(data_dir),
            "EMQ_INGEST__DATABASE_URL": database_url, "EMQ_INGEST__MQTT__PORT": str(broker.settings.tls_port),
            # Each worker is its own broker identity (ingest-1, ingest-2), which is also its client id.
            "EMQ_INGEST__WORKER_NAME": str(index + 1),
            # Sessions end with each run, so a finished run's session does not keep queuing the next run's stream.
            "EMQ_INGEST__MQTT__SESSION_EXPIRY_S": sessions[0], "EMQ_INGEST__MQTT__CLEAN_START": sessions[1], "EMQ_INGEST__METRICS_PORT": "0",
            "EMQ_INGEST__FRAMES__BACKEND": frames_backend,
        })
        if workers > 1 or session != "per-run":
            env["EMQ_INGEST__SHARED_GROUP"] = "bench"
        processes.append(subprocess.Popen([shutil.which("emq-ingest") or str(Path(sys.executable).parent / "emq-ingest")],
                                          env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, preexec_fn=on_cpu(cpu)))
        deadline = time.monotonic() + 30
        while "subscriptions active" not in log.read_text():
            if time.monotonic() > deadline or processes[-1].poll() is not None:
                raise RuntimeError(f"ingest worker did not start:\n{log.read_text()}")
            time.sleep(0.05)
    return processes


@dataclass
class RunFigures:
    stored_results_per_s: float
    stored_frames_per_s: float
    ceiling_results_per_s: float  # what mosquitto_sub received in the same run

    @property
    def of_ceiling(self) -> float:
        return self.stored_results_per_s / self.ceiling_results_per_s


def measure_ingest(workers: int, broker, pki, topics, stream: Stream, publisher, database_url: str, work: Path, data_dir: Path) -> RunFigures:
    processes = start_workers(workers, broker, pki, work, database_url, data_dir)
    subscriber = start_mosquitto_sub(broker, pki, topics, len(stream.results), work / "mosquitto_sub.log")
    try:
        started = publish_stream(publisher, topics, stream)
        stored_done = subscriber_done = None
        deadline = time.monotonic() + TIMEOUT_S
        while stored_done is None or subscriber_done is None:
            now = time.perf_counter()
            if subscriber_done is None and subscriber.poll() is not None:
                if subscriber.returncode != 0:
                    raise RuntimeError(f"mosquitto_sub failed: {(work / 'mosquitto_sub.log').read_text()[-2000:]}")
                subscriber_done = now
                # Where the ingest stands when the stream has been delivered: the rest is its backlog.
                print(f"    mosquitto_sub had all after {now - started:.2f} s; stored by then: {count_rows(database_url, 'results')}", flush=True)
            if stored_done is None and count_rows(database_url, "results") >= len(stream.results):
                stored_done = now
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {count_rows(database_url, 'results')} of {len(stream.results)} stored")
            time.sleep(0.01)
        results = len(stream.results)
        return RunFigures(results / (stored_done - started), count_rows(database_url, "frames") / (stored_done - started),
                          results / (subscriber_done - started))
    finally:
        subscriber.kill()
        for process in processes:
            process.terminate()
            process.wait(30)


def wait_all_stored(database_url: str, stream: Stream, started: float, poll_s: float = 0.02) -> float:
    """Seconds from ``started`` until every result and frame of the stream is in the database."""
    deadline = time.monotonic() + TIMEOUT_S
    while count_rows(database_url, "results") < len(stream.results) or count_rows(database_url, "frames") < len(stream.frames):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count_rows(database_url, 'results')} of {len(stream.results)} stored")
        time.sleep(poll_s)
    return time.perf_counter() - started


def measure_ingest_pinned(broker, pki, topics, stream: Stream, publisher, database_url: str, work: Path, data_dir: Path, cpu: int) -> float:
    """Results/s one worker stores with nothing else subscribed, the worker alone on ``cpu``."""
    processes = start_workers(1, broker, pki, work, database_url, data_dir, cpu=cpu)
    try:
        started = publish_stream(publisher, topics, stream)
        return len(stream.results) / wait_all_stored(database_url, stream, started)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)


def measure_drain(workers: int, broker, pki, topics, stream: Stream, publisher, database_url: str, work: Path) -> float:
    """Results/s ``workers`` store from a stream the broker already holds: the publisher is out of the race.

    The workers subscribe with kept sessions and stop; the whole stream (frames at
    QoS 1, so they are queued too) then waits in their sessions; they start again and
    drain it. Timed from the first stored row (start-up excluded) to the last.
    """
    def run(session: str) -> list[subprocess.Popen]:
        return start_workers(workers, broker, pki, work, database_url, work / "drain-data", session=session, frames_backend="database")

    def stop(processes: list[subprocess.Popen]) -> None:
        for process in processes:
            process.terminate()
            process.wait(30)

    stop(run("keep"))
    publish_stream(publisher, topics, stream, frame_qos=1)
    processes = run("keep")
    try:
        while (first := count_rows(database_url, "results")) == 0:
            time.sleep(0.005)
        started = time.perf_counter()
        elapsed = wait_all_stored(database_url, stream, started, poll_s=0.01)
        return (len(stream.results) - first) / elapsed
    finally:
        stop(processes)
        stop(run("end"))  # end the kept sessions, so the next run starts with empty queues


def postgres_database() -> tuple[str, str] | None:
    try:
        import psycopg

        admin = "postgresql://postgres@127.0.0.1:5432/postgres"
        name = f"emq_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:5432/{name}", name
    except Exception as error:
        print(f"PostgreSQL skipped: {error}")
        return None


def clear_postgres(database_url: str) -> None:
    """An empty store for the next run: drop the ingest's tables (it creates them again)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")


def drop_postgres(name: str) -> None:
    import psycopg

    close_counting()
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Medians:
    """The median of each figure over the repeats; the ratio is the median of each run's own ratio."""

    def __init__(self, runs: list[RunFigures]) -> None:
        self.stored_results_per_s = statistics.median(run.stored_results_per_s for run in runs)
        self.stored_frames_per_s = statistics.median(run.stored_frames_per_s for run in runs)
        self.ceiling_results_per_s = statistics.median(run.ceiling_results_per_s for run in runs)
        self.of_ceiling = statistics.median(run.of_ceiling for run in runs)
        self.runs = runs


def run_all(args, stream: Stream, postgres_url: str | None) -> tuple[float, dict[str, Medians]]:
    """Every same-run measurement ``args.repeat`` times, interleaved; the median of each figure."""
    alone: list[float] = []
    samples: dict[str, list[RunFigures]] = {}
    with tempfile.TemporaryDirectory(prefix="emq-bench-") as temporary:
        work = Path(temporary)
        bench = BenchBroker(work)
        try:
            for repeat in range(args.repeat):
                alone.append(measure_ceiling_alone(bench.broker, bench.pki, bench.topics, stream, bench.publisher, work))
                print(f"[{repeat + 1}/{args.repeat}] mosquitto_sub alone: {alone[-1]:.0f} results/s", flush=True)
                runs = [("sqlite_1_worker", 1, f"sqlite:///{work / f'one-{repeat}.db'}"), ("sqlite_2_workers", 2, f"sqlite:///{work / f'two-{repeat}.db'}")]
                if postgres_url:
                    clear_postgres(postgres_url)
                    runs.append(("postgresql_1_worker", 1, postgres_url))
                for name, workers, url in runs:
                    # A fresh data folder per run, all deleted at the end: deleting a run's
                    # thousands of frames right before the next makes ext4 step over every
                    # recently freed inode when it creates files for a minute or so, which
                    # would be measured as the ingest's cost.
                    figures = measure_ingest(workers, bench.broker, bench.pki, bench.topics, stream, bench.publisher, url, work,
                                             work / f"data-{name}-{repeat}")
                    samples.setdefault(name, []).append(figures)
                    print(f"[{repeat + 1}/{args.repeat}] {name}: {figures.stored_results_per_s:.0f} results/s stored,"
                          f" {figures.stored_frames_per_s:.0f} frames/s; mosquitto_sub in the same run"
                          f" {figures.ceiling_results_per_s:.0f}/s ({100 * figures.of_ceiling:.0f} %)", flush=True)
        finally:
            bench.close()
    medians = {name: Medians(runs) for name, runs in samples.items()}
    return statistics.median(alone), medians


class BenchBroker:
    """A fresh PKI and broker for one phase, with the publisher connected; CPU affinity is inherited from us."""

    def __init__(self, work: Path) -> None:
        from tests.conftest import free_port

        self.pki = work / "pki"
        if not self.pki.exists():
            init_pki(self.pki, devices=[DEVICE])
            add_worker_identities(self.pki, 2)
        settings = BrokerSettings(pki_dir=self.pki, state_dir=work / f"broker-{uuid.uuid4().hex[:6]}", bind_address="127.0.0.1",
                                  tls_port=free_port(), password_port=None,
                                  # The drain phase queues its whole stream in the workers' sessions.
                                  max_queued_messages=200_000)
        self.broker = MosquittoProcess(settings).start()
        self.topics = Topics()
        self.publisher = MqttClient(pki_mqtt_settings(self.pki, DEVICE, port=settings.tls_port, client_id="bench-publisher", max_inflight=1000)).start()
        if not self.publisher.wait_connected(10):
            raise RuntimeError(f"publisher cannot connect: {self.publisher.last_error}")

    def close(self) -> None:
        self.publisher.stop(announce_stopped=False)
        self.broker.stop()


def run_pinned(args, stream: Stream, postgres: str | None) -> dict[str, list[float]]:
    """The fair ceiling: mosquitto_sub and the ingest each alone on CPU 1; publisher and broker on CPU 0.

    (PostgreSQL's server is a system service: it runs wherever the scheduler puts it.)
    """
    if len(os.sched_getaffinity(0)) < 2:
        print("pinned runs skipped: they need two CPUs")
        return {}
    figures: dict[str, list[float]] = {"mosquitto_sub": [], "sqlite": []}
    if postgres:
        figures["postgresql"] = []
    saved = os.sched_getaffinity(0)
    cpu_publisher, cpu_consumer = sorted(saved)[:2]
    os.sched_setaffinity(0, {cpu_publisher})
    try:
        with tempfile.TemporaryDirectory(prefix="emq-bench-pinned-") as temporary:
            work = Path(temporary)
            bench = BenchBroker(work)
            try:
                for repeat in range(args.repeat):
                    figures["mosquitto_sub"].append(
                        measure_ceiling_alone(bench.broker, bench.pki, bench.topics, stream, bench.publisher, work, cpu=cpu_consumer))
                    urls = {"sqlite": f"sqlite:///{work / f'pinned-{repeat}.db'}"}
                    if postgres:
                        clear_postgres(postgres)
                        urls["postgresql"] = postgres
                    for name, url in urls.items():
                        figures[name].append(measure_ingest_pinned(bench.broker, bench.pki, bench.topics, stream, bench.publisher, url, work,
                                                                   work / f"data-pinned-{name}-{repeat}", cpu_consumer))
                    print(f"[{repeat + 1}/{args.repeat}] pinned alone on CPU {cpu_consumer}: "
                          + ", ".join(f"{name} {values[-1]:.0f}/s" for name, values in figures.items()), flush=True)
            finally:
                bench.close()
    finally:
        os.sched_setaffinity(0, saved)
    return figures


def run_drain(args, stream: Stream, postgres: str) -> dict[str, list[float]]:
    """PostgreSQL with 1 and 2 workers (separate connections) draining a stream the broker already holds."""
    figures: dict[str, list[float]] = {"1": [], "2": []}
    with tempfile.TemporaryDirectory(prefix="emq-bench-drain-") as temporary:
        work = Path(temporary)
        bench = BenchBroker(work)
        try:
            for repeat in range(args.repeat):
                for workers in (1, 2):
                    clear_postgres(postgres)
                    figures[str(workers)].append(measure_drain(workers, bench.broker, bench.pki, bench.topics, stream, bench.publisher,
                                                               postgres, work))
                print(f"[{repeat + 1}/{args.repeat}] PostgreSQL draining a held stream: 1 worker {figures['1'][-1]:.0f}/s,"
                      f" 2 workers {figures['2'][-1]:.0f}/s", flush=True)
        finally:
            bench.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=5000)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--record-frames", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each kind; medians are reported (a shared machine is noisy)")
    parser.add_argument("--drain-scale", type=int, default=4, help="the drain phase's stream is this many times --results")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["same-run", "pinned", "drain"], action="append",
                        help="run only these phases (default: all three)")
    args = parser.parse_args()
    phases = set(args.only or ["same-run", "pinned", "drain"])

    recorded = record(args.record_frames)
    stream = build_stream(recorded, args.results, args.frames)
    print(f"stream: {len(stream.results)} results ({stream.result_bytes / len(stream.results) / 1024:.1f} KiB each), {len(stream.frames)} frames", flush=True)
    postgres = None if args.no_postgres else postgres_database()
    document: dict = {"results": args.results, "frames": args.frames, "repeat": args.repeat, "cpus": len(os.sched_getaffinity(0))}
    try:
        if "same-run" in phases:
            document.update(report_same_run(*run_all(args, stream, postgres and postgres[0]), args.repeat))
        if "pinned" in phases:
            document["pinned_alone"] = report_pinned(run_pinned(args, stream, postgres and postgres[0]), args.repeat)
        if "drain" in phases and postgres:
            # Longer than the others: at ~5,000/s a 5,000-result drain is over in a second, start-up noise included.
            drain_stream = build_stream(recorded, args.results * args.drain_scale, args.frames * args.drain_scale)
            document["postgresql_drain"] = report_drain(run_drain(args, drain_stream, postgres[0]), args.repeat)
            document["postgresql_drain"]["results"] = len(drain_stream.results)
    finally:
        if postgres:
            drop_postgres(postgres[1])
    if args.json:
        args.json.write_text(json.dumps(document, indent=2))
    return 0


def report_same_run(alone: float, runs: dict[str, Medians], repeat: int) -> dict:
    print(f"\nsame run: medians of {repeat} runs each (the ratio is the median of each run's own ratio)")
    print(f"{'run':<22}{'stored results/s':>18}{'frames/s':>10}{'mosquitto_sub, same run':>25}{'of ceiling':>12}")
    for name, figures in runs.items():
        print(f"{name:<22}{figures.stored_results_per_s:>18.0f}{figures.stored_frames_per_s:>10.0f}"
              f"{figures.ceiling_results_per_s:>25.0f}{100 * figures.of_ceiling:>11.0f} %")
    print(f"mosquitto_sub with no ingest running: {alone:.0f} results/s"
          f" (SQLite, 1 worker stores {100 * runs['sqlite_1_worker'].stored_results_per_s / alone:.0f} % of that)")
    for name in ("sqlite_1_worker", "postgresql_1_worker"):
        if name in runs:
            ratio = runs[name].of_ceiling
            print(f"{name}: {100 * ratio:.0f} % of the same-run ceiling (target >= 80 %): {'PASS' if ratio >= 0.8 else 'FAIL'}")
    return {
        "mosquitto_sub_alone_results_per_s": alone,
        "runs": {name: {"median": {key: value for key, value in vars(figures).items() if key != "runs"},
                        "each": [dict(vars(run), of_ceiling=run.of_ceiling) for run in figures.runs]}
                 for name, figures in runs.items()},
    }


def report_pinned(figures: dict[str, list[float]], repeat: int) -> dict:
    if not figures:
        return {}
    ceiling = statistics.median(figures["mosquitto_sub"])
    print(f"\npinned alone (consumer on its own CPU, publisher and broker on the other): medians of {repeat} runs")
    print(f"mosquitto_sub: {ceiling:.0f} results/s")
    summary = {"each": figures, "mosquitto_sub_results_per_s": ceiling}
    for name in ("sqlite", "postgresql"):
        if name in figures:
            # each run's own ratio against the ceiling measured just before it
            ratios = [stored / sub for stored, sub in zip(figures[name], figures["mosquitto_sub"])]
            ratio = statistics.median(ratios)
            summary[name] = {"stored_results_per_s": statistics.median(figures[name]), "of_ceiling": ratio}
            target = " (target >= 80 %)" if name == "sqlite" else ""
            print(f"{name}, 1 worker: {statistics.median(figures[name]):.0f} results/s = {100 * ratio:.0f} % of the pinned ceiling{target}"
                  + (f": {'PASS' if ratio >= 0.8 else 'FAIL'}" if name == "sqlite" else ""))
    return summary


def report_drain(figures: dict[str, list[float]], repeat: int) -> dict:
    one, two = statistics.median(figures["1"]), statistics.median(figures["2"])
    ratios = [b / a for a, b in zip(figures["1"], figures["2"])]
    print(f"\nPostgreSQL draining a stream the broker holds (publisher not in the race): medians of {repeat} runs")
    print(f"1 worker {one:.0f} results/s, 2 workers {two:.0f} results/s: {statistics.median(ratios):.2f}x (target >= 1.5x):"
          f" {'PASS' if statistics.median(ratios) >= 1.5 else 'FAIL'}")
    return {"each": figures, "one_worker": one, "two_workers": two, "speed_up": statistics.median(ratios)}


if __name__ == "__main__":
    sys.exit(main())
