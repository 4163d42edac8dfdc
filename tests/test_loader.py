"""spamgpt.serve.loader: the one rule telling an MLflow model from a folder, and one line naming
--model and what it takes for a source that is neither, from each command that loads a model.
(Loading each kind of source, answers compared: test_serving.py, test_predict.py,
test_export.py.)"""

import json
import shutil
from pathlib import Path

import pytest
from conftest import restored_tracking_uri

from spamgpt.serve import cli, loader

ALLOWED = "--model takes " + loader.SOURCES


@pytest.mark.parametrize(
    ("source", "logged"),
    [
        ("runs:/0a1b/model", True),
        ("models:/spam/3", True),
        ("models:/spam@champion", True),
        ("mlflow-artifacts://host/0/model", True),
        ("s3://bucket/model", True),
        ("models/finetuned", False),
        ("runs/model", False),
        ("runs:0a1b", False),  # no slash: not MLflow's form, so a (missing) folder
        ("C:/models/finetuned", False),
    ],
)
def test_a_logged_model_is_told_from_a_folder_by_one_rule(source: str, logged: bool) -> None:
    assert loader.is_logged(source) is logged


def command_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and err.count("\n") == 1, err
    return err


COMMANDS = {
    "classify": ["classify", "hello"],
    "predict": ["predict", "in.csv", "-o", "out.csv"],
    "export": ["export", "--to", "onnx", "out.onnx"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_source_is_one_line_naming_model_and_what_it_takes(
    command: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("text\nhello\n")
    argv = COMMANDS[command]
    err = command_error(capsys, [*argv, "--model", "nowhere"])
    assert f"spamgpt: error: --model nowhere: no such folder; {ALLOWED}\n" == err
    (tmp_path / "empty").mkdir()
    err = command_error(capsys, [*argv, "--model", "empty"])
    assert f"--model empty: not a model (no classifier.json); {ALLOWED}\n" in err
    exported = tmp_path / "hf"
    exported.mkdir()
    (exported / "config.json").write_text(json.dumps({"architectures": ["GPT2ForSeq..."]}))
    err = command_error(capsys, [*argv, "--model", "hf"])
    assert "--model hf is a transformers export: load it with transformers" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "hf", "in.csv"]


def test_a_run_the_store_does_not_have_is_one_line_naming_model(
    empty_store: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    with restored_tracking_uri():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        err = command_error(capsys, ["classify", "hi", "--model", "runs:/0123abcd/model"])
    assert err.startswith("spamgpt: error: --model runs:/0123abcd/model: ")
    assert "0123abcd" in err.split("--model runs:/0123abcd/model: ", 1)[1]
