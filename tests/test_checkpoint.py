"""spamgpt.finetune.checkpoint: the fingerprint, atomic saves, what load() resumes and refuses."""

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from test_train import PARAMS as TRAIN_PARAMS
from test_train import SaveLog, new_trainer

from spamgpt import params
from spamgpt.finetune import checkpoint
from spamgpt.finetune.checkpoint import CheckpointSaver

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


# --- pinned by mutation testing (tools/mutate.py checkpoint) ---

import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402


def test_fingerprint_is_the_sha256_of_the_sorted_training_settings_and_data() -> None:
    settings = {
        k: v
        for k, v in params.flatten(PARAMS).items()
        if k.split(".")[0] in ("model", "lora", "train")
    }
    document = {**settings, "data": DATA, "format": checkpoint.FORMAT}
    expected = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    assert checkpoint.fingerprint(PARAMS, DATA) == expected
    longer = dataclasses.replace(PARAMS, model=dataclasses.replace(PARAMS.model, max_length=7))
    assert checkpoint.fingerprint(longer, DATA) != expected


ONE_EPOCH = dataclasses.replace(TRAIN_PARAMS, epochs=1)


def test_a_resumed_trainer_is_the_saved_one(tmp_path: Path, caplog) -> None:
    path, trainer = tmp_path / "checkpoint.pt", new_trainer(ONE_EPOCH, n_train=16)
    trainer.fit(SaveLog())
    saver = CheckpointSaver(path, "fp", run_id="r1")
    saver.save(trainer)
    saver.wait()
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"fingerprint", "run_id", "state", "best_weights", "weights"} | {
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
    }
    assert "best_weights" not in saved["state"] and saved["state"]["finished"]
    torch.rand(5)  # the RNG moves on: resume puts it back
    with caplog.at_level(logging.INFO, logger="spamgpt.finetune.checkpoint"):
        loaded = checkpoint.load(path, "fp")
    assert "resuming MLflow run r1: training is done, writing its results" in caplog.text
    resumed = new_trainer(ONE_EPOCH, n_train=16)
    checkpoint.resume(resumed, loaded)
    assert torch.equal(torch.get_rng_state(), saved["rng"])
    expected, got = vars(trainer.state), vars(resumed.state)
    assert {k: v for k, v in got.items() if k != "best_weights"} == {
        k: v for k, v in expected.items() if k != "best_weights"
    }
    assert isinstance(resumed.state.best_score, tuple)
    assert all(
        torch.equal(resumed.state.best_weights[n], w) for n, w in expected["best_weights"].items()
    )
    assert all(torch.equal(resumed.trained[n], w) for n, w in trainer.trained.items())
    assert resumed.scheduler.state_dict() == trainer.scheduler.state_dict()
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()
    moments, resumed_moments = trainer.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert moments["param_groups"] == resumed_moments["param_groups"]
    for i, state in moments["state"].items():
        assert all(torch.equal(resumed_moments["state"][i][k], v) for k, v in state.items())


def test_a_checkpoint_mid_training_logs_the_epoch_and_step(tmp_path: Path, caplog) -> None:
    path = tmp_path / "checkpoint.pt"
    CheckpointSaver(path, "fp", run_id="r2").write(
        {"state": {"finished": False, "epoch": 1, "step": 40}}
    )
    with caplog.at_level(logging.INFO, logger="spamgpt.finetune.checkpoint"):
        assert checkpoint.load(path, "fp")["state"]["step"] == 40
    assert caplog.messages == ["resuming MLflow run r2: epoch 2, after step 40"]


class NotATensor:
    pass


def test_pickled_objects_and_garbage_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"fingerprint": "fp", "state": NotATensor()}, path)
    with pytest.raises(checkpoint.SpamGPTError) as refused:
        checkpoint.load(path, "fp")
    assert str(refused.value) == (
        f"{path}: refused: it holds pickled objects other than tensors, which could run code; "
        "it is not a spamgpt checkpoint, delete it to start afresh"
    )
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:300])  # cut short
    with pytest.raises(checkpoint.SpamGPTError) as garbage:
        checkpoint.load(path, "fp")
    message = str(garbage.value)
    assert message.startswith(f"{path}: cannot load checkpoint (") and "\n" not in message
    assert message.endswith("); delete it to start afresh") and "(None)" not in message


def test_copies_are_the_cpu_tensors_apart_from_training() -> None:
    weight = torch.ones(2)
    copied = checkpoint._copied({"a": [weight, (weight, 3)], "b": "x"})
    weight.add_(1.0)  # training goes on
    assert copied["a"][0].tolist() == [1.0, 1.0] and copied["a"][1][0].tolist() == [1.0, 1.0]
    assert type(copied["a"]) is list and type(copied["a"][1]) is tuple
    assert copied["a"][1][1] == 3 and copied["b"] == "x"
    assert copied["a"][0].device.type == "cpu"
