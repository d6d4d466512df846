"""Architecture rules that CI enforces: import contracts, and an edge that installs and runs on its own."""

from __future__ import annotations

import os
import subprocess
import tomllib
import venv
from pathlib import Path

import pytest

from contract.validation import parse_result
from tests.conftest import REPO_ROOT, WAIT_S, console_script, media_file, subscribe_and_wait
from tests.edge_helpers import agent_env

CONTRACTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def lint_imports(config: Path, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = f"{extra_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([console_script("lint-imports"), "--config", str(config), "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    run = lint_imports(REPO_ROOT / "pyproject.toml", REPO_ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_the_edge_contract_catches_an_edge_that_imports_training(tmp_path):
    """The same contract, on a tiny tree where the edge reaches Keras through models: reported as broken."""
    for package, source in {"edge": "from models import training\n", "models": "", "runtime": "",
                            "cloud": "", "webui": ""}.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(source)
    (tmp_path / "models" / "training.py").write_text("import keras\n")
    edge_contract = next(contract for contract in CONTRACTS["contracts"] if contract["source_modules"] == ["edge"])
    forbidden = ", ".join(f'"{name}"' for name in edge_contract["forbidden_modules"])
    (tmp_path / "lint.toml").write_text(
        '[tool.importlinter]\nroot_packages = ["edge", "models", "runtime", "cloud", "webui"]\n'
        "include_external_packages = true\n[[tool.importlinter.contracts]]\n"
        f'name = "edge"\ntype = "forbidden"\nsource_modules = ["edge"]\nforbidden_modules = [{forbidden}]\n'
    )
    run = lint_imports(tmp_path / "lint.toml", tmp_path, extra_path=tmp_path)
    assert run.returncode != 0 and "edge is not allowed to import models" in run.stdout, run.stdout + run.stderr


@pytest.mark.slow
def test_an_edge_only_install_runs_the_agent(tmp_path, broker, pki_dir, mqtt_client, topics):
    """`pip install '.[edge]'` into a fresh virtualenv: no TensorFlow, Flask or matplotlib, and emq-edge works."""
    environment = tmp_path / "edge-venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"{REPO_ROOT}[edge]"],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    absent = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in "
                             "('tensorflow', 'keras', 'flask', 'matplotlib', 'psycopg') if u.find_spec(m)])"],
                            capture_output=True, text=True, timeout=60)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr

    results = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
    env = agent_env(pki_dir, broker.settings.tls_port, tmp_path / "edge")
    env["EMQ_MODEL_STORE"] = str(REPO_ROOT / "models" / "store")  # an installed package has no checkout store
    env.pop("PYTHONPATH", None)  # only what the fresh environment installed
    run = subprocess.run([str(environment / "bin" / "emq-edge"), "--source", str(media_file("justin.jpg"))],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert results.wait_for(lambda messages: messages, WAIT_S)
    result = parse_result(results.messages[0].payload)
    assert result.device_id == "cam-a" and result.faces
