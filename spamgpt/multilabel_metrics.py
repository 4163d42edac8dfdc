"""The metrics and thresholds of multi-label classification (spamgpt.multilabel).

The report of a split, in eval.json as the single-label one is: per label precision, recall,
F1, support (messages carrying it), its threshold and its 2x2 confusion matrix [[tn, fp], [fn,
tp]]; micro F1 (over every decision), macro F1 (the labels' mean), samples F1 (each message's
F1 of its label set, averaged; an empty set answered empty scores 1), accuracy (the subset
accuracy: the whole set right, as scikit-learn's accuracy_score has it) and the Hamming loss
(the share of wrong decisions). scikit-learn's definitions (tests/test_multilabel.py).
"""

from typing import NamedTuple

import numpy as np
import pandas as pd

from spamgpt import metrics
from spamgpt.errors import ParamsError
from spamgpt.labels import NONE, Classes


def report(
    targets: np.ndarray,
    probabilities: np.ndarray,
    threshold: float | dict[str, float] | None,
    classes: Classes,
) -> dict:
    """One split's eval.json object (see the module's doc) at `threshold` (one for every
    label, {label: threshold}, or None: 0.5)."""
    truth = np.asarray(targets) > 0.5
    predicted = classes.predicted(probabilities, threshold)
    tp = (truth & predicted).sum(axis=0)
    fp = (~truth & predicted).sum(axis=0)
    fn = (truth & ~predicted).sum(axis=0)
    tn = (~truth & ~predicted).sum(axis=0)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    row_tp = (truth & predicted).sum(axis=1)
    row_errors = (truth ^ predicted).sum(axis=1)
    row_f1 = np.divide(
        2 * row_tp,
        2 * row_tp + row_errors,
        out=np.ones(len(truth)),
        where=(2 * row_tp + row_errors) > 0,
    )
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    out = {
        "accuracy": float((row_errors == 0).mean()) if len(truth) else 0.0,
        "micro_f1": float(micro),
        "macro_f1": float(f1.mean()),
        "samples_f1": float(row_f1.mean()) if len(truth) else 0.0,
        "hamming_loss": float(row_errors.sum() / max(truth.size, 1)),
    }
    thresholds = classes.thresholds(threshold)
    for i, name in enumerate(classes.names):
        out[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(truth[:, i].sum()),
            "threshold": float(thresholds[i]),
            "confusion_matrix": [[int(tn[i]), int(fp[i])], [int(fn[i]), int(tp[i])]],
        }
    out["confusion_matrix"] = confusion(truth, predicted, classes).tolist()
    return out


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: Classes) -> np.ndarray:
    """(labels + 1) square counts of (actual, predicted) label pairs (the last: NONE): a label
    found is (label, label), one missed (label, NONE), one claimed wrongly (NONE, label)."""
    pairs = confusion_pairs(truth, predicted, classes)
    names = [*classes.names, NONE]
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(matrix, (pairs["actual"].map(index), pairs["predicted"].map(index)), 1)
    return matrix


def confusion_pairs(truth: np.ndarray, predicted: np.ndarray, classes: Classes) -> pd.DataFrame:
    """The DVC confusion plot's rows: one (actual, predicted) per message and label it has or
    was given (see confusion)."""
    rows, cols = np.nonzero(truth | predicted)
    names = np.asarray(classes.names, dtype=object)[cols]
    actual = np.where(truth[rows, cols], names, NONE)
    claimed = np.where(predicted[rows, cols], names, NONE)
    return pd.DataFrame({"actual": actual, "predicted": claimed})


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def check_threshold(setting: float | str | dict | None) -> None:
    """evaluate.threshold of multi-label data: anything but null (no most probable class)."""
    if setting is None:
        raise ParamsError(
            "evaluate.threshold: multi-label data needs a threshold for each label, not null; "
            "allowed: a number in (0, 1), auto, {min_precision: p} or {max_fpr: f}"
        )


class ThresholdChoice(NamedTuple):
    threshold: dict[str, float]  # each label's, as evaluate applies them
    best_f1: dict[str, float]  # each label's validation-F1 optimum
    reached: dict[str, dict[str, float]] | None  # a policy's: each label's val precision...


def choose_thresholds(
    setting: float | str | dict | None, classes: Classes, val_targets: np.ndarray, val_probs
) -> ThresholdChoice:
    """evaluate.threshold for each label, from validation: a number for all, auto each
    label's F1 optimum, a policy (metrics.policy_threshold) per label."""
    check_threshold(setting)
    truth = np.asarray(val_targets) > 0.5
    best, chosen, reached = {}, {}, {}
    for i, name in enumerate(classes.names):
        scores = np.asarray(val_probs)[:, i]
        has_positive = truth[:, i].any()
        best[name] = metrics.best_threshold(truth[:, i], scores, True) if has_positive else 0.5
        if isinstance(setting, dict):
            policy = metrics.policy_threshold(setting, truth[:, i], scores, name)
            chosen[name] = policy.pop("threshold")
            reached[name] = policy
        else:
            chosen[name] = best[name] if setting == "auto" else float(setting)
    return ThresholdChoice(chosen, best, reached or None)


def compared(rep: dict) -> dict:
    """What experiments are compared by, of a report (DVC's metrics file, eval.json): the set
    figures, not every label's (those are in the report file)."""
    keys = ("accuracy", "micro_f1", "macro_f1", "samples_f1", "hamming_loss")
    return {key: rep[key] for key in keys}


def curve_frames(
    targets: np.ndarray, probabilities: np.ndarray, classes: Classes
) -> dict[str, pd.DataFrame]:
    """Each label's ROC and precision/recall curve against the messages without it, as
    metrics.curve_frames lays them out (a label on every message or none: no curve)."""
    truth = np.asarray(targets) > 0.5
    probabilities = np.asarray(probabilities)
    parts: dict[str, list[pd.DataFrame]] = {"roc": [], "pr": []}
    for i, name in enumerate(classes.names):
        p = probabilities[:, i]
        one = Classes((f"not {name}", name), name)  # the label against its absence
        frames = metrics.curve_frames(
            truth[:, i].astype(np.int64), np.column_stack([1 - p, p]), one
        )
        for kind, frame in frames.items():
            parts[kind].append(frame)
    return {kind: pd.concat(frames, ignore_index=True) for kind, frames in parts.items()}
