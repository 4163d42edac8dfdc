"""evaluate: the best fine-tuned model on validation and test: metrics, confusion matrices,
curves and misclassified messages, into DVC metrics/plots and the finetune MLflow run."""

from spamgpt import (
    classifier,
    contracts,
    metrics,
    paths,
    results,
    runtime,
    stage,
    tracking,
)
from spamgpt.labels import POSITIVE
from spamgpt.params import Params
from spamgpt.train import Split


def main(params: Params) -> None:
    device, precision = runtime.setup(params.train.device, params.train.precision)
    tracking.connect()
    frozen = contracts.read_frozen_blocks()
    splits = {s: Split.read(s, frozen) for s in ("val", "test")}
    labels = {s: split.labels.numpy() for s, split in splits.items()}
    model, meta = classifier.load(paths.FINETUNED_DIR)
    probs = {
        s: classifier.class_probabilities(model.to(device), split.inputs, device, precision).numpy()
        for s, split in splits.items()
    }
    best_val_threshold = metrics.best_threshold(labels["val"], probs["val"][:, POSITIVE])
    threshold = params.evaluate.threshold
    if threshold == "auto":
        threshold = best_val_threshold
    reports = {s: metrics.report(labels[s], probs[s], threshold) for s in splits}
    baseline = contracts.read_baseline()
    curves = metrics.curve_frames(labels["test"], probs["test"][:, POSITIVE])
    results.write_evaluation(
        reports, threshold, best_val_threshold, baseline, probs["test"], curves
    )

    mlf = params.mlflow
    with tracking.Run.open(mlf.experiment, contracts.read_mlflow_run()) as run:
        results.log_evaluation(run, reports, baseline, threshold, best_val_threshold, curves)
        if mlf.log_model:
            from spamgpt import serving  # mlflow.pyfunc: only where a model is logged

            base = serving.BaseWeights(**contracts.read_base_weights())
            full = mlf.log_model == "full"  # MLflow runs the input example on `loaded`
            serving.log_model(
                run.run_id, paths.FINETUNED_DIR, threshold, mlf.registered_model,
                base=base, full=full, loaded=(model, meta),
            )  # fmt: skip
        if mlf.log_checkpoints:
            light = mlf.log_model is True and mlf.registered_model is None
            results.log_best_checkpoint(run, light_model_logged=light)


if __name__ == "__main__":
    stage.run(main)
