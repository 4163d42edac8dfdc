"""What evaluate writes for a multi-label model: eval.json (the test figures to compare, a
threshold per label, the baseline's micro F1), reports/evaluation.json (each split's
multilabel_metrics.report, the baseline's beside it), the DVC plot data (the label-pair
confusion, each label's ROC and precision-recall curve), every test message's labels and
probabilities, those whose label set is wrong, and the same in the MLflow run."""

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spamgpt import (
    atomic,
    contracts,
    data,
    multilabel,
    multilabel_metrics,
    paths,
    results,
)
from spamgpt.labels import Classes
from spamgpt.tracking import Run


@dataclass
class Evaluation:
    classes: Classes
    choice: multilabel_metrics.ThresholdChoice
    reports: dict[str, dict]  # val, test
    baseline: dict  # metrics/baseline.json
    curves: dict[str, pd.DataFrame]  # roc, pr of the test split

    @property
    def threshold(self) -> dict[str, float]:
        return self.choice.threshold

    def log(self, run: Run) -> None:
        """The evaluation into the training run: test and baseline metrics, each label's
        threshold, per-split reports, label-pair confusion figures, the per-label table, the
        test answers, the micro-averaged curves."""
        classes = self.classes
        thresholds = {}
        for name in classes.names:
            key = classes.metric_name(name)
            thresholds[f"test/threshold_{key}"] = self.choice.threshold[name]
            thresholds[f"val/best_threshold_{key}"] = self.choice.best_f1[name]
            for k, v in ((self.choice.reached or {}).get(name) or {}).items():
                thresholds[f"val/threshold_{key}_{k}"] = v
        pairs = Classes((*classes.names, multilabel.NONE))
        results.log_evaluation(
            run, self.reports, classes, self.baseline, thresholds, self.curves, pairs
        )


def evaluate(
    setting: float | str | dict | None,
    classes: Classes,
    targets: dict[str, np.ndarray],
    probabilities: dict[str, np.ndarray],
) -> Evaluation:
    """Choose each label's threshold on validation (evaluate.threshold), report val and test
    at them, and write eval.json, the plot data and the test answers."""
    choice = multilabel_metrics.choose_thresholds(
        setting, classes, targets["val"], probabilities["val"]
    )
    reports = {
        s: multilabel_metrics.report(targets[s], probabilities[s], choice.threshold, classes)
        for s in ("val", "test")
    }
    baseline = contracts.read_baseline()
    policy = {} if choice.reached is None else {"val_at_threshold": choice.reached}
    atomic.write_json(
        paths.EVAL_REPORT,
        {
            "threshold": choice.threshold,
            "best_val_threshold": choice.best_f1,
            **policy,
            **reports,
            "baseline": {s: baseline[s] for s in reports},
        },
    )
    contracts.write_evaluation(
        {
            **multilabel_metrics.compared(reports["test"]),
            "threshold": choice.threshold,
            **policy,
            "baseline": {"micro_f1": baseline["test"]["micro_f1"]},
        }
    )
    truth = targets["test"] > 0.5
    predicted = classes.predicted(probabilities["test"], choice.threshold)
    test = data.read_split(paths.split_file("test"))
    answers = multilabel.prediction_frame(probabilities["test"], classes, choice.threshold)
    test["predicted"] = answers.pop("labels")
    predictions = pd.concat([test[["line", "label", "predicted"]], answers.round(6)], axis=1)
    data.write_split(predictions.assign(text=test["text"]), paths.PREDICTIONS_TEST)
    _write_csv(
        multilabel_metrics.confusion_pairs(truth, predicted, classes), paths.CONFUSION_TEST_PLOT
    )
    curves = multilabel_metrics.curve_frames(targets["test"], probabilities["test"], classes)
    for name, frame in curves.items():
        _write_csv(frame, paths.curve_plot(name))
    wrong = predictions[(truth != predicted).any(axis=1)]
    data.write_split(wrong.assign(text=test["text"]), paths.MISCLASSIFIED_TEST)
    return Evaluation(classes, choice, reports, baseline, curves)


def _write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic.atomic_open(path, "w", newline="") as f:
        frame.to_csv(f, index=False)
