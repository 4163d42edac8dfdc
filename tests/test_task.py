"""spamgpt.tasks.task's shared methods, as each task inherits them: which validation figure
train.select_metric names and reads, the validation pass, the calibration fit's dispatch, the
defaults a task without figures or an audit keeps, and the prediction table. (Each task's own
methods: tests/test_classification.py, tests/test_regression.py.)"""

import numpy as np
import pandas as pd
import pytest
import torch

from spamgpt.labels import SMS, Classes
from spamgpt.tasks import calibration, metrics, task
from spamgpt.tasks.registry import task_for

PLAIN = Classes(("ham", "spam"))  # no positive class
TAGS = Classes.from_dict({"labels": ["a b", "c"], "label_format": "multi"})
NUMBER = Classes.from_dict({"labels": ["stars"], "label_format": "number"})
# a validation report with a different figure for each key train.select_metric may read
REPORT = {
    "accuracy": 0.61,
    "macro_f1": 0.52,
    "micro_f1": 0.73,
    "r2": 0.34,
    "ham": {"f1": 0.45},
    "spam": {"f1": 0.86},
}


def test_auto_selects_the_positive_class_f1_else_macro_f1() -> None:
    assert task_for(SMS).auto_metric() == "spam_f1"
    assert task_for(PLAIN).auto_metric() == "macro_f1"
    assert task_for(TAGS).auto_metric() == "macro_f1"


@pytest.mark.parametrize(
    ("classes", "metric", "key", "score"),
    [
        (SMS, "auto", "val/spam_f1", 0.86),
        (PLAIN, "auto", "val/macro_f1", 0.52),
        (SMS, "val_loss", "val/loss", -0.25),  # larger is better
        (SMS, "macro_f1", "val/macro_f1", 0.52),
        (SMS, "accuracy", "val/accuracy", 0.61),
        (SMS, "micro_f1", "val/accuracy", 0.61),  # one class a message: micro F1 is accuracy
        (TAGS, "micro_f1", "val/micro_f1", 0.73),
        (SMS, "ham_f1", "val/ham_f1", 0.45),
    ],
)
def test_select_metric_names_the_entry_and_reads_the_figure(
    classes: Classes, metric: str, key: str, score: float
) -> None:
    assert task_for(classes).selected_key(metric) == key
    assert task_for(classes).selection_score(REPORT, 0.25, metric) == score
    if metric == "auto":  # the default
        assert task_for(classes).selection_score(REPORT, 0.25) == score


def test_a_label_f1_key_is_its_mlflow_name() -> None:
    assert task_for(TAGS).selected_key("a b_f1") == "val/a_b_f1"  # the space: not in MLflow's
    assert task_for(NUMBER).selected_key("micro_f1") == "val/r2"  # the task's micro_f1_key


def test_validation_is_the_loss_and_the_report_at_the_validation_threshold() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.5], [0.1, 0.3], [0.7, 0.7]])
    probs, targets = torch.softmax(logits, dim=-1), torch.tensor([0, 1, 1, 0, 1])
    weights = torch.tensor([1.0, 3.0])
    sms = task_for(SMS)
    loss, report = sms.validation(probs, targets, weights)
    expected = torch.nn.functional.cross_entropy(logits, targets, weight=weights)
    assert loss == pytest.approx(float(expected), rel=1e-6)
    assert report == sms.report(targets.numpy(), probs.numpy(), 0.5)
    # rows 2 and 4 wrong at 0.5 on spam: [0.57, 0.43] is ham, [0.45, 0.55] spam; the tie
    # [0.5, 0.5] is spam at 0.5 (the most probable class, without a threshold, would be ham)
    assert report["confusion_matrix"] == [[1, 1], [1, 2]]


def test_fit_calibration_fits_the_method_it_is_given() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(400, 2))
    shifted = calibration.probabilities(logits + np.array([0.0, 1.0]), 1.0)
    targets = (rng.random(400) < shifted[:, 1]).astype(int)
    sms = task_for(SMS)
    t, shift = sms.fit_calibration("platt", logits, targets)
    by_platt = calibration.fit_platt(logits, targets)
    assert (t.tolist(), shift.tolist()) == (by_platt[0].tolist(), by_platt[1].tolist())
    assert shift[0] == 0.0 and shift[1] > 0.5  # the source shifts class 1 up
    t, shift = sms.fit_calibration("temperature", logits, targets)
    assert t.tolist() == calibration.fit_temperature(logits, targets).tolist() and shift is None


def test_what_a_task_without_them_keeps_by_default() -> None:
    sms = task_for(SMS)
    assert sms.calibration_method("platt") == "platt"
    assert task_for(NUMBER).calibration_method("platt") == task.NOT_APPLICABLE == "not applicable"
    assert sms.test_figures(np.zeros(2), np.zeros((2, 2))) == {}
    scatter = sms.scatter_frame(np.zeros(2), np.zeros((2, 2)))
    assert scatter.empty and list(scatter.columns) == ["actual", "predicted"]
    assert sms.audit_skipped() == {}
    head = torch.nn.Linear(3, 2)
    before = head.weight.detach().clone(), head.bias.detach().clone()
    assert sms.start_head(head, torch.tensor([0, 1, 1])) is None
    assert torch.equal(head.weight, before[0]) and torch.equal(head.bias, before[1])
    assert sms.unfitted(np.array([1.0, 0.7])).tolist() == [True, False]
    assert sms.unfitted_labels(np.array([1.0])) == []
    assert task.DEFAULT_THRESHOLD == 0.5
    assert task.ThresholdChoice(0.5, 0.4, None).kept_default is None


def test_flat_and_the_per_class_table_are_the_metrics_modules() -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    report = task_for(SMS).report(np.array([0, 1, 1]), probs, 0.5)
    assert task_for(SMS).flat(report, "val") == metrics.flat(report, "val", SMS)
    assert task_for(SMS).flat(report, "val")["val/spam_recall"] == 0.5
    table = task_for(SMS).per_class_table({"test": report})
    assert table == metrics.per_class_table({"test": report}, SMS)
    assert table["class"] == ["ham", "spam"] and table["support"] == [1, 2]


def test_the_prediction_table_puts_each_class_probability_after_the_answer() -> None:
    probs = np.array([[0.25, 0.75], [0.9, 0.1]])
    frame = task.prediction_table(probs, {"label": ["spam", "ham"]}, SMS)
    expected = pd.DataFrame({"label": ["spam", "ham"], "p_ham": [0.25, 0.9], "p_spam": [0.75, 0.1]})
    pd.testing.assert_frame_equal(frame, expected)


def test_a_threshold_flag_is_taken_where_the_task_thresholds_and_refused_elsewhere() -> None:
    """A positive class of two, or each label of a multi-label model, takes a threshold (and
    none given is always fine); two classes without a positive one, or a number, refuse it in
    one line naming the flag the user gave."""
    from spamgpt.errors import ParamsError

    for classes in (SMS, TAGS):
        task_for(classes).check_threshold_flag(0.3, "--threshold")
    for classes in (PLAIN, NUMBER):
        task_for(classes).check_threshold_flag(None, "--threshold")
    with pytest.raises(ParamsError) as refused:
        task_for(PLAIN).check_threshold_flag(0.3, "--cut")
    assert str(refused.value) == (
        "--cut 0.3: this model decides without a threshold (single labels: ham, spam; "
        "positive class: none): a threshold applies to the positive class of two classes or "
        "to each label of a multi-label model; allowed: leave --cut out"
    )
    with pytest.raises(ParamsError, match=r"^--threshold 1\.0: .*\(number labels: stars; "):
        task_for(NUMBER).check_threshold_flag(1.0, "--threshold")
