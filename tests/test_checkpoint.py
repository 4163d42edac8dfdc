"""spamgpt.checkpoint: the fingerprint, atomic saves, what load() resumes and refuses."""

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from test_train import SaveLog, new_trainer

from spamgpt import checkpoint, params
from spamgpt.checkpoint import CheckpointSaver

PARAMS = params.parse(yaml.safe_load((REPO / "params.yaml").read_text()))
DATA = {"raw_sha256": "ab" * 32, "raw_rows": 10}


def test_fingerprint_follows_what_training_depends_on_only() -> None:
    base = checkpoint.fingerprint(PARAMS, DATA)
    assert base == checkpoint.fingerprint(PARAMS, dict(DATA))  # stable
    lr = dataclasses.replace(PARAMS, train=dataclasses.replace(PARAMS.train, lr=1e-3))
    rank = dataclasses.replace(PARAMS, lora=dataclasses.replace(PARAMS.lora, rank=4))
    threshold = dataclasses.replace(
        PARAMS, evaluate=dataclasses.replace(PARAMS.evaluate, threshold=0.7)
    )
    assert checkpoint.fingerprint(lr, DATA) != base
    assert checkpoint.fingerprint(rank, DATA) != base
    assert checkpoint.fingerprint(PARAMS, {**DATA, "raw_rows": 11}) != base
    assert checkpoint.fingerprint(threshold, DATA) == base  # evaluate's, not training's


def test_saved_checkpoint_loads_back_for_the_same_fingerprint_only(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    flushed = []
    saver = CheckpointSaver(path, "fp", run_id="run1", before_save=lambda: flushed.append(1))
    saver.write(
        {"state": {"finished": False, "epoch": 0, "step": 3}, "weights": {"w": torch.ones(2)}}
    )
    assert flushed == [1]  # the metrics were flushed before the checkpoint was written
    loaded = checkpoint.load(path, "fp")
    assert loaded["run_id"] == "run1" and loaded["state"]["step"] == 3
    assert torch.equal(loaded["weights"]["w"], torch.ones(2))
    assert checkpoint.load(path, "another") is None
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_exported_checkpoint_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    CheckpointSaver(path, "fp").write({"state": {"finished": True, "exported": True}})
    assert checkpoint.load(path, "fp") is None


def test_once_exported_only_the_state_is_saved(tmp_path: Path) -> None:
    """The tensors are what a resume needs; an exported run is never resumed."""
    path, trainer = tmp_path / "checkpoint.pt", new_trainer()
    saver = CheckpointSaver(path, "fp")
    saver.save(trainer)
    saver.wait()
    assert {"weights", "best_weights", "optimizer"} <= set(torch.load(path, weights_only=True))
    trainer.state.exported = True
    saver.save(trainer)
    saver.wait()
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"fingerprint", "run_id", "state"} and saved["state"]["exported"]
    assert checkpoint.load(path, "fp") is None


def test_a_save_writes_the_trainer_as_it_was_while_training_goes_on(tmp_path: Path) -> None:
    """The write happens in the background: what it writes is the state at save(), not what
    the next steps make of the weights, the optimizer's moments and the step list."""
    path, trainer = tmp_path / "checkpoint.pt", new_trainer()
    saver = CheckpointSaver(path, "fp")
    trainer.fit(SaveLog())  # trained: the optimizer has moments, the state steps
    expected = copy.deepcopy(checkpoint.state_of(trainer))
    saver.save(trainer)
    with torch.no_grad():
        for p in trainer.trained.values():
            p.add_(1.0)
        for moments in trainer.optimizer.state.values():
            moments["exp_avg"].add_(1.0)
    trainer.state.steps.append([999, 0.0, 0.0])
    saver.wait()
    saved = torch.load(path, weights_only=True)
    assert saved["state"]["steps"] == expected["state"]["steps"]
    assert all(torch.equal(saved["weights"][n], w) for n, w in expected["weights"].items())
    moments = saved["optimizer"]["state"]
    assert all(
        torch.equal(moments[i]["exp_avg"], m["exp_avg"])
        for i, m in expected["optimizer"]["state"].items()
    )
    assert not any(
        torch.equal(moments[i]["exp_avg"], m["exp_avg"])
        for i, m in trainer.optimizer.state_dict()["state"].items()
    )


def test_a_failed_background_write_is_raised_by_wait_and_by_fit(tmp_path: Path) -> None:
    (tmp_path / "models").write_text("a file where the checkpoint folder should be")
    path = tmp_path / "models" / "checkpoint.pt"
    saver = CheckpointSaver(path, "fp")
    saver.save(new_trainer())  # returns: the write fails in the background
    with pytest.raises(OSError) as raised:
        saver.wait()
    assert raised.value.filename == str(path)
    saver.wait()  # raised once
    with pytest.raises(OSError):
        new_trainer().fit(saver)


def test_leftover_of_a_killed_write_is_removed(tmp_path: Path) -> None:
    leftover = tmp_path / ".checkpoint.pt.x1y2.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert checkpoint.load(tmp_path / "checkpoint.pt", "fp") is None
    assert not leftover.exists()
