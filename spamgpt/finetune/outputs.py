"""What finetune writes besides its checkpoints: the run's inputs in MLflow, the trained tensors
of the best and last epochs, the model folder, metrics/train.json, the training report and
the loss curves' plot data."""

from typing import TYPE_CHECKING

import pandas as pd
import torch

from spamgpt import atomic, contracts, paths, runtime
from spamgpt.data import readers
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.params import PARAMS_FILE, ModelParams, Params, flatten
from spamgpt.texts import ONE_TEXT, TextFields
from spamgpt.tracking import Run

if TYPE_CHECKING:  # the loop's types, for the hints only
    from spamgpt.finetune.train import State, Trainer

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # MLflow's words


def log_run_inputs(run: Run, params: Params, data_report: dict) -> None:
    """A new training run's parameters (flattened), data (each given split's file, with its
    hash), the messages cut per split (truncated/<split>) and params.yaml."""
    run.log_params(flatten(params))
    sources = data_report.get("sources")
    if sources is None or "dataset" in sources:  # one file: the training split of it
        frame = readers.read_split(paths.split_file("train"))
        name = f"{params.mlflow.experiment}-train"
        run.log_dataset(frame, name, data_report["raw_sha256"], params.data.url)
    else:  # given splits: each file, with its own hash
        for split, source in sources.items():
            frame = readers.read_split(paths.split_file(split))
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


def write_training(state: "State", n_train: int, compute: runtime.Compute) -> dict[str, float]:
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
            "device": compute.device.type,
            "precision": compute.precision,
            "threads": torch.get_num_threads(),
            "val": {k.removeprefix("val/"): v for k, v in best.items() if k.startswith("val/")},
        },
    )
    atomic.write_json(paths.TRAIN_METRICS, summary)
    atomic.write_csv(paths.TRAIN_LOSS_PLOT, steps)
    atomic.write_csv(paths.VAL_EPOCHS_PLOT, epochs.rename(columns=lambda c: c.replace("/", "_")))
    return {
        "best_epoch": best["epoch"],
        "train/seconds": state.train_seconds,
        "train/samples_per_second": samples_per_second,
    }
