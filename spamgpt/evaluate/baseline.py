"""A classic baseline for the fine-tuned GPT-2: TF-IDF word and character n-grams with a
linear SVM, scored with the same metrics as the evaluate stage.

The SVM's margin goes through a sigmoid rather than CalibratedClassifierCV: sigmoid(0) = 0.5,
so the 0.5 threshold gives exactly the plain SVM's predictions (its accuracy and F1), and being
monotonic it keeps the ROC/PR AUCs; a calibrated 5-fold ensemble would be a different model
with a shifted decision boundary, at several times the fit cost. The score is in [0, 1] but is
not a calibrated probability. Multi-label data: one SVM per label against the rest
(OneVsRestClassifier), each label's score the sigmoid of its margin; reported as the fine-tuned
model is (Task.report).
"""

import time
from collections.abc import Iterable

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline

from spamgpt.labels import Classes
from spamgpt.tasks.registry import task_for

PREDICT_CHUNK = 10_000  # messages scored at a time


def labels_of(frame: pd.DataFrame, classes: Classes) -> np.ndarray:
    """Class indices as the evaluate stage uses them (ham 0, spam 1 for SMS); multi-label,
    (N, labels) 0/1."""
    return classes.targets(frame["label"])


def threshold_for(classes: Classes) -> float | None:
    """The SVM's boundary (0.5 on a score: margin 0) where a threshold applies (two classes,
    one positive; or each label of multi-label data), else None (Task.baseline_threshold)."""
    return task_for(classes).baseline_threshold()


def sample(train: pd.DataFrame, max_rows: int | None, seed: int = 0) -> pd.DataFrame:
    """At most `max_rows` training messages, a seeded random sample in file order (all of
    them when they fit: the SMS data is never sampled)."""
    if max_rows is None or len(train) <= max_rows:
        return train
    return train.sample(n=max_rows, random_state=seed).sort_index()


def features() -> FeatureUnion:
    """TF-IDF of word 1-2-grams and character 2-5-grams, unfitted (also the label audit's)."""
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)),
            # char_wb: robust to misspellings; keeps spam's digits and symbols (£, 0906...)
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ]
    )


def fit(train: pd.DataFrame, classes: Classes) -> Pipeline:
    """A model fitted on a split frame's `text` and `label` columns: the task's estimator
    (Task.baseline_estimator: the linear SVM; multi-label, one per label) of features()."""
    model = Pipeline(
        [("features", features()), ("estimator", task_for(classes).baseline_estimator())]
    )
    return model.fit(train["text"].tolist(), labels_of(train, classes))


def probabilities(model: Pipeline, texts: Iterable[str], classes: Classes) -> np.ndarray:
    """(N, classes) scores in [0, 1] (Task.baseline_outputs): of two classes, the sigmoid of
    the SVM margin as the second class's column, its complement the first's; more, the
    softmax of the one-against-the-rest margins; multi-label, each label's own sigmoid."""
    texts, task = list(texts), task_for(classes)
    return np.concatenate(  # a chunk at a time: the TF-IDF rows of all at once are large
        [
            task.baseline_outputs(model, texts[start : start + PREDICT_CHUNK])
            for start in range(0, len(texts), PREDICT_CHUNK)
        ]
    )


def evaluate(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, classes: Classes) -> dict:
    """Fit on train; Task.report for val and test, and the fit time in seconds."""
    start = time.perf_counter()
    model = fit(train, classes)
    seconds = time.perf_counter() - start
    threshold, task = threshold_for(classes), task_for(classes)
    reports = {
        name: task.report(
            labels_of(frame, classes), probabilities(model, frame["text"], classes), threshold
        )
        for name, frame in (("val", val), ("test", test))
    }
    return {**reports, "seconds": seconds}
