"""finetune: train the last blocks + final norm + a class head on the cached trunk, keep the
best evaluation by train.select_metric, checkpoint at each, record the run in MLflow."""

from spamgpt import contracts, distributed, paths, runtime, stage, tracking
from spamgpt.finetune import checkpoint, outputs
from spamgpt.finetune.train import LogMetrics, Trainer, progress
from spamgpt.model import classifier
from spamgpt.model.trunk import Split
from spamgpt.params import Params, check_train_classes
from spamgpt.tasks.registry import task_for


def main(params: Params) -> None:
    m, t = params.model, params.train
    compute = runtime.setup(t.device, t.precision, t.devices)  # before any input
    classes = contracts.read_classes()
    check_train_classes(t, classes.names)  # the classes found in the data, when not listed
    distributed.relaunch(t.devices)  # train.devices > 1: this script again, under torchrun
    compute = compute.on(distributed.setup(compute.device))
    if distributed.is_main():
        tracking.connect()  # an unreachable tracking server fails here, before any training
    stage.phase("load")
    frozen = contracts.read_frozen_blocks()
    train, val = Split.read("train", frozen), Split.read("val", frozen)
    model, trained = classifier.for_training(m, params.lora, classes, compute.device, t.seed)
    trainer = Trainer(model, trained, train, val, classes, t, compute)
    data_report = contracts.read_data_report()
    fingerprint = checkpoint.fingerprint(params, data_report)
    resume = checkpoint.load(paths.CHECKPOINT, fingerprint)
    if resume:
        checkpoint.resume(trainer, resume)
    stage.phase("train")
    if not distributed.is_main():  # the other processes train alongside rank 0, nothing else
        trainer.fit(checkpoint.CheckpointSaver(paths.CHECKPOINT, fingerprint))
        return

    tags = tracking.run_tags(data_report["raw_sha256"], contracts.read_weights_sha256())
    run_id = resume and resume["run_id"]
    with tracking.Run.open(params.mlflow.experiment, run_id, tags, skip_logged_steps=True) as run:
        if resume is None:
            outputs.log_run_inputs(run, params, data_report)
        saver = checkpoint.CheckpointSaver(paths.CHECKPOINT, fingerprint, run.run_id, run.flush)
        axis = "epoch" if t.eval_every is None else "step"  # of the val/ metrics in MLflow
        shown = progress(t.epochs, task_for(classes).selected_key(t.select_metric))
        state = trainer.fit(saver, hooks=(LogMetrics(run, axis), shown))
        stage.phase("save")
        outputs.write_checkpoint_weights(run, trainer, params.mlflow.log_checkpoints)
        outputs.export_model(trainer, m, params.data.text_fields())
        contracts.write_mlflow_run(run.run_id)  # which run evaluate records into
        run.log_metrics(outputs.write_training(state, len(train), compute), 0)
        state.exported = True  # the results are written: a later run starts afresh
        saver.write(checkpoint.state_of(trainer))  # now, not in the background
        stage.phase("log")  # the run's metrics until now; its close after
        run.log_metrics(stage.timeline_metrics(), 0)


if __name__ == "__main__":
    try:
        stage.run(main)
    finally:
        distributed.teardown()
