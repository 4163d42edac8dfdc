"""evaluate: the best fine-tuned model on validation and test: its calibration (a temperature
fitted on validation), metrics, confusion matrices, curves and misclassified messages, into
DVC metrics/plots and the finetune MLflow run."""

from spamgpt import contracts, paths, runtime, stage, tracking
from spamgpt.evaluate import results
from spamgpt.model import classifier
from spamgpt.model.trunk import Split
from spamgpt.params import Params


def main(params: Params) -> None:
    compute = runtime.setup(params.train.device, params.train.precision)
    classes = contracts.read_classes()
    results.check_threshold(params.evaluate.threshold, classes)
    tracking.connect()
    stage.phase("load")
    splits = {s: Split.read(s, contracts.read_frozen_blocks()) for s in ("val", "test")}
    labels = {s: split.labels.numpy() for s, split in splits.items()}
    model, meta = classifier.load(paths.FINETUNED_DIR)
    stage.phase("predict")
    logits = {
        s: classifier.class_logits(model.to(compute.device), split.inputs, compute).numpy()
        for s, split in splits.items()
    }
    stage.phase("save")
    probs, calibration = results.calibrate(params.evaluate.calibration, classes, labels, logits)
    evaluation = results.evaluate(
        params.evaluate.threshold, classes, labels, probs, contracts.read_baseline(),
        params.train.select_metric, params.evaluate.min_support, calibration,
    )  # fmt: skip
    results.write_evaluation(evaluation)
    mlf = params.mlflow
    stage.phase("log")
    with tracking.Run.open(mlf.experiment, contracts.read_mlflow_run()) as run:
        results.log_evaluation(run, evaluation)
        results.log_label_issues(run, contracts.read_audit())
        if mlf.log_model:
            from spamgpt.serve import export, loader, serving  # mlflow.pyfunc: only where logged

            base = loader.BaseWeights(**contracts.read_base_weights())
            full = mlf.log_model == "full"  # its every tensor comes from `loaded`
            with export.served_onnx(
                model, meta, mlf.serve, run, calibration.temperature, calibration.shift
            ) as onnx:
                serving.log_model(
                    run.run_id, paths.FINETUNED_DIR, evaluation.threshold, mlf.registered_model,
                    base=base, full=full, loaded=(model, meta), onnx_file=onnx,
                    temperature=calibration.temperature, shift=calibration.shift,
                )  # fmt: skip
        # The exports' weights are the model's own: the temperature folded into its head
        classifier.fold_temperature(model, calibration.temperature, classes, calibration.shift)
        if mlf.export:
            from spamgpt.serve import export  # onnx and transformers' formats: only where asked

            export.log_exports(run, model, meta, paths.FINETUNED_DIR, mlf.export)
        if mlf.log_checkpoints:
            light = mlf.log_model is True and mlf.registered_model is None
            results.log_best_checkpoint(run, light_model_logged=light)
        run.log_metrics(stage.timeline_metrics(), 0)  # its phases until now


if __name__ == "__main__":
    stage.run(main)
