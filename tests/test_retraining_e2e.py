"""The closed loop, end to end, with every part real:

edge agent on a video → broker → ingest stores crops → a person labels them through the web UI's API →
``emq-retrain`` fine-tunes (1 epoch, time-boxed), gates, writes a model card, releases over MQTT →
the running edge installs the model and reports the new version in its next results.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from cloud.store import Store
from contract.validation import parse_result
from runtime.registry import ModelRegistry
from tests.cloud_helpers import ingest_env, start_ingest
from tests.conftest import SHARED, WAIT_S, console_script, media_file, subscribe_and_wait, wait_until
from tests.edge_helpers import agent_env, start_agent
from tests.webui_helpers import HttpSession, start_webui, webui_config

FER2013 = SHARED / "data" / "fer2013_trainval.npz"
LABELS_TO_GIVE = 40
RETRAIN_TIMEOUT_S = 300


def copy_model_store(destination) -> None:
    """The job registers its model in a store of its own: the repository's stays untouched."""
    source = ModelRegistry().store
    shutil.copytree(source, destination)


def retrain_env(tmp_path, pki_dir, port: int, database: str, store) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "EMQ_RETRAIN__DATABASE_URL": database,
        "EMQ_RETRAIN__MODEL_STORE": str(store),
        "EMQ_RETRAIN__CARD_DIR": str(tmp_path / "cards"),
        "EMQ_RETRAIN__PKI_DIR": str(pki_dir),
        "EMQ_RETRAIN__MQTT__HOST": "localhost",
        "EMQ_RETRAIN__MQTT__PORT": str(port),
        "EMQ_RETRAIN__GATE_MARGIN": "1.0",  # one epoch on a few faces: the test is about the loop, not the score
        "EMQ_RETRAIN__TRAINING__EPOCHS": "1",
        "EMQ_RETRAIN__TRAINING__TIME_BUDGET_S": "60",
        "EMQ_RETRAIN__DATASET__MIN_TRAIN_SAMPLES": "10",
        "EMQ_RETRAIN__DATASET__BASE_NPZ": str(FER2013),
        "EMQ_RETRAIN__DATASET__BASE_TRAIN_SAMPLES": "300",
        "EMQ_RETRAIN__DATASET__BASE_VALIDATION_SAMPLES": "200",
    })
    return env


@pytest.mark.slow
def test_labels_from_the_ui_retrain_gate_and_reach_the_running_edge(broker, pki_dir, tmp_path, mqtt_client, topics, spawned):
    if not FER2013.exists():
        pytest.skip(f"{FER2013} not found: the base validation set lives in ../shared/data")
    video = media_file("woman2.mp4")
    port = broker.settings.tls_port
    database = f"sqlite:///{tmp_path / 'cloud' / 'emotion.db'}"
    data_dir = tmp_path / "cloud" / "data"

    spawned.append(start_ingest(ingest_env(pki_dir, port, data_dir, database), tmp_path / "ingest.log"))
    webui = start_webui(webui_config(tmp_path, pki_dir, port, store={"url": database, "data_dir": str(data_dir)}))
    try:
        results = subscribe_and_wait(mqtt_client("monitor"), topics.result("cam-a"))
        spawned.append(start_agent(agent_env(pki_dir, port, tmp_path / "edge"), tmp_path / "agent.log", "--source", str(video), "--loop", "--pace"))
        store = Store(database)
        assert wait_until(lambda: store.label_progress()[1] >= 2 * LABELS_TO_GIVE, WAIT_S * 3), (tmp_path / "ingest.log").read_text()[-2000:]

        # A labeller works through the queue in the web UI's API.
        session = HttpSession(webui.url)
        assert session.log_in("lab").status == 302
        queue = session.get(f"/api/labels/queue?limit={LABELS_TO_GIVE}").json()["items"]
        assert len(queue) == LABELS_TO_GIVE
        for item in queue:
            response = session.post_json("/api/labels", {"face_id": item["id"], "label": item["label"]}, csrf=session.csrf_token)
            assert response.status == 201, response.text
        assert store.label_progress()[0] == LABELS_TO_GIVE

        job_store = tmp_path / "model-store"
        copy_model_store(job_store)
        job = subprocess.run(
            [console_script("emq-retrain")], env=retrain_env(tmp_path, pki_dir, port, database, job_store),
            capture_output=True, text=True, timeout=RETRAIN_TIMEOUT_S,
        )
        assert job.returncode == 0, job.stdout + job.stderr[-4000:]
        assert "1.1.0: promoted, released to the edges" in job.stdout
        card = tmp_path / "cards" / "1.1.0"
        assert (card / "model-card.json").exists() and (card / "confusion.png").exists() and (card / "learning-curves.png").exists()
        entry = ModelRegistry(job_store).get("1.1.0")
        assert entry.parent == "1.0.0" and entry.data_counts["human_labels"] == LABELS_TO_GIVE

        # The running edge picks the release up and says so in its next results.
        assert results.wait_for(lambda messages: parse_result(messages[-1].payload).model.version == "1.1.0", WAIT_S * 3), (
            (tmp_path / "agent.log").read_text()[-2000:]
        )
        store.close()
    finally:
        webui.stop()
