"""The multi-label report against scikit-learn's definitions, and the per-label thresholds."""

import numpy as np
import pytest
from sklearn import metrics as skm

from spamgpt import multilabel_metrics
from spamgpt.errors import ParamsError
from spamgpt.labels import Classes

CLASSES = Classes(("billing", "shipping", "urgent"), None, multi_label=True)


def sample(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(targets, probabilities): each label's probability leans towards its truth."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.3, 0.5, 0.1]).astype(np.float32)
    probs = np.clip(0.35 * targets + rng.random((n, 3)) * 0.65, 0, 1)
    return targets, probs


def test_report_matches_scikit_learn() -> None:
    targets, probs = sample()
    thresholds = {"billing": 0.4, "shipping": 0.5, "urgent": 0.6}
    rep = multilabel_metrics.report(targets, probs, thresholds, CLASSES)
    truth = targets.astype(int)
    predicted = (probs >= [0.4, 0.5, 0.6]).astype(int)
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    assert rep["hamming_loss"] == pytest.approx(skm.hamming_loss(truth, predicted))
    for average in ("micro", "macro"):
        expected = skm.f1_score(truth, predicted, average=average, zero_division=0)
        assert rep[f"{average}_f1"] == pytest.approx(expected)
    samples = skm.f1_score(truth, predicted, average="samples", zero_division=1)
    assert rep["samples_f1"] == pytest.approx(samples)
    matrices = skm.multilabel_confusion_matrix(truth, predicted)
    for i, name in enumerate(CLASSES.names):
        label = rep[name]
        assert label["confusion_matrix"] == matrices[i].tolist()
        assert label["support"] == truth[:, i].sum()
        assert label["threshold"] == thresholds[name]
        p, r, f, _ = skm.precision_recall_fscore_support(
            truth[:, i], predicted[:, i], average="binary", zero_division=0
        )
        assert (label["precision"], label["recall"], label["f1"]) == pytest.approx((p, r, f))


def test_label_pair_confusion_counts_found_missed_and_claimed_labels() -> None:
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    predicted = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
    matrix = multilabel_metrics.confusion(truth, predicted, CLASSES)
    # rows actual billing, shipping, urgent, (none); columns predicted the same
    assert matrix.tolist() == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]


def test_auto_picks_each_labels_validation_f1_optimum() -> None:
    targets, probs = sample()
    choice = multilabel_metrics.choose_thresholds("auto", CLASSES, targets, probs)
    assert choice.threshold == choice.best_f1 and choice.reached is None
    for i, name in enumerate(CLASSES.names):
        best = max(skm.f1_score(targets[:, i], probs[:, i] >= t) for t in np.unique(probs[:, i]))
        assert skm.f1_score(targets[:, i], probs[:, i] >= choice.threshold[name]) == best


def test_a_number_applies_to_every_label_and_a_policy_to_each() -> None:
    targets, probs = sample()
    fixed = multilabel_metrics.choose_thresholds(0.7, CLASSES, targets, probs)
    assert fixed.threshold == dict.fromkeys(CLASSES.names, 0.7)
    policy = multilabel_metrics.choose_thresholds({"min_precision": 0.9}, CLASSES, targets, probs)
    for i, name in enumerate(CLASSES.names):
        predicted = probs[:, i] >= policy.threshold[name]
        precision = skm.precision_score(targets[:, i], predicted)
        assert precision >= 0.9 and policy.reached[name]["precision"] == pytest.approx(precision)


def test_null_and_an_unreachable_policy_are_refused_in_one_line() -> None:
    targets, probs = sample()
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: multi-label data needs"):
        multilabel_metrics.choose_thresholds(None, CLASSES, targets, probs)
    worst = np.where(targets > 0, 0.0, 1.0)  # every positive below every negative
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: no threshold gives 'billing'"):
        multilabel_metrics.choose_thresholds({"min_precision": 0.99}, CLASSES, targets, worst)
