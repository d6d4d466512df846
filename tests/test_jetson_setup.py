"""scripts/jetson-setup.sh without a Jetson: fake L4T release files in a temporary root (EMQ_JETSON_ROOT).

Dry runs check the plan for each JetPack generation; a real run under the temporary root
checks the files it writes (certificates, key mode, config, unit), and that the agent accepts
the config. What needs the device (apt, Python installs, systemd) is only printed there.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import DEVICES, REPO_ROOT, console_script

SCRIPT = REPO_ROOT / "scripts" / "jetson-setup.sh"
UNIT = REPO_ROOT / "deploy" / "systemd" / "emq-edge.service"
RELEASE_LINES = {  # the first line of /etc/nv_tegra_release on each generation
    "4.6.1": "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022",
    "5.1.2": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
    "6.0": "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19 23:24:25 UTC 2024",
}


def fake_jetson(root: Path, release_line: str | None) -> Path:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    if release_line is not None:
        (root / "etc" / "nv_tegra_release").write_text(release_line + "\n")
    return root


def setup_arguments(pki_dir: Path, device: str = DEVICES[0], *extra: str) -> list[str]:
    clients = pki_dir / "clients"
    return [
        "--device-id", device, "--broker", "broker.example.org", "--ca", str(pki_dir / "ca.crt"),
        "--cert", str(clients / f"{DEVICES[0]}.crt"), "--key", str(clients / f"{DEVICES[0]}.key"), *extra,
    ]


def run_setup(root: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMQ_JETSON_ROOT": str(root)}
    return subprocess.run(["bash", str(SCRIPT), *arguments], env=env, capture_output=True, text=True, timeout=60, check=False)


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_shellcheck_finds_nothing():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    completed = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stdout


@pytest.mark.parametrize(
    ("jetpack", "python_step"),
    [
        ("4.6.1", "tar -xzf"),  # a python-build-standalone tarball
        ("5.1.2", "add-apt-repository -y ppa:deadsnakes/ppa"),
        ("6.0", "apt-get install -y python3.10 python3.10-venv"),
    ],
)
def test_dry_run_plans_each_jetpack_and_changes_nothing(tmp_path, pki_dir, jetpack, python_step):
    root = fake_jetson(tmp_path / "root", RELEASE_LINES[jetpack])
    tarball = tmp_path / "cpython-3.11.9-aarch64-unknown-linux-gnu-install_only.tar.gz"
    tarball.write_bytes(b"not unpacked in a dry run")
    extra = ["--python-tarball", str(tarball)] if jetpack.startswith("4") else []
    before = tree(root)
    completed = run_setup(root, "--dry-run", *setup_arguments(pki_dir, DEVICES[0], "--sensor-mode", "2", *extra))
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert f"JetPack {jetpack} (L4T" in out and python_step in out
    assert "pip install" in out and f"{REPO_ROOT}\\[edge\\]" in out  # the edge extra only
    assert f"install -m 0600 {pki_dir}/clients/{DEVICES[0]}.key {root}/etc/emotion-mqtt/clients/{DEVICES[0]}.key" in out
    assert 'spec = "csi:0"' in out and 'backend = "subprocess"' in out and "sensor_mode = 2" in out
    assert f"{root}/etc/systemd/system/emq-edge.service" in out
    assert "(skipped: EMQ_JETSON_ROOT" in out  # apt, useradd, systemctl: never on this machine
    assert tree(root) == before


def test_jetpack_4_without_a_python_says_where_to_get_one(tmp_path, pki_dir):
    root = fake_jetson(tmp_path / "root", RELEASE_LINES["4.6.1"])
    completed = run_setup(root, "--dry-run", *setup_arguments(pki_dir))
    assert completed.returncode == 2
    assert "Python 3.6" in completed.stderr and "python-build-standalone" in completed.stderr


def test_an_installed_python_is_used(tmp_path, pki_dir):
    root = fake_jetson(tmp_path / "root", RELEASE_LINES["5.1.2"])
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3.11").symlink_to(sys.executable)  # a Python >= 3.10 "already there"
    completed = run_setup(root, "--dry-run", *setup_arguments(pki_dir))
    assert completed.returncode == 0, completed.stderr
    assert f"Python: {root}/usr/bin/python3.11 (installed)" in completed.stdout
    assert "deadsnakes" not in completed.stdout


def test_l4t_version_from_the_package_database(tmp_path, pki_dir):
    if shutil.which("dpkg-query") is None:
        pytest.skip("dpkg-query not installed")
    root = fake_jetson(tmp_path / "root", None)
    dpkg = root / "var" / "lib" / "dpkg"
    dpkg.mkdir(parents=True)
    (dpkg / "status").write_text(
        "Package: nvidia-l4t-core\nStatus: install ok installed\nArchitecture: arm64\n"
        "Version: 36.4.3-20250107174145\nMaintainer: NVIDIA\nDescription: NVIDIA Core Package\n"
    )
    completed = run_setup(root, "--dry-run", *setup_arguments(pki_dir))
    assert completed.returncode == 0, completed.stderr
    assert "JetPack 6.2 (L4T 36.4.3)" in completed.stdout


@pytest.mark.parametrize(
    ("release_line", "message"),
    [(None, "not a Jetson"), ("# R28 (release), REVISION: 2.1, GCID: 1", "not a JetPack 4.6, 5.x or 6.x")],
)
def test_other_systems_are_refused(tmp_path, pki_dir, release_line, message):
    completed = run_setup(fake_jetson(tmp_path / "root", release_line), "--dry-run", *setup_arguments(pki_dir))
    assert completed.returncode == 2 and message in completed.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--flip-method", "9"], "--flip-method must be 0..7"),
        (["--fps", "thirty"], "--fps: not a whole number"),
        (["--port"], "--port"),
    ],
)
def test_bad_options_are_refused(tmp_path, pki_dir, arguments, message):
    root = fake_jetson(tmp_path / "root", RELEASE_LINES["6.0"])
    completed = run_setup(root, "--dry-run", *setup_arguments(pki_dir), *arguments)
    assert completed.returncode != 0 and message in completed.stderr


def test_a_certificate_of_another_device_is_refused(tmp_path, pki_dir):
    root = fake_jetson(tmp_path / "root", RELEASE_LINES["6.0"])
    completed = run_setup(root, "--dry-run", *setup_arguments(pki_dir, DEVICES[1]))  # cam-b with cam-a's files
    assert completed.returncode == 2 and f"not the certificate of {DEVICES[1]}" in completed.stderr


def test_a_run_under_a_root_writes_what_the_agent_accepts(tmp_path, pki_dir):
    root = fake_jetson(tmp_path / "root", RELEASE_LINES["6.0"])
    arguments = setup_arguments(pki_dir, DEVICES[0], "--skip-venv", "--sensor-id", "1", "--flip-method", "2", "--models", str(tmp_path / "none"))
    completed = run_setup(root, *arguments)
    assert completed.returncode == 0, completed.stderr + completed.stdout

    etc = root / "etc" / "emotion-mqtt"
    key = etc / "clients" / f"{DEVICES[0]}.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() == (pki_dir / "clients" / f"{DEVICES[0]}.key").read_bytes()
    assert (etc / "ca.crt").read_bytes() == (pki_dir / "ca.crt").read_bytes()
    assert (root / "etc" / "systemd" / "system" / "emq-edge.service").read_text() == UNIT.read_text()
    config_path = etc / "edge.toml"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o640
    config = tomllib.loads(config_path.read_text())
    assert config["source"] == {
        "spec": "csi:1", "gstreamer": {"backend": "subprocess"},
        "csi": {"sensor_id": 1, "width": 1280, "height": 720, "fps": 30, "flip_method": 2},
    }

    # The agent validates the config as written (its pki_dir is the device's path: point it here).
    env = {**os.environ, "EMQ_EDGE__PKI_DIR": str(etc)}
    printed = subprocess.run([console_script("emq-edge"), "--config", str(config_path), "--print-config"],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert printed.returncode == 0, printed.stderr
    effective = json.loads(printed.stdout)
    assert effective["device_id"] == DEVICES[0] and effective["mqtt"]["host"] == "broker.example.org"

    # A second run keeps the owner's edits and puts its own settings beside them.
    config_path.write_text(config_path.read_text().replace("max_fps = 15", "max_fps = 5"))
    again = run_setup(root, *arguments[:-2], "--max-fps", "10")
    assert again.returncode == 0, again.stderr
    assert "max_fps = 5" in config_path.read_text()
    assert "max_fps = 10" in (etc / "edge.toml.new").read_text()


def test_a_rerun_with_its_virtualenv_needs_no_new_python(tmp_path, pki_dir):
    root = fake_jetson(tmp_path / "root", RELEASE_LINES["4.6.1"])
    venv_bin = root / "opt" / "emotion-mqtt" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    completed = run_setup(root, "--dry-run", *setup_arguments(pki_dir))
    assert completed.returncode == 0, completed.stderr
    assert "Python: the virtualenv's own" in completed.stdout and " -m venv " not in completed.stdout
    assert f"{venv_bin}/python -m pip install" in completed.stdout  # the package is still upgraded
