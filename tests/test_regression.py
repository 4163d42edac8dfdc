"""The regression task (spamgpt.regression): its figures against scikit-learn and SciPy, the
loss against torch's MSELoss, its answers and plot."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from spamgpt import regression


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


def test_the_report_by_hand() -> None:
    found = regression.report(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    # errors 0, 0, 2: squared sum 4 over total sum of squares 2
    assert found["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert found["mae"] == pytest.approx(2 / 3)
    assert found["r2"] == pytest.approx(1 - 4 / 2)
    assert found["spearman"] == pytest.approx(1.0)
    mean = regression.report(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    assert mean["r2"] == 0.0 and mean["spearman"] is None  # the mean predictor


def test_a_constant_truth_follows_scikit_learn() -> None:
    same = np.array([2.0, 2.0])
    assert regression.report(same, same)["r2"] == r2_score(same, same) == 1.0
    assert regression.report(same, np.array([2.0, 3.0]))["r2"] == 0.0


def test_the_loss_is_torchs_mean_squared_error() -> None:
    outputs = torch.tensor([[1.0], [2.5], [-1.0]])
    targets = torch.tensor([0.0, 2.0, 1.0])
    expected = torch.nn.MSELoss(reduction="sum")(outputs[:, 0], targets)
    assert regression.loss_sum(outputs, targets).item() == pytest.approx(expected.item())
    assert regression.loss_sum(outputs, targets).item() == pytest.approx(1 + 0.25 + 4)
    assert regression.validation_loss(outputs, targets) == pytest.approx(5.25 / 3)


def test_answers_and_the_prediction_table_are_the_outputs() -> None:
    outputs = np.array([[1.5], [-2.0]], dtype=np.float32)
    assert regression.answers(outputs) == [{"prediction": 1.5}, {"prediction": -2.0}]
    assert regression.prediction_frame(outputs)["predicted"].tolist() == [1.5, -2.0]


def test_compared_puts_the_baseline_beside_the_test_figures() -> None:
    test = {"rmse": 1.0, "mae": 0.5, "r2": 0.8, "spearman": 0.9, "n": 10}
    baseline = {"rmse": 2.0, "mae": 1.5, "r2": 0.1, "spearman": 0.3, "n": 10}
    assert regression.compared(test, baseline) == {
        "rmse": 1.0, "mae": 0.5, "r2": 0.8, "spearman": 0.9,
        "baseline": {"rmse": 2.0, "mae": 1.5, "r2": 0.1, "spearman": 0.3},
    }  # fmt: skip


def test_the_scatter_plot_data_and_figure() -> None:
    frame = regression.scatter_frame(np.array([1.0, 2.0]), np.array([[1.1234567], [2.0]]))
    assert frame.to_dict("list") == {"actual": [1.0, 2.0], "predicted": [1.123457, 2.0]}
    figure = regression.scatter_figure(frame, "test")
    (axes,) = figure.axes
    assert axes.get_xlabel() == "true" and axes.get_ylabel() == "predicted"
    assert axes.lines[0].get_xdata().tolist() == [1.0, 2.0]  # the diagonal, over both
