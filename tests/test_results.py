"""spamgpt.results: what evaluate writes for DVC beside the metrics, read back from the files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spamgpt import contracts, data, paths, results
from spamgpt.labels import Classes

TEST = pd.DataFrame(
    {"line": [3, 5, 8, 9], "label": ["spam", "ham", "ham", "spam"], "text": ["a", "b", "c", "d"]}
)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    data.write_split(TEST, paths.split_file("test"))
    return tmp_path


def evaluate(classes: Classes, probs: list[list[float]], threshold: float | None) -> pd.DataFrame:
    reports = {"test": {"accuracy": 0.5}}
    curves = {"roc": pd.DataFrame({"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]})}
    baseline = {"test": {"accuracy": 0.9}, "val": {}}
    results.write_evaluation(reports, classes, threshold, 0.7, baseline, np.array(probs), curves)
    return data.read_split(paths.MISCLASSIFIED_TEST)


def test_the_positive_class_first_is_thresholded_on_its_own_column(workspace: Path) -> None:
    """spam is column 0: at 0.6, messages 1 and 4 are spam only if column 0 says so."""
    classes = Classes(("spam", "ham"), "spam")
    wrong = evaluate(classes, [[0.7, 0.3], [0.65, 0.35], [0.2, 0.8], [0.55, 0.45]], 0.6)
    assert list(wrong.columns) == ["line", "label", "predicted", "spam_probability", "text"]
    assert wrong.to_dict("list") == {
        "line": [5, 9], "label": ["ham", "spam"], "predicted": ["spam", "ham"],
        "spam_probability": [0.65, 0.55], "text": ["b", "d"],
    }  # fmt: skip
    confusion = pd.read_csv(paths.CONFUSION_TEST_PLOT)
    assert confusion.to_dict("list") == {
        "actual": ["spam", "ham", "ham", "spam"], "predicted": ["spam", "spam", "ham", "ham"]
    }  # fmt: skip
    evaluation = contracts.read_threshold()
    assert evaluation == 0.6
    assert pd.read_csv(paths.curve_plot("roc")).columns.tolist() == ["fpr", "tpr"]


def test_without_a_positive_class_the_most_probable_class_and_its_probability(
    workspace: Path,
) -> None:
    classes = Classes(("ham", "spam", "other"))
    probs = [[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.3, 0.6, 0.1]]
    wrong = evaluate(classes, probs, None)
    assert wrong.to_dict("list") == {
        "line": [3, 8], "label": ["spam", "ham"], "predicted": ["other", "spam"],
        "probability": [0.7, 0.6], "text": ["a", "c"],
    }  # fmt: skip
    assert contracts.read_threshold() is None
