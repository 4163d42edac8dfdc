"""A classic baseline for the fine-tuned GPT-2: TF-IDF word and character n-grams with a
linear SVM, scored with the same metrics as the evaluate stage.

The SVM's margin goes through a sigmoid rather than CalibratedClassifierCV: sigmoid(0) = 0.5,
so the 0.5 threshold gives exactly the plain SVM's predictions (its accuracy and F1), and being
monotonic it keeps the ROC/PR AUCs; a calibrated 5-fold ensemble would be a different model
with a shifted decision boundary, at several times the fit cost. The score is in [0, 1] but is
not a calibrated probability. Multi-label data: one SVM per label against the rest
(OneVsRestClassifier), each label's score the sigmoid of its margin, reported as the fine-tuned
model's (multilabel_metrics.report).
"""

import time
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy.special import expit, softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from spamgpt import metrics, multilabel_metrics
from spamgpt.labels import Classes

THRESHOLD = 0.5  # on the positive score: the SVM's own decision boundary (margin 0)
PREDICT_CHUNK = 10_000  # messages scored at a time


def labels_of(frame: pd.DataFrame, classes: Classes) -> np.ndarray:
    """Class indices as the evaluate stage uses them (ham 0, spam 1 for SMS); multi-label,
    (N, labels) 0/1."""
    return classes.targets(frame["label"])


def threshold_for(classes: Classes) -> float | None:
    """The SVM's boundary where a threshold applies (two classes, one positive; or each label
    of multi-label data), else None."""
    binary = classes.positive is not None and len(classes) == 2
    return THRESHOLD if binary or classes.multi_label else None


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
    """A model fitted on a split frame's `text` and `label` columns."""
    # balanced: spam is ~13% of the messages; random_state fixes liblinear's dual shuffling;
    # more than two classes: one against the rest each
    svm = LinearSVC(class_weight="balanced", random_state=0)
    if classes.multi_label:  # (N, labels) targets: an SVM each
        svm = OneVsRestClassifier(svm)
    model = Pipeline([("features", features()), ("svm", svm)])
    return model.fit(train["text"].tolist(), labels_of(train, classes))


def probabilities(model: Pipeline, texts: Iterable[str], multi_label: bool = False) -> np.ndarray:
    """(N, classes) scores in [0, 1]. Two classes: the sigmoid of the SVM margin is the
    second class's column (above 0.5 where the SVM says it), its complement the first's.
    More: the softmax of the one-against-the-rest margins (the largest is the SVM's pick).
    `multi_label`: each label's own sigmoid."""
    texts = list(texts)
    margins = np.concatenate(  # a chunk at a time: the TF-IDF rows of all at once are large
        [
            model.decision_function(texts[start : start + PREDICT_CHUNK])
            for start in range(0, len(texts), PREDICT_CHUNK)
        ]
    )
    if multi_label:
        return expit(margins)
    if margins.ndim == 1:
        second = expit(margins)
        return np.column_stack([1 - second, second])
    return softmax(margins, axis=1)


def evaluate(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, classes: Classes) -> dict:
    """Fit on train; metrics.report for val and test, and the fit time in seconds."""
    start = time.perf_counter()
    model = fit(train, classes)
    seconds = time.perf_counter() - start
    threshold = threshold_for(classes)
    score = multilabel_metrics.report if classes.multi_label else metrics.report
    reports = {
        name: score(
            labels_of(frame, classes),
            probabilities(model, frame["text"], classes.multi_label),
            threshold,
            classes,
        )
        for name, frame in (("val", val), ("test", test))
    }
    return {**reports, "seconds": seconds}
