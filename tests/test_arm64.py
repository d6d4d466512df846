"""A real aarch64 run: emq-edge in an emulated arm64 Debian (scripts/arm64-run.sh) against the test broker.

Opt-in, because it is slow: the first run debootstraps an arm64 userland and pip-installs the edge
extra under QEMU (tens of minutes; var/arm64/ caches it for later runs)::

    EMQ_ARM64=1 pytest tests/test_arm64.py        # or: pytest -m arm64

Needs root (chroot, bind mounts) and apt access when debootstrap or qemu-user-static are missing.
What it proves: the arm64 wheels install and work (OpenCV decodes the clip, LiteRT runs the model)
and the agent's results reach a real broker over TLS. Emulation speed says nothing about a Jetson.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from contract.validation import parse_result
from tests.conftest import REPO_ROOT, WAIT_S, media_file, subscribe_and_wait
from tests.edge_helpers import agent_env, assert_complete_once

pytestmark = [pytest.mark.arm64, pytest.mark.slow]

SCRIPT = REPO_ROOT / "scripts" / "arm64-run.sh"
FRAMES = 12
PREPARE_TIMEOUT_S = 3 * 3600  # a cold debootstrap + pip install under emulation
RUN_TIMEOUT_S = 900


def _opted_in(config: pytest.Config) -> bool:
    # `-m "not arm64"` deselects before this runs; any other expression naming the marker opts in.
    return os.environ.get("EMQ_ARM64") == "1" or "arm64" in (config.getoption("markexpr") or "")


@pytest.fixture(scope="module", autouse=True)
def _opt_in(request):
    """Module scope, so that it runs before the module-scoped userland fixture."""
    if not _opted_in(request.config):
        pytest.skip("emulated aarch64 run: slow, opt in with EMQ_ARM64=1 or -m arm64")
    if os.geteuid() != 0:
        pytest.skip("emulated aarch64 run needs root (debootstrap, chroot, bind mounts)")


def _script(*arguments: str, env: dict[str, str] | None = None, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *arguments], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def arm64_frames() -> Path:
    """The cached arm64 userland with the edge extra, and the first frames of a clip decoded there."""
    clip = media_file("test.mp4")
    prepared = _script("prepare", timeout=PREPARE_TIMEOUT_S)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    env = dict(os.environ, EMQ_ARM64_SOURCE=str(clip))
    extracted = _script("frames", str(FRAMES), env=env, timeout=RUN_TIMEOUT_S)
    assert extracted.returncode == 0, extracted.stderr[-3000:]
    folder = Path(extracted.stdout.strip().splitlines()[-1])
    assert len(list(folder.glob("*.jpg"))) == FRAMES, f"the arm64 OpenCV decoded too few frames into {folder}"
    return folder


def _edge_totals(output: str) -> dict:
    match = re.search(r"edge totals: (\{.*\})", output)
    assert match, f"no totals line in the agent's output:\n{output[-3000:]}"
    return json.loads(match.group(1))


def test_the_agent_runs_on_emulated_aarch64_and_its_results_validate(arm64_frames, broker, pki_dir, mqtt_client, topics, tmp_path):
    results = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
    env = agent_env(pki_dir, broker.settings.tls_port, tmp_path / "unused")  # the script maps PKI and data into the chroot
    env.update(EMQ_ARM64_PKI=str(pki_dir), EMQ_ARM64_DATA=str(tmp_path / "edge"), EMQ_ARM64_FRAMES_DIR=str(arm64_frames))

    run = _script("edge", "--source", "/opt/emq/frames", env=env, timeout=RUN_TIMEOUT_S)

    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert re.search(r"emq-edge on aarch64 Python 3\.\d+", output), output[-3000:]
    totals = _edge_totals(output)
    assert totals["frames_processed"] == FRAMES and totals["outbox_depth"] == 0, totals
    assert results.wait_for(lambda messages: len(messages) >= totals["results_published"], WAIT_S)
    assert_complete_once(results.messages, totals["results_published"])  # parses every one against the contract
    parsed = [parse_result(message.payload) for message in results.messages]
    assert {result.device_id for result in parsed} == {"cam-a"}
    assert any(result.faces for result in parsed), "the emulated agent found no face in the clip"
