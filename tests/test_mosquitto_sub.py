"""CLI monitoring: the stock mosquitto_sub, with exactly the README's flags, reads valid results."""

from __future__ import annotations

import json
import shlex
import subprocess

from contract.validation import parse_result
from tests import factories
from tests.conftest import REPO_ROOT, WAIT_S, wait_until

MARKER = "<!-- mosquitto-sub-results -->"


def readme_command() -> list[str]:
    """The first command after the marker in the README, split like a shell would."""
    text = (REPO_ROOT / "README.md").read_text()
    after = text[text.index(MARKER):]
    line = next(line for line in after.splitlines() if line.startswith("mosquitto_sub "))
    return shlex.split(line)


def localise(command: list[str], pki_dir, port: int) -> list[str]:
    """Point the README's paths and port at this run's PKI and broker; keep every flag."""
    mapped = [argument.replace("var/pki", str(pki_dir)) for argument in command]
    mapped[mapped.index("-p") + 1] = str(port)
    return mapped


def test_readme_command_uses_tls_and_the_monitor_identity():
    command = readme_command()
    assert {"--cafile", "--cert", "--key"} <= set(command)
    assert command[command.index("-p") + 1] == "8883"
    assert "var/pki/clients/monitor.crt" in command


def test_mosquitto_sub_receives_a_schema_valid_result(broker, pki_dir, mqtt_client, topics):
    command = localise(readme_command(), pki_dir, broker.settings.tls_port) + ["-C", "1", "-W", str(int(WAIT_S))]
    subscriber = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        device = mqtt_client("cam-a")
        published = factories.result(device_id="cam-a", seq=1)
        # mosquitto_sub says nothing once subscribed, so publish until it has
        # received one and exited (-C 1); bounded by the timeout.
        def received() -> bool:
            assert device.publish(topics.result("cam-a"), published.to_json(), qos=1).wait(WAIT_S)
            return subscriber.poll() is not None
        assert wait_until(received, WAIT_S, interval=0.1), "mosquitto_sub received nothing"
        output, errors = subscriber.communicate(timeout=WAIT_S)
    finally:
        subscriber.kill()
    assert subscriber.returncode == 0, errors.decode()
    line = output.decode().strip()
    document = json.loads(line)
    assert parse_result(line) == published
    assert document["emotion_text"] == published.emotion_text
