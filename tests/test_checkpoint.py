"""spamgpt.checkpoint: the fingerprint, atomic saves, what load() resumes and refuses."""

import dataclasses
from pathlib import Path

import torch
import yaml
from conftest import REPO
from test_train import new_trainer

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
    CheckpointSaver(path, "fp").save(trainer)
    assert {"weights", "best_weights", "optimizer"} <= set(torch.load(path, weights_only=True))
    trainer.state.exported = True
    CheckpointSaver(path, "fp").save(trainer)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"fingerprint", "run_id", "state"} and saved["state"]["exported"]
    assert checkpoint.load(path, "fp") is None


def test_leftover_of_a_killed_write_is_removed(tmp_path: Path) -> None:
    leftover = tmp_path / ".checkpoint.pt.x1y2.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert checkpoint.load(tmp_path / "checkpoint.pt", "fp") is None
    assert not leftover.exists()
