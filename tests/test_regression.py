"""The regression task (spamgpt.tasks.regression, data.label_format: number) behind the task
interface: its figures against scikit-learn and SciPy, the loss against torch's MSELoss, the
ridge baseline, its answers and plot, and nothing to threshold, calibrate or audit."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.evaluate import baseline, results
from spamgpt.labels import Classes
from spamgpt.serve import serving
from spamgpt.tasks import regression
from spamgpt.tasks.registry import TASKS, task_for

RATING = Classes(("rating",), label_format="number")
TASK = task_for(RATING)


def test_the_report_matches_scikit_learn_and_scipy() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(3, 1, 50)
    predicted = truth + rng.normal(0, 0.5, 50)
    predicted[:5] = predicted[5]  # ties: average ranks
    found = regression.report(truth, predicted)
    assert found["rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth, predicted)))
    assert found["mae"] == pytest.approx(mean_absolute_error(truth, predicted))
    assert found["r2"] == pytest.approx(r2_score(truth, predicted))
    assert found["spearman"] == pytest.approx(spearmanr(truth, predicted).statistic)
    assert found["n"] == 50


def test_the_report_reads_float32_columns_in_float64() -> None:
    """Targets and outputs arrive as float32, the outputs as a (N, 1) column: the figures
    are those of the same numbers in float64, row against row."""
    truth = np.array([[0.1], [0.7], [0.3], [0.9]], dtype=np.float32)
    outputs = np.array([[0.2], [0.6], [0.35], [0.1]], dtype=np.float32)
    found = regression.report(truth, outputs)
    expected = regression.report(truth[:, 0].astype(np.float64), outputs[:, 0].astype(np.float64))
    assert found == expected and found["n"] == 4


def test_the_report_by_hand() -> None:
    found = regression.report(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    # errors 0, 0, 2: squared sum 4 over total sum of squares 2
    assert found["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert found["mae"] == pytest.approx(2 / 3)
    assert found["r2"] == pytest.approx(1 - 4 / 2)
    assert found["spearman"] == pytest.approx(1.0)
    small = regression.report(np.array([0.0, 0.5]), np.array([0.0, 0.25]))
    assert small["r2"] == pytest.approx(1 - 0.0625 / 0.125)  # a total sum of squares under 1
    mean = regression.report(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    assert mean["r2"] == 0.0 and mean["spearman"] is None  # the mean predictor


def test_a_constant_truth_follows_scikit_learn() -> None:
    same = np.array([2.0, 2.0])
    assert regression.report(same, same)["r2"] == r2_score(same, same) == 1.0
    assert regression.report(same, np.array([2.0, 3.0]))["r2"] == 0.0


def test_number_classes_choose_the_regression_task() -> None:
    assert isinstance(TASK, regression.Regression) and TASKS["number"] is regression.Regression
    assert TASK.problem_type == "regression" and TASK.answer_columns() == ["predicted"]


def test_the_loss_is_torchs_mean_squared_error() -> None:
    outputs = torch.tensor([[1.0], [2.5], [-1.0]])
    targets = torch.tensor([0.0, 2.0, 1.0])
    expected = torch.nn.MSELoss(reduction="sum")(outputs[:, 0], targets)
    assert TASK.loss_weights(targets, "none") is None
    assert TASK.loss_sum(outputs, targets, None).item() == pytest.approx(expected.item())
    assert TASK.loss_sum(outputs, targets, None).item() == pytest.approx(1 + 0.25 + 4)
    assert TASK.batch_weight(targets, None) == 3.0 and TASK.decisions_per_row(targets) == 1
    rows = TASK.row_weights(targets, None)
    assert rows.tolist() == [1.0, 1.0, 1.0]
    half = torch.tensor([1.0, 0.5, 0.0])  # a padded row weighs 0 (the CUDA-graph step)
    assert TASK.weighted_loss_sum(outputs, targets, half, None).item() == pytest.approx(1.125)
    assert TASK.validation_loss(outputs, targets, None) == pytest.approx(5.25 / 3)


def test_the_head_starts_at_the_training_mean() -> None:
    head = torch.nn.Linear(4, 1)
    TASK.start_head(head, torch.tensor([1.0, 2.0, 6.0]))
    assert head.bias.item() == pytest.approx(3.0)


def test_outputs_are_the_numbers_and_the_answers_give_them() -> None:
    logits = torch.tensor([[1.5], [-2.0]])
    assert TASK.probabilities(logits) is logits  # no softmax, no sigmoid
    outputs = logits.numpy()
    assert TASK.decisions(outputs).tolist() == [1.5, -2.0]
    assert TASK.answers(outputs, None) == [{"prediction": 1.5}, {"prediction": -2.0}]
    assert TASK.prediction_frame(outputs, None)["predicted"].tolist() == [1.5, -2.0]
    assert TASK.plain_answer({"prediction": 4.123456}) == "4.1235"
    assert TASK.explained({"prediction": 4.1}) == 0  # explain attributes the one output
    assert TASK.log_odds(logits, 0).tolist() == [1.5, -2.0]
    assert TASK.serving_config() == {"label_format": "number"}
    assert type(serving.model_for({"label_format": "number"})) is serving.NumberModel
    fields = serving.model_for({"label_format": "number", "text_columns": ["a", "b"]})
    assert type(fields) is serving.NumberFieldsModel
    assert type(serving.model_for({})) is serving.TextClassifierModel
    old_multi = serving.model_for({"multi_label": True})  # logged before label_format
    assert type(old_multi) is serving.MultiLabelClassifierModel


def test_no_threshold_applies() -> None:
    TASK.check_threshold(None)
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: .* got 0\.5; allowed: null$"):
        TASK.check_threshold(0.5)
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: "):
        TASK.choose_threshold("auto", np.zeros(3), np.zeros((3, 1)))
    choice = TASK.choose_threshold(None, np.zeros(3), np.zeros((3, 1)))
    assert tuple(choice) == (None, None, None, None) and TASK.threshold_metrics(choice) == {}
    assert TASK.validation_threshold() is None and TASK.baseline_threshold() is None
    assert TASK.selected_key("auto") == "val/loss"
    # the lowest mean squared error is the best, also where no loss is given (the int8 gate)
    assert TASK.selection_score({"rmse": 0.5}, 0.0) == -0.25


def test_the_report_compared_flat_and_tabled() -> None:
    truth, outputs = np.array([1.0, 2.0, 3.0]), np.array([[1.0], [2.0], [5.0]])
    test = TASK.report(truth, outputs, None)
    assert test == regression.report(truth, outputs[:, 0])
    base = TASK.report(truth, np.array([[2.0], [2.0], [2.0]]), None)  # the mean predictor
    compared = TASK.compared(test, base, TASK.choose_threshold(None, truth, outputs))
    assert compared == {
        "rmse": test["rmse"], "mae": test["mae"], "r2": -1.0, "spearman": 1.0,
        "baseline": {"rmse": base["rmse"], "mae": base["mae"], "r2": 0.0, "spearman": None},
    }  # fmt: skip
    assert TASK.flat(base, "baseline") == {
        "baseline/rmse": base["rmse"], "baseline/mae": base["mae"], "baseline/r2": 0.0
    }  # fmt: skip
    table = TASK.per_class_table({"val": base, "test": test})
    assert table["split"] == ["val", "test"] and table["r2"] == [0.0, -1.0]
    assert table["n"] == [3, 3]


def test_test_errors_rank_rows_by_error_and_no_curves() -> None:
    predictions = pd.DataFrame(
        {"line": [2, 3, 4], "label": ["1.0", "2.0", "3.0"], "predicted": [1.5, 2.0000004, 0.0],
         "text": ["a", "b", "c"]}
    )  # fmt: skip
    confusion, worst = TASK.test_errors(np.zeros(3), np.zeros((3, 1)), None, predictions)
    assert confusion.empty and list(confusion.columns) == ["actual", "predicted"]
    assert worst["line"].tolist() == [4, 2, 3] and worst["error"].tolist() == [3.0, 0.5, 0.0]
    curves = TASK.curve_frames(np.zeros(3), np.zeros((3, 1)))
    assert set(curves) == {"roc", "pr"} and all(frame.empty for frame in curves.values())
    assert list(curves["roc"].columns) == ["class", "point", "fpr", "tpr"]  # the plots' x, y
    assert list(curves["pr"].columns) == ["class", "point", "recall", "precision"]


def test_the_scatter_plot_data_and_figure() -> None:
    frame = TASK.scatter_frame(np.array([1, 2]), np.array([[1.1234567], [2.0]], np.float32))
    assert frame.to_dict("list") == {"actual": [1.0, 2.0], "predicted": [1.123457, 2.0]}
    assert (frame.dtypes == np.float64).all()
    assert TASK.report_figures({"rmse": 1.0}, "test") == {}  # no confusion matrix
    ((path, figure),) = TASK.test_figures(np.array([1.0, 2.0]), np.array([[1.1], [2.0]])).items()
    assert path == "evaluation/test_predicted_vs_true.png"
    (axes,) = figure.axes
    assert axes.get_xlabel() == "true" and axes.get_ylabel() == "predicted"
    assert axes.get_title() == "test: predicted vs true"
    assert axes.lines[0].get_xdata().tolist() == [1.0, 2.0]  # the diagonal, over both


def test_the_ridge_baseline_learns_numbers_from_words() -> None:
    rng = np.random.default_rng(0)
    words = {"great": 2.0, "good": 1.0, "bad": -1.0, "awful": -2.0}
    rows = []
    for i in range(120):
        chosen = [w for w in words if rng.random() < 0.4]
        rows.append({"line": i, "text": " ".join([*chosen, "the", "food"]),
                     "label": repr(3 + sum(words[w] for w in chosen))})  # fmt: skip
    frame = pd.DataFrame(rows)
    model = baseline.fit(frame.iloc[:80], RATING)
    ridge = model.named_steps["estimator"]
    assert type(ridge) is Ridge and ridge.alpha == 1.0
    texts = frame["text"].iloc[80:].tolist()
    outputs = baseline.probabilities(model, texts, RATING)
    assert outputs.shape == (40, 1) and outputs.dtype == np.float64
    np.testing.assert_allclose(outputs[:, 0], model.predict(texts))
    found = baseline.evaluate(frame.iloc[:80], frame.iloc[80:100], frame.iloc[100:], RATING)
    assert found["test"]["r2"] > 0.8 and set(found) == {"val", "test", "seconds"}


def test_nothing_to_calibrate_or_audit() -> None:
    labels = {"val": np.array([1.0, 2.0]), "test": np.array([3.0, 4.0])}
    logits = {"val": np.array([[1.5], [2.0]]), "test": np.array([[2.5], [4.5]])}
    outputs, found = results.calibrate("temperature", RATING, labels, logits)
    assert outputs["test"].tolist() == [[2.5], [4.5]]  # the outputs as they are
    assert found.summary() == {"method": "not applicable", "temperature": None, "test": {}}
    assert found.reliability.empty
    assert list(found.reliability.columns) == ["class", "point", "confidence", "accuracy", "count"]
    kept = TASK.calibrated(np.array([[1.25]], dtype=np.float32), np.ones(1))
    assert kept.dtype == np.float64 and kept.tolist() == [[1.25]]
    assert TASK.audit_skipped() == {
        "not_applicable": "number labels: confident learning audits classes"
    }
    with pytest.raises(
        SpamGPTError, match=r"^the label audit does not apply: number labels: confident"
    ):
        TASK.label_issues(labels["val"], logits["val"])
    assert TASK.temperature_metrics(1.0) == {}
    assert TASK.fit_temperature(logits["val"], labels["val"]).tolist() == [1.0]
    with pytest.raises(SpamGPTError, match=r"^a temperature \(1\.5\) divides probabilities"):
        TASK.head_temperatures(1.5)  # nothing is folded into a regression head
