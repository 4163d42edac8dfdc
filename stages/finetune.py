"""finetune: train the last blocks + final norm + a 2-class head on the cached trunk, keep
the best epoch by validation spam F1, checkpoint every epoch, record the run in MLflow."""

import json

import pandas as pd
import torch

from spamgpt import (
    atomic,
    classifier,
    data,
    distributed,
    loaders,
    lora,
    metrics,
    paths,
    runtime,
    stage,
    tracking,
)
from spamgpt.model import GPT2Classifier
from spamgpt.params import PARAMS_FILE, Params, flatten
from spamgpt.train import (
    NO_LOGGER,
    MetricsLogger,
    Split,
    State,
    Trainer,
    fingerprint,
    load_checkpoint_file,
)
from spamgpt.trunk import features, read_frozen_blocks


def read_json(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def main(params: Params) -> None:
    m, t = params.model, params.train
    device = runtime.resolve_device(t.device)
    precision = runtime.resolve_precision(t.precision, device)
    distributed.relaunch(t.devices)  # train.devices > 1: this script again, under torchrun
    device = distributed.setup(device)
    threads = runtime.use_all_cores(processes=distributed.world_size())
    stage.log.info(
        "rank %d of %d, %s, %s, %d threads",
        distributed.rank(), distributed.world_size(), device, precision, threads,
    )  # fmt: skip
    if distributed.is_main():
        tracking.connect()  # an unreachable tracking server fails here, before any training

    n_frozen = read_frozen_blocks()
    train, val = (
        Split(features(s, n_frozen), loaders.load(paths.tokens_file(s)).labels)
        for s in ("train", "val")
    )
    model_dir = paths.pretrained_dir(m.repo_id)
    torch.manual_seed(t.seed)  # the head's initialisation, dropout
    model = GPT2Classifier(classifier.base_model(m, model_dir), pooling=m.pooling).to(device)
    trained = classifier.make_trainable(model, m, params.lora)

    data_info = read_json(paths.METRICS_DIR / "data.json")
    trains_with = {
        k: v for k, v in flatten(params).items() if k.startswith(("model.", "lora.", "train."))
    }
    key = fingerprint({**trains_with, "data": data_info})
    checkpoint = load_checkpoint_file(paths.CHECKPOINT_DIR, key)

    def trainer_logging_to(logger: MetricsLogger) -> Trainer:
        trainer = Trainer(
            model, trained, train, val, t, device, precision, paths.CHECKPOINT_DIR, logger
        )
        if checkpoint:
            trainer.load_checkpoint(checkpoint)
        return trainer

    if not distributed.is_main():  # the other processes train alongside rank 0, nothing else
        trainer_logging_to(NO_LOGGER).fit({})
        return
    tags = {
        "mlflow.source.git.commit": tracking.git_commit() or "",
        "data_sha256": data_info["raw_sha256"],
        "weights_sha256": read_json(paths.METRICS_DIR / "weights.json")["files"][
            "model.safetensors"
        ]["sha256"],
        **tracking.dvc_tags(),
    }
    with tracking.Run.open(
        params.mlflow.experiment, checkpoint and checkpoint["run_id"], tags, skip_logged_steps=True
    ) as run:
        if checkpoint is None:
            run.log_params(flatten(params))
            frame = data.read_split(paths.split_file("train"))
            run.log_dataset(frame, "sms-spam-train", data_info["raw_sha256"], params.data.url)
            run.log_artifact(PARAMS_FILE)
        trainer = trainer_logging_to(run)
        if checkpoint:
            s = trainer.state
            stage.log.info(
                "resuming MLflow run %s: %s",
                run.run_id,
                "training is done, writing its results"
                if s.finished
                else f"epoch {s.epoch + 1}, after step {s.step}",
            )
        extra = {"fingerprint": key, "run_id": run.run_id}
        state = trainer.fit(extra)

        for name, weights in (("best", state.best_weights), ("last", trainer.trained_weights())):
            classifier.save_tensors(weights, paths.CHECKPOINT_DIR / f"{name}.safetensors")
            run.log_artifact(paths.CHECKPOINT_DIR / f"{name}.safetensors", "checkpoints")
        model.load_state_dict(state.best_weights, strict=False)
        changed = trained
        if m.finetune == "lora":  # fold the adapters in: plain GPT-2 weights for inference
            changed = [*lora.merge(model), *(n for n in trained if n.startswith("head."))]
        tokens_info = read_json(paths.METRICS_DIR / "loaders.json")
        meta = classifier.classifier_meta(
            m, changed, tokens_info["max_length"], tokens_info["pad_id"]
        )
        classifier.save(model, paths.FINETUNED_DIR, meta, model_dir, full=not m.pretrained)
        atomic.write_json(paths.MLFLOW_RUN, {"run_id": run.run_id})
        write_metrics(state, len(train), device, precision, run)
        trainer.mark_exported(extra)


def write_metrics(
    state: State, n_train: int, device: torch.device, precision: str, run: tracking.Run
) -> None:
    """metrics/train.json, the DVC plot data, and the same curves as MLflow figures."""
    epochs = pd.DataFrame(state.history)
    steps = pd.DataFrame(state.steps, columns=["step", "loss", "lr"])
    best = state.history[state.best_epoch - 1]
    samples_per_second = len(state.history) * n_train / max(state.train_seconds, 1e-9)
    atomic.write_json(
        paths.METRICS_DIR / "train.json",
        {
            "best_epoch": state.best_epoch,
            "epochs_run": len(state.history),
            "steps": state.step,
            "train_seconds": round(state.train_seconds, 2),
            "samples_per_second": round(samples_per_second, 1),
            "device": device.type,
            "precision": precision,
            "threads": torch.get_num_threads(),
            "val": {k.removeprefix("val/"): v for k, v in best.items() if k.startswith("val/")},
        },
    )
    with atomic.atomic_open(paths.METRICS_DIR / "train_loss.csv", "w", newline="") as f:
        steps.to_csv(f, index=False)
    with atomic.atomic_open(paths.METRICS_DIR / "val_epochs.csv", "w", newline="") as f:
        epochs.rename(columns=lambda c: c.replace("/", "_")).to_csv(f, index=False)

    run.log_metrics(
        {
            "best_epoch": state.best_epoch,
            "train/seconds": state.train_seconds,
            "train/samples_per_second": samples_per_second,
        },
        0,
    )
    figures = {
        "curves/train_loss.png": ("step", {"train/loss": (steps["step"], steps["loss"])}),
        "curves/loss_by_epoch.png": (
            "epoch",
            {c: (epochs["epoch"], epochs[c]) for c in ("train/epoch_loss", "val/loss")},
        ),
        "curves/validation.png": (
            "epoch",
            {
                c: (epochs["epoch"], epochs[c])
                for c in ("val/accuracy", "val/spam_precision", "val/spam_recall", "val/spam_f1")
            },
        ),
    }
    for artifact, (x_label, series) in figures.items():
        run.log_figure(metrics.curve_figure(series, x_label, artifact[7:-4]), artifact)


if __name__ == "__main__":
    try:
        stage.run(main)
    finally:
        distributed.teardown()
