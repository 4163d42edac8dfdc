"""The classification tasks: `SingleLabel` (data.label_format: single) and `MultiLabel`
(data.label_format: multi), each behind spamgpt.tasks.task's interface.

- SingleLabel: one class per message, a softmax over the classes, cross-entropy weighted by
  class; a threshold applies to the positive class of two, else the most probable class.
- MultiLabel: independent labels, a sigmoid each, binary cross-entropy with each label's
  positives weighted (pos_weight: balanced is negatives over positives); a message carries
  every label whose probability reaches that label's threshold (0.5 where none is set), maybe
  none. Targets are (N, labels) 0/1 floats; in a split file a row's labels are a JSON list.

The single-label metrics are numpy with scikit-learn's definitions (spamgpt.tasks.metrics' shared
pieces, tests/test_metrics.py); the multi-label report: per label precision, recall, F1,
support (messages carrying it), its threshold and its 2x2 confusion matrix [[tn, fp], [fn,
tp]]; micro F1 (over every decision), macro F1 (the labels' mean), samples F1 (each message's
F1 of its label set, averaged; an empty set answered empty scores 1), accuracy (the subset
accuracy: the whole set right, as scikit-learn's accuracy_score has it) and the Hamming loss
(the share of wrong decisions).
"""

import json
import logging
from abc import abstractmethod
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from spamgpt import paths
from spamgpt.errors import SpamGPTError
from spamgpt.labels import NONE, Classes
from spamgpt.params import check_threshold
from spamgpt.tasks import calibration, metrics
from spamgpt.tasks.metrics import ratio
from spamgpt.tasks.task import (
    DEFAULT_THRESHOLD,
    Setting,
    Task,
    Threshold,
    ThresholdChoice,
    prediction_table,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


class _Classification(Task):
    """What the two classification tasks share: train.class_weights' given mapping, the
    confusion figure and platt's shifts of the head; each calls calibration's functions of
    its own shape (class indices and a softmax, or 0/1 targets and a sigmoid a label)."""

    def loss_weights(self, targets: Tensor, setting: str | dict) -> Tensor | None:
        """none: None; a mapping gives each class its own (its keys the class names, as
        params.check_train_classes made sure); balanced: balanced_weights."""
        if setting == "none":
            return None
        if isinstance(setting, dict):
            weights = {str(name): float(weight) for name, weight in setting.items()}
            return torch.tensor([weights[name] for name in self.classes.names])
        return self.balanced_weights(targets)

    @abstractmethod
    def confusion_classes(self) -> Classes:
        """The rows and columns of the report's confusion_matrix."""

    def report_figures(self, report: dict, split: str) -> dict[str, "Figure"]:
        """Its confusion matrix (multi-label, of label pairs)."""
        figure = metrics.confusion_figure(
            report["confusion_matrix"], split, self.confusion_classes()
        )
        return {f"evaluation/{split}_confusion_matrix.png": figure}

    @abstractmethod
    def balanced_weights(self, targets: Tensor) -> Tensor:
        """train.class_weights: balanced, of the training split's targets."""

    def head_shifts(self, shift: dict[str, float]) -> list[float]:
        """Each class's (label's) own, of a {class: c} of exactly the model's classes."""
        return _per_class(shift, self.classes, "shifts")


class SingleLabel(_Classification):
    label_format = "single"
    problem_type = "single_label_classification"
    predicted_column = "label"
    micro_f1_key = "accuracy"  # every error is one false positive and one false negative
    PER_CLASS = ("precision", "recall", "f1")  # a class's figures besides its support

    def check_threshold(self, setting: Setting) -> None:
        classes = self.classes
        check_threshold(setting, self.label_format, classes.positive, len(classes))
        if classes.positive is None and setting is not None:
            log.info("no data.positive_label: each message gets its most probable class")

    def balanced_weights(self, targets: Tensor) -> Tensor:
        """n / (classes * n_c), so each class carries the same total weight."""
        names = self.classes.names
        counts = torch.bincount(targets, minlength=len(names)).float()
        return len(targets) / (len(counts) * counts.clamp(min=1))

    def loss_sum(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=weights, reduction="sum")

    def row_weights(self, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return torch.ones(len(targets)) if weights is None else weights[targets]

    def weighted_loss_sum(
        self, logits: Tensor, targets: Tensor, row_weights: Tensor, weights: Tensor | None
    ) -> Tensor:
        return (F.cross_entropy(logits, targets, reduction="none") * row_weights).sum()

    def batch_weight(self, targets: torch.Tensor, weights: torch.Tensor | None) -> float:
        """The count of messages, or their class weights' sum."""
        if weights is None:
            return float(targets.numel())
        return float(weights[targets].sum())

    def decisions_per_row(self, targets: torch.Tensor) -> int:
        return 1

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)

    @staticmethod
    def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
        """The target class's logit against the logsumexp of the others'."""
        others = torch.cat([logits[:, :target], logits[:, target + 1 :]], dim=1)
        return logits[:, target] - torch.logsumexp(others, dim=1)

    def explained(self, answer: dict) -> int:
        """Its label."""
        return self.classes.index(answer["label"])

    def validation_loss(
        self, probabilities: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> float:
        # The log of probabilities no smaller than float32 can hold: cross-entropy's value.
        log_probs = probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()
        return F.nll_loss(log_probs, targets, weight=weights).item()

    def validation_threshold(self) -> Threshold:
        """0.5 on the positive class where there is one of two, else the most probable."""
        return 0.5 if self._thresholded() else None

    def _thresholded(self) -> bool:
        return self.classes.positive is not None and len(self.classes) == 2

    def decisions(self, probabilities: np.ndarray, threshold: Threshold = None) -> np.ndarray:
        """Class index of each row of (N, classes) probabilities: with a threshold (two
        classes and a positive one), the positive class where its probability is >=
        threshold and the other elsewhere; otherwise the most probable class."""
        probabilities = np.asarray(probabilities)
        if threshold is None or not self._thresholded():
            return probabilities.argmax(axis=1)
        positive = self.classes.positive_index
        return np.where(probabilities[:, positive] >= threshold, positive, 1 - positive)

    def choose_threshold(
        self, setting: Setting, val_targets: np.ndarray, val_probs: np.ndarray,
        select_metric: str = "auto", min_support: int = 10,
    ) -> ThresholdChoice:  # fmt: skip
        """A number as it is, auto the positive class's F1 optimum, a policy
        (metrics.policy_threshold) the one it picks; all None without a positive class of
        two. One class's probabilities at a time, as per-class thresholds would be too."""
        classes = self.classes
        positive = classes.positive_index
        if positive is None:
            return ThresholdChoice(None, None, None)
        check_threshold(setting, self.label_format, classes.positive, len(classes))
        if len(classes) != 2:
            return ThresholdChoice(None, None, None)
        scores = val_probs[:, positive]
        best = metrics.best_threshold(val_targets, scores, positive)
        if isinstance(setting, dict):
            is_positive = val_targets == positive
            reached = metrics.policy_threshold(setting, is_positive, scores, classes.positive)
            return ThresholdChoice(reached.pop("threshold"), best, reached)
        return ThresholdChoice(best if setting == "auto" else setting, best, None)

    def report(self, targets: np.ndarray, probabilities: np.ndarray, threshold: Threshold) -> dict:
        """Accuracy, macro F1, per-class P/R/F1/support under each class's name, the
        positive class's ROC and PR AUCs (two classes), the confusion matrix (rows actual,
        columns predicted: [[tn, fp], [fn, tp]] for ham/spam). A ratio with nothing to
        count (no message predicted as a class, none of it present) is 0."""
        classes = self.classes
        labels, probabilities = np.asarray(targets), np.asarray(probabilities)
        predicted = self.decisions(probabilities, threshold)
        confusion = metrics.confusion_matrix(labels, predicted, len(classes))
        hits, support, claimed = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
        precision, recall = ratio(hits, claimed), ratio(hits, support)
        f1 = ratio(2 * precision * recall, precision + recall)
        positive = classes.positive_index
        # AUCs: of the positive class against the other, with both present
        both = positive is not None and len(classes) == 2 and len(np.unique(labels)) == 2
        is_positive = labels == positive
        scores = probabilities[:, positive] if positive is not None else None
        out = {
            "accuracy": float(hits.sum() / max(len(labels), 1)),
            "macro_f1": float(f1.mean()),
            "roc_auc": metrics.roc_auc(is_positive, scores) if both else None,
            "pr_auc": metrics.average_precision(is_positive, scores) if both else None,
        }
        for i, name in enumerate(classes.names):
            out[name] = {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
        out["confusion_matrix"] = confusion.tolist()
        return out

    def compared_figures(self, report: dict) -> dict:
        """Accuracy, macro F1 and, with a positive class, its precision, recall and F1 under
        its name (DVC's metrics files; the whole report goes to a report file, as the
        figures of every class would not fit a terminal)."""
        positive = self.classes.positive
        out = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
        if positive is not None:
            out[positive] = {k: report[positive][k] for k in self.PER_CLASS}
        return out

    def selection_figure(self, report: dict) -> dict:
        """What train.select_metric auto selects by, under its eval.json name: {positive:
        {"f1": ...}} or {"macro_f1": ...} (the baseline's, beside the model's test figures)."""
        positive = self.classes.positive
        if positive is not None:
            return {positive: {"f1": report[positive]["f1"]}}
        return {"macro_f1": report["macro_f1"]}

    def compared(self, report: dict, baseline: dict, choice: ThresholdChoice) -> dict:
        """compared_figures, the threshold applied and what a policy reached with it, and the
        baseline's selection_figure."""
        policy = {} if choice.reached is None else {"val_at_threshold": choice.reached}
        baseline_figure = self.selection_figure(baseline)
        out = self.compared_figures(report)
        return out | {"threshold": choice.threshold, **policy, "baseline": baseline_figure}

    def threshold_metrics(self, choice: ThresholdChoice) -> dict[str, float]:
        """test/threshold applied, val/best_threshold (the F1 optimum) and
        val/threshold_<figure> a policy reached."""
        found = {"test/threshold": choice.threshold, "val/best_threshold": choice.best_f1}
        found |= {f"val/threshold_{k}": v for k, v in (choice.reached or {}).items()}
        return {k: v for k, v in found.items() if v is not None}

    def curve_frames(self, targets: np.ndarray, probabilities: np.ndarray) -> dict:
        """ROC and precision/recall curves: the positive class's curve (against the others),
        else each class's against the rest. A class that is all or none of the messages has
        no curve."""
        classes = self.classes
        shown = range(len(classes)) if classes.positive is None else [classes.positive_index]
        return metrics.curve_frames(targets, probabilities, classes.names, shown)

    def test_errors(
        self, targets: np.ndarray, probs: np.ndarray, threshold: Threshold, table: pd.DataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Each message's classes, and those whose class is wrong, with the probability a
        threshold reads (the positive class's) or else the predicted class's."""
        classes = self.classes
        confusion = table.rename(columns={"label": "actual"})[["actual", "predicted"]]
        if classes.positive is not None:  # its probability, as a threshold reads it
            probability = f"{classes.positive}_probability"
            shown = probs[:, classes.positive_index].round(6)
        else:  # the predicted class's
            probability, shown = "probability", table["probability"]
        wrong = table.assign(**{probability: shown})
        wrong = wrong[wrong["predicted"] != wrong["label"]]
        return confusion, wrong[["line", "label", "predicted", probability, "text"]]

    def confusion_classes(self) -> Classes:
        """The report's confusion_matrix's rows and columns: the classes."""
        return self.classes

    def answers(self, probabilities: np.ndarray, threshold: Threshold) -> list[dict]:
        """Its label (decisions at `threshold`), that label's probability, every class's
        probability, and the positive class's as `<positive>_probability` where there is
        one (`spam_probability` for SMS)."""
        classes = self.classes
        probs = np.asarray(probabilities).astype(float)
        out = []
        for row, label in zip(probs, self.decisions(probs, threshold), strict=True):
            answer = {
                "label": classes.names[label],
                "probability": row[label],
                "probabilities": dict(zip(classes.names, row.tolist(), strict=True)),
            }
            if classes.positive is not None:
                answer[f"{classes.positive}_probability"] = row[classes.positive_index]
            out.append(answer)
        return out

    def prediction_frame(self, probabilities: np.ndarray, threshold: Threshold) -> pd.DataFrame:
        """`label` (decisions at `threshold`), `probability` (the label's) and `p_<class>`
        for every class."""
        probs = np.asarray(probabilities, dtype=np.float64)
        predicted = self.decisions(probs, threshold)
        answer = {
            "label": np.asarray(self.classes.names, dtype=object)[predicted],
            "probability": probs[np.arange(len(probs)), predicted],
        }
        return prediction_table(probs, answer, self.classes)

    def answer_columns(self) -> list[str]:
        return ["label", "probability", *(f"p_{name}" for name in self.classes.names)]

    def plain_answer(self, answer: dict) -> str:
        """The label and the probability a threshold reads: the positive class's where there
        is one, else the label's."""
        positive = self.classes.positive
        shown = "probability" if positive is None else f"{positive}_probability"
        return f"{answer['label']}\t{answer[shown]:.4f}"

    def serving_config(self) -> dict:
        return {}

    def baseline_threshold(self) -> Threshold:
        return DEFAULT_THRESHOLD if self._thresholded() else None

    def baseline_estimator(self) -> object:
        """The linear SVM (more than two classes: LinearSVC's own one against the rest)."""
        return _svm()

    def baseline_outputs(self, model: object, texts: list[str]) -> np.ndarray:
        """Two classes: the sigmoid of the SVM margin is the second class's column (above
        0.5 where the SVM says it), its complement the first's. More: the softmax of the
        one-against-the-rest margins (the largest is the SVM's pick)."""
        from scipy.special import expit, softmax

        margins = model.decision_function(texts)
        if margins.ndim == 1:
            second = expit(margins)
            return np.column_stack([1 - second, second])
        return softmax(margins, axis=1)

    def audit_folds(self, folds: int, seed: int) -> object:
        """Folds stratified by class."""
        from sklearn.model_selection import StratifiedKFold

        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)

    def label_issues(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        from cleanlab.filter import find_label_issues

        # n_jobs=1: cleanlab forks a Pool by default, and forking a process that already runs
        # torch's threads can deadlock the child (the audit stage hung); results do not depend on it
        return find_label_issues(
            targets, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
        )

    def label_quality(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        from cleanlab.rank import get_label_quality_scores

        return get_label_quality_scores(targets, probabilities, method="self_confidence")

    def suggested_labels(self, probabilities: np.ndarray) -> list[str]:
        """The most probable class."""
        return [self.classes.names[i] for i in np.asarray(probabilities).argmax(axis=1)]

    def given_labels(self, value: str) -> list[str]:
        return [value]

    def temperature(self, fitted: np.ndarray) -> float | dict[str, float]:
        return float(fitted[0])

    def temperature_metrics(self, temperature: float | dict[str, float]) -> dict[str, float]:
        return {"calibration/temperature": temperature}

    def head_temperatures(self, temperature: float | dict[str, float]) -> list[float]:
        """The one temperature, for every class."""
        return [float(temperature)] * len(self.classes)

    def fit_temperature(self, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """One temperature for the softmax of every class."""
        return calibration.fit_temperature(logits, targets)

    def fit_platt(self, logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One temperature and each class's shift (the first class's 0)."""
        return calibration.fit_platt(logits, targets)

    def calibrated(
        self, logits: np.ndarray, temperature: np.ndarray, shift: np.ndarray | None = None
    ) -> np.ndarray:
        return calibration.probabilities(logits, temperature, shift)

    def calibration_scores(
        self,
        targets: np.ndarray,
        logits: np.ndarray,
        temperature: np.ndarray | float,
        shift: np.ndarray | None = None,
    ) -> dict:
        """Of the top class's probability (ECE) and of every class's (Brier, log loss)."""
        return calibration.scores(targets, logits, temperature, shift)

    def reliability_frame(self, targets: np.ndarray, curves: dict[str, np.ndarray]) -> object:
        """The top class's probability against whether it is right."""
        return calibration.reliability_frame(
            {name: calibration.top_class(probs, targets) for name, probs in curves.items()}
        )


_PASSES = 20  # coordinate-ascent sweeps over the labels at most (each accepted move improves)
_GAIN = 1e-12  # a move must raise the selected metric by more than rounding


class MultiLabel(_Classification):
    label_format = "multi"
    problem_type = "multi_label_classification"
    predicted_column = "labels"
    micro_f1_key = "micro_f1"
    COMPARED = ("accuracy", "micro_f1", "macro_f1", "samples_f1", "hamming_loss")

    def check_threshold(self, setting: Setting) -> None:
        check_threshold(setting, self.label_format, self.classes.positive, len(self.classes))

    def balanced_weights(self, targets: Tensor) -> Tensor:
        """Each label's weight of its positives (pos_weight): negatives / positives."""
        positives = targets.sum(dim=0)
        return (len(targets) - positives) / positives.clamp(min=1)

    def loss_sum(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """The summed binary cross-entropy of (B, labels) logits against 0/1 targets."""
        return F.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=weights, reduction="sum"
        )

    def row_weights(self, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return torch.ones(len(targets))  # pos_weight weighs positives within the loss

    def weighted_loss_sum(
        self, logits: Tensor, targets: Tensor, row_weights: Tensor, weights: Tensor | None
    ) -> Tensor:
        per_label = F.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=weights, reduction="none"
        )
        return (per_label * row_weights[:, None]).sum()

    def batch_weight(self, targets: torch.Tensor, weights: torch.Tensor | None) -> float:
        """The count of decisions (pos_weight weighs positives within the mean, as torch's
        BCEWithLogitsLoss does)."""
        return float(targets.numel())

    def decisions_per_row(self, targets: torch.Tensor) -> int:
        return targets.shape[1]

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    @staticmethod
    def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
        """A label's own logit is its log-odds."""
        return logits[:, target]

    def explained(self, answer: dict) -> int:
        """Its most probable label."""
        names = self.classes.names
        return max(range(len(names)), key=lambda i: answer["probabilities"][names[i]])

    def validation_loss(
        self, probabilities: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> float:
        """The training loss (its mean per decision) from sigmoid probabilities."""
        tiny = torch.finfo(probabilities.dtype).tiny
        log_p = probabilities.clamp_min(tiny).log()
        log_q = (1 - probabilities).clamp_min(tiny).log()
        positive = targets * log_p * (1 if weights is None else weights)
        return float(-(positive + (1 - targets) * log_q).mean())

    def validation_threshold(self) -> Threshold:
        return DEFAULT_THRESHOLD

    def thresholds(self, threshold: Threshold) -> np.ndarray:
        """Each label's threshold, in the order of the names: of a {label: threshold}
        mapping (0.5 where a label has none), one number for all, or None: 0.5."""
        names = self.classes.names
        if isinstance(threshold, dict):
            return np.array([float(threshold.get(name, DEFAULT_THRESHOLD)) for name in names])
        return np.full(len(names), DEFAULT_THRESHOLD if threshold is None else float(threshold))

    def decisions(self, probabilities: np.ndarray, threshold: Threshold = None) -> np.ndarray:
        """(N, labels) booleans, each label's probability >= its threshold (thresholds)."""
        return np.asarray(probabilities) >= self.thresholds(threshold)

    def report(self, targets: np.ndarray, probabilities: np.ndarray, threshold: Threshold) -> dict:
        """See the module's doc; at `threshold` (one for every label, {label: threshold},
        or None: 0.5)."""
        classes = self.classes
        truth = np.asarray(targets) > 0.5
        predicted = self.decisions(probabilities, threshold)
        tp = (truth & predicted).sum(axis=0)
        fp = (~truth & predicted).sum(axis=0)
        fn = (truth & ~predicted).sum(axis=0)
        tn = (~truth & ~predicted).sum(axis=0)
        precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
        f1 = ratio(2 * tp, 2 * tp + fp + fn)
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
        thresholds = self.thresholds(threshold)
        for i, name in enumerate(classes.names):
            out[name] = {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(truth[:, i].sum()),
                "threshold": float(thresholds[i]),
                "confusion_matrix": [[int(tn[i]), int(fp[i])], [int(fn[i]), int(tp[i])]],
            }
        out["confusion_matrix"] = self.confusion(truth, predicted).tolist()
        return out

    def confusion(self, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """(labels + 1) square counts of (actual, predicted) label pairs (the last: NONE): a
        label found is (label, label), one missed (label, NONE), one claimed wrongly (NONE,
        label)."""
        pairs = self.confusion_pairs(truth, predicted)
        names = [*self.classes.names, NONE]
        index = {name: i for i, name in enumerate(names)}
        matrix = np.zeros((len(names), len(names)), dtype=np.int64)
        np.add.at(matrix, (pairs["actual"].map(index), pairs["predicted"].map(index)), 1)
        return matrix

    def confusion_pairs(self, truth: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
        """The DVC confusion plot's rows: one (actual, predicted) per message and label it
        has or was given (see confusion)."""
        rows, cols = np.nonzero(truth | predicted)
        names = np.asarray(self.classes.names, dtype=object)[cols]
        actual = np.where(truth[rows, cols], names, NONE)
        claimed = np.where(predicted[rows, cols], names, NONE)
        return pd.DataFrame({"actual": actual, "predicted": claimed})

    def threshold_objective(self, select_metric: str) -> str:
        """The report figure that auto and the policies maximise for train.select_metric:
        micro_f1, macro_f1, accuracy (the subset accuracy) or a label's name (its F1). auto
        and val_loss, which no threshold changes, give macro_f1 (what auto selects epochs
        by)."""
        if select_metric in ("micro_f1", "macro_f1", "accuracy"):
            return select_metric
        label = select_metric.removesuffix("_f1")
        if select_metric.endswith("_f1") and label in self.classes.names:
            return label
        return "macro_f1"

    def choose_threshold(
        self, setting: Setting, val_targets: np.ndarray, val_probs: np.ndarray,
        select_metric: str = "auto", min_support: int = 10,
    ) -> ThresholdChoice:  # fmt: skip
        """evaluate.threshold for each label, from validation. A number applies to every
        label. auto and a policy ({min_precision: p}, {max_fpr: f}) maximise the selected
        validation metric (threshold_objective) by coordinate ascent from 0.5 for every
        label: each label in turn takes the threshold, among its validation probabilities (a
        policy: those meeting it for that label), that raises the metric most, until no
        label's move raises it. A label with fewer than `min_support` validation positives
        keeps 0.5 (too few to choose on). auto's thresholds are therefore never worse than
        0.5 for the metric on validation."""
        classes = self.classes
        check_threshold(setting, self.label_format, None)
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
        objective = self.threshold_objective(select_metric)
        eligible = truth.sum(axis=0) >= min_support
        start = np.full(len(classes), DEFAULT_THRESHOLD)
        for i in np.flatnonzero(eligible):
            if policy is not None and not _meets(policy, truth[:, i], probs[:, i] >= start[i]):
                name = classes.names[i]
                start[i] = metrics.policy_threshold(policy, truth[:, i], probs[:, i], name)[
                    "threshold"
                ]
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

    def compared_figures(self, report: dict) -> dict:
        """The set figures, not every label's (those are in the report file)."""
        return {key: report[key] for key in self.COMPARED}

    def compared(self, report: dict, baseline: dict, choice: ThresholdChoice) -> dict:
        """compared_figures and the baseline's micro F1: a label's are wide."""
        return self.compared_figures(report) | {"baseline": {"micro_f1": baseline["micro_f1"]}}

    def threshold_metrics(self, choice: ThresholdChoice) -> dict[str, float]:
        """Each label's test/threshold_<label>, val/best_threshold_<label> and
        val/threshold_<label>_<figure> a policy reached."""
        found = {}
        for name in self.classes.names:
            key = self.classes.metric_name(name)
            found[f"test/threshold_{key}"] = choice.threshold[name]
            found[f"val/best_threshold_{key}"] = choice.best_f1[name]
            for k, v in ((choice.reached or {}).get(name) or {}).items():
                found[f"val/threshold_{key}_{k}"] = v
        return found

    def curve_frames(self, targets: np.ndarray, probabilities: np.ndarray) -> dict:
        """Each label's ROC and precision/recall curve against the messages without it (a
        label on every message or none: no curve)."""
        truth = np.asarray(targets) > 0.5
        probabilities = np.asarray(probabilities)
        parts: dict[str, list[pd.DataFrame]] = {"roc": [], "pr": []}
        for i, name in enumerate(self.classes.names):
            p = probabilities[:, i]
            frames = metrics.curve_frames(
                truth[:, i].astype(np.int64), np.column_stack([1 - p, p]), ("", name), [1]
            )
            for kind, frame in frames.items():
                parts[kind].append(frame)
        return {kind: pd.concat(frames, ignore_index=True) for kind, frames in parts.items()}

    def test_errors(
        self, targets: np.ndarray, probs: np.ndarray, threshold: Threshold, table: pd.DataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The label pairs (confusion_pairs) and each message whose label set is wrong, with
        every label's probability."""
        truth = np.asarray(targets) > 0.5
        predicted = self.decisions(probs, threshold)
        confusion = self.confusion_pairs(truth, predicted)
        return confusion, table[(truth != predicted).any(axis=1)]

    def confusion_classes(self) -> Classes:
        """The labels and NONE: the confusion of (actual, predicted) labels."""
        return Classes((*self.classes.names, NONE))

    def label_lists(self, on: np.ndarray) -> list[str]:
        """Each row's labels of (N, labels) booleans as a JSON list (a split file's label)."""
        names = self.classes.names
        return [json.dumps([n for n, v in zip(names, row, strict=True) if v]) for row in on]

    def answers(self, probabilities: np.ndarray, threshold: Threshold) -> list[dict]:
        """`labels` (those at or over their thresholds, in the classes' order) and every
        label's probability."""
        probs = np.asarray(probabilities, dtype=float)
        names = self.classes.names
        return [
            {
                "labels": [n for n, on in zip(names, row_on, strict=True) if on],
                "probabilities": dict(zip(names, row.tolist(), strict=True)),
            }
            for row, row_on in zip(probs, self.decisions(probs, threshold), strict=True)
        ]

    def prediction_frame(self, probabilities: np.ndarray, threshold: Threshold) -> pd.DataFrame:
        """`labels` (a JSON list) and `p_<label>` for every label."""
        probs = np.asarray(probabilities, dtype=np.float64)
        answer = {"labels": self.label_lists(self.decisions(probs, threshold))}
        return prediction_table(probs, answer, self.classes)

    def answer_columns(self) -> list[str]:
        return ["labels", *(f"p_{name}" for name in self.classes.names)]

    def plain_answer(self, answer: dict) -> str:
        """The labels given (NONE for none), then each label's probability."""
        given = "|".join(answer["labels"]) or NONE
        probs = " ".join(f"{k}={v:.4f}" for k, v in answer["probabilities"].items())
        return f"{given}\t{probs}"

    def serving_config(self) -> dict:
        return {"multi_label": True}

    def baseline_threshold(self) -> Threshold:
        return DEFAULT_THRESHOLD

    def baseline_estimator(self) -> object:
        """A linear SVM each label against the rest ((N, labels) targets)."""
        from sklearn.multiclass import OneVsRestClassifier

        return OneVsRestClassifier(_svm())

    def baseline_outputs(self, model: object, texts: list[str]) -> np.ndarray:
        """Each label's own sigmoid of its SVM's margin."""
        from scipy.special import expit

        return expit(model.decision_function(texts))

    def audit_folds(self, folds: int, seed: int) -> object:
        """Shuffled folds (scikit-learn stratifies no label sets)."""
        from sklearn.model_selection import KFold

        return KFold(n_splits=folds, shuffle=True, random_state=seed)

    def label_issues(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        from cleanlab.multilabel_classification.filter import find_label_issues

        given = [list(np.flatnonzero(row)) for row in targets]
        return find_label_issues(
            given, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
        )  # n_jobs=1: see SingleLabel.label_issues

    def label_quality(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        given = [list(np.flatnonzero(row)) for row in targets]
        return get_label_quality_scores(given, probabilities)

    def suggested_labels(self, probabilities: np.ndarray) -> list[str]:
        """The JSON list of labels at or above 0.5, as the split files write label sets."""
        names = self.classes.names
        return [
            json.dumps([names[i] for i in np.flatnonzero(row >= 0.5)], ensure_ascii=False)
            for row in probabilities
        ]

    def given_labels(self, value: str) -> list[str]:
        """A split file's JSON list."""
        return json.loads(value)

    def temperature(self, fitted: np.ndarray) -> float | dict[str, float]:
        return {name: float(t) for name, t in zip(self.classes.names, fitted, strict=True)}

    def unfitted(self, fitted: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """Each label's: its temperature stayed 1 (platt: and its shift 0)."""
        return fitted == 1.0 if shift is None else (fitted == 1.0) & (shift == 0.0)

    def unfitted_labels(self, fitted: np.ndarray, shift: np.ndarray | None = None) -> list[str]:
        left = self.unfitted(fitted, shift)
        return [n for n, t in zip(self.classes.names, left, strict=True) if t]

    def head_temperatures(self, temperature: float | dict[str, float]) -> list[float]:
        """Each label's own, of a {label: T} of exactly the model's labels."""
        return _per_class(temperature, self.classes, "temperatures")

    def temperature_metrics(self, temperature: float | dict[str, float]) -> dict[str, float]:
        """calibration/temperature_<label>, each label's."""
        metric_name = self.classes.metric_name
        return {f"calibration/temperature_{metric_name(n)}": t for n, t in temperature.items()}

    def fit_temperature(self, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Each label's temperature of its own sigmoid."""
        return calibration.fit_label_temperatures(logits, targets)

    def fit_platt(self, logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each label's temperature and shift."""
        return calibration.fit_label_platt(logits, targets)

    def calibrated(
        self, logits: np.ndarray, temperature: np.ndarray, shift: np.ndarray | None = None
    ) -> np.ndarray:
        return calibration.label_probabilities(logits, temperature, shift)

    def calibration_scores(
        self,
        targets: np.ndarray,
        logits: np.ndarray,
        temperature: np.ndarray | float,
        shift: np.ndarray | None = None,
    ) -> dict:
        """Pooled over every (message, label) pair, and each label's."""
        names = list(self.classes.names)
        return calibration.label_scores(targets, logits, temperature, names, shift)

    def reliability_frame(self, targets: np.ndarray, curves: dict[str, np.ndarray]) -> object:
        """Each label's probability against its presence, pooled over the labels."""
        return calibration.reliability_frame(
            {name: calibration.each_label(probs, targets) for name, probs in curves.items()}
        )


def _per_class(values: dict[str, float], classes: Classes, what: str) -> list[float]:
    """`values` in the order of the model's classes; one line where they name others."""
    if set(values) != set(classes.names):
        raise SpamGPTError(
            f"the {what} are of the labels {', '.join(sorted(values))}, the model has "
            f"{', '.join(classes.names)}: evaluate another model's? (run evaluate again, "
            f"{paths.CALIBRATION})"
        )
    return [float(values[name]) for name in classes.names]


def _svm() -> object:
    """The baseline's linear SVM: balanced, as spam is ~13% of the SMS messages; random_state
    fixes liblinear's dual shuffling."""
    from sklearn.svm import LinearSVC

    return LinearSVC(class_weight="balanced", random_state=0)


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
    MultiLabel.choose_threshold); every accepted move raises it, so it ends no lower than at
    `start`."""
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
