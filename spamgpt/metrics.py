"""Classification metrics and their figures, shared by validation, test and the baseline."""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
from sklearn import metrics as skm

from spamgpt.labels import LABELS, POSITIVE, predicted_classes


def report(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """One split's eval.json object: accuracy, per-class P/R/F1, AUCs, confusion
    [[tn, fp], [fn, tp]], for (N, classes) probabilities at `threshold` on the spam one."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    predicted = predicted_classes(probabilities, threshold)
    classes = list(range(len(LABELS)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    spam_prob = probabilities[:, POSITIVE]
    both = len(np.unique(labels)) == 2  # AUCs need both classes present
    out = {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "macro_f1": float(f1.mean()),
        "roc_auc": float(skm.roc_auc_score(labels, spam_prob)) if both else None,
        "pr_auc": float(skm.average_precision_score(labels, spam_prob)) if both else None,
    }
    for i, name in enumerate(LABELS):
        out[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
    out["confusion_matrix"] = skm.confusion_matrix(labels, predicted, labels=classes).tolist()
    return out


def flat(rep: dict, prefix: str) -> dict[str, float]:
    """MLflow metric names: {prefix}/accuracy, {prefix}/spam_f1, ... (no None, no matrices)."""
    out = {}
    for key, value in rep.items():
        if isinstance(value, dict):
            out.update(
                {f"{prefix}/{key}_{k}": float(v) for k, v in value.items() if k != "support"}
            )
        elif isinstance(value, float):
            out[f"{prefix}/{key}"] = value
    return out


def best_threshold(labels: np.ndarray, spam_prob: np.ndarray) -> float:
    """The spam-probability threshold that maximises spam F1 (chosen on validation)."""
    precision, recall, thresholds = skm.precision_recall_curve(labels, spam_prob)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def curve_frames(labels: np.ndarray, spam_prob: np.ndarray) -> dict[str, pd.DataFrame]:
    """ROC and precision/recall curves as plot data."""
    fpr, tpr, _ = skm.roc_curve(labels, spam_prob)
    precision, recall, _ = skm.precision_recall_curve(labels, spam_prob)
    return {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr}),
        "pr": pd.DataFrame({"recall": recall, "precision": precision}),
    }


def per_class_table(reports: dict[str, dict]) -> dict[str, list]:
    """{'split': [...], 'class': [...], 'precision': [...], ...}: MLflow shows it as a table."""
    rows = [
        {"split": s, "class": c, **{k: r[c][k] for k in ("precision", "recall", "f1", "support")}}
        for s, r in reports.items()
        for c in LABELS
    ]
    return pd.DataFrame(rows).to_dict(orient="list")


def confusion_figure(matrix: list[list[int]], title: str) -> Figure:
    """Counts and row-normalised rates side by side."""
    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(8, 3.6))
    axes = fig.subplots(1, 2)
    ticks = list(range(len(LABELS)))
    for ax, values, fmt, name in (
        (axes[0], counts, "{:.0f}", "counts"),
        (axes[1], rates, "{:.3f}", "row-normalised"),
    ):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(values):
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                color="white" if rates[i, j] > 0.5 else "black",
            )
        ax.set(
            xticks=ticks,
            yticks=ticks,
            xticklabels=LABELS,
            yticklabels=LABELS,
            xlabel="predicted",
            ylabel="actual",
            title=f"{title} ({name})",
        )
    fig.tight_layout()
    return fig


def curve_figure(series: dict[str, tuple[list, list]], xlabel: str, title: str) -> Figure:
    """One line per named (x, y) series."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
