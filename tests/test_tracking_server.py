"""Remote tracking for real: a `mlflow server` (SQLite backend, local artifact store) on
127.0.0.1, the pipeline run with MLFLOW_TRACKING_URI pointing at it, and the run read back
through the server, artifacts included."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import http_service, make_project, run, subprocess_env, tiny_params
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` as a team would run it, minus the network: its own database and
    artifact folder, clients reaching both only over HTTP."""
    root = tmp_path_factory.mktemp("server")
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--workers", "1",
    ]  # fmt: skip
    # MLflow's job runner (a process and seven huey consumers, for its GenAI jobs) has no part
    # in tracking runs: off, so that it does not take the cores the pipeline runs on.
    env = subprocess_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with http_service(
        lambda port: [*cmd, "--port", str(port)], "/health", env, root / "server.log"
    ) as url:
        yield url, root


def test_pipeline_logs_through_a_tracking_server(server, mirror, tmp_path):
    url, root = server
    # The data as a file of the project's own (data.url a path), as a user's would be
    local = {"url": "data/local/sms.zip"}
    project = make_project(tmp_path / "project", tiny_params(mirror, data=local))
    shutil.copy(mirror.root / "sms+spam+collection.zip", project / local["url"])
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": url}
    first = run(["dvc", "repro"], project, env=env)
    # A first run is quiet: no warning from DVC, MLflow or Python that a user cannot act on
    said = (first.stdout + first.stderr).splitlines()
    assert [line for line in said if re.search(r"WARNING|Warning\b", line)] == []

    assert not (project / "mlflow.db").exists()  # nothing went to the local default store
    run_id = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=url)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["train.lr"] == "0.001"
    assert "test/accuracy" in logged.data.metrics
    evaluation = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/test_confusion_matrix.png" in evaluation
    # Artifacts come back through the server, and they live in the server's folder.
    local = client.download_artifacts(run_id, "evaluation/test_metrics.json", str(tmp_path))
    report = json.loads(Path(local).read_text())
    eval_json = json.loads((project / "metrics/eval.json").read_text())
    assert report["accuracy"] == eval_json["accuracy"]
    assert list((root / "artifacts").rglob("test_confusion_matrix.png"))
