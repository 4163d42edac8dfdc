"""Data-parallel fine-tuning: `train.devices: 2` runs finetune as 2 CPU processes under
torchrun (gloo) and must learn what one process learns from the same global batches."""

import json

import pandas as pd
import pytest
import yaml
from conftest import make_project, run, tiny_params

TOLERANCE = 1e-4  # float sums in another order (all-reduce, half batches); nothing else differs


@pytest.fixture(scope="module")
def runs(mirror, tmp_path_factory):
    """finetune with 1 process, then with 2, on one project: (metrics, per-step losses) each."""
    path = make_project(tmp_path_factory.mktemp("ddp"), tiny_params(mirror, train={"epochs": 2}))
    run(["dvc", "repro", "trunk"], path)
    results = {}
    for devices in (1, 2):
        params = yaml.safe_load((path / "params.yaml").read_text())
        params["train"]["devices"] = devices
        (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = run(["python", "stages/finetune.py"], path)
        results[devices] = (
            json.loads((path / "metrics/train.json").read_text()),
            pd.read_csv(path / "metrics/train_loss.csv"),
            pd.read_csv(path / "metrics/val_epochs.csv"),
            out.stdout + out.stderr,
        )
    return results


def test_two_processes_ran(runs):
    assert "rank 0 of 1" in runs[1][3]
    log = runs[2][3]
    assert "rank 0 of 2" in log and "rank 1 of 2" in log


def test_same_losses_at_every_step(runs):
    one, two = runs[1][1], runs[2][1]
    assert list(one["step"]) == list(two["step"])  # same global batches: same step count
    assert (one["loss"] - two["loss"]).abs().max() < TOLERANCE
    assert list(one["lr"]) == pytest.approx(list(two["lr"]))


def test_same_validation_metrics(runs):
    one, two = runs[1][2], runs[2][2]
    for column in ("val_loss", "val_accuracy", "val_spam_f1"):
        assert (one[column] - two[column]).abs().max() < TOLERANCE, column
    assert runs[1][0]["best_epoch"] == runs[2][0]["best_epoch"]
