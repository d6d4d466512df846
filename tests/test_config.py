"""Typed configs: files, environment overrides, unknown keys, clear errors."""

from __future__ import annotations

import pytest

from cloud.config import IngestConfig
from common.config import ConfigError, load_config
from edge.config import EdgeConfig


def test_environment_overrides_the_file_and_nests_with_double_underscores(tmp_path, pki_dir):
    config_file = tmp_path / "edge.toml"
    config_file.write_text(f'device_id = "cam-a"\npki_dir = "{pki_dir}"\n[mqtt]\nhost = "file-host"\nport = 1\n')
    config = load_config(EdgeConfig, config_file, env_prefix="EMQ_EDGE__", environ={"EMQ_EDGE__MQTT__PORT": "8884", "EMQ_EDGE__SOURCE__LOOP": "true"})
    assert config.mqtt.host == "file-host" and config.mqtt.port == 8884 and config.source.loop is True
    assert config.mqtt.client_id == "cam-a"
    assert config.mqtt.tls.cert_file == pki_dir / "clients" / "cam-a.crt"


def test_every_problem_is_reported_with_its_origin(tmp_path, pki_dir):
    environ = {"EMQ_EDGE__PKI_DIR": str(pki_dir), "EMQ_EDGE__PUBLISH__JPEG_QUALITY": "500", "EMQ_EDGE__SOURCE__TYPO": "1"}
    with pytest.raises(ConfigError) as caught:
        load_config(EdgeConfig, None, env_prefix="EMQ_EDGE__", environ=environ)
    message = str(caught.value)
    assert "publish.jpeg_quality" in message and "EMQ_EDGE__PUBLISH__JPEG_QUALITY" in message
    assert "source.typo" in message and "Extra inputs are not permitted" in message


def test_missing_certificates_say_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="emq-pki init"):
        load_config(EdgeConfig, None, env_prefix="EMQ_EDGE__", environ={"EMQ_EDGE__PKI_DIR": str(tmp_path)})


def test_bad_toml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("device_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(EdgeConfig, broken, env_prefix="EMQ_EDGE__", environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(EdgeConfig, tmp_path / "absent.toml", env_prefix="EMQ_EDGE__", environ={})


def test_reserved_device_ids_are_refused(pki_dir):
    with pytest.raises(ConfigError, match="reserved"):
        load_config(EdgeConfig, None, env_prefix="X__", environ={}, overrides={"device_id": "monitor", "pki_dir": str(pki_dir)})


def test_ingest_defaults_to_a_persistent_session(pki_dir):
    config = load_config(IngestConfig, None, env_prefix="EMQ_INGEST__", environ={"EMQ_INGEST__PKI_DIR": str(pki_dir)})
    assert config.mqtt.client_id == "ingest" and config.mqtt.clean_start is False and config.mqtt.session_expiry_s > 0


def test_a_named_ingest_worker_is_its_own_identity(pki_dir):
    environ = {"EMQ_INGEST__PKI_DIR": str(pki_dir), "EMQ_INGEST__WORKER_NAME": "2"}
    config = load_config(IngestConfig, None, env_prefix="EMQ_INGEST__", environ=environ)
    assert config.identity == config.mqtt.client_id == "ingest-2"
    assert config.mqtt.tls.cert_file.name == "ingest-2.crt"
    with pytest.raises(ConfigError, match="ingest-7.crt does not exist"):
        load_config(IngestConfig, None, env_prefix="EMQ_INGEST__", environ={**environ, "EMQ_INGEST__WORKER_NAME": "7"})
