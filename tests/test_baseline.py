"""spamgpt.evaluate.baseline and its stage, on the generated SMS collection split as the
pipeline does."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_stage, sms_collection

from spamgpt import paths
from spamgpt.data import readers
from spamgpt.evaluate import baseline
from spamgpt.labels import SMS, Classes
from spamgpt.tasks.registry import task_for
from spamgpt.tasks.task import DEFAULT_THRESHOLD


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    raw = tmp_path_factory.mktemp("raw") / "SMSSpamCollection"
    raw.write_bytes(sms_collection())
    frame = readers.dedupe(readers.read_messages(raw, fmt=readers.Format(), labels=SMS.names).frame)
    return readers.split(frame, val=0.2, test=0.2, seed=123, labels=SMS.names)


@pytest.fixture(scope="module")
def model(splits: dict[str, pd.DataFrame]):
    return baseline.fit(splits["train"], classes=SMS)


def test_held_out_accuracy(model, splits: dict[str, pd.DataFrame]) -> None:
    test = splits["test"]
    predicted = baseline.probabilities(model, test["text"], SMS)[:, 1] >= DEFAULT_THRESHOLD
    assert np.mean(predicted == baseline.labels_of(test, classes=SMS)) > 0.9


def test_scores_are_in_unit_interval_and_keep_the_svm_decisions(
    model, splits: dict[str, pd.DataFrame]
) -> None:
    texts = pd.concat([splits["val"]["text"], splits["test"]["text"]])
    both = baseline.probabilities(model, texts, SMS)
    np.testing.assert_allclose(both.sum(axis=1), 1.0)
    scores = both[:, 1]
    assert scores.shape == (len(texts),)
    assert np.all((scores >= 0) & (scores <= 1))
    # the sigmoid must not move the boundary: 0.5 gives the plain SVM's predictions
    np.testing.assert_array_equal((scores > 0.5).astype(int), model.predict(texts.tolist()))


def test_two_fits_give_identical_scores(model, splits: dict[str, pd.DataFrame]) -> None:
    again = baseline.fit(splits["train"], classes=SMS)
    texts = splits["test"]["text"]
    np.testing.assert_array_equal(
        baseline.probabilities(model, texts, SMS), baseline.probabilities(again, texts, SMS)
    )


def test_evaluate_reports_like_the_evaluate_stage(splits: dict[str, pd.DataFrame]) -> None:
    before = time.perf_counter()
    result = baseline.evaluate(splits["train"], splits["val"], splits["test"], classes=SMS)
    took = time.perf_counter() - before
    reference = task_for(SMS).report(np.array([0, 1]), np.array([[0.8, 0.2], [0.2, 0.8]]), 0.5)
    assert set(result) == {"val", "test", "seconds"}
    assert 0 < result["seconds"] < took  # the fit's time, within the call's
    for name in ("val", "test"):
        assert result[name].keys() == reference.keys()
        assert sum(map(sum, result[name]["confusion_matrix"])) == len(splits[name])


def test_stage_writes_baseline_json(tmp_path: Path, splits: dict[str, pd.DataFrame]) -> None:
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    for name, part in splits.items():
        readers.write_split(part, tmp_path / paths.split_file(name))
    (tmp_path / "metrics").mkdir()
    classes = {"labels": ["ham", "spam"], "positive_label": "spam"}  # as the split stage tells
    (tmp_path / paths.DATA_METRICS).write_text(json.dumps(classes))
    stage = run_stage("baseline", tmp_path)
    _, stderr = stage.communicate(timeout=60)
    assert stage.returncode == 0, stderr
    written = json.loads((tmp_path / "metrics" / "baseline.json").read_text())
    assert written["threshold"] == DEFAULT_THRESHOLD
    assert set(written) == {"threshold", "train_rows", "max_train_rows", "val", "test"}
    assert written["train_rows"] == len(splits["train"])  # fewer than the cap: all of them
    assert written["max_train_rows"] == 100_000
    assert written["test"]["accuracy"] > 0.9


def test_sample_caps_the_training_rows_seeded(splits: dict[str, pd.DataFrame]) -> None:
    train = splits["train"]
    assert baseline.sample(train, None) is train and baseline.sample(train, len(train)) is train
    some = baseline.sample(train, 50)
    assert len(some) == 50 and some.index.is_monotonic_increasing  # file order kept
    assert set(some["line"]) <= set(train["line"])
    assert some.equals(baseline.sample(train, 50))  # seeded
    assert not some.equals(baseline.sample(train, 50, seed=1))


def test_probabilities_in_chunks_are_those_at_once(model, splits, monkeypatch) -> None:
    texts = splits["test"]["text"]
    whole = baseline.probabilities(model, texts, SMS)
    monkeypatch.setattr(baseline, "PREDICT_CHUNK", 7)
    np.testing.assert_array_equal(baseline.probabilities(model, texts, SMS), whole)


def test_three_classes_get_scores_that_pick_the_svm_decision() -> None:
    rows = [("billing", f"refund invoice {i}") for i in range(30)]
    rows += [("outage", f"site down error {i}") for i in range(30)]
    rows += [("sales", f"price discount seats {i}") for i in range(30)]
    frame = pd.DataFrame(rows, columns=["label", "text"])
    classes = Classes(("billing", "outage", "sales"))
    model = baseline.fit(frame, classes)
    texts = ["refund my invoice", "the site is down", "a discount on seats"]
    scores = baseline.probabilities(model, texts, classes)
    assert scores.shape == (3, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    np.testing.assert_array_equal(scores.argmax(axis=1), model.predict(texts))
    assert classes.named(scores.argmax(axis=1)) == ["billing", "outage", "sales"]
    assert baseline.threshold_for(classes) is None


def test_features_are_sklearns_word_and_character_tfidf() -> None:
    """Word 1-2-grams lower-cased and char_wb 2-5-grams, each with sublinear tf (1 + log tf):
    the same matrix as scikit-learn's vectorizers set so by hand."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = ["WIN win win a £900 prize", "Call 09061701461 now", "ok lar, win later"]
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    union = baseline.features()
    got = union.fit_transform(texts).toarray()
    expected = np.hstack([v.fit_transform(texts).toarray() for v in (word, char)])
    np.testing.assert_allclose(got, expected)
    names = set(union.get_feature_names_out())
    assert {"word__win win", "word__win 900", "char__ win ", "char__ 0906"} <= names
    assert "word__WIN" not in names  # lower-cased; the one-letter "a" is no word token
    assert "char__win w" not in names  # char_wb: character n-grams within a word only
    assert {len(n.removeprefix("char__")) for n in names if n.startswith("char")} == {2, 3, 4, 5}
