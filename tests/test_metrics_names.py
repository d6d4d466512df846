"""The real /metrics of the ingest and the web UI follow Prometheus naming conventions.

A small check of our own always runs (base units, ``_total`` on counters and
only there, help texts, snake_case); ``promtool check metrics`` runs as well
where ``promtool`` is on PATH (Debian package ``prometheus``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request

import pytest

from tests import factories
from tests.cloud_helpers import ingest_env, start_ingest
from tests.conftest import WAIT_S, wait_until
from tests.test_webui_cli import ServerProcess, env_for
from tests.webui_helpers import HttpSession

PREFIX = "emq_"
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# Words that give a unit in other than its base (seconds, bytes, ratios) or abbreviate one.
NOT_BASE_UNITS = {
    "ms", "us", "ns", "sec", "secs", "msec", "usec", "min", "mins", "hr", "hrs", "kb", "mb", "gb", "kib", "mib", "gib",
    "milliseconds", "microseconds", "nanoseconds", "minutes", "hours", "days", "kilobytes", "megabytes", "gigabytes",
    "percent", "pct",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
BASE_UNIT_ENDINGS = ("_seconds", "_bytes", "_ratio")


def families(exposition: str) -> dict[str, dict]:
    """``{name: {"type", "help", "samples": [(sample name, label names)]}}`` from the text format."""
    found: dict[str, dict] = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line[7:].split(" ", 1)
            found.setdefault(name, {"help": "", "samples": []})["type"] = kind
        elif line.startswith("# HELP "):
            name, _, text = line[7:].partition(" ")
            found.setdefault(name, {"samples": []})["help"] = text.strip()
        elif line and not line.startswith("#"):
            sample, labels = re.match(r"^([^{\s]+)(?:\{([^}]*)\})?", line).groups()
            label_names = [pair.split("=", 1)[0] for pair in re.findall(r'(\w+)="(?:[^"\\]|\\.)*"', labels or "")]
            owner = sample if sample in found else next((name for name in found if sample.startswith(name + "_")), sample)
            found.setdefault(owner, {"help": "", "samples": []})["samples"].append((sample, label_names))
    return found


def naming_problems(exposition: str) -> list[str]:
    """Everything in ``exposition`` that breaks the conventions, one line each; empty when all is well."""
    problems = []
    for name, family in families(exposition).items():
        kind = family.get("type", "untyped")
        problems += [f"{name}: {problem}" for problem in family_problems(name, kind, family["help"])]
        for sample, label_names in family["samples"]:
            problems += [f"{sample}: {problem}" for problem in sample_problems(name, kind, sample, label_names)]
    return problems


def family_problems(name: str, kind: str, help_text: str) -> list[str]:
    words = set(name.split("_"))
    problems = [] if SNAKE_CASE.match(name) else ["not snake_case"]
    problems += [] if name.startswith(PREFIX) else [f"no {PREFIX} prefix"]
    problems += [f"unit {word!r} is not a base unit (seconds, bytes)" for word in sorted(words & NOT_BASE_UNITS)]
    problems += [] if help_text else ["no help text"]
    problems += [] if kind != "untyped" else ["no TYPE line"]
    if kind == "counter" and not name.endswith("_total"):
        problems.append("a counter's name ends in _total")
    if kind != "counter" and name.endswith("_total"):
        problems.append(f"a {kind} must not end in _total")
    if kind not in ("histogram", "summary") and name.endswith(HISTOGRAM_SUFFIXES[:3]):
        problems.append(f"a {kind} must not end in a histogram suffix")
    if kind in ("histogram", "summary") and not name.endswith(BASE_UNIT_ENDINGS):
        problems.append(f"a {kind} names its unit ({', '.join(BASE_UNIT_ENDINGS)})")
    return problems


def sample_problems(family: str, kind: str, sample: str, label_names: list[str]) -> list[str]:
    problems = [f"label {label!r} is not snake_case" for label in label_names if not SNAKE_CASE.match(label)]
    reserved = {"le"} if kind == "histogram" else {"quantile"} if kind == "summary" else {"le", "quantile"}
    problems += [f"label {label!r} is reserved" for label in label_names if label in reserved and kind not in ("histogram", "summary")]
    if sample != family and (kind not in ("histogram", "summary") or not sample.endswith(HISTOGRAM_SUFFIXES)):
        problems.append(f"sample outside its family {family}")
    return problems


def promtool_problems(exposition: str) -> str:
    """promtool's complaints ('' when none)."""
    completed = subprocess.run(
        [shutil.which("promtool"), "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30
    )
    return "" if completed.returncode == 0 else (completed.stdout + completed.stderr).strip() or f"exit {completed.returncode}"


def scrape(port: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def assert_well_named(exposition: str, expected: set[str]) -> None:
    assert expected <= set(families(exposition)), f"missing: {expected - set(families(exposition))}"
    assert naming_problems(exposition) == []
    if shutil.which("promtool"):
        assert promtool_problems(exposition) == ""


def test_the_check_catches_what_promtool_rejects():
    bad = (
        "# HELP emq_edge_stage_ms Mean ms per frame\n# TYPE emq_edge_stage_ms gauge\nemq_edge_stage_ms 4.5\n"
        "# HELP emq_requests Requests\n# TYPE emq_requests counter\nemq_requests 3\n"
        "# HELP emq_depth_total Depth\n# TYPE emq_depth_total gauge\nemq_depth_total 1\n"
        "# TYPE emq_latency_minutes histogram\nemq_latency_minutes_bucket{le=\"+Inf\"} 1\nemq_latency_minutes_count 1\n"
        "unexplained_thing 1\n"
    )
    problems = "\n".join(naming_problems(bad))
    for expected in ("emq_edge_stage_ms: unit 'ms'", "emq_requests: a counter's name ends in _total",
                     "emq_depth_total: a gauge must not end in _total", "emq_latency_minutes: unit 'minutes'",
                     "emq_latency_minutes: no help text", "unexplained_thing: no emq_ prefix", "unexplained_thing: no TYPE line"):
        assert expected in problems, problems
    if shutil.which("promtool"):
        assert "abbreviated units" in promtool_problems(bad)


@pytest.fixture
def ingest_metrics(broker, pki_dir, tmp_path, mqtt_client, topics, spawned) -> str:
    """The metrics port of a real ingest that has stored a result and bridged a device's stats and status."""
    env = ingest_env(pki_dir, broker.settings.tls_port, tmp_path / "data", f"sqlite:///{tmp_path / 'cloud.db'}")
    log_path = tmp_path / "ingest.log"
    spawned.append(start_ingest(env, log_path))
    assert wait_until(lambda: log_path.exists() and "subscriptions active" in log_path.read_text(), WAIT_S), log_path.read_text()
    device = mqtt_client("cam-a")
    stats = json.dumps({
        "schema": "emotion.stats/1", "device_id": "cam-a", "sent_at": "2026-11-22T03:47:13.123Z", "uptime_s": 5, "fps": 12.5,
        "frames_processed": 60, "frames_dropped": 2, "results_published": 58, "outbox_depth": 3, "outbox_dropped": 0,
        "stage_ms": {"decode": 1.0, "detect": 4.5}, "model": {"name": "m", "version": "1.0.0"}, "source": "file:x", "paused": False,
    }).encode()
    for topic, body in ((topics.result("cam-a"), factories.result(seq=1).to_json()), (topics.stats("cam-a"), stats),
                        (topics.status("cam-a"), b"online")):
        assert device.publish(topic, body, qos=1).wait(WAIT_S)
    port = env["EMQ_INGEST__METRICS_PORT"]
    assert wait_until(lambda: 'emq_edge_online{device="cam-a"} 1.0' in scrape(port) and "emq_edge_stage_seconds{" in scrape(port))
    return port


def test_ingest_metrics_are_well_named(ingest_metrics):
    text = scrape(ingest_metrics)
    assert 'emq_edge_stage_seconds{device="cam-a",stage="detect"} 0.0045' in text, "milliseconds became seconds"
    assert_well_named(text, {"emq_ingest_stored_total", "emq_ingest_batch_seconds", "emq_edge_stage_seconds", "emq_edge_online"})


def test_webui_metrics_are_well_named(tmp_path, pki_dir, broker):
    env = env_for(tmp_path, pki_dir, broker.settings.tls_port)
    server = ServerProcess(env, tmp_path / "webui.log")
    try:
        assert HttpSession(server.url()).get("/").status == 302  # one request, so the latency histogram has samples
        port = env["EMQ_WEBUI__SERVER__METRICS_PORT"]
        assert wait_until(lambda: "emq_webui_request_seconds_count{" in scrape(port))
        assert_well_named(scrape(port), {"emq_webui_request_seconds", "emq_webui_responses_total", "emq_webui_live_streams"})
    finally:
        server.stop()
