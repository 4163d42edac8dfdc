"""Data-parallel fine-tuning: `train.devices: 2` runs finetune as 2 CPU processes under
torchrun (gloo) and must learn what one process learns from the same global batches, here
accumulated from two batches of half the size (train.accumulation_steps: 2)."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
import torch
import yaml
from conftest import run

TOLERANCE = 1e-4  # float sums in another order (all-reduce, half batches); nothing else differs
TRUNK_TOLERANCE = 1e-5  # the same batches, sums split over another number of threads


@pytest.fixture(scope="module")
def project(reproduced, tmp_path_factory):
    """One project for the module: a reproduced pipeline (conftest's, copied; 2 epochs), whose
    trunk and finetune stages the fixtures below run again by their scripts."""
    return reproduced.copy(tmp_path_factory.mktemp("ddp") / "project")


def set_train(path: Path, **values: object) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["train"].update(values)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def copy_of(project: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    dest = tmp_path_factory.mktemp(name) / "project"
    shutil.copytree(project, dest, symlinks=True)
    return dest


def run_at_once(script: str, folders: dict[int, Path]) -> dict[int, str]:
    """`script` run in each folder at the same time (each mostly Python start-ups on one
    core; torchrun --standalone picks a free port): {devices: its output}."""
    with ThreadPoolExecutor(max_workers=len(folders)) as pool:
        started = {d: pool.submit(run, ["python", script], path) for d, path in folders.items()}
        return {d: out.result().stdout + out.result().stderr for d, out in started.items()}


@pytest.fixture(scope="module")
def trunk_caches(project, tmp_path_factory):
    """The trunk stage's cache files with 2 processes (in a copy of the project) and with 1
    (in the project: the cache finetune reads below, as `dvc repro trunk` writes it), both at
    once: {devices: {split: bytes}}, and the 2-process log."""
    folders = {2: copy_of(project, tmp_path_factory, "ddp-trunk"), 1: project}
    for devices, path in folders.items():
        set_train(path, devices=devices)
    logs = run_at_once("stages/trunk.py", folders)
    caches = {
        devices: {p.name: p.read_bytes() for p in (path / "data/trunk").iterdir()}
        for devices, path in folders.items()
    }
    return caches, logs[2]


@pytest.fixture(scope="module")
def runs(project, trunk_caches, tmp_path_factory):
    """finetune with 1 process (in the project), and with 2 accumulating two batches of 8 into
    each update of 16 (in a copy of it), both at once on the one-process trunk cache; each
    starts afresh (the reproduced checkpoint is exported): (metrics, per-step losses) each."""
    folders = {1: project, 2: copy_of(project, tmp_path_factory, "ddp-finetune")}
    for devices, path in folders.items():
        set_train(path, devices=devices, batch_size=16 // devices, accumulation_steps=devices)
    logs = run_at_once("stages/finetune.py", folders)
    return {
        devices: (
            json.loads((path / "metrics/train.json").read_text()),
            pd.read_csv(path / "metrics/train_loss.csv"),
            pd.read_csv(path / "metrics/val_epochs.csv"),
            logs[devices],
        )
        for devices, path in folders.items()
    }


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


def test_trunk_on_two_processes_writes_the_cache_of_one(trunk_caches):
    caches, log = trunk_caches
    assert "rank 0 of 2" in log and "rank 1 of 2" in log
    names = ["info.json", "test.safetensors", "train.safetensors", "val.safetensors"]
    assert sorted(caches[1]) == sorted(caches[2]) == names  # one file per split, no temp left
    assert caches[2]["info.json"] == caches[1]["info.json"]
    for name in names[1:]:  # the same batches; one thread per process instead of two
        one, two = (safetensors.torch.load(caches[d][name]) for d in (1, 2))
        assert torch.equal(one["lengths"], two["lengths"])
        assert one["hidden"].dtype == two["hidden"].dtype == torch.float32  # precision fp32
        assert not two["hidden"].eq(0).all(dim=1).any(), "a row no process wrote"
        torch.testing.assert_close(two["hidden"], one["hidden"], rtol=0, atol=TRUNK_TOLERANCE)
