"""spamgpt.train in-process: the schedule, class weights, epoch order, the loop's hooks,
early stopping, and a resumed run that ends exactly where an uninterrupted one does."""

import dataclasses
from pathlib import Path

import pytest
import torch

from spamgpt import checkpoint, classifier
from spamgpt.batching import ModelInputs, PackedSequences
from spamgpt.checkpoint import CheckpointSaver
from spamgpt.labels import SMS
from spamgpt.model import GPT2, GPT2Classifier, GPTConfig
from spamgpt.params import TrainParams
from spamgpt.train import (
    Hook,
    Split,
    State,
    Trainer,
    class_weights,
    epoch_order,
    lr_factor,
)

CPU = torch.device("cpu")
PARAMS = TrainParams(
    epochs=3,
    batch_size=4,
    lr=1e-2,
    weight_decay=0.1,
    warmup_ratio=0.1,
    grad_clip=1.0,
    class_weights="balanced",
    patience=3,
    seed=7,
    device="cpu",
    precision="fp32",
    devices=1,
)


def test_lr_warms_up_linearly_then_decays_to_zero() -> None:
    factors = [lr_factor(step, total=10, warmup=4) for step in range(11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0])


def test_balanced_class_weights_give_each_class_the_same_total() -> None:
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])  # 6 ham, 2 spam
    weights = class_weights(labels, "balanced", classes=2)
    torch.testing.assert_close(weights, torch.tensor([8 / 12, 8 / 4]))
    assert weights[0] * 6 == pytest.approx(weights[1] * 2)
    assert class_weights(labels, "none", classes=2) is None
    # a class absent from the labels gets a finite weight, not a division by zero
    assert torch.isfinite(class_weights(labels, "balanced", classes=3)).all()


def test_epoch_order_is_a_function_of_seed_and_epoch_alone() -> None:
    lengths = torch.randint(1, 50, (100,), generator=torch.Generator().manual_seed(0))
    order = epoch_order(lengths, 8, seed=1, epoch=2)
    torch.randn(10)  # the global RNG plays no part
    again = epoch_order(lengths, 8, seed=1, epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(order, again, strict=True))
    assert sorted(torch.cat(order).tolist()) == list(range(100))  # each message once
    other = epoch_order(lengths, 8, seed=1, epoch=3)
    assert not all(torch.equal(a, b) for a, b in zip(order, other, strict=True))


def data(n: int, seed: int) -> Split:
    """Token-id messages whose label is whether token 5 occurs: learnable by a tiny model."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 12, (n,), generator=g)
    ids = torch.randint(0, 40, (int(lengths.sum()),), generator=g)
    sequences = PackedSequences(ids, lengths)
    labels = torch.tensor(
        [
            int(5 in sequences.rows[s : s + n_].tolist())
            for s, n_ in zip(sequences.starts.tolist(), lengths.tolist(), strict=True)
        ]
    )
    return Split(ModelInputs(sequences, None), labels)


def new_trainer(params: TrainParams = PARAMS) -> Trainer:
    torch.manual_seed(0)
    gpt = GPT2.init_random(GPTConfig(n_layer=2, n_head=2, n_embd=16, n_ctx=16, vocab_size=40))
    model = GPT2Classifier(gpt)
    trained = classifier.freeze(model, 1)
    return Trainer(model, trained, data(64, 1), data(32, 2), SMS, params, CPU, "fp32")


class Record(Hook):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_epoch_start(self, state: State, batches: int) -> None:
        self.events.append(("start", state.epoch, batches))

    def on_step(self, state: State, loss: float, lr: float) -> None:
        self.events.append(("step", state.step))

    def on_epoch_end(self, state: State, entry: dict) -> None:
        self.events.append(("end", state.epoch, entry["val/loss"]))


def test_fit_calls_the_hooks_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    trainer, record = new_trainer(), Record()
    frozen_before = trainer.model.gpt.h[0].attn.c_attn.weight.clone()
    state = trainer.fit(CheckpointSaver(tmp_path / "c.pt", "fp"), hooks=(record,))
    steps_per_epoch = 64 // 4
    assert [e for e in record.events if e[0] == "start"] == [
        ("start", epoch, steps_per_epoch) for epoch in range(3)
    ]
    assert [e[1] for e in record.events if e[0] == "step"] == list(range(1, 3 * 16 + 1))
    assert [e[1] for e in record.events if e[0] == "end"] == [1, 2, 3]
    assert state.finished and state.step == 48 and len(state.history) == 3
    best = max(state.history, key=lambda h: (h["val/spam_f1"], -h["val/loss"]))
    assert state.best_epoch == best["epoch"]
    assert state.history[0]["val/loss"] > state.history[-1]["val/loss"]  # it learns
    assert torch.equal(trainer.model.gpt.h[0].attn.c_attn.weight, frozen_before)
    assert set(state.best_weights) == set(trainer.trained)


def test_early_stopping_ends_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    params = dataclasses.replace(PARAMS, epochs=20, patience=1, lr=1e-9)  # nothing improves
    state = new_trainer(params).fit(CheckpointSaver(tmp_path / "c.pt", "fp"))
    assert len(state.history) == state.best_epoch + 1 < 20


class StopAfter(Hook):
    """Stands in for SIGINT: notes a signal after `step`, as the signal handler would."""

    def __init__(self, trainer: Trainer, step: int) -> None:
        self.trainer, self.step = trainer, step

    def on_step(self, state: State, loss: float, lr: float) -> None:
        if state.step == self.step:
            self.trainer.pending.signal = 2


def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path: Path) -> None:
    whole = new_trainer().fit(CheckpointSaver(tmp_path / "whole.pt", "fp"))

    path = tmp_path / "resumed.pt"
    first = new_trainer()
    with pytest.raises(Exception, match="SIGINT at step 21: checkpoint saved"):
        first.fit(CheckpointSaver(path, "fp"), hooks=(StopAfter(first, 21),))
    saved = checkpoint.load(path, "fp")
    assert saved["state"]["step"] == 21 and saved["state"]["batch"] == 5
    assert checkpoint.load(path, "other settings") is None
    second = new_trainer()
    checkpoint.resume(second, saved)
    resumed = second.fit(CheckpointSaver(path, "fp"))

    assert resumed.steps == whole.steps
    assert resumed.history == whole.history
    assert resumed.best_epoch == whole.best_epoch
    for name, tensor in whole.best_weights.items():
        assert torch.equal(resumed.best_weights[name], tensor)
