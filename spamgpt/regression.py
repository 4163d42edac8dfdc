"""Regression (data.label_format: number): a number per text (a rating, a score), as
transformers' run_classification does it (problem_type "regression", one output): the model's
single output is the answer, trained by mean squared error, reported as RMSE, MAE, R² and
Spearman's rank correlation beside a TF-IDF ridge regression (the baseline stage).

A split file holds each row's number as Python writes a float (repr: it reads back exactly).
There are no classes, thresholds or probabilities: the one "class" is the label column's
name (what the answer is called), calibration and the label audit have nothing to do.
"""

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def report(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float | int | None]:
    """One split's figures: RMSE, MAE, R² (1 - residual / total sum of squares: 0 is the
    mean's, as scikit-learn's r2_score) and Spearman's rank correlation (None where either
    side is constant: no ranking), over N rows."""
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    error = predicted - truth
    residual = float((error**2).sum())
    total = float(((truth - truth.mean()) ** 2).sum())
    # a constant truth: scikit-learn's, perfect is 1 and anything else 0
    r2 = 1 - residual / total if total > 0 else float(residual == 0)
    return {
        "rmse": math.sqrt(residual / len(truth)),
        "mae": float(np.abs(error).mean()),
        "r2": r2,
        "spearman": spearman(truth, predicted),
        "n": len(truth),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties): Pearson's of the ranks; None
    where either side is constant."""
    ranked = [pd.Series(x).rank(method="average").to_numpy() for x in (a, b)]
    centred = [r - r.mean() for r in ranked]
    scale = math.sqrt(float((centred[0] ** 2).sum() * (centred[1] ** 2).sum()))
    return None if scale == 0 else float((centred[0] * centred[1]).sum() / scale)


COMPARED = ("rmse", "mae", "r2", "spearman")  # metrics/eval.json's figures (and the baseline's)


def compared(test: dict, baseline: dict) -> dict:
    """metrics/eval.json: the test figures, and the baseline's beside them."""
    return {**{k: test[k] for k in COMPARED}, "baseline": {k: baseline[k] for k in COMPARED}}


def scatter_frame(truth: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """The predicted-vs-true plot's data: one point per test row."""
    return pd.DataFrame(
        {
            "actual": np.asarray(truth, dtype=np.float64).reshape(-1),
            "predicted": np.asarray(predicted, dtype=np.float64).reshape(-1).round(6),
        }
    )


def ridge():
    """The baseline's regressor on the TF-IDF features (baseline.features): ridge regression,
    alpha 1 (scikit-learn's default; the features are unit-length rows)."""
    from sklearn.linear_model import Ridge  # here: only the baseline stage needs it

    return Ridge(alpha=1.0)


def loss_sum(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The summed squared error of (B, 1) outputs against (B,) targets (MSELoss's, summed)."""
    return F.mse_loss(outputs[:, 0].float(), targets.float(), reduction="sum")


def validation_loss(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The training loss (its mean per row) of (N, 1) outputs."""
    return float(F.mse_loss(outputs[:, 0].double(), targets.double()))


def answers(outputs: np.ndarray) -> list[dict]:
    """Each text's answer: its number."""
    return [{"prediction": float(value)} for value in np.asarray(outputs).reshape(-1)]


def prediction_frame(outputs: np.ndarray) -> pd.DataFrame:
    """The answers as a table: `predicted`, each text's number."""
    return pd.DataFrame({"predicted": np.asarray(outputs, dtype=np.float64).reshape(-1)})


def scatter_figure(frame: pd.DataFrame, title: str) -> "Figure":
    """Predicted against true, with the diagonal a perfect model would lie on."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    figure = Figure(figsize=(5, 5))
    ax = figure.add_subplot()
    ax.scatter(frame["actual"], frame["predicted"], s=8, alpha=0.6)
    low = float(min(frame["actual"].min(), frame["predicted"].min()))
    high = float(max(frame["actual"].max(), frame["predicted"].max()))
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set(xlabel="true", ylabel="predicted", title=title)
    return figure
