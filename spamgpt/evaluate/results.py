"""What evaluate writes besides the model: thresholds, calibration, metrics files for DVC,
plot data, and the same results in its MLflow run (figures, tables, the best checkpoint).
finetune's are spamgpt.finetune.outputs'."""

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from spamgpt import atomic, contracts, paths
from spamgpt.data import download, readers
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.tasks import calibration, metrics
from spamgpt.tasks.registry import task_for
from spamgpt.tasks.task import NOT_APPLICABLE, Task, ThresholdChoice
from spamgpt.tracking import Run

log = logging.getLogger(__name__)


def log_best_checkpoint(run: Run, light_model_logged: bool) -> None:
    """checkpoints/best.safetensors into the run, unless the light MLflow model just logged
    holds these very bytes (its model.safetensors is models/finetuned's, which is the best
    epoch's trained tensors when nothing was merged into them): one copy, not two."""
    best = paths.checkpoint_weights("best")
    model = paths.FINETUNED_DIR / classifier.WEIGHTS
    if light_model_logged and download.sha256_file(best) == download.sha256_file(model):
        return
    run.log_artifact(best, "checkpoints")


def check_threshold(setting: float | str | dict | None, classes: Classes) -> None:
    """evaluate.threshold against the data's classes, before any work (params.check_threshold:
    a ParamsError); without a positive class, none applies."""
    task_for(classes).check_threshold(setting)


@dataclass
class Calibration:
    """evaluate.calibration's outcome: the method, the temperature folded into the head
    (multi-label, {label: T}; None for none) and, with platt, the shift added after it ({class
    (multi-label, label): c}; None otherwise), each split's ECE, Brier score and log loss
    uncalibrated (and calibrated, unless none), and the test reliability diagram's plot data
    (calibration.reliability_frame)."""

    method: str
    temperature: float | dict[str, float] | None
    scores: dict[str, dict[str, dict]]
    reliability: pd.DataFrame
    shift: dict[str, float] | None = None

    def report(self) -> dict:
        """reports/evaluation.json's "calibration"."""
        return {
            "method": self.method,
            "temperature": self.temperature,
            **({"shift": self.shift} if self.shift is not None else {}),
            "bins": calibration.BINS,
            **self.scores,
        }

    def summary(self) -> dict:
        """models/calibration.json: the method, the temperature (and shift) classify folds in,
        and the test ECE and log loss of the probabilities given (multi-label, pooled over
        labels), with the uncalibrated ECE beside them. Not in metrics/eval.json: the SMS run's
        `dvc metrics show` already fills 200 columns."""
        test = self.scores["test"]
        given = test.get("calibrated", test["uncalibrated"])
        figures = {k: given[k] for k in ("ece", "log_loss") if k in given}  # (none: {})
        if "calibrated" in test:
            figures["ece_uncalibrated"] = test["uncalibrated"]["ece"]
        shift = {"shift": self.shift} if self.shift is not None else {}
        return {"method": self.method, "temperature": self.temperature, **shift, "test": figures}


def calibrate(
    method: str, classes: Classes, labels: dict[str, np.ndarray], logits: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], Calibration]:
    """Each split's float32 probabilities as the model gives them once `method`
    (evaluate.calibration) is applied: temperature, softmax/sigmoid of logits / T with T
    fitted on the val split (Task.fit_calibration); platt, of logits / T + c with both fitted
    on it; none (or a task without probabilities), of the logits as they are. Each split's
    ECE, Brier score and log loss, before and after."""
    task = task_for(classes)
    method = task.calibration_method(method)
    fits = method not in ("none", NOT_APPLICABLE)
    fitted, shift = np.ones(len(classes)), None
    if fits:
        fitted, shift = task.fit_calibration(method, logits["val"], labels["val"])
        if task.unfitted(fitted, shift).any():  # the fit found nothing to fit
            kept = task.unfitted_labels(fitted, shift)
            log.info(
                "evaluate.calibration: %s kept at T = 1 for %s: on validation, one value or "
                "separated perfectly, nothing to fit", method, ", ".join(kept) or "the classes",
            )  # fmt: skip
    probabilities, scores = {}, {}
    for s, z in logits.items():
        probabilities[s] = calibrated_probabilities(task, z, fitted, shift)
        scores[s] = {"uncalibrated": task.calibration_scores(labels[s], z, 1.0)}
        if fits:
            scores[s]["calibrated"] = task.calibration_scores(labels[s], z, fitted, shift)
    curves = {"uncalibrated": task.calibrated(logits["test"], 1.0)}
    if fits:
        curves["calibrated"] = task.calibrated(logits["test"], fitted, shift)
    reliability = task.reliability_frame(labels["test"], curves)
    temperature = task.temperature(fitted) if fits else None
    names = classes.names
    shifts = None if shift is None else {n: float(c) for n, c in zip(names, shift, strict=True)}
    return probabilities, Calibration(method, temperature, scores, reliability, shifts)


def calibrated_probabilities(
    task: Task, logits: np.ndarray, temperature: np.ndarray, shift: np.ndarray | None = None
) -> np.ndarray:
    """torch's float32 outputs (Task.probabilities) of logits / temperature (one, or one
    per class) + shift (one per class; None: none), as the model's own forward pass computes
    them; T = 1 and no shift: exactly the uncalibrated probabilities."""
    scaled = torch.from_numpy(np.asarray(logits)).float() / torch.as_tensor(
        temperature, dtype=torch.float32
    )
    if shift is not None:
        scaled = scaled + torch.as_tensor(shift, dtype=torch.float32)
    return task.probabilities(scaled).numpy()


@dataclass
class Evaluation:
    """What evaluate found: each split's report and the baseline's (metrics/baseline.json),
    the test curves, labels and probabilities, and the threshold applied (the positive
    class's, None for the most probable class; multi-label, {label: threshold}) with the
    validation-F1 optimum and what an evaluate.threshold policy reached on validation;
    multi-label, the labels whose threshold stayed 0.5 for want of validation positives."""

    classes: Classes
    reports: dict[str, dict]
    baseline: dict
    curves: dict[str, pd.DataFrame]
    test_labels: np.ndarray  # class indices (N,); multi-label, (N, labels) 0/1 targets
    test_probabilities: np.ndarray
    threshold: float | dict[str, float] | None
    best_val_threshold: float | dict[str, float] | None = None
    val_at_threshold: dict | None = None
    kept_default_threshold: list[str] | None = None
    calibration: Calibration | None = None  # evaluate's (calibrate), the probabilities' origin

    @property
    def choice(self) -> ThresholdChoice:
        return ThresholdChoice(
            self.threshold, self.best_val_threshold, self.val_at_threshold,
            self.kept_default_threshold,
        )  # fmt: skip


def evaluate(
    setting: float | str | dict | None,
    classes: Classes,
    labels: dict[str, np.ndarray],
    probabilities: dict[str, np.ndarray],
    baseline: dict,
    select_metric: str = "auto",
    min_support: int = 10,
    calibration: Calibration | None = None,
) -> Evaluation:
    """evaluate.threshold chosen on the val split (Task.choose_threshold: multi-label, one per
    label maximising train.select_metric, labels under evaluate.min_support positives at
    0.5), each split of
    `labels` and `probabilities` (val, test) reported at it, and the test curves; `baseline`
    (metrics/baseline.json) goes beside; `calibration`: how `probabilities` were made
    (calibrate)."""
    task = task_for(classes)
    val = labels["val"], probabilities["val"]
    choice = task.choose_threshold(setting, *val, select_metric, min_support)
    reports = {s: task.report(labels[s], probabilities[s], choice.threshold) for s in labels}
    return Evaluation(
        classes=classes,
        reports=reports,
        baseline=baseline,
        curves=task.curve_frames(labels["test"], probabilities["test"]),
        test_labels=labels["test"],
        test_probabilities=probabilities["test"],
        threshold=choice.threshold,
        best_val_threshold=choice.best_f1,
        val_at_threshold=choice.reached,
        kept_default_threshold=choice.kept_default,
        calibration=calibration,
    )


def write_evaluation(evaluation: Evaluation) -> None:
    """metrics/eval.json (the test figures to compare, the baseline's selection figure and,
    of a positive class, the threshold and what a policy reached with it), the whole report
    of every split (reports/evaluation.json, with every threshold: what classify reads), the
    test confusion and curve plot data, every test message's prediction
    (reports/predictions_test.csv) and the misclassified ones (reports/misclassified_test.csv)."""
    e, task = evaluation, task_for(evaluation.classes)
    policy = {} if e.val_at_threshold is None else {"val_at_threshold": e.val_at_threshold}
    kept = e.kept_default_threshold
    contracts.write_evaluation_report(
        {
            "threshold": e.threshold,
            "best_val_threshold": e.best_val_threshold,
            **policy,
            **({} if kept is None else {"kept_default_threshold": kept}),
            **e.reports,
            "baseline": {s: e.baseline[s] for s in e.reports},
            **({"calibration": e.calibration.report()} if e.calibration else {}),
        },
    )
    contracts.write_evaluation(task.compared(e.reports["test"], e.baseline["test"], e.choice))
    if e.calibration:
        contracts.write_calibration(e.calibration.summary())
        atomic.write_csv(paths.RELIABILITY_TEST_PLOT, e.calibration.reliability)
    test = readers.read_split(paths.split_file("test"))
    answers = task.prediction_frame(e.test_probabilities, e.threshold)
    test["predicted"] = answers.pop(task.predicted_column)
    predictions = pd.concat([test[["line", "label", "predicted"]], answers.round(6)], axis=1)
    predictions = predictions.assign(text=test["text"])
    readers.write_split(predictions, paths.PREDICTIONS_TEST)
    confusion, wrong = task.test_errors(
        e.test_labels, e.test_probabilities, e.threshold, predictions
    )
    atomic.write_csv(paths.CONFUSION_TEST_PLOT, confusion)
    scatter = task.scatter_frame(e.test_labels, e.test_probabilities)
    atomic.write_csv(paths.SCATTER_TEST_PLOT, scatter)
    for name, frame in e.curves.items():
        atomic.write_csv(paths.curve_plot(name), frame)
    readers.write_split(wrong, paths.MISCLASSIFIED_TEST)


def log_evaluation(run: Run, evaluation: Evaluation) -> None:
    """The evaluation into the training run: test and baseline metrics, the thresholds,
    per-split reports, confusion matrices (multi-label, of label pairs), the per-class table,
    the test answers and misclassified messages, test curves."""
    reports, classes = evaluation.reports, evaluation.classes
    task = task_for(classes)
    run.log_metrics(task.flat(reports["test"], "test"), 0)
    run.log_metrics(task.flat(evaluation.baseline["test"], "baseline"), 0)
    run.log_metrics(task.threshold_metrics(evaluation.choice), 0)
    for s, report in reports.items():
        run.log_dict(report, f"evaluation/{s}_metrics.json")
        for name, figure in task.report_figures(report, s).items():
            run.log_figure(figure, name)
    test = evaluation.test_labels, evaluation.test_probabilities
    for name, figure in task.test_figures(*test).items():  # regression: predicted vs true
        run.log_figure(figure, name)
    table = task.per_class_table(reports)
    run.log_dict(table, "evaluation/per_class_metrics.json")
    run.log_artifact(paths.MISCLASSIFIED_TEST, "evaluation")
    run.log_artifact(paths.PREDICTIONS_TEST, "evaluation")
    if evaluation.calibration:
        _log_calibration(run, evaluation.calibration, classes)
    for name, frame in evaluation.curves.items():
        if frame.empty:
            continue
        x, y = frame.columns[len(metrics.POINT) :]
        series = {f"{c} (test)": (part[x], part[y]) for c, part in frame.groupby("class")}
        run.log_figure(metrics.curve_figure(series, x, name), f"evaluation/test_{name}_curve.png")


def log_label_issues(run: Run, report: dict) -> None:
    """The label audit (metrics/audit.json) into the run: its counts, and its table of
    suspects (reports/label_issues.csv) as an MLflow table; nothing where it is disabled."""
    if not report["enabled"]:
        return
    counts = {"audit/rows": report["rows"], "audit/label_issues": report["label_issues"]}
    counts |= {f"audit/label_issues_{s}": n for s, n in report["by_split"].items()}
    run.log_metrics(counts, 0)
    run.log_table(contracts.read_label_issues(), "audit/label_issues.json")


def _log_calibration(run: Run, found: Calibration, classes: Classes) -> None:
    """<split>/ece, ece_floor, brier, log_loss of the probabilities given (and
    <split>/ece_uncalibrated beside them), calibration/temperature (multi-label, one per
    label), platt's calibration/shift_<class> (or label), the whole calibration report and the
    test reliability diagram."""
    figures = {}
    for s, by_kind in found.scores.items():
        given = by_kind.get("calibrated", by_kind["uncalibrated"])
        kinds = ("ece", "ece_floor", "brier", "log_loss")
        figures |= {f"{s}/{k}": given[k] for k in kinds if k in given}
        if "calibrated" in by_kind:
            figures[f"{s}/ece_uncalibrated"] = by_kind["uncalibrated"]["ece"]
    if found.temperature is not None:  # (evaluate.calibration: none)
        figures |= task_for(classes).temperature_metrics(found.temperature)
    for name, c in (found.shift or {}).items():
        figures[f"calibration/shift_{classes.metric_name(name)}"] = c
    run.log_metrics(figures, 0)
    run.log_dict(found.report(), "evaluation/calibration.json")
    if not found.reliability.empty:  # (a task with nothing to calibrate has no diagram)
        figure = calibration.reliability_figure(found.reliability, "test reliability")
        run.log_figure(figure, "evaluation/test_reliability.png")
