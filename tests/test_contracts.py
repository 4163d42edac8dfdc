"""spamgpt.contracts: what one stage writes is what the next reads back."""

import json
from pathlib import Path

import pandas as pd
import pytest

from spamgpt import contracts, paths
from spamgpt.labels import Classes


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the contracts' files are relative to the repository
    return tmp_path


def test_each_file_reads_back_what_was_written(workspace: Path) -> None:
    files = {"model.safetensors": {"sha256": "ab" * 32, "verified": True}}
    contracts.write_weights("openai-community/gpt2", "main", files, "https://hub")
    assert contracts.read_weights_sha256() == "ab" * 32
    assert contracts.read_base_weights() == {
        "repo_id": "openai-community/gpt2", "revision": "main", "hub_url": "https://hub",
        "sha256": "ab" * 32,
    }  # fmt: skip
    contracts.write_data_report({"raw_sha256": "cd", "labels": ["b", "a"], "positive_label": "a"})
    assert contracts.read_classes() == Classes(("b", "a"), "a")  # the given order, not sorted
    assert contracts.read_data_report()["raw_sha256"] == "cd"
    contracts.write_tokenization(contracts.Tokenization(48, 50256), {"train": {"n": 3}})
    assert contracts.read_tokenization() == contracts.Tokenization(48, 50256)
    contracts.write_trunk_info(None, "cpu", "fp32")
    assert contracts.read_frozen_blocks() is None
    contracts.write_trunk_info(11, "cpu", "bf16")
    assert contracts.read_frozen_blocks() == 11
    contracts.write_mlflow_run("0123abcd")
    assert contracts.read_mlflow_run() == "0123abcd"
    contracts.write_baseline({"test": {"accuracy": 0.9}})
    assert contracts.read_baseline() == {"test": {"accuracy": 0.9}}
    assert {p.relative_to(workspace) for p in workspace.rglob("*.json")} == {
        paths.WEIGHTS_METRICS, paths.DATA_METRICS, paths.TOKENS_METRICS, paths.TRUNK_INFO,
        paths.MLFLOW_RUN, paths.BASELINE_METRICS,
    }  # fmt: skip


def test_the_threshold_is_evaluates_or_the_default(workspace: Path) -> None:
    assert contracts.read_threshold() == 0.5  # no evaluation yet
    assert contracts.read_threshold(0.7) == 0.7
    contracts.write_evaluation_report({"threshold": 0.81})
    assert contracts.read_threshold() == 0.81
    contracts.write_evaluation_report({"threshold": None})  # labelled by the most probable class
    assert contracts.read_threshold() is None
    contracts.write_evaluation_report({"threshold": {"billing": 0.3, "urgent": 0.5}})
    assert contracts.read_threshold() == {"billing": 0.3, "urgent": 0.5}  # each label's
    contracts.write_evaluation({"accuracy": 0.9})  # DVC's metrics: not where a threshold is
    assert contracts.read_threshold() == {"billing": 0.3, "urgent": 0.5}
    paths.EVAL_REPORT.write_text("{not json")
    assert contracts.read_threshold() == 0.5


def test_the_temperature_is_evaluates_or_none(workspace: Path) -> None:
    assert contracts.read_temperature() is None  # no evaluation yet: the raw probabilities
    contracts.write_calibration({"method": "temperature", "temperature": 1.75, "test": {}})
    assert contracts.read_temperature() == 1.75
    per_label = {"billing": 0.5, "urgent": 2}
    contracts.write_calibration({"method": "temperature", "temperature": per_label})
    assert contracts.read_temperature() == {"billing": 0.5, "urgent": 2.0}
    contracts.write_calibration({"method": "none", "temperature": None})
    assert contracts.read_temperature() is None
    paths.CALIBRATION.write_text("{not json")
    assert contracts.read_temperature() is None


def test_the_shift_is_platts_or_none(workspace: Path) -> None:
    assert contracts.read_shift() is None  # no evaluation yet
    contracts.write_calibration({"method": "temperature", "temperature": 1.75, "test": {}})
    assert contracts.read_shift() is None
    shift = {"ham": 0, "spam": -1.25}
    contracts.write_calibration({"method": "platt", "temperature": 1.5, "shift": shift})
    assert (contracts.read_temperature(), contracts.read_shift()) == (
        1.5,
        {"ham": 0.0, "spam": -1.25},
    )
    contracts.write_calibration({"method": "none", "temperature": None, "shift": shift})
    assert contracts.read_shift() is None
    paths.CALIBRATION.write_text("{not json")
    assert contracts.read_shift() is None


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_each_file_holds_the_keys_its_readers_and_dvc_read(workspace: Path) -> None:
    assert contracts.read_weights() is None  # download_weights never ran
    files = {"model.safetensors": {"sha256": "ab" * 32}}
    contracts.write_weights("openai-community/gpt2", "main", files, "https://hub")
    assert contracts.read_weights() == {
        "repo_id": "openai-community/gpt2", "revision": "main", "hub_url": "https://hub",
        "files": files,
    }  # fmt: skip
    contracts.write_tokenization(contracts.Tokenization(48, 50256), {"train": {"truncated": 3}})
    expected = {"max_length": 48, "pad_id": 50256, "train": {"truncated": 3}}
    assert contracts.read_tokens_report() == read_json(paths.TOKENS_METRICS) == expected
    contracts.write_trunk_info(11, "cuda:0", "bf16", workspace / "new")
    assert read_json(workspace / "new/info.json") == {
        "frozen_blocks": 11, "device": "cuda:0", "precision": "bf16",
    }  # fmt: skip
    contracts.write_evaluation({"test": {"f1": 0.9}})
    assert read_json(paths.EVAL_METRICS) == {"test": {"f1": 0.9}}
    contracts.write_audit({"enabled": True, "flagged": 2})
    assert contracts.read_audit() == read_json(paths.AUDIT_METRICS)
    assert contracts.read_audit() == {"enabled": True, "flagged": 2}


def test_label_issues_read_back_as_written_quoted(workspace: Path) -> None:
    """Texts quoted (a line break, a comma, "NA" stay text), the columns in their order (an
    extra one dropped), labels as strings ("1" is a label, not a number)."""
    table = pd.DataFrame(
        {
            "score": [0.25, 0.5],
            "split": ["train", "val"],
            "file": ["data/split/train.csv", "data/split/val.csv"],
            "line": [2, 7],
            "text": ["see you,\nat 7", "NA"],
            "label": ["1", "NA"],
            "suggested": ["0", "1"],
            "extra": [1, 2],
        }
    )
    contracts.write_label_issues(table)
    assert paths.LABEL_ISSUES.read_text(encoding="utf-8") == (
        '"split","file","line","text","label","suggested","score"\n'
        '"train","data/split/train.csv",2,"see you,\nat 7","1","0",0.25\n'
        '"val","data/split/val.csv",7,"NA","NA","1",0.5\n'
    )
    read = contracts.read_label_issues()
    pd.testing.assert_frame_equal(read, table[list(contracts.LABEL_ISSUE_COLUMNS)])
    assert read["line"].dtype == "int64" and read["label"].tolist() == ["1", "NA"]


def test_label_issues_are_utf_8_and_strings_whatever_they_look_like(workspace, ascii_locale):
    """Under an ASCII locale too; a text or label of digits is still a string."""
    table = pd.DataFrame(
        {
            "split": ["train", "val"],
            "file": ["a.csv", "b.csv"],
            "line": [2, 3],
            "text": ["42", "7"],
            "label": ["1", "0"],
            "suggested": ["0", "1"],
            "score": [0.25, 0.5],
        }
    )
    contracts.write_label_issues(table)
    pd.testing.assert_frame_equal(contracts.read_label_issues(), table)
    table["text"] = ["caf\u00e9", "\u2603"]
    contracts.write_label_issues(table)
    assert "caf\u00e9" in paths.LABEL_ISSUES.read_text(encoding="utf-8")
    pd.testing.assert_frame_equal(contracts.read_label_issues(), table)


def test_method_none_has_no_temperature_whatever_the_file_holds(workspace: Path) -> None:
    contracts.write_calibration({"method": "none", "temperature": 1.5, "shift": {"ham": 1}})
    assert (contracts.read_temperature(), contracts.read_shift()) == (None, None)
