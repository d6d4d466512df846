"""The edge agent's systemd unit and example config (deploy/systemd, deploy/edge.example.toml).

What matters on a device: it restarts, but not in a tight loop; SIGTERM gets
enough time for the outbox flush; it runs unprivileged with hardening that
still lets it open /dev/video0 (and a Jetson's camera stack); the config it
points at is one the agent accepts.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from common.config import load_config
from edge.config import ENV_PREFIX, EdgeConfig
from tests.conftest import DEVICES

REPO_ROOT = Path(__file__).resolve().parents[1]

UNIT = REPO_ROOT / "deploy" / "systemd" / "emq-edge.service"
EXAMPLE_CONFIG = REPO_ROOT / "deploy" / "edge.example.toml"
DOCS = REPO_ROOT / "docs" / "deploy.md"
# Beyond the outbox flush, a clean stop waits up to 5 s for the `stopped` status to be acknowledged.
STOPPED_ANNOUNCE_S = 5.0


def unit_sections(path: Path = UNIT) -> dict[str, list[tuple[str, str]]]:
    """systemd's format: sections of Key=Value lines, keys may repeat (configparser would merge them)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        else:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def values(section: str, key: str) -> list[str]:
    return [value for name, value in unit_sections()[section] if name == key]


def value(section: str, key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times"
    return found[0]


def timespan_seconds(text: str) -> float:
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "ms": 0.001}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert match and match[2] in units, f"unsupported timespan {text!r}"
    return float(match[1]) * units[match[2]]


def default_flush_timeout() -> float:
    return EdgeConfig.model_fields["outbox"].default_factory().flush_timeout_s


# -- the unit ------------------------------------------------------------------------------------------
def test_restarts_always_with_a_delay_and_a_start_rate_limit():
    assert value("Service", "Restart") == "always"
    assert timespan_seconds(value("Service", "RestartSec")) >= 5
    # Since systemd 230 the rate limit lives in [Unit]; in [Service] it would be ignored.
    assert timespan_seconds(value("Unit", "StartLimitIntervalSec")) > 0
    assert int(value("Unit", "StartLimitBurst")) >= 3
    assert set(value("Service", "RestartPreventExitStatus").split()) == {"2", "3"}  # bad config, no model (edge/cli.py)


def test_sigterm_gets_more_time_than_the_outbox_flush():
    assert value("Service", "KillSignal") == "SIGTERM"
    stop_timeout = timespan_seconds(value("Service", "TimeoutStopSec"))
    assert stop_timeout > default_flush_timeout() + STOPPED_ANNOUNCE_S
    configured_flush = tomllib.loads(EXAMPLE_CONFIG.read_text())["outbox"]["flush_timeout_s"]
    assert stop_timeout > configured_flush + STOPPED_ANNOUNCE_S


def test_runs_unprivileged_with_its_config_and_state():
    assert value("Service", "User") not in ("", "root")
    command = shlex.split(value("Service", "ExecStart"))
    assert Path(command[0]).name == "emq-edge"
    assert command[command.index("--config") + 1] == "/etc/emotion-mqtt/edge.toml"
    config = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert config["data_dir"] == f"/var/lib/{value('Service', 'StateDirectory')}"


def test_hardening_keeps_camera_access():
    assert value("Service", "NoNewPrivileges") == "yes"
    assert value("Service", "ProtectSystem") == "strict"
    assert value("Service", "CapabilityBoundingSet") == ""
    assert value("Service", "PrivateDevices") == "no", "PrivateDevices=yes hides /dev/video0"
    assert value("Service", "PrivateTmp") == "no", "PrivateTmp=yes hides nvargus-daemon's /tmp/argus_socket"
    assert "video" in value("Service", "SupplementaryGroups").split()
    assert not values("Service", "DevicePolicy"), "a closed device policy would need DeviceAllow for every Tegra node"
    families = value("Service", "RestrictAddressFamilies").split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)


def test_systemd_accepts_the_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # The venv path of a device does not exist here; everything else is checked as written.
    unit = tmp_path / UNIT.name
    unit.write_text(re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", UNIT.read_text(), flags=re.MULTILINE))
    completed = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0 and not completed.stderr.strip(), completed.stderr


# -- the example config --------------------------------------------------------------------------------
def test_example_config_is_accepted_by_the_agent(pki_dir):
    # pki_dir and device_id point at the test PKI, which holds real certificates for them.
    config = load_config(EdgeConfig, EXAMPLE_CONFIG, env_prefix=ENV_PREFIX, environ={},
                         overrides={"pki_dir": str(pki_dir), "device_id": DEVICES[0]})
    assert config.mqtt.tls is not None and config.mqtt.tls.cert_file.name == f"{DEVICES[0]}.crt"
    assert config.source.spec == "camera:0"


def test_docs_describe_the_unit_and_the_jetson_images():
    text = DOCS.read_text()
    for required in ("deploy/systemd/emq-edge.service", "deploy/Dockerfile.jetson", "ai-edge-litert", "GStreamer", "docker compose"):
        assert required in text, f"docs/deploy.md does not mention {required}"
