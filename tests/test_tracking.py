"""spamgpt.tracking: where runs go and what they are tagged with (runs written under
contention, resumed and killed: tests/test_reliability_tracking.py)."""

from pathlib import Path

from spamgpt import tracking


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
