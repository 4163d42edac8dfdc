"""spamgpt.tracking: where runs go and what they are tagged with (runs written under
contention, resumed and killed: tests/test_reliability_tracking.py)."""

import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from conftest import restored_tracking_uri, subprocess_env
from fileserver import Faults, serve
from mlflow.tracking import MlflowClient

from spamgpt import tracking
from spamgpt.errors import SpamGPTError


def test_runs_go_to_the_repositorys_sqlite_unless_a_uri_is_set(tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "repo/.dvc/tmp/exps/tmpxyz"  # dvc exp run --temp: the same store
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{(tmp_path / 'repo').resolve() / tracking.DB_FILE}"
    assert tracking._sqlite_path(uri) == (tmp_path / "repo").resolve() / tracking.DB_FILE
    assert tracking._sqlite_path(f"{uri}?timeout=20") == tracking._sqlite_path(uri)
    assert tracking._sqlite_path(f"{uri}?timeout=20&x=?") == tracking._sqlite_path(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    assert tracking._sqlite_path("http://127.0.0.1:5000") is None


def test_a_run_is_tagged_with_its_inputs_and_its_dvc_experiment(monkeypatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lr-3e-3")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "")  # empty: not a tag
    tags = tracking.run_tags("d" * 64, "w" * 64)
    assert tags["data_sha256"] == "d" * 64 and tags["weights_sha256"] == "w" * 64
    assert tags["DVC_EXP_NAME"] == "lr-3e-3" and "DVC_EXP_BASELINE_REV" not in tags
    assert set(tags) == {
        "mlflow.source.git.commit",
        "data_sha256",
        "weights_sha256",
        "DVC_EXP_NAME",
    }
    monkeypatch.delenv("DVC_EXP_NAME")
    assert "DVC_EXP_NAME" not in tracking.run_tags("d", "w")


EXPERIMENT = "unit"


def test_a_tracking_server_is_checked_at_its_health_url(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "health").write_text("OK")
    faults = Faults()
    with serve(tmp_path, faults=faults) as url, restored_tracking_uri():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url + "/")
        assert tracking.connect() == url + "/"
        assert mlflow.get_tracking_uri() == url + "/"
        # a server under a path (behind a proxy); one that ends in X: rstrip takes a set
        (tmp_path / "mlflow-X").mkdir()
        (tmp_path / "mlflow-X/health").write_text("OK")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url + "/mlflow-X/")
        assert tracking.connect() == url + "/mlflow-X/"
    assert [r.path for r in faults.requests] == ["/health", "/mlflow-X/health"]


def test_an_unreachable_server_is_one_line_naming_the_way_out(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with serve(tmp_path) as url, restored_tracking_uri():  # no health file: 404
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        with pytest.raises(SpamGPTError) as raised:
            tracking.connect(timeout=5)
    assert str(raised.value) == (
        f"MLflow tracking server {url} is unreachable (Not Found); start it, or unset "
        f"MLFLOW_TRACKING_URI to record runs in {tmp_path.resolve() / 'mlflow.db'}"
    )


def test_a_sqlite_store_has_its_artifacts_beside_it(tmp_path, empty_store, monkeypatch) -> None:
    (tmp_path / "repo").mkdir()
    shutil.copy(empty_store, tmp_path / "repo/mlflow.db")  # made as connect() makes it
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    with restored_tracking_uri():
        uri = tracking.connect()
        assert uri == mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'repo/mlflow.db'}"
        assert (tmp_path / "repo/mlflow.db.lock").is_file()  # taken to create it, if need be
        created = tracking.experiment_id(EXPERIMENT)
        assert tracking.experiment_id(EXPERIMENT) == created  # found, not made again
        location = MlflowClient().get_experiment(created).artifact_location
    assert location == (tmp_path / "repo/mlartifacts").as_uri()


def test_a_run_is_named_tagged_and_finished(local_store: MlflowClient, monkeypatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lr-3e-3")
    with tracking.Run.open(EXPERIMENT, tags={"data_sha256": "d"}) as run:
        run.set_tag("stage", "finetune")
    got = local_store.get_run(run.run_id)
    assert (got.info.run_name, got.info.status) == ("lr-3e-3", "FINISHED")
    assert {k: got.data.tags[k] for k in ("data_sha256", "stage")} == {
        "data_sha256": "d",
        "stage": "finetune",
    }
    assert local_store.get_experiment(got.info.experiment_id).name == EXPERIMENT
    with tracking.Run.open(EXPERIMENT, run.run_id, tags={"data_sha256": "e"}):
        pass  # reopened: its tags updated
    assert local_store.get_run(run.run_id).data.tags["data_sha256"] == "e"


def test_a_failed_run_keeps_its_error_and_traceback(local_store: MlflowClient) -> None:
    with pytest.raises(ValueError), tracking.Run.open(EXPERIMENT) as run:
        raise ValueError("x" * 6000)
    got = local_store.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags["error"] == ("ValueError: " + "x" * 6000)[:5000]
    traceback = mlflow.artifacts.load_text(f"{got.info.artifact_uri}/error/traceback.txt")
    assert traceback.startswith("Traceback") and "ValueError: xxx" in traceback


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt("SIGTERM"), SystemExit(130)], ids=["signal", "exit-130"]
)
def test_an_interrupted_run_ends_killed(local_store: MlflowClient, error) -> None:
    error.exit_code = 130 if isinstance(error, SystemExit) else None
    with pytest.raises(type(error)), tracking.Run.open(EXPERIMENT) as run:
        raise error
    assert local_store.get_run(run.run_id).info.status == "KILLED"


def test_params_go_in_batches_of_100_as_strings(local_store: MlflowClient) -> None:
    params = {f"p{i:03d}": i / 2 for i in range(250)}
    with tracking.Run.open(EXPERIMENT) as run:
        run.log_params(params)
    assert local_store.get_run(run.run_id).data.params == {k: str(v) for k, v in params.items()}


def test_metrics_are_written_in_batches(local_store: MlflowClient, monkeypatch) -> None:
    """Buffered until a batch is full (MLflow's 1000; 10 here) or the run ends; a step the
    store holds is skipped only when resuming."""
    monkeypatch.setattr(tracking, "BATCH_LIMIT", 10)
    with tracking.Run.open(EXPERIMENT) as run:
        run.log_metrics({f"m{i}": i for i in range(9)}, step=3)
        assert local_store.get_run(run.run_id).data.metrics == {}
        run.log_metrics({"m9": 9}, step=3)
        stored = local_store.get_run(run.run_id).data.metrics
        assert stored == {f"m{i}": float(i) for i in range(10)}
        run.log_metrics({f"m{i}": 0.5 for i in range(2)}, step=4)  # buffered
        run.log_metrics({f"m{i}": 0.25 for i in range(23)}, step=5)  # 25 pending: 10, then 15
    history = local_store.get_metric_history(run.run_id, "m0")
    assert [(m.step, m.value) for m in history] == [(3, 0.0), (4, 0.5), (5, 0.25)]
    assert len(local_store.get_metric_history(run.run_id, "m22")) == 1
    assert abs(history[0].timestamp - time.time() * 1000) < 600_000  # milliseconds, not s
    with tracking.Run.open(EXPERIMENT, run.run_id, skip_logged_steps=True) as resumed:
        assert resumed._logged_until == {f"m{i}": 5 for i in range(23)}
        resumed.log_metrics({"m0": 9.0, "m1": 9.0}, step=5)  # stored: skipped
        resumed.log_metrics({"m0": 8.0}, step=6)
    metrics = local_store.get_run(run.run_id).data.metrics
    assert (metrics["m0"], metrics["m1"]) == (8.0, 0.25)


def test_artifacts_and_the_dataset_are_stored_in_the_run(local_store, tmp_path) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    (tmp_path / "report.json").write_text('{"a": 1}')
    frame = pd.DataFrame({"label": ["ham", "spam"], "text": ["hi", "WIN"], "extra": [1, 2]})
    figure = plt.figure()
    with tracking.Run.open(EXPERIMENT) as run:
        run.log_artifact(tmp_path / "report.json", "reports")
        run.log_dict({"b": 2}, "b.json")
        run.log_text("hello", "notes/c.txt")
        run.log_table(frame, "tables/t.json")
        run.log_figure(figure, "figures/f.png")
        run.log_dataset(frame, "train", "ab" * 32, "data/split/train.csv", "validation")
        run.log_dataset(frame, "raw", "cd" * 32, "data/raw.tsv")  # used in training, unsaid
    plt.close(figure)
    base = local_store.get_run(run.run_id).info.artifact_uri
    assert mlflow.artifacts.load_dict(f"{base}/reports/report.json") == {"a": 1}
    assert mlflow.artifacts.load_dict(f"{base}/b.json") == {"b": 2}
    assert mlflow.artifacts.load_text(f"{base}/notes/c.txt") == "hello"
    table = mlflow.artifacts.load_dict(f"{base}/tables/t.json")
    assert table["columns"] == ["label", "text", "extra"] and len(table["data"]) == 2
    assert {f.path for f in local_store.list_artifacts(run.run_id, "figures")} == {"figures/f.png"}
    inputs = {i.dataset.name: i for i in local_store.get_run(run.run_id).inputs.dataset_inputs}
    assert {t.key: t.value for t in inputs["raw"].tags}["mlflow.data.context"] == "training"
    dataset_input = inputs["train"]
    dataset = dataset_input.dataset
    assert (dataset.name, dataset.digest) == ("train", ("ab" * 32)[:36])
    assert json.loads(dataset.source) == {"uri": "data/split/train.csv"}
    assert json.loads(dataset.schema)["mlflow_colspec"] == [
        {"type": "string", "name": "label", "required": True},
        {"type": "string", "name": "text", "required": True},
    ]
    assert json.loads(dataset.profile) == {"num_rows": 2, "num_elements": 4}
    assert {t.key: t.value for t in dataset_input.tags} == {
        "mlflow.data.context": "validation",
        "sha256": "ab" * 32,
    }


def test_the_git_commit_is_the_repositorys_head_or_none(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.git_commit() is None  # not a repository
    env = subprocess_env()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "a"], cwd=tmp_path, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, text=True, env=env,
                          capture_output=True).stdout.strip()  # fmt: skip
    assert len(head) == 40 and tracking.git_commit() == head
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no git at all
    assert tracking.git_commit() is None


def test_a_run_is_tagged_with_the_commit_and_the_experiments_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert tracking.run_tags("d", "w") == {
        "mlflow.source.git.commit": "",  # not a repository: no commit
        "data_sha256": "d",
        "weights_sha256": "w",
        "DVC_EXP_BASELINE_REV": "0123abc",
    }
    env = subprocess_env()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "a"], cwd=tmp_path, env=env)
    assert tracking.run_tags("d", "w")["mlflow.source.git.commit"] == tracking.git_commit()
    assert len(tracking.git_commit()) == 40


def test_step_0_is_logged_and_a_missing_run_is_one_line(local_store: MlflowClient) -> None:
    """evaluate logs its test figures at step 0; models/mlflow_run.json may name a run of a
    deleted store."""
    with tracking.Run.open(EXPERIMENT) as run:
        run.log_metrics({"test/accuracy": 0.9}, step=0)
        run.log_metrics({"train/loss": 0.5}, step=1)
    assert local_store.get_run(run.run_id).data.metrics == {"test/accuracy": 0.9, "train/loss": 0.5}
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(SpamGPTError) as raised, tracking.Run.open(EXPERIMENT, missing):
        pass
    assert str(raised.value) == (
        f"MLflow run {missing} is not in {tracking.tracking_uri()} (deleted, or another store?): "
        "set MLFLOW_TRACKING_URI to the store that holds it, or train and record anew: "
        "rm -r models/checkpoints && dvc repro -f finetune"
    )


def test_a_locked_database_is_tried_again_with_doubling_waits(monkeypatch) -> None:
    """SQLite's 'database is locked': 8 tries in all, 0.2 s, then twice as long each time;
    any other error at once."""
    from mlflow.exceptions import MlflowException

    waits: list[float] = []
    monkeypatch.setattr(tracking.time, "sleep", waits.append)
    tries = []

    def locked_until(ok_at: int) -> str:
        tries.append(len(tries))
        if len(tries) < ok_at:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "done"

    assert tracking._retry(lambda: locked_until(3)) == "done"
    assert (len(tries), waits) == (3, [0.2, 0.4])
    tries.clear()
    waits.clear()
    assert tracking._retry(lambda: locked_until(8)) == "done"  # the last of 8 tries
    tries.clear()
    waits.clear()
    with pytest.raises(MlflowException, match="database is locked"):
        tracking._retry(lambda: locked_until(9))
    assert (len(tries), waits) == (8, [0.2 * 2**i for i in range(7)])
    tries.clear()
    waits.clear()
    with pytest.raises(MlflowException, match="database is locked"):
        tracking._retry(lambda: locked_until(3), attempts=2)
    assert (len(tries), waits) == (2, [0.2])
    tries.clear()
    waits.clear()

    def other() -> None:
        tries.append(0)
        raise MlflowException("no such table: experiments")

    with pytest.raises(MlflowException, match="no such table"):
        tracking._retry(other)
    assert (len(tries), waits) == (1, [])


def test_the_stores_folder_is_made_with_its_parents_and_its_lock_beside_it(
    tmp_path: Path, empty_store: Path
) -> None:
    """_create_store makes the database's folder (a DVC_ROOT or a tracking URI may name a
    folder not made yet) and takes its lock file beside it; here the store queried is a
    ready copy elsewhere, to spare the seconds a creation takes."""
    shutil.copy(empty_store, tmp_path / "ready.db")
    uri = f"sqlite:///{tmp_path / 'ready.db'}"
    db = tmp_path / "new/nested/mlflow.db"
    tracking._create_store(uri, db)
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db.lock"]
    tracking._create_store(uri, db)  # the folder there already


def test_an_https_server_is_checked_too(tmp_path, monkeypatch) -> None:
    """https:// is a server's URL as much as http:// (here a plain HTTP server: no TLS
    handshake, so unreachable as https)."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "health").write_text("OK")
    with serve(tmp_path) as url, restored_tracking_uri():
        https = url.replace("http://", "https://")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", https)
        with pytest.raises(SpamGPTError) as raised:
            tracking.connect(timeout=5)
    assert str(raised.value).startswith(f"MLflow tracking server {https} is unreachable (")


def test_a_store_other_than_sqlite_keeps_its_own_artifact_root(tmp_path, monkeypatch) -> None:
    """No mlartifacts/ beside a database file where there is none (MLflow's file store here,
    allowed for the test: the same rule as a server's or another database's)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    with restored_tracking_uri():
        tracking.connect()
        created = tracking.experiment_id(EXPERIMENT)
        location = MlflowClient().get_experiment(created).artifact_location
    assert location == f"{(tmp_path / 'mlruns').as_uri()}/{created}"


def test_a_server_that_does_not_answer_is_given_up_after_the_timeout(tmp_path, monkeypatch):
    """A server that takes the request and says nothing: unreachable once `timeout` passes
    (the error without a reason: its own text)."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "health").write_text("OK")
    with serve(tmp_path, faults=Faults(stall=10, stalls=1)) as url, restored_tracking_uri():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        with pytest.raises(SpamGPTError) as raised:
            tracking.connect(timeout=0.5)
    assert str(raised.value) == (
        f"MLflow tracking server {url} is unreachable (timed out); start it, or unset "
        f"MLFLOW_TRACKING_URI to record runs in {tmp_path.resolve() / 'mlflow.db'}"
    )


def not_a_database(empty_store: Path, kind: str) -> bytes:
    """What a store file that is no SQLite database holds: a text file, or a store cut short."""
    if kind == "text":
        return b"runs: none yet\n"
    whole = empty_store.read_bytes()
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("text", "file is not a database"), ("truncated", "database disk image is malformed")],
)
def test_a_store_that_is_no_database_is_one_line_and_left_alone(
    tmp_path: Path, empty_store: Path, monkeypatch, kind: str, reason: str
) -> None:
    """Not SQLAlchemy's traceback: one line naming the file, why, and the ways out; the file
    as it was, nothing made beside it, MLflow pointed nowhere new."""
    db = tmp_path / "mlflow.db"
    content = not_a_database(empty_store, kind)
    db.write_bytes(content)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with restored_tracking_uri():
        before = mlflow.get_tracking_uri()
        with pytest.raises(SpamGPTError) as error:
            tracking.connect()
        assert mlflow.get_tracking_uri() == before
    assert str(error.value) == (
        f"{tmp_path.resolve() / 'mlflow.db'} is not an SQLite database ({reason}); MLflow's "
        "store there must be one, or no file (a new store is made): move it away, or set "
        "MLFLOW_TRACKING_URI to another store"
    )
    assert error.value.exit_code == 1
    assert db.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]


def test_a_database_that_is_empty_locked_or_absent_is_left_to_mlflow(
    tmp_path: Path, empty_store: Path
) -> None:
    """An empty file is an empty SQLite database (MLflow makes its tables in it); one another
    process holds locked is being written, so a database; no file is a store to make."""
    tracking._check_database(tmp_path / "absent.db")
    (tmp_path / "empty.db").write_bytes(b"")
    tracking._check_database(tmp_path / "empty.db")
    shutil.copy(empty_store, tmp_path / "locked.db")
    writer = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        tracking._check_database(tmp_path / "locked.db")
    finally:
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "locked.db"]
