"""spamgpt.finetune.train in-process: the schedule, class weights, epoch order, the loop's hooks,
early stopping, a resumed run that ends exactly where an uninterrupted one does, and the
losses read back from the device a chunk at a time: the same as every step, NaN included."""

import contextlib
import dataclasses
import io
import math
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import as_ranks_0_and_1
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from spamgpt.data.batching import ModelInputs, PackedSequences
from spamgpt.errors import SpamGPTError
from spamgpt.finetune import checkpoint, train
from spamgpt.finetune.checkpoint import CheckpointSaver
from spamgpt.finetune.train import (
    Hook,
    LogMetrics,
    ProgressBar,
    State,
    Trainer,
    epoch_order,
    improves,
    lr_factor,
)
from spamgpt.labels import SMS, Classes
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.model.trunk import Split
from spamgpt.params import TrainParams
from spamgpt.runtime import Compute
from spamgpt.tasks import metrics
from spamgpt.tasks.registry import task_for


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models are tiny: one thread trains them far faster than two handing each small op
    back and forth (a step of 2 ms instead of 100 ms or more on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CPU = torch.device("cpu")
FP32_CPU = Compute(CPU, "fp32")
PARAMS = TrainParams(
    epochs=3,
    batch_size=4,
    lr=1e-2,
    weight_decay=0.1,
    warmup_ratio=0.1,
    grad_clip=1.0,
    accumulation_steps=1,
    eval_every=None,
    class_weights="balanced",
    patience=3,
    select_metric="auto",
    min_delta=0.0,
    seed=7,
    device="cpu",
    precision="fp32",
    devices=1,
    cuda_graphs=False,
)


def test_lr_warms_up_linearly_then_decays_to_zero() -> None:
    factors = [lr_factor(step, total=10, warmup=4) for step in range(11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0])


def test_balanced_class_weights_give_each_class_the_same_total() -> None:
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])  # 6 ham, 2 spam
    weights = task_for(SMS).loss_weights(labels, "balanced")
    torch.testing.assert_close(weights, torch.tensor([8 / 12, 8 / 4]))
    assert weights[0] * 6 == pytest.approx(weights[1] * 2)
    assert task_for(SMS).loss_weights(labels, "none") is None
    # a class absent from the labels gets a finite weight, not a division by zero
    assert torch.isfinite(task_for(Classes(("a", "b", "c"))).loss_weights(labels, "balanced")).all()


def test_class_weights_of_a_mapping_follow_the_class_order() -> None:
    labels = torch.tensor([0, 1, 2])
    weights = task_for(SMS).loss_weights(labels, {"spam": 3, "ham": 0.5})
    torch.testing.assert_close(weights, torch.tensor([0.5, 3.0]))
    torch.testing.assert_close(
        task_for(Classes(("0", "1", "2"))).loss_weights(labels, {2: 1, 0: 2, 1: 4}),
        torch.tensor([2.0, 4.0, 1.0]),
    )


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


def new_trainer(params: TrainParams = PARAMS, n_train: int = 64, dropout: float = 0.0) -> Trainer:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, n_ctx=16, vocab_size=40, dropout=dropout)
    gpt = GPT2.init_random(config)
    model = GPT2Classifier(gpt)
    trained = classifier.freeze(model, 1)
    return Trainer(model, trained, *trainer_splits(n_train), SMS, params, FP32_CPU)


def trainer_splits(n_train: int = 64) -> tuple[Split, Split]:
    return data(n_train, 1), data(32, 2)


class Record(Hook):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_epoch_start(self, state: State, batches: int) -> None:
        self.events.append(("start", state.epoch, batches))

    def on_steps(self, state: State, steps: list[list[float]]) -> None:
        assert state.steps[-len(steps) :] == steps and state.step == steps[-1][0]
        self.events.extend(("step", step) for step, _, _ in steps)
        self.events.append(("read", len(steps)))

    def on_evaluation(self, state: State, entry: dict) -> None:
        self.events.append(("evaluation", entry["epoch"], entry["step"], entry["val/loss"]))

    def on_epoch_end(self, state: State) -> None:
        self.events.append(("end", state.epoch))

    def on_fit_end(self, state: State) -> None:
        self.events.append(("fit end", state.step, state.finished))


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
    assert record.events[-1] == ("fit end", 48, True)
    assert state.finished and state.step == 48 and len(state.history) == 3
    best = max(state.history, key=lambda h: (h["val/spam_f1"], -h["val/loss"]))
    assert state.history[state.best_evaluation - 1] == best
    assert [e[1:3] for e in record.events if e[0] == "evaluation"] == [(1, 16), (2, 32), (3, 48)]
    assert state.history[0]["val/loss"] > state.history[-1]["val/loss"]  # it learns
    assert torch.equal(trainer.model.gpt.h[0].attn.c_attn.weight, frozen_before)
    assert set(state.best_weights) == set(trainer.trained)


def test_accumulated_batches_make_the_updates_of_one_batch_that_large() -> None:
    """Batches of 8 accumulated 4 at a time train as batches of 32: the same 10 updates
    (150 messages: each epoch ends with a partial update of 22, 8 + 8 + 6), class-weighted
    losses, schedule and clipping on the whole update's gradient. The weights move by up to
    6e-3. (At a far larger lr, AdamW turns the float rounding in gradients that are zero in
    exact arithmetic, the attention's key bias, into steps of up to lr, in both runs alike.)"""
    large = dataclasses.replace(PARAMS, epochs=2, batch_size=32, grad_clip=0.05, lr=1e-3)
    accumulated = dataclasses.replace(large, batch_size=8, accumulation_steps=4)
    trainers = [new_trainer(p, n_train=150) for p in (large, accumulated)]
    states = [t.fit(SaveLog()) for t in trainers]
    assert [s.step for s in states] == [10, 10]
    (_, loss, lr), (_, acc_loss, acc_lr) = states[0].steps[-1], states[1].steps[-1]
    assert acc_loss == pytest.approx(loss, abs=1e-6) and acc_lr == lr
    for name, weight in trainers[0].trained.items():
        torch.testing.assert_close(trainers[1].trained[name], weight, rtol=0, atol=1e-5)
    initial = new_trainer().trained
    assert max((w - initial[n]).abs().max() for n, w in trainers[0].trained.items()) > 1e-3


class SaveLog:
    """A Saver that notes (step, finished) at each save."""

    def __init__(self) -> None:
        self.saves: list[tuple[int, bool]] = []

    def save(self, trainer: Trainer) -> None:
        self.saves.append((trainer.state.step, trainer.state.finished))

    def wait(self) -> None:
        pass


@pytest.mark.parametrize(("epochs", "patience"), [(3, 5), (20, 1)])
def test_fit_saves_once_an_epoch_the_last_one_finished(epochs: int, patience: int) -> None:
    """The last epoch's save (all epochs run, or early stopping) already says finished: no
    second save of the same tensors."""
    params = dataclasses.replace(PARAMS, epochs=epochs, patience=patience, lr=1e-9)
    log = SaveLog()
    state = new_trainer(params).fit(log)
    epochs_run = len(state.history)
    assert log.saves == [(16 * e, e == epochs_run) for e in range(1, epochs_run + 1)]
    assert state.finished


class Clock:
    """train's time.perf_counter: one second later at every reading."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_eval_every_evaluates_and_saves_every_n_steps_and_after_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Evaluations every 5 of 2 x 16 steps, and after the last; patience counts evaluations
    (lr 1e-9: nothing improves the first by much), and stops mid-epoch. The training time is
    the sum of each run of steps (8: up to each evaluation or epoch's end), validation left out
    (a clock that reads one second more at each reading)."""
    params = dataclasses.replace(PARAMS, epochs=2, eval_every=5, patience=10)
    log, record = SaveLog(), Record()
    monkeypatch.setattr(train, "time", Clock())
    state = new_trainer(dataclasses.replace(params, select_metric="val_loss")).fit(log, (record,))
    assert state.train_seconds == 8.0
    losses = [h["val/loss"] for h in state.history]
    assert state.best_evaluation == 1 + losses.index(min(losses))
    evaluations = [(1, 5), (1, 10), (1, 15), (2, 20), (2, 25), (2, 30), (2, 32)]
    assert [(h["epoch"], h["step"]) for h in state.history] == evaluations
    assert [e[1:3] for e in record.events if e[0] == "evaluation"] == evaluations
    assert [e for e in record.events if e[0] == "end"] == [("end", 1), ("end", 2)]
    # each epoch starts once, though its steps are trained in 3 or 4 runs between evaluations
    assert [e for e in record.events if e[0] == "start"] == [("start", 0, 16), ("start", 1, 16)]
    assert log.saves == [(step, step == 32) for _, step in evaluations]

    log = SaveLog()
    stopped = new_trainer(dataclasses.replace(params, epochs=5, lr=1e-9, patience=2)).fit(log)
    assert len(stopped.history) == stopped.best_evaluation + 2 < 16
    assert stopped.step == 5 * len(stopped.history) and log.saves[-1] == (stopped.step, True)


def test_early_stopping_ends_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    params = dataclasses.replace(PARAMS, epochs=20, patience=1, lr=1e-9)  # nothing improves
    state = new_trainer(params).fit(CheckpointSaver(tmp_path / "c.pt", "fp"))
    assert len(state.history) == state.best_evaluation + 1 < 20


def test_an_improvement_must_exceed_min_delta() -> None:
    best = (0.80, -0.5)  # (select_metric, -val loss)
    assert improves((0.81, -0.9), best, 0.0) and not improves((0.81, -0.9), best, 0.02)
    assert improves((0.83, -0.9), best, 0.02)
    assert improves((0.80, -0.4), best, 0.0) and not improves((0.80, -0.4), best, 0.01)
    assert not improves(best, best, 0.0)


def after_step(trainer: Trainer, step: int, action: Callable[[], object]) -> None:
    """Run `action()` right after the optimizer's `step`-th step of this trainer (counted from
    now): inside the training step, between the reads of the losses."""
    steps = [0]

    def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        steps[0] += 1
        if steps[0] == step:
            action()

    trainer.optimizer.register_step_post_hook(hook)


def stop_after(trainer: Trainer, step: int) -> None:
    """Stands in for SIGINT at `step`: notes the signal as the held handler would."""
    after_step(trainer, step, lambda: setattr(trainer.pending, "signal", signal.SIGINT))


EVERY_5_OF_2 = dataclasses.replace(PARAMS, accumulation_steps=2, eval_every=5)


@pytest.mark.parametrize(
    ("read_every", "params", "stop", "batch"),
    [(3, PARAMS, 21, 5), (train.READ_EVERY, EVERY_5_OF_2, 20, 4)],
    ids=["epochs", "eval-every-accumulated"],
)
def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    read_every: int,
    params: TrainParams,
    stop: int,
    batch: int,
) -> None:
    """The signal comes mid-chunk (step 21 of 16 an epoch: epoch 2's 5th; with reads every 3
    steps, steps 20 and 21 are unread): the checkpoint holds every step done. With updates of
    two batches (8 an epoch) and evaluations every 5 steps, it comes during step 20, after
    which an evaluation was due: the resumed run makes it first."""
    monkeypatch.setattr(train, "READ_EVERY", read_every)
    whole = new_trainer(params).fit(CheckpointSaver(tmp_path / "whole.pt", "fp"))

    path = tmp_path / "resumed.pt"
    first = new_trainer(params)
    stop_after(first, stop)
    with pytest.raises(Exception, match=f"SIGINT at step {stop}: checkpoint saved"):
        first.fit(CheckpointSaver(path, "fp"))
    saved = checkpoint.load(path, "fp")
    assert saved["state"]["step"] == stop and saved["state"]["batch"] == batch
    assert saved["state"]["steps"] == whole.steps[:stop]
    assert checkpoint.load(path, "other settings") is None
    second = new_trainer(params)
    checkpoint.resume(second, saved)
    resumed = second.fit(CheckpointSaver(path, "fp"))

    assert resumed.steps == whole.steps
    assert resumed.history == whole.history
    assert resumed.best_evaluation == whole.best_evaluation
    for name, tensor in whole.best_weights.items():
        assert torch.equal(resumed.best_weights[name], tensor)


def test_losses_read_a_chunk_at_a_time_are_those_read_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit() reads the losses back 5 steps at a time (and at each epoch's end): the steps, losses,
    rates and epoch losses it records are exactly those of reading each step's loss at once."""
    monkeypatch.setattr(train, "READ_EVERY", 5)
    trainer, record = new_trainer(), Record()
    state = trainer.fit(CheckpointSaver(tmp_path / "c.pt", "fp"), hooks=(record,))
    reads = [e[1] for e in record.events if e[0] == "read"]
    assert reads == [5, 5, 5, 1] * 3  # 16 steps an epoch: one read per chunk

    reference, epoch_losses = new_trainer(), []
    steps = []
    for epoch in range(3):
        reference.model.train()
        loss_sum = samples = 0
        lengths = reference.train_split.inputs.sequences.lengths
        for indices in epoch_order(lengths, PARAMS.batch_size, PARAMS.seed, epoch):
            lr = reference.optimizer.param_groups[0]["lr"]
            loss = reference.train_step(indices).item()
            steps.append([len(steps) + 1, loss, lr])
            loss_sum, samples = loss_sum + loss * len(indices), samples + len(indices)
        epoch_losses.append(loss_sum / samples)
    assert state.steps == steps
    assert [h["train/epoch_loss"] for h in state.history] == epoch_losses
    assert len({lr for _, _, lr in steps}) > 10  # the rates follow the schedule step by step


class Logged:
    """A metrics store: what LogMetrics wrote to it."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict]] = []

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self.metrics.append((step, values))


def test_logged_metrics_and_progress_bar_follow_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train, "READ_EVERY", 5)
    logged = Logged()
    state = new_trainer().fit(CheckpointSaver(tmp_path / "c.pt", "fp"), hooks=(LogMetrics(logged),))
    per_step = [(step, v) for step, v in logged.metrics if "train/loss" in v]
    assert per_step == [
        (step, {"train/loss": loss, "train/lr": lr}) for step, loss, lr in state.steps
    ]
    assert [step for step, v in logged.metrics if "val/loss" in v] == [1, 2, 3]

    bar = ProgressBar(epochs=3)
    bar.bar = tqdm(total=16, file=io.StringIO())
    bar.on_steps(state, state.steps[:5])
    bar.on_steps(state, state.steps[5:6])
    assert bar.bar.n == 6 and bar.bar.postfix == f"loss={state.steps[5][1]:.4f}"


@pytest.mark.parametrize("static", [False, True], ids=["plain", "static"])
def test_a_training_step_reads_nothing_back_from_the_device(static: bool) -> None:
    """Steps on the meta device, where tensors have shapes but no values: reading one back
    (item(), tolist(), bool(), a NaN check), which on a GPU would wait for it, raises. The
    static step's buffers are on the device too (a CPU tensor given the model would raise)."""
    meta = torch.device("meta")
    built = new_trainer()  # the test model, and what trains in it
    model = built.model.to(meta).train()
    params = dataclasses.replace(PARAMS, cuda_graphs=static)
    trainer = Trainer(
        model, list(built.trained), *trainer_splits(), SMS, params, Compute(meta, "fp32")
    )
    assert (trainer.static is not None) == static
    losses = [trainer.train_step(torch.arange(i, i + 4)) for i in range(0, 12, 4)]
    assert [(loss.device, loss.dtype, loss.shape) for loss in losses] == [
        (meta, torch.float64, torch.Size([]))
    ] * 3
    assert trainer.scheduler.last_epoch == 3  # three whole steps
    with pytest.raises(RuntimeError, match="meta"):
        losses[0].item()
    if static:
        buffers = [t for width in trainer.static.buffers.values() for t in width.values()]
        assert buffers and {t.device for t in buffers} == {meta}


def poison_weights(trainer: Trainer) -> None:
    with torch.no_grad():
        for p in trainer.trained.values():
            p.fill_(float("nan"))


@pytest.mark.parametrize(
    ("bad_step", "signal_at"),
    [
        (24, None),  # mid-chunk: read with steps 22-26 (epoch 2 begins at step 17)
        (32, None),  # epoch 2's last step: read before validating epoch 2
        (22, 22),  # SIGINT at the same step: read before the checkpoint is saved
    ],
)
def test_a_nan_loss_stops_at_its_step_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_step: int, signal_at: int | None
) -> None:
    """The weights turn to NaN after step bad_step - 1: the error names bad_step though it is
    read some steps later, the steps before it are recorded, and nothing computed from the
    NaN weights is validated, kept as best or saved (epoch 1's checkpoint stays)."""
    monkeypatch.setattr(train, "READ_EVERY", 5)
    trainer, record, path = new_trainer(), Record(), tmp_path / "c.pt"
    after_step(trainer, bad_step - 1, lambda: poison_weights(trainer))
    if signal_at is not None:
        stop_after(trainer, signal_at)
    message = rf"training loss is nan at step {bad_step} \(epoch 2\); stopped"
    with pytest.raises(SpamGPTError, match=message):
        trainer.fit(CheckpointSaver(path, "fp"), hooks=(record,))

    state = trainer.state
    assert [step for step, _, _ in state.steps] == list(range(1, bad_step))
    assert [e[1] for e in record.events if e[0] == "step"] == list(range(1, bad_step))
    assert [e[1] for e in record.events if e[0] == "end"] == [1]  # epoch 2 never validated
    assert state.best_evaluation == 1
    assert all(w.isfinite().all() for w in state.best_weights.values())
    saved = checkpoint.load(path, "fp")
    assert saved["state"]["epoch"] == 1 and saved["state"]["step"] == 16
    assert all(w.isfinite().all() for w in saved["weights"].values())


def test_a_resumed_run_with_dropout_ends_exactly_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """Dropout draws from the global RNG every step: the checkpoint's RNG state is what makes
    the resumed steps drop the same units (without dropout, any RNG state would do)."""
    params = dataclasses.replace(PARAMS, epochs=1, batch_size=8)  # 8 steps
    whole = new_trainer(params, dropout=0.2).fit(CheckpointSaver(tmp_path / "whole.pt", "fp"))
    path = tmp_path / "resumed.pt"
    first = new_trainer(params, dropout=0.2)
    stop_after(first, 5)
    with pytest.raises(Exception, match="SIGINT at step 5"):
        first.fit(CheckpointSaver(path, "fp"))
    torch.manual_seed(12345)  # whatever the RNG did meanwhile
    second = new_trainer(params, dropout=0.2)
    checkpoint.resume(second, checkpoint.load(path, "fp"))
    resumed = second.fit(CheckpointSaver(path, "fp"))
    assert resumed.steps == whole.steps
    assert all(torch.equal(resumed.best_weights[n], t) for n, t in whole.best_weights.items())


def test_the_lr_schedule_spans_every_step_when_batches_do_not_divide_the_data() -> None:
    """10 messages in batches of 4: three steps an epoch, the last of 2 messages; over two
    epochs the rate decays to 0 right after the sixth step, not before it."""
    lengths = torch.ones(10, dtype=torch.int64)
    assert [len(b) for b in epoch_order(lengths, 4, seed=0, epoch=0)].count(2) == 1
    steps = 2 * len(epoch_order(lengths, 4, seed=0, epoch=0))
    params = dataclasses.replace(PARAMS, epochs=2, batch_size=4, warmup_ratio=0.0, lr=1.0)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=params.lr)
    schedule = train.linear_schedule(optimizer, params, n_train=10)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1.0, 1.0, 0.8, 0.6, 0.4, 0.2])  # one warm-up step
    assert optimizer.param_groups[0]["lr"] == 0.0


def uneven_batch(split: Split) -> torch.Tensor:
    """Three messages of one class and one of the other."""
    spam, ham = (torch.nonzero(split.labels == c).flatten() for c in (1, 0))
    return torch.cat([ham[:3], spam[:1]])


def test_the_loss_of_an_uneven_batch_is_the_class_weighted_mean() -> None:
    """sum(w_i * loss_i) / sum(w_i) with the training set's balanced weights: what
    F.cross_entropy(weight=...) computes, not the plain mean."""
    trainer = new_trainer()
    indices = uneven_batch(trainer.train_split)
    with torch.no_grad():
        logits = classifier.logits(trainer.model, trainer.train_split.inputs, indices, CPU)
    labels = trainer.train_split.labels[indices]
    weights = trainer.class_weights
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    by_hand = (weights[labels] * -logits.log_softmax(-1)[range(4), labels]).sum()
    torch.testing.assert_close(expected, by_hand / weights[labels].sum())
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert abs(expected - plain) > 1e-3  # the weights matter on this batch
    loss = trainer.train_step(indices)
    torch.testing.assert_close(loss, expected.double())


def test_gradients_are_clipped_to_train_grad_clip_before_the_step() -> None:
    """The norm of the trained parameters' gradients as the optimizer sees them: grad_clip
    where it is larger, untouched where it is not. (AdamW's update hardly changes when every
    gradient is scaled, so the weights alone would not show a missing clip.)"""
    norms = {}
    for clip in (None, 1e-3, 1e3):
        trainer = new_trainer(dataclasses.replace(PARAMS, grad_clip=clip))
        seen = []
        trainer.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, seen=seen, trainer=trainer: seen.append(
                float(torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in trainer.trained.values()])
                ))
            )
        )  # fmt: skip
        trainer.train_step(uneven_batch(trainer.train_split))
        norms[clip] = seen[0]
    assert norms[None] > 1e-2
    assert norms[1e-3] == pytest.approx(1e-3, rel=1e-4)
    assert norms[1e3] == pytest.approx(norms[None], rel=1e-6)


def test_fp16_gradients_are_unscaled_before_they_are_clipped() -> None:
    """fp16's loss scaling (a GradScaler, also on the CPU) multiplies the gradients by 65536:
    they are divided back before clipping, so the optimizer sees grad_clip's norm."""
    built = new_trainer()
    params = dataclasses.replace(PARAMS, grad_clip=1e-3, precision="fp16")
    trainer = Trainer(
        built.model, list(built.trained), *trainer_splits(), SMS, params, Compute(CPU, "fp16")
    )
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 65536.0
    seen = gradients_stepped(trainer)
    trainer.train_step(uneven_batch(trainer.train_split))
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in seen[0].values()]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-3)


def test_the_best_evaluation_is_the_best_val_f1_then_the_lowest_val_loss() -> None:
    """Four validations of a model that gives every message the same spam probability p
    (zero head weights, a bias): p = 0.51 labels all spam (some F1); 0.3 all ham (F1 0, but
    nearer the spam share, so a lower loss); 0.55 all spam again (the same F1, a higher loss);
    0.505 all spam (the same F1, the lowest loss of the three); 0.505 again (a tie: the
    earlier epoch stays). F1 decides, the loss breaks its ties: the 4th evaluation is the best,
    not the 2nd (lowest loss), the 1st (first) nor the 5th (as good, later)."""
    trainer = new_trainer(dataclasses.replace(PARAMS, class_weights="none"))
    share = trainer.val_split.labels.float().mean().item()
    assert 0 < share < 0.3
    head = trainer.model.head
    losses = []
    for p in (0.51, 0.3, 0.55, 0.505, 0.505):
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.tensor([0.0, math.log(p / (1 - p))]))
        trainer._evaluate()
        losses.append(trainer.state.history[-1]["val/loss"])
    f1s = [h["val/spam_f1"] for h in trainer.state.history]
    assert f1s[0] == f1s[2] == f1s[3] == f1s[4] > f1s[1] == 0.0
    assert losses[1] < losses[3] == losses[4] < losses[0] < losses[2]
    assert trainer.state.best_evaluation == 4
    best = trainer.state.best_weights["head.bias"]
    torch.testing.assert_close(best, torch.tensor([0.0, math.log(0.505 / 0.495)]))


class CountedLines(train.ProgressLines):
    """ProgressLines that also keeps the samples each line was computed from."""

    def __init__(self, epochs: int, metric_key: str) -> None:
        super().__init__(epochs, metric_key)
        self.counted: list[int] = []

    def line(self, state: State, entry: dict, seconds: float) -> str:
        self.counted.append(self.samples)
        return super().line(state, entry, seconds)


def test_off_a_terminal_each_evaluation_logs_one_plain_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three epochs of 64 messages, an evaluation each: three lines, each with its epoch, step,
    the epoch's training loss and val spam F1 (auto) as the history has them, the best one
    marked, the samples trained since the line before, the seconds."""
    lines = CountedLines(PARAMS.epochs, task_for(SMS).selected_key("auto"))
    with caplog.at_level("INFO", logger="spamgpt.finetune.train"):
        state = new_trainer().fit(CheckpointSaver(tmp_path / "c.pt", "fp"), hooks=(lines,))
    logged = [r.getMessage() for r in caplog.records if r.name == "spamgpt.finetune.train"]
    assert len(logged) == len(state.history) == 3 and lines.counted == [64, 64, 64]
    scores = [(e["val/spam_f1"], -e["val/loss"]) for e in state.history]  # what selects
    for n, (message, entry) in enumerate(zip(logged, state.history, strict=True), start=1):
        best = " (best)" if scores[n - 1] == max(scores[:n]) else ""
        start = (
            f"epoch {n}/3 step {16 * n}: train loss {entry['train/epoch_loss']:.4f}, "
            f"val spam_f1 {entry['val/spam_f1']:.4f}"
        )
        assert message.startswith(start)
        pattern = re.escape(best) + r", \d+\.\d samples/s, \d+\.\d s"
        assert re.fullmatch(pattern, message[len(start) :])


def test_the_line_divides_samples_by_training_seconds() -> None:
    lines = train.ProgressLines(5, "val/loss")
    lines.samples, lines.train_seconds = 300, 10.0
    state = State(train_seconds=14.0, history=[{}, {}], best_evaluation=1)
    entry = {"epoch": 2, "step": 80, "train/epoch_loss": 0.25, "val/loss": 0.123456}
    assert lines.line(state, entry, 6.04) == (
        "epoch 2/5 step 80: train loss 0.2500, val loss 0.1235, 75.0 samples/s, 6.0 s"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_on_a_terminal_lines_elsewhere() -> None:
    assert isinstance(train.progress(3, "val/loss", Terminal()), ProgressBar)
    shown = train.progress(3, "val/spam_f1", io.StringIO())
    assert isinstance(shown, train.ProgressLines) and shown.metric_key == "val/spam_f1"


def test_the_selected_key_reads_the_figure_the_selection_scores() -> None:
    """Each train.select_metric names the entry's figure metrics.selection_score picks by."""
    three = Classes(("a b", "c", "d"), "c")
    report = {
        "a b": {"f1": 0.5, "precision": 0.4, "recall": 0.6, "support": 3},
        "c": {"f1": 0.7, "precision": 0.8, "recall": 0.6, "support": 2},
        "d": {"f1": 0.2, "precision": 0.1, "recall": 0.3, "support": 5},
        "accuracy": 0.65,
        "macro_f1": 0.45,
    }
    entry = {"val/loss": 0.9, **metrics.flat(report, "val", three)}
    for metric in ("auto", "macro_f1", "accuracy", "micro_f1", "a b_f1", "d_f1"):
        score = task_for(three).selection_score(report, 0.9, metric)
        assert entry[task_for(three).selected_key(metric)] == score, metric
    assert entry[task_for(three).selected_key("val_loss")] == 0.9
    assert task_for(Classes(("x", "y", "z"))).selected_key("auto") == "val/macro_f1"


def multi_label_trainer(params: TrainParams) -> Trainer:
    """Three labels: whether token 5, 6 and 7 occur (a message may have several, or none)."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, n_ctx=16, vocab_size=40)
    model = GPT2Classifier(GPT2.init_random(config), 3, label_format="multi")
    splits = []
    for split in trainer_splits(70):
        seq = split.inputs.sequences
        rows = [seq.rows[s : s + n].tolist() for s, n in zip(seq.starts, seq.lengths, strict=True)]
        labels = torch.tensor([[float(t in row) for t in (5, 6, 7)] for row in rows])
        splits.append(Split(split.inputs, labels))
    classes = Classes(("five", "six", "seven"), label_format="multi")
    return Trainer(model, classifier.freeze(model, 1), *splits, classes, params, FP32_CPU)


def updates(trainer: Trainer, epochs: int = 1) -> list[float]:
    """Every update of `epochs` epochs in their order (each with a short update); the losses
    read back."""
    losses = []
    for epoch in range(epochs):
        size = train.update_size(trainer.params)
        lengths = trainer.train_split.inputs.sequences.lengths
        for indices in epoch_order(lengths, size, trainer.params.seed, epoch):
            losses.append(float(trainer.train_step(indices)))
    return losses


STATIC_CASES = {
    "balanced": dict(class_weights="balanced"),
    "unweighted": dict(class_weights="none"),
    "mapping": dict(class_weights={"ham": 0.5, "spam": 4.0}),
    "accumulated": dict(batch_size=4, accumulation_steps=3),
    "no clip": dict(grad_clip=None),
}


def trunk_cache_trainer(params: TrainParams) -> Trainer:
    """new_trainer's model and 70 messages, read as the trunk cache holds them: the hidden
    states after the frozen first block (the static step's buffers of width x n_embd)."""
    built = new_trainer(params, 70)
    splits = [
        Split(
            ModelInputs(trunk.compute(built.model.gpt, s.inputs.sequences, 1, FP32_CPU), 1),
            s.labels,
        )
        for s in (built.train_split, built.val_split)
    ]
    return Trainer(built.model, list(built.trained), *splits, SMS, params, FP32_CPU)


@pytest.mark.parametrize("case", [*STATIC_CASES, "multi-label", "trunk cache"])
def test_the_static_step_gives_the_plain_steps_losses_and_weights(case: str) -> None:
    """train.cuda_graphs true on a CPU: each update copied into its width's fixed-shape
    buffers (70 messages in updates of 8 or 12: each epoch ends with a short one, filled up
    with rows of weight 0), run eagerly. Its losses and weights are the plain step's, to
    float32 rounding, over an epoch."""
    given = {"batch_size": 8, "lr": 1e-3, **STATIC_CASES.get(case, {})}
    base = dataclasses.replace(PARAMS, **given)
    runs = []
    for graphs in (False, True):
        params = dataclasses.replace(base, cuda_graphs=graphs)
        built = (
            multi_label_trainer(params) if case == "multi-label"
            else trunk_cache_trainer(params) if case == "trunk cache"
            else new_trainer(params, 70)
        )  # fmt: skip
        assert (built.static is not None) == graphs
        initial = built.trained_weights()
        runs.append((built, updates(built)))
    (plain, plain_losses), (static, static_losses) = runs
    assert 70 % train.update_size(base) != 0  # a short last update in every epoch
    assert static.static.buffers  # the static step ran, in its widths' buffers
    assert all(len(b["weights"]) == train.update_size(base) for b in static.static.buffers.values())
    assert static_losses == pytest.approx(plain_losses, rel=1e-6, abs=1e-6)
    moved = max(float((w.detach() - initial[n]).abs().max()) for n, w in plain.trained.items())
    assert moved > 1e-3  # the updates moved the weights: the comparison means something
    assert_same_weights(static, plain, steps=len(plain_losses))


def assert_same_weights(trainer: Trainer, expected: Trainer, steps: int) -> None:
    """The trained weights to 1e-6, but the attention's key bias (c_attn.bias's middle third):
    its gradient is 0 in exact arithmetic (q.(k + b) adds the same q.b to every score of a
    row, which softmax ignores), so AdamW, dividing by its tiny second moment, turns float
    rounding there into steps of up to lr, different in runs that round differently."""
    for name, weight in expected.trained.items():
        ours, weight = trainer.trained[name].detach(), weight.detach()
        if name.endswith("attn.c_attn.bias"):
            third = len(weight) // 3
            key = slice(third, 2 * third)
            lr = expected.params.lr
            assert (ours[key] - weight[key]).abs().max() <= 2 * lr * steps
            ours, weight = (
                torch.cat([ours[:third], ours[2 * third :]]),
                torch.cat([weight[:third], weight[2 * third :]]),
            )
        torch.testing.assert_close(ours, weight, rtol=0, atol=1e-6, msg=name)


def test_the_static_steps_filler_rows_weigh_nothing() -> None:
    """A short update's buffers: its messages first with their class weights, then rows of
    weight 0 and length 1; whatever those rows hold, the loss and the gradients are those of
    the messages alone."""
    params = dataclasses.replace(PARAMS, cuda_graphs=True)
    trainer = new_trainer(params)
    indices = uneven_batch(trainer.train_split)[:3]  # 3 messages in buffers of 4 rows
    width, buffers = trainer.static._fill(indices)
    labels = trainer.train_split.labels[indices]
    torch.testing.assert_close(
        buffers["weights"], torch.cat([trainer.class_weights[labels], torch.zeros(1)])
    )
    assert buffers["lengths"][3] == 1 and buffers["x"].shape == (4, width)
    buffers["x"][3] = 39  # filler rows keep whatever they held: any token
    plain = new_trainer()
    torch.testing.assert_close(trainer.train_step(indices), plain.train_step(indices))
    assert_same_weights(trainer, plain, steps=1)


def test_cuda_graphs_false_or_auto_off_cuda_is_the_plain_step() -> None:
    for setting in (False, "auto"):
        assert new_trainer(dataclasses.replace(PARAMS, cuda_graphs=setting)).static is None
    assert train.graph_mode(True, FP32_CPU) is False  # the static step, eagerly
    assert train.graph_mode(True, Compute(torch.device("cuda"), "fp16")) is None  # loss scaling
    assert train.graph_mode("auto", Compute(torch.device("cuda"), "bf16")) is True


# --- the loop's small pieces, each on its own (fast: no fit) ---


def test_log_metrics_logs_each_step_and_the_evaluation_at_its_axis() -> None:
    logged = Logged()
    state = State()
    for axis, at in (("epoch", 2), ("step", 30)):
        hook = LogMetrics(logged, axis)
        hook.on_steps(state, [[29, 0.5, 1e-3], [30, 0.25, 2e-3]])
        hook.on_evaluation(state, {"epoch": 2, "step": 30, "val/loss": 0.4, "val/f1": 0.9})
        assert logged.metrics[-3:] == [
            (29, {"train/loss": 0.5, "train/lr": 1e-3}),
            (30, {"train/loss": 0.25, "train/lr": 2e-3}),
            (at, {"val/loss": 0.4, "val/f1": 0.9}),
        ]
    assert LogMetrics(logged).axis == "epoch"


def test_the_bar_counts_the_epochs_steps_and_shows_the_last_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert isinstance(train.progress(3, "val/loss"), ProgressBar)  # stderr, unless told
    bar = ProgressBar(3)
    bar.on_fit_end(State())  # no epoch began: nothing to close
    state = State(epoch=1, batch=2)  # a resumed epoch, 2 of its 10 batches done
    bar.on_epoch_start(state, 10)
    bar.on_steps(state, [[13, 0.5, 1e-3], [14, 0.123456, 1e-3]])
    assert bar.bar.n == 4 and bar.bar.total == 10 and bar.bar.desc == "epoch 2/3"
    assert bar.bar.postfix == "loss=0.1235"
    bar.on_epoch_end(state)
    assert bar.bar.disable  # closed
    shown = sys.stderr.getvalue()
    assert "epoch 2/3" in shown and "4/10" in shown


def test_progress_lines_count_the_samples_since_the_last_line() -> None:
    lines = train.ProgressLines(2, "val/loss")
    state = State(epoch_samples=8, train_seconds=3.0)  # resumed 8 messages into an epoch
    lines.on_epoch_start(state, 4)
    assert lines.seen == 8 and lines.train_seconds == 3.0
    state.epoch_samples = 20
    lines.on_steps(state, [[3, 0.5, 1e-3]])
    state.epoch_samples = 24
    lines.on_steps(state, [[4, 0.5, 1e-3]])
    assert lines.samples == 16 and lines.seen == 24
    state.train_seconds = 5.0
    state.history = [{"epoch": 1, "step": 4, "train/epoch_loss": 0.5, "val/loss": 0.3}]
    lines.on_evaluation(state, state.history[0])
    assert lines.samples == 0 and lines.train_seconds == 5.0
    lines.on_epoch_start(State(train_seconds=9.0), 4)  # a later epoch: the last line's time
    assert lines.train_seconds == 5.0


def test_early_stopping_after_patience_evaluations_without_a_better_one() -> None:
    stop = train.EarlyStopping(2)
    state = State(history=[{}, {}], best_evaluation=1)
    stop.on_evaluation(state, {})
    assert not state.finished
    state.history.append({})
    stop.on_evaluation(state, {})
    assert state.finished


def test_the_optimizer_decays_matrices_only_fused_on_the_cpu() -> None:
    trained = {
        "w": torch.nn.Parameter(torch.ones(2, 3)), "b": torch.nn.Parameter(torch.ones(3)),
        "g": torch.nn.Parameter(torch.ones(3)),
    }  # fmt: skip
    opt = train.configure_optimizer(trained, PARAMS, CPU)
    decay, no_decay = opt.param_groups
    assert [p is trained["w"] for p in decay["params"]] == [True]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in no_decay["params"]] == [id(trained["b"]), id(trained["g"])]
    assert decay["lr"] == no_decay["lr"] == 1e-2 and decay["fused"] and not decay["capturable"]
    assert train.configure_optimizer(trained, PARAMS, CPU, True).param_groups[0]["capturable"]
    assert not train.configure_optimizer(trained, PARAMS, torch.device("meta")).defaults["fused"]


def test_an_update_is_batch_size_times_accumulation_steps_messages() -> None:
    assert train.update_size(dataclasses.replace(PARAMS, accumulation_steps=3)) == 12


def test_the_schedule_warms_up_over_its_share_of_every_update() -> None:
    """3 epochs of ceil(50 / 4) = 13 updates; warm-up 0.1 of 39: 4 steps (at least 1)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    schedule = train.linear_schedule(opt, PARAMS, 50)
    assert [schedule.lr_lambdas[0](s) for s in (0, 3, 4, 39)] == [
        lr_factor(s, 39, 4) for s in (0, 3, 4, 39)
    ]
    none = train.linear_schedule(opt, dataclasses.replace(PARAMS, warmup_ratio=0.0), 50)
    assert none.lr_lambdas[0](0) == 1.0  # a warm-up of 1 step: the full rate at once
    assert lr_factor(5, 5, 5) == 0.0 and lr_factor(4, 5, 5) == 1.0 and lr_factor(6, 5, 5) == 0.0


def test_the_global_loss_sum_of_one_process_is_its_own_in_float64() -> None:
    loss = torch.tensor(1.5, requires_grad=True) * 2
    total, signalled = train.global_loss_sum(loss, True)
    assert total.dtype == torch.float64 and total.item() == 3.0 and signalled
    assert not total.requires_grad and not train.global_loss_sum(loss, False)[1]


def test_each_process_takes_its_share_of_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """WORLD_SIZE 2: process 1 sums the losses of every other message from the second; a
    batch of one message leaves it none, so it joins with weight 0."""
    trainer = new_trainer(dataclasses.replace(PARAMS, class_weights="none"))
    split, task, model = trainer.train_split, trainer.task, trainer.model
    indices = torch.tensor([5, 1, 9, 2])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with torch.no_grad():
        mine = train.shard_loss(task, model, split, indices, None, FP32_CPU)
        logits = classifier.logits(model, split.inputs, torch.tensor([1, 2]), CPU)
        expected = F.cross_entropy(logits, split.labels[[1, 2]], reduction="sum")
        torch.testing.assert_close(mine, expected)
        alone = train.shard_loss(task, model, split, torch.tensor([7]), None, FP32_CPU)
    assert alone.item() == 0.0


def test_a_non_finite_loss_names_the_step_it_came_at() -> None:
    error = train.non_finite_loss(float("nan"), State(epoch=1, step=40))
    assert str(error) == (
        "training loss is nan at step 41 (epoch 2); stopped, the best checkpoint so far is "
        "kept; try a lower train.lr or train.precision: fp32"
    )


def test_an_evaluation_entry_is_the_epochs_figures_so_far() -> None:
    probabilities = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    report = task_for(SMS).report(np.array([0, 1, 1]), probabilities, 0.5)
    state = State(epoch=1, step=30, epoch_loss_sum=6.0, epoch_samples=24)
    entry = train.evaluation_entry(state, 0.35, report, SMS)
    assert entry == {
        "epoch": 2, "step": 30, "train/epoch_loss": 0.25, "val/loss": 0.35,
        **task_for(SMS).flat(report, "val"),
    }  # fmt: skip
    assert train.evaluation_entry(State(), 0.1, report, SMS)["train/epoch_loss"] == 0.0
    one = State(epoch_loss_sum=0.75, epoch_samples=1)  # one message trained so far
    assert train.evaluation_entry(one, 0.1, report, SMS)["train/epoch_loss"] == 0.75


def test_graph_mode_says_why_not_in_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cuda = torch.device("cuda")
    assert train.graph_mode("auto", FP32_CPU) is None
    assert train.graph_mode(True, Compute(cuda, "fp32")) is True
    assert train.graph_mode(False, Compute(cuda, "fp32")) is None
    with caplog.at_level("INFO", logger="spamgpt.finetune.train"):
        assert train.graph_mode(True, Compute(cuda, "fp16")) is None
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert train.graph_mode(True, Compute(cuda, "bf16")) is None
    assert [r.getMessage() for r in caplog.records] == [
        "train.cuda_graphs: not with fp16 (the loss scale's checks); the plain step",
        "train.cuda_graphs: not with train.devices > 1 (each process's all-reduce); the plain step",
    ]


def test_copy_in_fills_a_cpu_buffer() -> None:
    buffer = torch.zeros(3)
    train.copy_in(buffer, torch.tensor([1.0, 2.0, 3.0]))
    assert buffer.tolist() == [1.0, 2.0, 3.0]


def test_the_line_marks_the_best_and_survives_no_training_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first line counts from the run's start (no line before it); no time trained (a
    resumed run's evaluation at once) is 0 samples/s, half a second is twice the samples; the
    line is logged as it is, with the seconds since the last line."""
    lines = train.ProgressLines(3, "val/loss")
    entry = {"epoch": 1, "step": 4, "train/epoch_loss": 0.5, "val/loss": 0.25}
    best = State(train_seconds=2.0, history=[entry], best_evaluation=1)
    lines.samples = 10
    assert lines.line(best, entry, 1.0).endswith("val loss 0.2500 (best), 5.0 samples/s, 1.0 s")
    lines.train_seconds = 2.0
    assert lines.line(best, entry, 1.0).endswith(", 0.0 samples/s, 1.0 s")
    best.train_seconds = 2.5
    assert lines.line(best, entry, 1.0).endswith(", 20.0 samples/s, 1.0 s")
    lines.since -= 1000.0  # the last line, 1000 s ago
    with caplog.at_level("INFO", logger="spamgpt.finetune.train"):
        lines.on_evaluation(best, entry)
    (message,) = [r.getMessage() for r in caplog.records]
    seconds = float(message.rsplit(", ", 1)[1].removesuffix(" s"))
    assert message.startswith("epoch 1/3 step 4: train loss 0.5000, val loss 0.2500 (best), 20.0")
    assert 1000 <= seconds < 1100


def test_an_evaluation_is_due_at_each_epochs_end_or_every_n_steps() -> None:
    once = new_trainer()
    assert once._evaluation_due(True) and not once._evaluation_due(False, 99)
    every = new_trainer(dataclasses.replace(PARAMS, eval_every=5))
    assert [every._evaluation_due(False, s) for s in (4, 5)] == [False, True]
    every.state.history, every.state.step = [{"step": 5}], 9
    assert not every._evaluation_due(False) and every._evaluation_due(False, 10)
    assert not every._evaluation_due(True)  # epoch 1 of 3 over, 4 steps since the last
    every.state.epoch = 2
    assert every._evaluation_due(True)  # the last epoch over: always


def test_read_losses_records_the_steps_up_to_a_non_finite_one() -> None:
    trainer, record = new_trainer(), Record()
    trainer.hooks = [record]
    s = trainer.state
    s.step, s.batch, s.epoch_loss_sum, s.epoch_samples = 10, 2, 1.0, 8
    losses = [0.5, 0.25, float("inf"), 0.125]
    unread = [train.UnreadStep(torch.tensor(x, dtype=torch.float64), 1e-3, 4) for x in losses]
    trainer._read_losses([])  # nothing to read: nothing happens
    assert s.steps == [] and record.events == []
    with pytest.raises(SpamGPTError, match=r"^training loss is inf at step 13 \(epoch 1\)"):
        trainer._read_losses(unread)
    assert s.steps == [[11, 0.5, 1e-3], [12, 0.25, 1e-3]] and (s.step, s.batch) == (12, 4)
    assert s.epoch_loss_sum == 1.0 + 0.5 * 4 + 0.25 * 4 and s.epoch_samples == 16
    assert record.events == [("step", 11), ("step", 12), ("read", 2)]
    record.events.clear()
    with pytest.raises(SpamGPTError, match="is nan at step 13"):
        trainer._read_losses([train.UnreadStep(torch.tensor(math.nan), 0.1, 1)])
    assert record.events == [] and len(s.steps) == 2  # the first one bad: no step recorded


def test_an_epochs_end_resets_its_sums_and_finishes_after_the_last() -> None:
    trainer, record = new_trainer(dataclasses.replace(PARAMS, epochs=2)), Record()
    trainer.hooks = [record]
    s = trainer.state
    s.batch, s.epoch_loss_sum, s.epoch_samples = 16, 3.0, 64
    trainer._end_epoch()
    assert (s.epoch, s.batch, s.epoch_loss_sum, s.epoch_samples) == (1, 0, 0.0, 0)
    assert not s.finished and record.events == [("end", 1)]
    trainer._end_epoch()
    assert s.finished and s.epoch == 2


def test_an_evaluation_keeps_the_best_weights_and_calls_the_hooks() -> None:
    """validation in eval mode, an entry in the history; the weights of an evaluation that
    improves kept, of one that does not left."""
    trainer, record = new_trainer(), Record()
    trainer.hooks = [record]
    trainer.model.train()
    trainer._evaluate()
    s = trainer.state
    assert not trainer.model.training and len(s.history) == 1 and s.best_evaluation == 1
    val_loss, report = train.validation(
        trainer.model, trainer.val_split, trainer.task, trainer.class_weights, FP32_CPU
    )
    assert s.history[0] == train.evaluation_entry(s, val_loss, report, SMS)
    assert s.best_score == (trainer.task.selection_score(report, val_loss, "auto"), -val_loss)
    assert all(torch.equal(s.best_weights[n], p) for n, p in trainer.trained.items())
    assert record.events == [("evaluation", 1, 0, val_loss)]
    kept = {n: w.clone() for n, w in s.best_weights.items()}
    with torch.no_grad():
        for p in trainer.trained.values():
            p.add_(1.0)  # worse weights
    s.best_score = (math.inf, math.inf)  # nothing can improve on it
    trainer._evaluate()
    assert s.best_evaluation == 1 and len(s.history) == 2
    assert all(torch.equal(s.best_weights[n], kept[n]) for n in kept)


def test_the_static_steps_autocast_keeps_no_cast_weights_under_graphs() -> None:
    trainer = new_trainer(dataclasses.replace(PARAMS, cuda_graphs=True))
    assert isinstance(trainer.static._autocast(), contextlib.nullcontext)  # fp32: none
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        trainer.compute = Compute(CPU, precision)
        for graphs in (False, True):
            cast = train.StaticStep(trainer, graphs)._autocast()
            assert (cast.device, cast.fast_dtype) == ("cpu", dtype)
            assert cast._cache_enabled is not graphs


def test_under_ddp_an_updates_first_batches_skip_the_all_reduce(tmp_path: Path) -> None:
    """DDP's no_sync for every batch of an update but its last (a process group of one,
    gloo, in this process); nothing to skip with one process and no DDP."""
    trainer = new_trainer()
    assert isinstance(trainer._no_sync(), contextlib.nullcontext)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        trainer.forward_model = DistributedDataParallel(trainer.model)
        with trainer._no_sync():
            assert not trainer.forward_model.require_backward_grad_sync
        assert trainer.forward_model.require_backward_grad_sync
    finally:
        dist.destroy_process_group()


def in_two_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, work: Callable[[int], object]
) -> list:
    """work(rank) in this process as rank 0 and in a fork of it as rank 1, in a gloo group of
    two (RANK and WORLD_SIZE as torchrun sets them): what each returned."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    store, report = str(tmp_path / "store"), tmp_path / "rank1.pt"

    def joined_then_work(rank: int) -> object:
        dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
        return work(rank)

    def save_rank1() -> None:
        os.environ["RANK"] = "1"
        torch.save(joined_then_work(1), report)

    mine = as_ranks_0_and_1(lambda: joined_then_work(0), save_rank1)
    return [mine, torch.load(report)]


def test_the_global_loss_sum_adds_every_processes_and_any_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One all-reduce: the sum of both processes' loss sums (float64), and a signal in either
    is a signal in both, so that they stop at the same step."""

    def work(rank: int) -> list:
        local = torch.tensor([1.5, 2.25][rank], requires_grad=True) * 1.0
        sums = []
        for signalled in ((False, True), (False, False)):
            total, stop = train.global_loss_sum(local, signalled[rank])
            sums.append((total.dtype, total.item(), total.requires_grad, stop))
        return sums

    expected = [(torch.float64, 3.75, False, True), (torch.float64, 3.75, False, False)]
    assert in_two_processes(tmp_path, monkeypatch, work) == [expected, expected]


def gradients_stepped(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """The trained parameters' gradients as the optimizer sees them at each step (clipped)."""
    seen = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(
            {n: p.grad.clone() for n, p in trainer.trained.items()}
        )
    )
    return seen


def test_two_processes_update_as_one_on_the_same_global_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update of 8 messages (2 accumulated batches of 4), each process taking every other
    message of each batch under DDP: the loss, gradients (DDP's mean times the processes) and
    weights of one process's update of the 8, to float rounding. SIGINT noted in rank 1 only
    stops both (rank 0 takes SIGTERM)."""
    params = dataclasses.replace(PARAMS, accumulation_steps=2, grad_clip=None)
    indices = torch.arange(8)
    alone, received = new_trainer(params), [new_trainer(params) for _ in range(2)]
    initial, gradients = alone.trained_weights(), gradients_stepped(alone)
    loss = alone.train_step(indices).item()

    def work(rank: int) -> tuple:
        trainer = new_trainer(params)
        assert isinstance(trainer.forward_model, DistributedDataParallel)
        seen = gradients_stepped(trainer)
        if rank == 1:
            trainer.pending.signal = signal.SIGINT
        step_loss = trainer.train_step(indices).item()
        return step_loss, int(trainer.pending.signal), seen, trainer.trained_weights()

    ranks = in_two_processes(tmp_path, monkeypatch, work)
    assert [r[0] for r in ranks] == pytest.approx([loss, loss], rel=1e-6)
    assert [r[1] for r in ranks] == [signal.SIGTERM.value, signal.SIGINT.value]
    moved = max(float((w - initial[n]).abs().max()) for n, w in ranks[0][3].items())
    assert moved > 1e-3  # the step moved the weights: the comparison means something
    for (_, _, (seen,), weights), process in zip(ranks, received, strict=True):
        for name, gradient in gradients[0].items():
            torch.testing.assert_close(seen[name], gradient, rtol=1e-5, atol=1e-7, msg=name)
        with torch.no_grad():
            for name, parameter in process.trained.items():
                parameter.copy_(weights[name])
        assert_same_weights(process, alone, steps=1)
