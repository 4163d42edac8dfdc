"""What finetune and evaluate write: the trained tensors and the model folder after training,
metrics files for DVC, plot data, and the same results in their MLflow run (parameters,
dataset, figures, tables)."""

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from spamgpt import atomic, classifier, contracts, data, download, metrics, paths
from spamgpt.labels import Classes
from spamgpt.params import PARAMS_FILE, ModelParams, Params, flatten
from spamgpt.texts import ONE_TEXT, TextFields
from spamgpt.tracking import Run

if TYPE_CHECKING:  # finetune's results read the training loop's; evaluate's need no loop
    from spamgpt.train import State, Trainer

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # MLflow's words


def log_run_inputs(run: Run, params: Params, data_report: dict) -> None:
    """A new training run's parameters (flattened), data (each given split's file, with its
    hash), the messages cut per split (truncated/<split>) and params.yaml."""
    run.log_params(flatten(params))
    sources = data_report.get("sources")
    if sources is None or "dataset" in sources:  # one file: the training split of it
        frame = data.read_split(paths.split_file("train"))
        name = f"{params.mlflow.experiment}-train"
        run.log_dataset(frame, name, data_report["raw_sha256"], params.data.url)
    else:  # given splits: each file, with its own hash
        for split, source in sources.items():
            frame = data.read_split(paths.split_file(split))
            name = f"{params.mlflow.experiment}-{split}"
            run.log_dataset(frame, name, source["sha256"], source["source"], CONTEXTS[split])
    tokens = contracts.read_tokens_report()
    run.log_metrics({f"truncated/{s}": tokens[s]["truncated"] for s in paths.SPLITS}, 0)
    run.log_artifact(PARAMS_FILE)
    classes = Classes.from_dict(data_report)
    metric_names = {name: classes.metric_name(name) for name in classes.names}
    run.log_dict({**classes.to_dict(), "metric_names": metric_names}, "labels.json")


def write_checkpoint_weights(run: Run, trainer: "Trainer", log_last: bool) -> None:
    """models/checkpoints/{best,last}.safetensors: the trained tensors of the best and of the
    last epoch; the last also into the run when `log_last` (the best is evaluate's to log)."""
    best, last = trainer.state.best_weights, trainer.trained_weights()
    for name, weights in (("best", best), ("last", last)):
        classifier.save_tensors(weights, paths.checkpoint_weights(name))
    if log_last:
        run.log_artifact(paths.checkpoint_weights("last"), "checkpoints")


def export_model(trainer: "Trainer", m: ModelParams, fields: TextFields = ONE_TEXT) -> None:
    """models/finetuned: the model folder of the best epoch, its text made of `fields`."""
    names, tokens = list(trainer.trained), contracts.read_tokenization()
    best, classes = trainer.state.best_weights, trainer.classes
    with atomic.replaced_dir(paths.FINETUNED_DIR) as folder:  # in place once complete
        classifier.export(trainer.model, best, names, m, classes, tokens, folder, fields)


def log_best_checkpoint(run: Run, light_model_logged: bool) -> None:
    """checkpoints/best.safetensors into the run, unless the light MLflow model just logged
    holds these very bytes (its model.safetensors is models/finetuned's, which is the best
    epoch's trained tensors when nothing was merged into them): one copy, not two."""
    best = paths.checkpoint_weights("best")
    model = paths.FINETUNED_DIR / classifier.WEIGHTS
    if light_model_logged and download.sha256_file(best) == download.sha256_file(model):
        return
    run.log_artifact(best, "checkpoints")


def write_training(
    state: "State", n_train: int, device: torch.device, precision: str
) -> dict[str, float]:
    """metrics/train.json (the figures to compare: best epoch and step, epochs, timings), the
    whole report (reports/training.json: also the best evaluation's validation figures, the
    device) and the DVC plot data. Returns the run's summary metrics (no figures of the
    curves: MLflow charts train/loss and the val/ metrics from the logged steps)."""
    epochs = pd.DataFrame(state.history)
    steps = pd.DataFrame(state.steps, columns=["step", "loss", "lr"])
    best = state.history[state.best_evaluation - 1]
    samples = state.epoch * n_train + state.epoch_samples  # (an early stop mid-epoch)
    samples_per_second = samples / max(state.train_seconds, 1e-9)
    summary = {
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "epochs_run": state.history[-1]["epoch"],
        "train_seconds": round(state.train_seconds, 2),
        "samples_per_second": round(samples_per_second, 1),
    }
    atomic.write_json(
        paths.TRAIN_REPORT,
        {
            **summary,
            "steps": state.step,
            "device": device.type,
            "precision": precision,
            "threads": torch.get_num_threads(),
            "val": {k.removeprefix("val/"): v for k, v in best.items() if k.startswith("val/")},
        },
    )
    atomic.write_json(paths.TRAIN_METRICS, summary)
    _write_csv(steps, paths.TRAIN_LOSS_PLOT)
    _write_csv(epochs.rename(columns=lambda c: c.replace("/", "_")), paths.VAL_EPOCHS_PLOT)
    return {
        "best_epoch": best["epoch"],
        "train/seconds": state.train_seconds,
        "train/samples_per_second": samples_per_second,
    }


def write_evaluation(
    reports: dict[str, dict],
    classes: Classes,
    threshold: float | None,
    best_val_threshold: float | None,
    baseline: dict,
    test_probs: np.ndarray,
    curves: dict[str, pd.DataFrame],
    val_at_threshold: dict[str, float] | None = None,
) -> None:
    """metrics/eval.json (the test figures to compare, the baseline's selection figure, the
    threshold and what a policy reached with it), the whole report of every split
    (reports/evaluation.json), the test confusion and curve plot data, every test message's
    prediction (reports/predictions_test.csv) and the misclassified ones
    (reports/misclassified_test.csv). `val_at_threshold`: the validation precision, recall
    and FPR an evaluate.threshold policy reached."""
    policy = {} if val_at_threshold is None else {"val_at_threshold": val_at_threshold}
    atomic.write_json(
        paths.EVAL_REPORT,
        {
            "threshold": threshold,
            "best_val_threshold": best_val_threshold,
            **policy,
            **reports,
            "baseline": {s: baseline[s] for s in reports},
        },
    )
    contracts.write_evaluation(
        {
            **metrics.compared(reports["test"], classes),
            "threshold": threshold,
            **policy,
            "baseline": metrics.selection_figure(baseline["test"], classes),
        }
    )
    test = data.read_split(paths.split_file("test"))
    answers = classifier.prediction_frame(test_probs, classes, threshold)
    test["predicted"] = answers.pop("label")
    predictions = pd.concat([test[["line", "label", "predicted"]], answers.round(6)], axis=1)
    data.write_split(predictions.assign(text=test["text"]), paths.PREDICTIONS_TEST)
    if classes.positive is not None:  # its probability, as a threshold reads it
        probability = f"{classes.positive}_probability"
        test[probability] = test_probs[:, classes.positive_index].round(6)
    else:  # the predicted class's
        probability = "probability"
        test[probability] = answers[probability].round(6)
    _write_csv(
        test.rename(columns={"label": "actual"})[["actual", "predicted"]], paths.CONFUSION_TEST_PLOT
    )
    for name, frame in curves.items():
        _write_csv(frame, paths.curve_plot(name))
    wrong = test[test["predicted"] != test["label"]]
    columns = ["line", "label", "predicted", probability, "text"]
    data.write_split(wrong[columns], paths.MISCLASSIFIED_TEST)


def log_evaluation(
    run: Run,
    reports: dict[str, dict],
    classes: Classes,
    baseline: dict,
    thresholds: dict[str, float | None],
    curves: dict[str, pd.DataFrame],
    confusion_classes: Classes | None = None,
) -> None:
    """The evaluation into the training run: test and baseline metrics, per-split reports,
    confusion matrices (their rows and columns `confusion_classes`, default `classes`), the
    per-class table, misclassified messages, test curves."""
    run.log_metrics(metrics.flat(reports["test"], "test", classes), 0)
    run.log_metrics(metrics.flat(baseline["test"], "baseline", classes), 0)
    run.log_metrics({k: v for k, v in thresholds.items() if v is not None}, 0)
    for s, report in reports.items():
        run.log_dict(report, f"evaluation/{s}_metrics.json")
        run.log_figure(
            metrics.confusion_figure(report["confusion_matrix"], s, confusion_classes or classes),
            f"evaluation/{s}_confusion_matrix.png",
        )
    table = metrics.per_class_table(reports, classes)
    run.log_dict(table, "evaluation/per_class_metrics.json")
    run.log_artifact(paths.MISCLASSIFIED_TEST, "evaluation")
    run.log_artifact(paths.PREDICTIONS_TEST, "evaluation")
    for name, frame in curves.items():
        if frame.empty:
            continue
        x, y = frame.columns[len(metrics.POINT) :]
        series = {f"{c} (test)": (part[x], part[y]) for c, part in frame.groupby("class")}
        run.log_figure(metrics.curve_figure(series, x, name), f"evaluation/test_{name}_curve.png")


def _write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic.atomic_open(path, "w", newline="") as f:
        frame.to_csv(f, index=False)
