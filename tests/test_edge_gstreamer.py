"""`gst:` sources in the real agent: a gst-launch-1.0 child feeds `emq-edge`, which publishes to the real broker.

Needs Debian's gstreamer1.0-tools, -plugins-base and -plugins-good (`scripts/setup.sh --test`).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess

import pytest

from edge.cli import EXIT_SOURCE  # 4: the source cannot be opened or has no readable frame
from tests.conftest import WAIT_S, console_script, media_file, subscribe_and_wait, wait_until
from tests.edge_helpers import agent_env, agent_log, assert_complete_once, run_agent, start_agent, unique_results
from tests.test_gstreamer import child_gone

pytestmark = pytest.mark.skipif(
    shutil.which("gst-launch-1.0") is None, reason="gst-launch-1.0 missing: apt-get install gstreamer1.0-tools"
)
CHILD_PID = re.compile(r"gst-launch pid (\d+)")


def child_pids(tmp_path) -> list[int]:
    """The gst-launch children the agent started, in order (it logs each one's pid)."""
    return [int(pid) for pid in CHILD_PID.findall(agent_log(tmp_path))]


def test_videotestsrc_feeds_the_agent_is_restarted_at_its_end_and_stops_with_it(
    broker, pki_dir, tmp_path, mqtt_client, topics, spawned
):
    results = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
    env = agent_env(
        pki_dir, broker.settings.tls_port, tmp_path / "edge", PUBLISH__HEARTBEAT_S="0.000001",
        SOURCE__GSTREAMER__BACKEND="subprocess",
    )
    spec = "gst:videotestsrc num-buffers=25 ! video/x-raw,width=320,height=240"
    process = run_agent(spawned, env, tmp_path, "--source", spec)

    # 25 frames, the end of the pipeline, a restart with backoff (a live source), 25 more.
    assert results.wait_for(lambda messages: len(messages) >= 40, WAIT_S * 3), agent_log(tmp_path)
    assert wait_until(lambda: len(child_pids(tmp_path)) >= 2), agent_log(tmp_path)
    assert "reopening" in agent_log(tmp_path) and process.poll() is None
    first, current = child_pids(tmp_path)[0], child_pids(tmp_path)[-1]
    assert child_gone(first) and not child_gone(current)

    parsed = unique_results(results.messages)
    assert {result.source for result in parsed} == {"gst:videotestsrc"}
    assert {(result.frame.width, result.frame.height) for result in parsed} == {(320, 240)}
    assert [result.frame_number for result in parsed[:25]] == list(range(25))
    assert parsed[25].frame_number == 0  # the restarted pipeline's first frame

    process.send_signal(signal.SIGTERM)
    assert process.wait(WAIT_S * 2) == 0, agent_log(tmp_path)
    assert child_gone(current), "the gst-launch child outlived the agent"
    assert_complete_once(results.messages)


def test_a_shared_photo_through_decodebin_gives_faces(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    photo = media_file("justin.jpg")
    results = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
    env = agent_env(
        pki_dir, broker.settings.tls_port, tmp_path / "edge", SOURCE__GSTREAMER__BACKEND="subprocess",
        SOURCE__GSTREAMER__WIDTH="384", SOURCE__GSTREAMER__HEIGHT="384",
    )
    # imagefreeze repeats the decoded photo for ever; the pipeline has no caps, so it is scaled to 384x384.
    process = run_agent(spawned, env, tmp_path, "--source", f'gst:filesrc location="{photo}" ! decodebin ! imagefreeze')
    assert results.wait_for(lambda messages: sum(bool(r.faces) for r in unique_results(messages)) >= 5, WAIT_S * 3), agent_log(tmp_path)
    result = next(r for r in unique_results(results.messages) if r.faces)
    assert (result.source, result.frame.width, result.frame.height) == ("gst:filesrc", 384, 384)
    [pid] = child_pids(tmp_path)
    process.send_signal(signal.SIGTERM)
    assert process.wait(WAIT_S * 2) == 0, agent_log(tmp_path)
    assert child_gone(pid)


def test_the_child_dies_with_a_killed_agent(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    results = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
    env = agent_env(
        pki_dir, broker.settings.tls_port, tmp_path / "edge", PUBLISH__HEARTBEAT_S="0.000001",
        SOURCE__GSTREAMER__BACKEND="subprocess", SOURCE__GSTREAMER__READ_TIMEOUT_S="60",
    )
    # A live source at one frame per minute: after the first frame the child writes nothing, so no
    # broken pipe would end it; only the death signal can, when the agent is killed.
    spec = "gst:videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=1/60"
    process = run_agent(spawned, env, tmp_path, "--source", spec)
    assert results.wait_for(lambda messages: len(messages) >= 1, WAIT_S * 3), agent_log(tmp_path)
    [pid] = child_pids(tmp_path)
    assert not child_gone(pid)
    process.send_signal(signal.SIGKILL)
    process.wait(WAIT_S)
    assert wait_until(lambda: child_gone(pid), WAIT_S), f"gst-launch {pid} survived its killed agent"


@pytest.mark.parametrize(
    ("pipeline", "gstreamer_says"),
    [
        ("gst:nosuchelement ! videoconvert", 'no element "nosuchelement"'),
        ("gst:filesrc location=/nonexistent/video.mp4 ! decodebin", 'No such file "/nonexistent/video.mp4"'),
    ],
)
def test_a_failing_pipeline_exits_with_the_source_code_and_gstreamers_words(pki_dir, tmp_path, pipeline, gstreamer_says):
    env = agent_env(pki_dir, 1, tmp_path / "edge", SOURCE__GSTREAMER__BACKEND="subprocess")
    completed = subprocess.run([console_script("emq-edge"), "--source", pipeline], env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == EXIT_SOURCE, completed.stderr
    assert "cannot open source" in completed.stderr and gstreamer_says in completed.stderr
    assert "Traceback" not in completed.stderr
    assert all(child_gone(pid) for pid in map(int, CHILD_PID.findall(completed.stderr)))
