"""The learning-loop benchmark (bench/bench_learning_loop.py) runs end to end in its tiny configuration.

160 shifted faces, every detected pool face labelled through the web UI's API, one epoch: too few
labelled faces are held out for the gate (exit 5, undecided), which the JSON must say consistently.
The run takes a few minutes on a shared two-core machine (TensorFlow's start and the FER2013 gate).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, SHARED

FER2013 = SHARED / "data" / "fer2013_trainval.npz"
TINY_BASE_SELECTION = 100  # what --tiny sets


@pytest.mark.slow
def test_the_loop_benchmark_runs_end_to_end_in_its_tiny_configuration(tmp_path):
    if not FER2013.exists():
        pytest.skip(f"{FER2013} not found: the FER2013 arrays live in ../shared/data")
    output = tmp_path / "loop.json"
    job = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "bench_learning_loop.py"), "--tiny", "--json", str(output)],
                         capture_output=True, text=True, timeout=1200, cwd=REPO_ROOT)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    results = json.loads(output.read_text())

    domain = results["domain"]
    assert domain["pool_pictures"] == 80 and 0 < domain["pool_faces_detected"] <= domain["pool_faces_stored"]
    assert 0 < domain["pool_pictures_detected"] <= domain["pool_faces_detected"]
    assert 0 < domain["held_out_faces_detected"] <= domain["held_out_pictures"]
    for value in results["before"].values():
        assert 0 < value < 1

    (run,) = results["runs"]
    assert run["fraction"] == 1.0 and run["labelled_faces"] == domain["pool_faces_detected"]
    assert run["data_counts"]["human_labels"] == run["labelled_faces"]
    assert run["version"] == "1.1.0" and run["retrain_exit"] in (0, 5)
    assert (run["retrain_exit"] == 5) == (run["gate"]["decision"] == "undecided")
    if run["gate"]["decision"] == "promoted":
        assert run["edge_reported_version"] == "1.1.0"
    # The FER2013 gate set is x_val without the selection rows and without the pool's originals.
    gate_faces = run["gate"]["fer2013"]["faces"]
    assert 3589 - TINY_BASE_SELECTION - domain["pool_pictures"] <= gate_faces < 3589 - TINY_BASE_SELECTION
    for metric in ("shifted_held_out_top1", "clean_originals_top1"):
        scores = run[metric]
        assert scores["before"] == results["before"][metric] and 0 < scores["after"] < 1
        assert scores["points"] == pytest.approx(100 * (scores["after"] - scores["before"]))
    assert all(seconds >= 0 for seconds in results["timings_s"].values()) and run["timings_s"]["retrain"] > 0
