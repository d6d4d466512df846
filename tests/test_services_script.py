"""scripts/services.sh (what scripts/demo.sh runs after its setup): a Ctrl-C stops the services in reverse order.

The real script starts the real broker, ingest, web UI and edge on free ports;
the test then sends SIGINT to the script's process group, as a terminal does
on Ctrl-C, and checks that the edge stopped first with an empty outbox, while
the ingest and the broker still ran, and the broker stopped last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from cloud.store import Store
from tests.cloud_helpers import ingest_env
from tests.conftest import REPO_ROOT, free_port, media_file, wait_until
from tests.edge_helpers import agent_env
from tests.test_webui_cli import env_for

START_S = 60.0
STOP_S = 60.0
START_ORDER = ["broker", "ingest", "webui", "edge"]


def terminal_signals() -> None:
    """A terminal starts its foreground job with SIGINT at its default and unblocked. A child inherits an
    ignored SIGINT from the test process, and bash cannot trap a signal ignored on entry. pytest gets an
    ignored SIGINT when the suite runs as a background job of a shell without job control (`… &`):
    such runs never delivered the Ctrl-C to the script."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def services_env(pki_dir: Path, tmp_path: Path) -> tuple[dict[str, str], str]:
    """Every service configured through its own EMQ_* variables, as in a container; returns (env, database URL)."""
    port = free_port()
    database = f"sqlite:///{tmp_path / 'cloud.db'}"
    env = ingest_env(pki_dir, port, tmp_path / "cloud-data", database)
    webui = env_for(tmp_path / "webui", pki_dir, port)
    edge = agent_env(pki_dir, port, tmp_path / "edge", device_id="cam-a")
    env.update({key: value for key, value in {**webui, **edge}.items() if key.startswith(("EMQ_WEBUI__", "EMQ_EDGE__"))})
    env.update({
        "EMQ_BROKER__PKI_DIR": str(pki_dir), "EMQ_BROKER__STATE_DIR": str(tmp_path / "broker"),
        "EMQ_BROKER__TLS_PORT": str(port), "EMQ_BROKER__PASSWORD_PORT": str(free_port()),
        "EMQ_VENV": str(Path(sys.executable).parent.parent), "EMQ_DEMO_SOURCE": str(media_file("woman2.mp4")),
        "EMQ_DEMO_DEVICE": "cam-a", "EMQ_DEMO_LOG_DIR": str(tmp_path / "log"),
    })
    (tmp_path / "webui").mkdir(exist_ok=True)
    return env, database


def service_pids(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"services: started (\w+) \(pid (\d+)", output)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_leftovers(pids: dict[str, int]) -> None:
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ctrl_c_stops_the_edge_first_and_the_broker_last(pki_dir, tmp_path):
    env, database = services_env(pki_dir, tmp_path)
    output_path = tmp_path / "services.out"
    with output_path.open("wb") as output:
        # A session of its own, like a terminal's foreground job: SIGINT to its group is a Ctrl-C.
        script = subprocess.Popen(["bash", str(REPO_ROOT / "scripts/services.sh")], env=env, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=terminal_signals)
    read_output = lambda: output_path.read_text(errors="replace")  # noqa: E731
    try:
        store_path = Path(database.removeprefix("sqlite:///"))
        stored = lambda: store_path.exists() and Store(database).counts()["results"] >= 10  # noqa: E731
        assert wait_until(stored, START_S, interval=0.5), read_output()
        assert list(service_pids(read_output())) == START_ORDER
        os.killpg(script.pid, signal.SIGINT)
        assert script.wait(STOP_S) == 130, read_output()
    finally:
        if script.poll() is None:
            script.kill()
        kill_leftovers(service_pids(read_output()))

    text = read_output()
    stopped = re.findall(r"services: (\w+) stopped \(exit (\d+)\)", text)
    assert stopped == [(name, "0") for name in reversed(START_ORDER)], text
    assert not any(alive(pid) for pid in service_pids(text).values())
    totals = json.loads(text.split("edge totals: ", 1)[1].splitlines()[0])
    assert totals["outbox_depth"] == 0 and totals["results_published"] >= 10, "the edge flushed its outbox"
    assert "stay in the outbox" not in text
    broker_log = (tmp_path / "log" / "broker.log").read_text()
    assert broker_log.index("Client cam-a disconnected") < broker_log.index("terminating"), "the edge left before the broker"
    ingest_log = (tmp_path / "log" / "ingest.log").read_text()
    ingest_totals = json.loads(ingest_log.rsplit("ingest totals: ", 1)[1].splitlines()[0])
    assert ingest_totals["results"] == totals["results_published"], "the ingest stored all the edge sent before it stopped"
    everything = text + ingest_log + (tmp_path / "log" / "webui.log").read_text()
    assert "Traceback" not in everything and " ERROR " not in everything, "a normal stop logs no errors"
