"""Classification metrics and their figures, shared by validation, test and the baseline.

The metrics are numpy, with scikit-learn's definitions (tests/test_metrics.py checks them
against it): a stage that only validates need not import scikit-learn and SciPy, a large part
of its start-up. matplotlib is imported by the figures alone, for the same reason."""

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from spamgpt.errors import ParamsError
from spamgpt.labels import Classes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: rows the actual class, columns the predicted one."""
    pairs = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(predicted, np.int64)
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _counts_above(
    is_positive: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, thresholds) when every score >= each distinct
    score, from the highest down: the points of the ROC and precision-recall curves."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, is_positive = np.asarray(scores)[order], np.asarray(is_positive)[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(is_positive)[last_of_each].astype(np.float64)
    return 1.0 + last_of_each - tps, tps, scores[last_of_each]


def roc_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) from (0, 0), without the points that lie
    on a straight line between their neighbours (scikit-learn's drop_intermediate)."""
    fps, tps, _ = _counts_above(is_positive, scores)
    if len(fps) > 2:
        corners = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps = fps[corners], tps[corners]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], tps / tps[-1]


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """The area under the ROC curve (trapezoids)."""
    fpr, tpr = roc_curve(is_positive, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def precision_recall_curve(
    is_positive: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) by decreasing recall, ending at (1, 0); the
    thresholds, one fewer, from the lowest score up."""
    fps, tps, thresholds = _counts_above(is_positive, scores)
    # With no positive message, recall is 1 at every threshold (as scikit-learn has it).
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    precision = tps / (tps + fps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Precision at each threshold weighted by the recall it adds (no interpolation)."""
    precision, recall, _ = precision_recall_curve(is_positive, scores)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def flat(rep: dict, prefix: str, classes: Classes) -> dict[str, float]:
    """MLflow metric names: {prefix}/accuracy, {prefix}/spam_f1, ... (no None, no matrices);
    a class's name as Classes.metric_name makes it safe."""
    out = {}
    for key, value in rep.items():
        if key in classes.names:
            name = classes.metric_name(key)
            out.update(
                {
                    f"{prefix}/{name}_{k}": float(v)
                    for k, v in value.items()
                    if k != "support" and isinstance(v, float)
                }
            )
        elif isinstance(value, float):
            out[f"{prefix}/{key}"] = value
    return out


def best_threshold(labels: np.ndarray, positive_prob: np.ndarray, positive: int = 1) -> float:
    """The positive-probability threshold that maximises the positive class's F1 (chosen on
    validation)."""
    precision, recall, thresholds = precision_recall_curve(labels == positive, positive_prob)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def policy_threshold(
    policy: dict[str, float], is_positive: np.ndarray, scores: np.ndarray, name: str
) -> dict[str, float]:
    """The threshold on `scores` (one class's probabilities, `name` in messages) of highest
    recall, then fewest false positives, whose precision is at least policy["min_precision"]
    or whose false-positive rate is at most policy["max_fpr"], with the precision, recall and
    FPR it reaches: {threshold, precision, recall, fpr}. A ParamsError when none does."""
    ((rule, bound),) = policy.items()
    is_positive = np.asarray(is_positive, dtype=bool)
    if not is_positive.any():
        raise ParamsError(
            f"evaluate.threshold: the validation split has no {name!r} message to set "
            f"{rule} on; use a number"
        )
    fps, tps, thresholds = _counts_above(is_positive, scores)
    negatives = max(1, len(is_positive) - int(is_positive.sum()))
    precision, recall, fpr = tps / (tps + fps), tps / tps[-1], fps / negatives
    meets = (precision >= bound if rule == "min_precision" else fpr <= bound) & (tps > 0)
    if not meets.any():
        wanted, reach = (
            (f"precision of at least {bound:g}", f"the highest is {precision.max():.4g}")
            if rule == "min_precision"
            else (
                f"false-positive rate of at most {bound:g}",
                f"the lowest is {fpr[tps > 0].min():.4g}",
            )
        )
        raise ParamsError(
            f"evaluate.threshold: no threshold gives {name!r} a validation {wanted} ({reach}); "
            f"loosen {rule}, or use auto or a number"
        )
    i = int(np.flatnonzero(meets & (tps == tps[meets].max()))[0])  # cumulative: fewest fps
    return {
        "threshold": float(thresholds[i]),
        "precision": float(precision[i]),
        "recall": float(recall[i]),
        "fpr": float(fpr[i]),
    }


POINT = ("class", "point")  # a curve point's columns before its x and y


def curve_frames(
    labels: np.ndarray,
    probabilities: np.ndarray,
    names: tuple[str, ...],
    shown: Iterable[int],
) -> dict[str, pd.DataFrame]:
    """ROC and precision/recall curves as plot data, columns POINT then x and y: each class
    of `shown` (indices into `names`) against the rest. A class that is all or none of the
    messages has no curve."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    roc, pr = [], []
    for i in shown:
        is_class = labels == i
        if is_class.all() or not is_class.any():
            continue
        name = names[i]
        fpr, tpr = roc_curve(is_class, probabilities[:, i])
        precision, recall, _ = precision_recall_curve(is_class, probabilities[:, i])
        points = {"class": name, "point": np.arange(len(fpr))}  # the order to draw them in
        roc.append(pd.DataFrame({**points, "fpr": fpr, "tpr": tpr}))
        points["point"] = np.arange(len(recall))
        pr.append(pd.DataFrame({**points, "recall": recall, "precision": precision}))
    empty = {"roc": [*POINT, "fpr", "tpr"], "pr": [*POINT, "recall", "precision"]}
    return {
        kind: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=empty[kind])
        for kind, frames in (("roc", roc), ("pr", pr))
    }


def per_class_table(reports: dict[str, dict], classes: Classes) -> dict[str, list]:
    """{'split': [...], 'class': [...], 'precision': [...], ...}: MLflow shows it as a table."""
    rows = [
        {"split": s, "class": c, **{k: r[c][k] for k in ("precision", "recall", "f1", "support")}}
        for s, r in reports.items()
        for c in classes.names
    ]
    return pd.DataFrame(rows).to_dict(orient="list")


def confusion_figure(matrix: list[list[int]], title: str, classes: Classes) -> "Figure":
    """Counts and row-normalised rates side by side, sized to the classes: a cell wide enough
    for its number, room for the longest class name, the column names rotated once they would
    not fit side by side, and smaller text (zeros left blank) beyond a dozen classes, so 30
    classes stay readable."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    many = n > 12
    cell_font = 7 if many else 10  # points
    cell = 0.45 if many else 0.5  # inches: "0.12" at 7 pt, "0.123" at 10 pt, with a margin
    longest = max(len(name) for name in classes.names)
    rotate = n > 2 and longest * 0.6 * 10 / 72 > cell  # names wider than their column
    names_room = longest * 0.6 * 10 / 72 + 0.4  # inches of 10-pt text, and the axis label
    side = max(3.6, cell * n + names_room + 0.6)
    fig = Figure(figsize=(2 * side + 0.4, side + (names_room if rotate else 0.3)))
    axes = fig.subplots(1, 2)
    ticks = list(range(n))
    rate_format = "{:.2f}" if many else "{:.3f}"
    for ax, values, fmt, name in (
        (axes[0], counts, "{:.0f}", "counts"),
        (axes[1], rates, rate_format, "row-normalised"),
    ):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(values):
            if many and counts[i, j] == 0:
                continue
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=cell_font,
                color="white" if rates[i, j] > 0.5 else "black",
            )
        ax.set(
            xticks=ticks,
            yticks=ticks,
            xlabel="predicted",
            ylabel="actual",
            title=f"{title} ({name})",
        )
        ax.set_yticklabels(classes.names)
        if rotate:
            ax.set_xticklabels(classes.names, rotation=90)  # upright boxes: none overlaps
        else:
            ax.set_xticklabels(classes.names)
    fig.tight_layout()
    return fig


def curve_figure(series: dict[str, tuple[list, list]], xlabel: str, title: str) -> "Figure":
    """One line per named (x, y) series."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
