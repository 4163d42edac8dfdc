"""evaluate: the best fine-tuned model on validation and test: metrics, confusion matrices,
curves and misclassified messages, into DVC metrics/plots and the finetune MLflow run."""

import json

import numpy as np
import pandas as pd
import torch
from sklearn import metrics as skm

from spamgpt import (
    atomic,
    classifier,
    data,
    loaders,
    metrics,
    paths,
    runtime,
    serving,
    stage,
    tracking,
)
from spamgpt.params import Params
from spamgpt.trunk import features, read_frozen_blocks


def spam_probabilities(splits: tuple[str, ...], device, precision: str) -> dict[str, np.ndarray]:
    """P(spam) of each split's messages from the fine-tuned tail over the cached trunk. The
    model lives only in here: logging the MLflow model later loads its own copies."""
    model, _ = classifier.load(paths.FINETUNED_DIR)
    model.to(device)
    n_frozen = read_frozen_blocks()
    probs = {}
    for split in splits:
        feats = features(split, n_frozen)
        logits = classifier.predict_logits(
            lambda idx, f=feats: f.logits(model, idx, device),
            feats.packed.lengths,
            device,
            precision,
        )
        probs[split] = torch.softmax(logits, dim=-1)[:, 1].numpy()
    return probs


def main(params: Params) -> None:
    device = runtime.resolve_device(params.train.device)
    precision = runtime.resolve_precision(params.train.precision, device)
    runtime.use_all_cores()
    tracking.connect()
    run_id = json.loads(paths.MLFLOW_RUN.read_text())["run_id"]

    splits = ("val", "test")
    labels = {s: loaders.load(paths.tokens_file(s)).labels.numpy() for s in splits}
    probs = spam_probabilities(splits, device, precision)
    best_val_threshold = metrics.best_threshold(labels["val"], probs["val"])
    threshold = params.evaluate.threshold
    if threshold == "auto":
        threshold = best_val_threshold
    reports = {s: metrics.report(labels[s], probs[s], threshold) for s in splits}
    baseline = json.loads((paths.METRICS_DIR / "baseline.json").read_text())
    atomic.write_json(
        paths.METRICS_DIR / "eval.json",
        {
            "threshold": threshold,
            "best_val_threshold": best_val_threshold,
            **reports,
            "baseline": {s: baseline[s] for s in splits},
        },
    )

    test = data.read_split(paths.split_file("test"))
    test["predicted"] = np.where(probs["test"] >= threshold, "spam", "ham")
    test["spam_probability"] = probs["test"].round(6)
    with atomic.atomic_open(paths.METRICS_DIR / "confusion_test.csv", "w", newline="") as f:
        test.rename(columns={"label": "actual"})[["actual", "predicted"]].to_csv(f, index=False)
    curves = curve_frames(labels["test"], probs["test"])
    for name, frame in curves.items():
        with atomic.atomic_open(paths.METRICS_DIR / f"{name}_test.csv", "w", newline="") as f:
            frame.to_csv(f, index=False)
    wrong = test[test["predicted"] != test["label"]]
    misclassified = paths.REPORTS_DIR / "misclassified_test.csv"
    data.write_split(
        wrong[["line", "label", "predicted", "spam_probability", "text"]], misclassified
    )

    with tracking.Run.open(params.mlflow.experiment, run_id) as run:
        run.log_metrics(metrics.flat(reports["test"], "test"), 0)
        run.log_metrics(metrics.flat(baseline["test"], "baseline"), 0)
        run.log_metrics({"test/threshold": threshold, "val/best_threshold": best_val_threshold}, 0)
        for s in splits:
            run.log_dict(reports[s], f"evaluation/{s}_metrics.json")
            run.log_figure(
                metrics.confusion_figure(reports[s]["confusion_matrix"], s),
                f"evaluation/{s}_confusion_matrix.png",
            )
        run.log_dict(per_class_table(reports), "evaluation/per_class_metrics.json")
        run.log_artifact(misclassified, "evaluation")
        for name, frame in curves.items():
            x, y = frame.columns
            run.log_figure(
                metrics.curve_figure({f"test ({name})": (frame[x], frame[y])}, x, name),
                f"evaluation/test_{name}_curve.png",
            )
        if params.mlflow.log_model:
            serving.log_model(
                run.run_id, paths.FINETUNED_DIR, threshold, params.mlflow.registered_model
            )


def curve_frames(labels: np.ndarray, spam_prob: np.ndarray) -> dict[str, pd.DataFrame]:
    """ROC and precision/recall curves as plot data."""
    fpr, tpr, _ = skm.roc_curve(labels, spam_prob)
    precision, recall, _ = skm.precision_recall_curve(labels, spam_prob)
    return {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr}),
        "pr": pd.DataFrame({"recall": recall, "precision": precision}),
    }


def per_class_table(reports: dict) -> dict:
    """{'split': [...], 'class': [...], 'precision': [...], ...}: MLflow shows it as a table."""
    rows = [
        {"split": s, "class": c, **{k: r[c][k] for k in ("precision", "recall", "f1", "support")}}
        for s, r in reports.items()
        for c in data.LABELS
    ]
    return pd.DataFrame(rows).to_dict(orient="list")


if __name__ == "__main__":
    stage.run(main)
