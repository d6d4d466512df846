"""emq-retrain tells its failures apart: a candidate that cannot be exported or gated (6), a release that
cannot reach the edges (4, the model stays registered), and `emq-retrain release VERSION` resends one."""

from __future__ import annotations

import shutil

import pytest

from models import retrain
from runtime.registry import ModelRegistry
from tests.conftest import WAIT_S, free_port, subscribe_and_wait


@pytest.fixture
def store_copy(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(ModelRegistry().store, store)
    return store


def retrain_env(monkeypatch, tmp_path, pki_dir, port: int, store) -> None:
    for key, value in {
        "EMQ_RETRAIN__DATABASE_URL": f"sqlite:///{tmp_path / 'cloud.db'}", "EMQ_RETRAIN__MODEL_STORE": str(store),
        "EMQ_RETRAIN__CARD_DIR": str(tmp_path / "cards"), "EMQ_RETRAIN__PKI_DIR": str(pki_dir),
        "EMQ_RETRAIN__MQTT__HOST": "localhost", "EMQ_RETRAIN__MQTT__PORT": str(port),
    }.items():
        monkeypatch.setenv(key, value)


def test_a_gate_failure_and_a_release_failure_have_their_own_exit_codes(monkeypatch, tmp_path, pki_dir, store_copy, capsys):
    retrain_env(monkeypatch, tmp_path, pki_dir, free_port(), store_copy)

    def fails_in_the_gate(config):
        raise retrain.GateFailed("the candidate could not be exported or gated: RuntimeError: LiteRT says no")

    monkeypatch.setattr(retrain, "run_retraining", fails_in_the_gate)
    assert retrain.main([]) == retrain.EXIT_GATE == 6
    assert "LiteRT says no" in capsys.readouterr().err

    monkeypatch.setattr(retrain, "RELEASE_CONNECT_TIMEOUT_S", 0.5)
    assert retrain.main(["release", "1.0.0"]) == retrain.EXIT_RELEASE == 4  # nothing listens on that port
    assert "cannot reach the broker" in capsys.readouterr().err
    assert retrain.main(["release", "9.9.9"]) == retrain.EXIT_NO_DATA  # not a registered version


def test_export_errors_become_gate_failures(monkeypatch, tmp_path):
    """Whatever the LiteRT export or the gate's evaluation raises comes out as GateFailed (exit 6)."""
    import models.convert

    def broken_export(*_arguments, **_keywords):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(models.convert, "export_tflite", broken_export)
    with pytest.raises(retrain.GateFailed, match="RuntimeError: converter crashed"):
        retrain.export_and_gate(object(), tmp_path, tmp_path / "current.tflite", {}, {}, retrain.GateRule())


def test_release_resends_a_registered_version_to_the_fleet(monkeypatch, tmp_path, pki_dir, store_copy, broker, mqtt_client, topics):
    retrain_env(monkeypatch, tmp_path, pki_dir, broker.settings.tls_port, store_copy)
    releases = subscribe_and_wait(mqtt_client("cam-a"), topics.model_release)
    assert retrain.main(["release", "1.0.0"]) == 0
    assert releases.wait_for(lambda messages: any(b'"1.0.0"' in message.payload for message in messages), WAIT_S)
