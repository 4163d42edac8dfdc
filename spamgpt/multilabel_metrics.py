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
from spamgpt.labels import NONE, Classes
from spamgpt.params import check_threshold


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


DEFAULT_THRESHOLD = 0.5  # a label's threshold where validation cannot choose a better one
_PASSES = 20  # coordinate-ascent sweeps over the labels at most (each accepted move improves)
_GAIN = 1e-12  # a move must raise the selected metric by more than rounding


class ThresholdChoice(NamedTuple):
    threshold: dict[str, float]  # each label's, as evaluate applies them
    best_f1: dict[str, float]  # each label's validation-F1 optimum
    reached: dict[str, dict[str, float]] | None  # a policy's: each label's val precision...
    kept_default: list[str]  # auto or a policy: the labels under min_support (0.5 each)


def threshold_objective(select_metric: str, classes: Classes) -> str:
    """The report figure that auto and the policies maximise for train.select_metric:
    micro_f1, macro_f1, accuracy (the subset accuracy) or a label's name (its F1). auto and
    val_loss, which no threshold changes, give macro_f1 (what auto selects epochs by)."""
    if select_metric in ("micro_f1", "macro_f1", "accuracy"):
        return select_metric
    label = select_metric.removesuffix("_f1")
    if select_metric.endswith("_f1") and label in classes.names:
        return label
    return "macro_f1"


def choose_thresholds(
    setting: float | str | dict | None,
    classes: Classes,
    val_targets: np.ndarray,
    val_probs: np.ndarray,
    select_metric: str = "auto",
    min_support: int = 10,
) -> ThresholdChoice:
    """evaluate.threshold for each label, from validation. A number applies to every label.
    auto and a policy ({min_precision: p}, {max_fpr: f}) maximise the selected validation
    metric (threshold_objective) by coordinate ascent from 0.5 for every label: each label in
    turn takes the threshold, among its validation probabilities (a policy: those meeting it
    for that label), that raises the metric most, until no label's move raises it. A label
    with fewer than `min_support` validation positives keeps 0.5 (too few to choose on).
    auto's thresholds are therefore never worse than 0.5 for the metric on validation."""
    check_threshold(setting, True, None)
    truth = np.asarray(val_targets) > 0.5
    probs = np.asarray(val_probs, dtype=np.float64)
    best = {
        name: metrics.best_threshold(truth[:, i], probs[:, i], True)
        if truth[:, i].any()
        else DEFAULT_THRESHOLD
        for i, name in enumerate(classes.names)
    }
    if not (setting == "auto" or isinstance(setting, dict)):
        return ThresholdChoice(dict.fromkeys(classes.names, float(setting)), best, None, [])
    policy = setting if isinstance(setting, dict) else None
    objective = threshold_objective(select_metric, classes)
    eligible = truth.sum(axis=0) >= min_support
    start = np.full(len(classes), DEFAULT_THRESHOLD)
    for i in np.flatnonzero(eligible):
        if policy is not None and not _meets(policy, truth[:, i], probs[:, i] >= start[i]):
            name = classes.names[i]
            start[i] = metrics.policy_threshold(policy, truth[:, i], probs[:, i], name)["threshold"]
    chosen = _ascend(truth, probs, start, np.flatnonzero(eligible), objective, classes, policy)
    reached = None
    if policy is not None:
        reached = {
            name: _rates(truth[:, i], probs[:, i] >= chosen[i])
            for i, name in enumerate(classes.names)
        }
    kept = [name for name, ok in zip(classes.names, eligible, strict=True) if not ok]
    threshold = {name: float(t) for name, t in zip(classes.names, chosen, strict=True)}
    return ThresholdChoice(threshold, best, reached, kept)


def _rates(is_positive: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """precision, recall and false-positive rate of one label's decisions (0 for 0/0)."""
    tp, fp = int((is_positive & predicted).sum()), int((~is_positive & predicted).sum())
    positives, negatives = int(is_positive.sum()), int((~is_positive).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / positives if positives else 0.0,
        "fpr": fp / negatives if negatives else 0.0,
    }


def _meets(policy: dict[str, float], is_positive: np.ndarray, predicted: np.ndarray) -> bool:
    """Do these decisions meet the policy (as metrics.policy_threshold reads it: some true
    positive, and the precision or false-positive rate within its bound)?"""
    ((rule, bound),) = policy.items()
    rates = _rates(is_positive, predicted)
    if not (is_positive & predicted).any():
        return False
    return rates["precision"] >= bound if rule == "min_precision" else rates["fpr"] <= bound


def _ascend(
    truth: np.ndarray,
    probs: np.ndarray,
    start: np.ndarray,
    free: np.ndarray,
    objective: str,
    classes: Classes,
    policy: dict[str, float] | None,
) -> np.ndarray:
    """Coordinate ascent of the objective over the thresholds of the `free` labels (see
    choose_thresholds); every accepted move raises it, so it ends no lower than at `start`."""
    if objective in classes.names:  # one label's F1: the others cannot change it
        free = np.intersect1d(free, [classes.index(objective)])
    search = _Search(truth, probs, start)
    for _ in range(_PASSES):
        moved = False
        for i in free:
            candidates, values, current = search.objective_by_threshold(
                i, objective, len(classes), policy
            )
            top = values.max(initial=-np.inf)
            if top > current + _GAIN:
                ties = candidates[values >= top - _GAIN]  # of those, the nearest to now
                search.move(i, ties[np.argmin(np.abs(ties - search.thresholds[i]))])
                moved = True
        if not moved:
            break
    return search.thresholds


class _Search:
    """The state of the ascent: each label's threshold and decisions, and what a move of one
    label's threshold needs of the others (kept up to date move by move, so that a label's
    every candidate is weighed in one sorted pass: O(N log N), not O(N x labels))."""

    def __init__(self, truth: np.ndarray, probs: np.ndarray, start: np.ndarray) -> None:
        self.truth, self.probs, self.thresholds = truth, probs, start.copy()
        self.predicted = probs >= start
        self.wrong = (truth != self.predicted).sum(axis=1)  # each message's wrong decisions
        self.counts = self._counts(truth, self.predicted)  # (3, labels): tp, fp, fn each
        self.orders: dict[int, np.ndarray] = {}  # a label's messages by falling probability

    @staticmethod
    def _counts(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        t, p = truth, predicted
        return np.stack([(t & p).sum(axis=0), (~t & p).sum(axis=0), (t & ~p).sum(axis=0)])

    def move(self, i: int, threshold: float) -> None:
        self.wrong -= self.truth[:, i] != self.predicted[:, i]
        self.thresholds[i] = threshold
        self.predicted[:, i] = self.probs[:, i] >= threshold
        self.wrong += self.truth[:, i] != self.predicted[:, i]
        self.counts[:, i] = self._counts(self.truth[:, [i]], self.predicted[:, [i]])[:, 0]

    def objective_by_threshold(
        self, i: int, objective: str, n_labels: int, policy: dict[str, float] | None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(label i's candidate thresholds: its distinct validation probabilities, the
        objective at each with the other labels' decisions as they are (-inf where a policy
        is not met), the objective now)."""
        truth, predicted = self.truth, self.predicted
        is_pos, mine = truth[:, i], predicted[:, i]
        others = (self.wrong - (is_pos != mine)) == 0  # the rest of the set right
        weights = np.column_stack([is_pos, ~is_pos, others & is_pos, others & ~is_pos])
        if i not in self.orders:
            self.orders[i] = np.argsort(-self.probs[:, i])  # (equal ones side by side)
        order = self.orders[i]
        scores = self.probs[order, i]
        last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
        above = np.cumsum(weights[order], axis=0)[last_of_each]  # counts at p >= each score
        now = (weights & mine[:, None]).sum(axis=0)
        counts = np.vstack([above, now]).astype(np.float64)  # the candidates, then the present
        tp, fp, right_pos, right_neg = counts.T
        fn = is_pos.sum() - tp
        if objective == "accuracy":  # rows right elsewhere whose label i is right too
            values = (right_pos + (others & ~is_pos).sum() - right_neg) / max(len(truth), 1)
        elif objective in ("micro_f1", "macro_f1"):
            rest = np.delete(self.counts, i, axis=1)  # the other labels' tp, fp, fn
            if objective == "micro_f1":
                values = _f1(
                    *(part.sum() + own for part, own in zip(rest, (tp, fp, fn), strict=True))
                )
            else:
                values = (_f1(*rest).sum() + _f1(tp, fp, fn)) / n_labels
        else:  # this label's F1
            values = _f1(tp, fp, fn)
        if policy is not None:
            ((rule, bound),) = policy.items()
            precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
            fpr = fp / max(int((~is_pos).sum()), 1)
            meets = (precision >= bound if rule == "min_precision" else fpr <= bound) & (tp > 0)
            values = np.where(meets, values, -np.inf)
        return scores[last_of_each], values[:-1], float(values[-1])


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2tp / (2tp + fp + fn), 0 where nothing is counted (as report has it)."""
    tp, denominator = np.asarray(tp, dtype=np.float64), np.asarray(2 * tp + fp + fn, np.float64)
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


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
