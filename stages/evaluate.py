"""evaluate: the best fine-tuned model on validation and test: metrics, confusion matrices,
curves and misclassified messages, into DVC metrics/plots and the finetune MLflow run."""

from spamgpt import classifier, contracts, metrics, paths, results, runtime, stage, tracking
from spamgpt import multilabel_metrics as multi_metrics
from spamgpt import multilabel_results as multi_results
from spamgpt.params import Params
from spamgpt.trunk import Split


def main(params: Params) -> None:
    device, precision = runtime.setup(params.train.device, params.train.precision)
    classes = contracts.read_classes()
    if classes.multi_label:
        multi_metrics.check_threshold(params.evaluate.threshold)
    elif classes.positive is None and params.evaluate.threshold is not None:
        stage.log.info("no data.positive_label: each message gets its most probable class")
    tracking.connect()
    splits = {s: Split.read(s, contracts.read_frozen_blocks()) for s in ("val", "test")}
    labels = {s: split.labels.numpy() for s, split in splits.items()}
    model, meta = classifier.load(paths.FINETUNED_DIR)
    probs = {
        s: classifier.class_probabilities(model.to(device), split.inputs, device, precision).numpy()
        for s, split in splits.items()
    }
    if classes.multi_label:  # a threshold per label (spamgpt.multilabel)
        multi = multi_results.evaluate(params.evaluate.threshold, classes, labels, probs)
        threshold, mlf = multi.threshold, params.mlflow
    else:
        choice = metrics.choose_threshold(
            params.evaluate.threshold, classes, labels["val"], probs["val"]
        )
        threshold, best = choice.threshold, choice.best_f1
        reports = {s: metrics.report(labels[s], probs[s], threshold, classes) for s in splits}
        baseline = contracts.read_baseline()
        curves = metrics.curve_frames(labels["test"], probs["test"], classes)
        results.write_evaluation(
            reports, classes, threshold, best, baseline, probs["test"], curves, choice.reached
        )
        mlf, thresholds = params.mlflow, {"test/threshold": threshold, "val/best_threshold": best}
        thresholds |= {f"val/threshold_{k}": v for k, v in (choice.reached or {}).items()}
    with tracking.Run.open(mlf.experiment, contracts.read_mlflow_run()) as run:
        if classes.multi_label:
            multi.log(run)
        else:
            results.log_evaluation(run, reports, classes, baseline, thresholds, curves)
        if mlf.log_model:
            from spamgpt import serving  # mlflow.pyfunc: only where a model is logged

            base = serving.BaseWeights(**contracts.read_base_weights())
            full = mlf.log_model == "full"  # its every tensor comes from `loaded`
            serving.log_model(
                run.run_id, paths.FINETUNED_DIR, threshold, mlf.registered_model,
                base=base, full=full, loaded=(model, meta),
            )  # fmt: skip
        if mlf.export:
            from spamgpt import export  # onnx and transformers' formats: only where asked

            export.log_exports(run, model, meta, paths.FINETUNED_DIR, mlf.export)
        if mlf.log_checkpoints:
            light = mlf.log_model is True and mlf.registered_model is None
            results.log_best_checkpoint(run, light_model_logged=light)


if __name__ == "__main__":
    stage.run(main)
