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

from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.tasks import metrics
from spamgpt.tasks.task import NOT_APPLICABLE, Task, Threshold, ThresholdChoice

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
TITLE = "test: predicted vs true"  # the MLflow figure's


def points(truth: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """The predicted-vs-true plot's data: one point per test row."""
    return pd.DataFrame(
        {
            "actual": np.asarray(truth, dtype=np.float64),
            "predicted": np.asarray(predicted, dtype=np.float64).round(6),
        }
    )


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


class Regression(Task):
    """data.label_format: number. The one output is the answer ("probabilities" are the
    outputs as they are); no threshold, no curves, nothing to calibrate or audit."""

    label_format = "number"
    problem_type = "regression"
    predicted_column = "predicted"
    micro_f1_key = "r2"  # (train.select_metric is auto or val_loss: params refuses the rest)

    def check_threshold(self, setting: float | str | dict | None) -> None:
        if setting is not None:
            raise ParamsError(
                f"evaluate.threshold: number labels (data.label_format: number) have no "
                f"classes, got {setting!r}; allowed: null"
            )

    def loss_weights(self, targets: torch.Tensor, setting: str | dict) -> torch.Tensor | None:
        return None  # (train.class_weights is none: params refuses the rest)

    def start_head(self, head: torch.nn.Linear, targets: torch.Tensor) -> None:
        """The bias at the training mean: the first answers are the mean predictor's (R² 0)
        rather than 0, a distance a bias learning at train.lr would take long to cover."""
        with torch.no_grad():
            head.bias.fill_(float(targets.double().mean()))

    def loss_sum(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """The summed squared error of (B, 1) outputs against (B,) targets (MSELoss's)."""
        return F.mse_loss(logits[:, 0], targets, reduction="sum")

    def row_weights(self, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        return torch.ones(len(targets))

    def weighted_loss_sum(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        row_weights: torch.Tensor,
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        return ((logits[:, 0] - targets) ** 2 * row_weights).sum()

    def batch_weight(self, targets: torch.Tensor, weights: torch.Tensor | None) -> float:
        return float(targets.numel())

    def decisions_per_row(self, targets: torch.Tensor) -> int:
        return 1

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return logits  # the number itself

    @staticmethod
    def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
        """The number itself: what explain attributes (each token's share of it)."""
        return logits[:, target]

    def explained(self, answer: dict) -> int:
        return 0

    def validation_loss(
        self, probabilities: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> float:
        """The mean squared error, in float64."""
        return float(F.mse_loss(probabilities[:, 0].double(), targets.double()))

    def validation_threshold(self) -> Threshold:
        return None

    def auto_metric(self) -> str:
        """The lowest validation loss (mean squared error) picks the best evaluation."""
        return "val_loss"

    def selection_score(self, report: dict, val_loss: float, metric: str = "auto") -> float:
        """Minus the mean squared error, of the report (RMSE squared: the validation loss
        while training): the int8 export's gate, which has no loss, compares it too."""
        return -(report["rmse"] ** 2)

    def decisions(self, probabilities: np.ndarray, threshold: Threshold = None) -> np.ndarray:
        """Each row's number."""
        return np.asarray(probabilities)[:, 0]

    def choose_threshold(
        self,
        setting: float | str | dict | None,
        val_targets: np.ndarray,
        val_probs: np.ndarray,
        select_metric: str = "auto",
        min_support: int = 10,
    ) -> ThresholdChoice:
        self.check_threshold(setting)
        return ThresholdChoice(None, None, None)

    def report(self, targets: np.ndarray, probabilities: np.ndarray, threshold: Threshold) -> dict:
        return report(targets, self.decisions(probabilities))

    def compared_figures(self, report: dict) -> dict:
        return {k: report[k] for k in COMPARED}

    def compared(self, report: dict, baseline: dict, choice: ThresholdChoice) -> dict:
        """The test figures, and the baseline's beside them."""
        return {**self.compared_figures(report), "baseline": self.compared_figures(baseline)}

    def threshold_metrics(self, choice: ThresholdChoice) -> dict[str, float]:
        return {}

    def curve_frames(self, targets: np.ndarray, probabilities: np.ndarray) -> dict:
        """No ROC or precision/recall curve (empty: DVC's outputs still exist)."""
        return {
            "roc": pd.DataFrame(columns=[*metrics.POINT, "fpr", "tpr"]),
            "pr": pd.DataFrame(columns=[*metrics.POINT, "recall", "precision"]),
        }

    def test_errors(
        self,
        targets: np.ndarray,
        probabilities: np.ndarray,
        threshold: Threshold,
        predictions: pd.DataFrame,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """No confusion of classes (empty); every test row with its absolute error, the
        largest first."""
        error = (predictions["predicted"] - predictions["label"].astype(float)).abs()
        worst = predictions.assign(error=error.round(6)).sort_values("error", ascending=False)
        confusion = pd.DataFrame(columns=["actual", "predicted"])
        return confusion, worst[["line", "label", "predicted", "error", "text"]]

    def report_figures(self, report: dict, split: str) -> dict[str, "Figure"]:
        return {}  # no confusion matrix: the test split's scatter (test_figures) shows it

    def test_figures(
        self, test_targets: np.ndarray, test_probabilities: np.ndarray
    ) -> dict[str, "Figure"]:
        """The test split's predicted-vs-true plot."""
        points = self.scatter_frame(test_targets, test_probabilities)
        return {"evaluation/test_predicted_vs_true.png": scatter_figure(points, TITLE)}

    def scatter_frame(
        self, test_targets: np.ndarray, test_probabilities: np.ndarray
    ) -> pd.DataFrame:
        return points(test_targets, self.decisions(test_probabilities))

    def flat(self, report: dict, prefix: str) -> dict[str, float]:
        """{prefix}/rmse, mae, r2, spearman (those that exist)."""
        return {f"{prefix}/{k}": report[k] for k in COMPARED if report[k] is not None}

    def per_class_table(self, reports: dict[str, dict]) -> dict[str, list]:
        """Each split's figures as an MLflow table."""
        return {
            "split": list(reports),
            **{k: [reports[s][k] for s in reports] for k in (*COMPARED, "n")},
        }

    def answers(self, probabilities: np.ndarray, threshold: Threshold) -> list[dict]:
        """Each text's number: {"prediction": x}."""
        return [{"prediction": float(x)} for x in self.decisions(probabilities)]

    def prediction_frame(self, probabilities: np.ndarray, threshold: Threshold) -> pd.DataFrame:
        return pd.DataFrame({"predicted": self.decisions(probabilities).astype(np.float64)})

    def answer_columns(self) -> list[str]:
        return ["predicted"]

    def plain_answer(self, answer: dict) -> str:
        return f"{answer['prediction']:.4f}"

    def serving_config(self) -> dict:
        return {"label_format": self.label_format}

    def baseline_threshold(self) -> Threshold:
        return None

    def baseline_estimator(self) -> object:
        """Ridge regression (alpha 1: scikit-learn's default; the TF-IDF rows are unit
        length)."""
        from sklearn.linear_model import Ridge  # here: only the baseline stage fits one

        return Ridge(alpha=1.0)

    def baseline_outputs(self, model: object, texts: list[str]) -> np.ndarray:
        """The ridge's predictions, (N, 1) as the model's outputs."""
        return np.asarray(model.predict(texts), dtype=np.float64).reshape(-1, 1)

    def audit_skipped(self) -> dict[str, str]:
        return {"not_applicable": "number labels: confident learning audits classes"}

    # The audit stage asks audit_skipped first: these are never reached.
    def audit_folds(self, folds: int, seed: int) -> object:
        raise self._no_audit()

    def label_issues(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        raise self._no_audit()

    def label_quality(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        raise self._no_audit()

    def suggested_labels(self, probabilities: np.ndarray) -> list[str]:
        raise self._no_audit()

    def given_labels(self, value: str) -> list[str]:
        raise self._no_audit()

    def _no_audit(self) -> SpamGPTError:
        why = self.audit_skipped()["not_applicable"]
        return SpamGPTError(f"the label audit does not apply: {why}")

    def calibration_method(self, setting: str) -> str:
        """Nothing to calibrate: a number is no probability."""
        return NOT_APPLICABLE

    def fit_temperature(self, logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return np.ones(1)

    def temperature(self, fitted: np.ndarray) -> None:
        return None  # nothing folded into the head

    def temperature_metrics(self, temperature: float | dict[str, float]) -> dict[str, float]:
        return {}

    def head_temperatures(self, temperature: float | dict[str, float]) -> list[float]:
        raise SpamGPTError(
            f"a temperature ({temperature}) divides probabilities' logits: a regression "
            f"model's number has none (models/calibration.json of another model?)"
        )

    def fit_platt(self, logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.ones(1), np.zeros(1)

    def head_shifts(self, shift: dict[str, float]) -> list[float]:
        raise SpamGPTError(
            f"a shift ({shift}) moves probabilities' logits: a regression model's number has "
            f"none (models/calibration.json of another model?)"
        )

    def calibrated(
        self, logits: np.ndarray, temperature: np.ndarray, shift: np.ndarray | None = None
    ) -> np.ndarray:
        return np.asarray(logits, dtype=np.float64)

    def calibration_scores(
        self,
        targets: np.ndarray,
        logits: np.ndarray,
        temperature: np.ndarray | float,
        shift: np.ndarray | None = None,
    ) -> dict:
        return {}  # no ECE, Brier score or log loss of a number

    def reliability_frame(self, targets: np.ndarray, curves: dict[str, np.ndarray]) -> object:
        """Empty: DVC's output still exists."""
        return pd.DataFrame(columns=["class", "point", "confidence", "accuracy", "count"])
