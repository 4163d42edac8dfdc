"""The task a classifier learns: the one interface (`Task`) behind which each task is one
class, as transformers' `problem_type` and SetFit's `multi_target_strategy` are decided once.
The training loop, evaluate's results, the baseline, classify, predict, serving and the
exports call a task's methods (spamgpt.tasks.registry.task_for gives the task of the classes)
and never ask which it is.

Adding a task (as regression, data.label_format: number, was added):
1. one new module, spamgpt/tasks/<task>.py, with a subclass of `Task` implementing every abstract
   method, and its class values (`label_format`, `problem_type`, `predicted_column`,
   `micro_f1_key`); spamgpt/tasks/classification.py holds the two classification tasks as examples.
   What a task has none of, its methods make no-ops, and the callers do not branch on it:
   no thresholds, `choose_threshold` gives ThresholdChoice(None, None, None) and
   `threshold_metrics` {}; no curves, `curve_frames` {}; no temperature, `calibrate`'s methods
   keep the outputs as they are (`fit_temperature` ones, `temperature` 1.0), or with no
   probabilities at all `calibration_method` says NOT_APPLICABLE; no label audit,
   `audit_skipped` says why; its own figures (`report_figures`, `test_figures`) and baseline
   (`baseline_estimator`, `baseline_outputs`) (spamgpt/tasks/regression.py is such a task);
2. one line in spamgpt/tasks/registry.py's TASKS (the one factory);
3. the label column's format where it is read: params.py validates data.label_format,
   labels.Classes makes its training targets (labels._TARGETS), and one LabelFormat in
   spamgpt/data/readers.py's LABEL_FORMATS checks a row's label and says what a split is
   stratified on, what metrics/data.json counts and which classes there are: the only other
   places that know formats.
"""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from spamgpt.errors import ParamsError
from spamgpt.labels import Classes
from spamgpt.tasks import metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Threshold = float | dict[str, float] | None  # what a task's decisions apply (see decisions)
Setting = float | str | dict | None  # evaluate.threshold: a number, auto, a policy or null
DEFAULT_THRESHOLD = 0.5  # a label's threshold where validation cannot choose a better one
NOT_APPLICABLE = "not applicable"  # evaluate.calibration of a task without probabilities


class ThresholdChoice(NamedTuple):
    """evaluate.threshold made what the decisions apply, from validation."""

    threshold: Threshold  # what evaluate applies (single-label: the positive class's)
    best_f1: Threshold  # the validation-F1 optimum (multi-label: each label's)
    reached: dict | None  # a policy's: validation precision, recall, fpr (each label's)
    kept_default: list[str] | None = None  # multi-label: labels under min_support (0.5)


class Task(ABC):
    """What differs between tasks, behind one interface. `classes` are the model's outputs in
    order; targets are what labels.Classes.targets reads from a split's label column;
    probabilities are float arrays (N, outputs) of `probabilities`; a threshold is what
    `choose_threshold` chose (or a flag gave) and `decisions` applies."""

    label_format: ClassVar[str]  # data.label_format, and classifier.json's
    problem_type: ClassVar[str]  # transformers' config.problem_type of the export
    predicted_column: ClassVar[str]  # the answer's column of the prediction table

    def __init__(self, classes: Classes) -> None:
        self.classes = classes

    # --- the threshold setting -----------------------------------------------------------

    @abstractmethod
    def check_threshold(self, setting: Setting) -> None:
        """evaluate.threshold against the classes, before any work: a ParamsError."""

    # --- training ------------------------------------------------------------------------

    @abstractmethod
    def loss_weights(self, targets: torch.Tensor, setting: str | dict) -> torch.Tensor | None:
        """The loss's weights for train.class_weights from the training split's `targets`
        (none: None)."""

    def start_head(self, head: torch.nn.Linear, targets: torch.Tensor) -> None:
        """Set the new head's starting point from the training split's `targets` before
        training (classes: as initialised, small, its logits near 0)."""
        return None

    @abstractmethod
    def loss_sum(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """The summed training loss of (B, outputs) float32 logits (divided by batch_weight,
        it is the loss's weighted mean)."""

    @abstractmethod
    def row_weights(self, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Each row's weight in the loss (the CUDA-graph step's buffers; 0 fills a batch)."""

    @abstractmethod
    def weighted_loss_sum(
        self, logits: Tensor, targets: Tensor, row_weights: Tensor, weights: Tensor | None
    ) -> Tensor:
        """loss_sum with each row's loss times its `row_weights` (the CUDA-graph step)."""

    @abstractmethod
    def batch_weight(self, targets: torch.Tensor, weights: torch.Tensor | None) -> float:
        """The total weight of these targets: what loss_sum is divided by."""

    @abstractmethod
    def decisions_per_row(self, targets: torch.Tensor) -> int:
        """How many decisions a row's loss sums (the CUDA-graph step's total weight)."""

    @staticmethod
    @abstractmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """The model's outputs from its logits (softmax, sigmoid, ...): of the class, as a
        model knows its task's name only (GPT2Classifier.label_format; TASKS)."""

    @staticmethod
    @abstractmethod
    def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
        """(B,) output `target`'s log-odds from logits (B, outputs): what explain
        attributes."""

    @abstractmethod
    def explained(self, answer: dict) -> int:
        """The output an answer decided, whose log-odds explain attributes."""

    @abstractmethod
    def validation_loss(
        self, probabilities: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> float:
        """The training loss (its weighted mean) from `probabilities`."""

    @abstractmethod
    def validation_threshold(self) -> Threshold:
        """What validation's report applies while training (no threshold chosen yet)."""

    def check_threshold_flag(self, threshold: float | None, flag: str) -> None:
        """A threshold given on the command line (`flag`: classify's, predict's or serve's
        --threshold) against this task: a task that takes one validates at a default one
        (validation_threshold: a positive class of two, or each label of a multi-label
        model); else the flag would be silently ignored, and is refused."""
        if threshold is None or self.validation_threshold() is not None:
            return
        raise ParamsError(
            f"{flag} {threshold}: this model decides without a threshold ("
            f"{self.classes.label_format} labels: {', '.join(self.classes.names)}; positive "
            f"class: {self.classes.positive or 'none'}): a threshold applies to the positive "
            f"class of two classes or to each label of a multi-label model; allowed: leave "
            f"{flag} out"
        )

    def validation(
        self, probabilities: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[float, dict]:
        """(validation loss, report) of a split's probabilities while training."""
        loss = self.validation_loss(probabilities, targets, weights)
        report = self.report(targets.numpy(), probabilities.numpy(), self.validation_threshold())
        return loss, report

    def auto_metric(self) -> str:
        """train.select_metric's auto: the positive class's F1, else macro F1."""
        positive = self.classes.positive
        return "macro_f1" if positive is None else f"{positive}_f1"

    micro_f1_key: ClassVar[str]  # the report's figure train.select_metric micro_f1 reads

    def selected_key(self, metric: str) -> str:
        """The evaluation entry's key of train.select_metric (train.evaluation_entry)."""
        metric = self.auto_metric() if metric == "auto" else metric
        if metric == "val_loss":
            return "val/loss"
        if metric in ("macro_f1", "accuracy"):
            return f"val/{metric}"
        if metric == "micro_f1":
            return f"val/{self.micro_f1_key}"
        return f"val/{self.classes.metric_name(metric.removesuffix('_f1'))}_f1"

    def selection_score(self, report: dict, val_loss: float, metric: str = "auto") -> float:
        """train.select_metric of a validation report (`val_loss` beside it), larger is
        better (val_loss is negated)."""
        metric = self.auto_metric() if metric == "auto" else metric
        if metric == "val_loss":
            return -val_loss
        if metric in ("macro_f1", "accuracy"):
            return report[metric]
        if metric == "micro_f1":
            return report[self.micro_f1_key]
        return report[metric.removesuffix("_f1")]["f1"]

    # --- decisions, thresholds and metrics -----------------------------------------------

    @abstractmethod
    def decisions(self, probabilities: np.ndarray, threshold: Threshold = None) -> np.ndarray:
        """Each row's answer as an array: the one decision rule of validation, evaluate, the
        baseline, classify, predict and serving."""

    @abstractmethod
    def choose_threshold(
        self, setting: Setting, val_targets: np.ndarray, val_probs: np.ndarray,
        select_metric: str = "auto", min_support: int = 10,
    ) -> ThresholdChoice:  # fmt: skip
        """evaluate.threshold made what `decisions` applies, from the validation split."""

    @abstractmethod
    def report(self, targets: np.ndarray, probabilities: np.ndarray, threshold: Threshold) -> dict:
        """One split's eval.json object at `threshold`."""

    @abstractmethod
    def compared_figures(self, report: dict) -> dict:
        """What experiments are compared by, of a report (DVC's metrics files; the whole
        report goes to a report file)."""

    @abstractmethod
    def compared(self, report: dict, baseline: dict, choice: ThresholdChoice) -> dict:
        """metrics/eval.json: what experiments are compared by, of the test `report`, the
        baseline's test report beside it, and the threshold `choice` where it says more."""

    @abstractmethod
    def threshold_metrics(self, choice: ThresholdChoice) -> dict[str, float]:
        """The thresholds as MLflow metrics (none: {})."""

    @abstractmethod
    def curve_frames(self, targets: np.ndarray, probabilities: np.ndarray) -> dict:
        """Plot data of the test curves, {name: frame with metrics.POINT then x and y}."""

    @abstractmethod
    def test_errors(
        self, targets: np.ndarray, probs: np.ndarray, threshold: Threshold, table: pd.DataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(the confusion plot's (actual, predicted) rows, the wrong rows of `predictions`,
        the prediction table of the test split; `probs`, its probabilities)."""

    @abstractmethod
    def report_figures(self, report: dict, split: str) -> dict[str, "Figure"]:
        """The figures of a split's report logged to MLflow, by artifact name."""

    def test_figures(
        self, test_targets: np.ndarray, test_probabilities: np.ndarray
    ) -> dict[str, "Figure"]:
        """Figures of the test split's outputs logged to MLflow, by artifact name, beside each
        report's (report_figures): classes, none."""
        return {}

    def scatter_frame(
        self, test_targets: np.ndarray, test_probabilities: np.ndarray
    ) -> pd.DataFrame:
        """The predicted-vs-true plot's points (metrics/scatter_test.csv): none of classes,
        whose confusion matrix is that plot."""
        return pd.DataFrame(columns=["actual", "predicted"])

    def flat(self, report: dict, prefix: str) -> dict[str, float]:
        """A report as MLflow metrics: {prefix}/accuracy, {prefix}/spam_f1, ..."""
        return metrics.flat(report, prefix, self.classes)

    def per_class_table(self, reports: dict[str, dict]) -> dict[str, list]:
        """Each split's and class's precision, recall, F1 and support as an MLflow table."""
        return metrics.per_class_table(reports, self.classes)

    # --- answers -------------------------------------------------------------------------

    @abstractmethod
    def answers(self, probabilities: np.ndarray, threshold: Threshold) -> list[dict]:
        """Each message's answer (classify --json, serving, the MLflow model)."""

    @abstractmethod
    def prediction_frame(self, probabilities: np.ndarray, threshold: Threshold) -> pd.DataFrame:
        """The answers as a table (predict's output, evaluate's predictions_test.csv)."""

    @abstractmethod
    def answer_columns(self) -> list[str]:
        """prediction_frame's columns."""

    @abstractmethod
    def plain_answer(self, answer: dict) -> str:
        """An answer as classify's plain output shows it before the text (tab-separated)."""

    @abstractmethod
    def serving_config(self) -> dict:
        """What the logged MLflow model's model_config says of the task."""

    # --- the baseline and calibration ----------------------------------------------------

    @abstractmethod
    def baseline_threshold(self) -> Threshold:
        """What the baseline's scores are decided at (its own boundary)."""

    @abstractmethod
    def baseline_estimator(self) -> object:
        """The baseline's unfitted scikit-learn estimator of the TF-IDF rows
        (spamgpt.evaluate.baseline) for this task's targets."""

    @abstractmethod
    def baseline_outputs(self, model: object, texts: list[str]) -> np.ndarray:
        """The fitted baseline pipeline's outputs of `texts`, shaped as `probabilities`."""

    def audit_skipped(self) -> dict[str, str]:
        """Why the label audit does not apply to this task, for metrics/audit.json; {}: it
        applies."""
        return {}

    @abstractmethod
    def audit_folds(self, folds: int, seed: int) -> object:
        """The label audit's scikit-learn cross-validation splitter (spamgpt.evaluate.audit)."""

    @abstractmethod
    def label_issues(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """The indices of the rows cleanlab flags as likely mislabelled, most likely wrong
        first (lowest self-confidence), from out-of-fold probabilities."""

    @abstractmethod
    def label_quality(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """(N,) cleanlab's label quality score in [0, 1]: low is likely wrong."""

    @abstractmethod
    def suggested_labels(self, probabilities: np.ndarray) -> list[str]:
        """The audit's suggested label of each row, as a split file writes it."""

    @abstractmethod
    def given_labels(self, value: str) -> list[str]:
        """The class names a split file's label value names."""

    def calibration_method(self, setting: str) -> str:
        """What evaluate.calibration becomes for this task: the setting (temperature, platt,
        none), or NOT_APPLICABLE where there are no probabilities to calibrate."""
        return setting

    def fit_calibration(
        self, method: str, logits: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The parameters of evaluate.calibration `method` (temperature or platt), fitted on
        validation: the temperature(s) and platt's shift(s) (temperature: None)."""
        if method == "platt":
            return self.fit_platt(logits, targets)
        return self.fit_temperature(logits, targets), None

    @abstractmethod
    def fit_temperature(self, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The temperature(s) of evaluate.calibration: temperature (calibration module)."""

    @abstractmethod
    def fit_platt(self, logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The temperature(s) and shift(s) of evaluate.calibration: platt (calibration
        module)."""

    @abstractmethod
    def temperature(self, fitted: np.ndarray) -> float | dict[str, float]:
        """The fitted temperature as classifier.json and the reports hold it."""

    @abstractmethod
    def temperature_metrics(self, temperature: float | dict[str, float]) -> dict[str, float]:
        """`temperature` (as `temperature` gives it) as MLflow metrics."""

    @abstractmethod
    def head_temperatures(self, temperature: float | dict[str, float]) -> list[float]:
        """Each output's temperature, of `temperature` as `temperature` gives it (what
        classifier.fold_temperature divides the head by); one of other outputs: an error."""

    @abstractmethod
    def head_shifts(self, shift: dict[str, float]) -> list[float]:
        """Each output's shift, of platt's {class (label): c} (what classifier.fold_temperature
        adds to the head's bias); one of other outputs: an error."""

    def unfitted(self, fitted: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """Where the fit found nothing to fit: each fitted temperature that stayed 1."""
        return fitted == 1.0

    def unfitted_labels(self, fitted: np.ndarray, shift: np.ndarray | None = None) -> list[str]:
        """The labels the fit left as they are (one temperature for all the classes: none)."""
        return []

    @abstractmethod
    def calibrated(
        self, logits: np.ndarray, temperature: np.ndarray, shift: np.ndarray | None = None
    ) -> np.ndarray:
        """float64 probabilities of logits / temperature + shift (None: 0)
        (calibration.probabilities)."""

    @abstractmethod
    def calibration_scores(
        self,
        targets: np.ndarray,
        logits: np.ndarray,
        temperature: np.ndarray | float,
        shift: np.ndarray | None = None,
    ) -> dict:
        """ECE (and its floor), Brier score and log loss of logits / temperature + shift
        (calibration.scores)."""

    @abstractmethod
    def reliability_frame(self, targets: np.ndarray, curves: dict[str, np.ndarray]) -> object:
        """The reliability diagram's plot data (calibration.reliability_frame)."""


def prediction_table(
    probs: np.ndarray, answer: dict[str, object], classes: Classes
) -> pd.DataFrame:
    """A prediction table: the answer's columns, then p_<class> for every class (a task's
    prediction_frame)."""
    frame = pd.DataFrame(answer)
    for i, name in enumerate(classes.names):
        frame[f"p_{name}"] = probs[:, i]
    return frame
