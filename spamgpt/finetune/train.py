"""The fine-tuning loop: AdamW, warm-up then linear decay, gradient clipping, a class-weighted
loss, gradients accumulated over train.accumulation_steps batches per update, an evaluation
(validation) every epoch or every train.eval_every updates, the best one kept by
train.select_metric, early stopping. Checkpoints (spamgpt.finetune.checkpoint) are written
after every evaluation and on SIGINT/SIGTERM, and a run resumes from one exactly; logging,
progress and early stopping are hooks. With one process the host does not wait for the device
every step: the losses stay on it and are read back READ_EVERY steps at a time
(Trainer._read_losses).

Why the best epoch and not the last: with a class-weighted loss and few trained parameters,
the predictions can swing from one class to the other between epochs. The epoch kept is the
one with the best validation F1, and the per-class metrics logged every epoch show a swing.
"""

import contextlib
import itertools
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, TextIO

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from spamgpt import distributed, interrupts, runtime
from spamgpt.data.batching import bucketed_order
from spamgpt.errors import SpamGPTError
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2Classifier
from spamgpt.model.trunk import Split
from spamgpt.params import TrainParams
from spamgpt.tasks.registry import task_for
from spamgpt.tasks.task import Task

# Steps between reads of the training loss back from the device: each read waits for the device
# to finish its queued work, so one per step stalls a GPU (the CPU waits, then the GPU waits
# for the CPU's next launches). Also when the logged metrics and the progress bar update.
READ_EVERY = 32

log = logging.getLogger(__name__)


class Interrupted(SpamGPTError):
    """SIGINT or SIGTERM: a checkpoint was saved; the next run resumes from it."""

    exit_code = 130

    def __init__(self, signal_name: str, step: int) -> None:
        super().__init__(f"{signal_name} at step {step}: checkpoint saved; re-run to resume")


@dataclass
class State:
    """Everything a resumed run needs to continue exactly where this one stopped."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # optimizer updates completed within the current epoch
    step: int = 0  # optimizer updates completed, over all epochs
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    steps: list[list[float]] = field(default_factory=list)  # [step, loss, lr] per step
    best_evaluation: int = 0  # 1-based, in history; 0 before the first evaluation
    # (val train.select_metric, -val loss): larger is better
    best_score: tuple[float, float] = (-math.inf, -math.inf)
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch_loss_sum: float = 0.0  # running sums of the current epoch (mid-epoch resume)
    epoch_samples: int = 0
    train_seconds: float = 0.0
    finished: bool = False  # the training loop is over (epochs or patience ran out)
    exported: bool = False  # ...and its results were written: nothing left to resume


class Hook:
    """Called by the loop; override what you need. The State is the loop's: read it, and only
    an early stop sets `finished`. An evaluation (validation) ends every epoch, or comes every
    train.eval_every steps and after the last."""

    def on_epoch_start(self, state: State, batches: int) -> None: ...

    def on_steps(self, state: State, steps: list[list[float]]) -> None:
        """The steps whose losses were just read back from the device (READ_EVERY, or fewer
        at an epoch's end or a signal): [step, loss, lr] each, the last ones of state.steps."""

    def on_evaluation(self, state: State, entry: dict) -> None:
        """`entry` was just added to state.history; state.best_evaluation is up to date."""

    def on_epoch_end(self, state: State) -> None: ...

    def on_fit_end(self, state: State) -> None:
        """After the loop, also when a signal or an error ends it."""


class Saver(Protocol):
    """Where fit() puts a checkpoint: spamgpt.finetune.checkpoint.CheckpointSaver. save() may return
    before the checkpoint is on disk; wait() returns once it is."""

    def save(self, trainer: "Trainer") -> None: ...

    def wait(self) -> None: ...


class MetricsLogger(Protocol):
    def log_metrics(self, values: dict[str, float], step: int) -> None: ...


class LogMetrics(Hook):
    """train/loss and train/lr at every step, the validation entry (val/...) at each
    evaluation, at its entry's `axis` as the MLflow step: "epoch", or "step" (the optimizer
    update, as train/loss: where evaluations come every train.eval_every steps)."""

    def __init__(self, logger: MetricsLogger, axis: Literal["epoch", "step"] = "epoch") -> None:
        self.logger, self.axis = logger, axis

    def on_steps(self, state: State, steps: list[list[float]]) -> None:
        for step, loss, lr in steps:
            self.logger.log_metrics({"train/loss": loss, "train/lr": lr}, step)

    def on_evaluation(self, state: State, entry: dict) -> None:
        self.logger.log_metrics({k: v for k, v in entry.items() if "/" in k}, entry[self.axis])


class ProgressBar(Hook):
    def __init__(self, epochs: int) -> None:
        self.epochs, self.bar = epochs, None

    def on_epoch_start(self, state: State, batches: int) -> None:
        desc = f"epoch {state.epoch + 1}/{self.epochs}"
        self.bar = tqdm(total=batches, initial=state.batch, desc=desc, disable=None)

    def on_steps(self, state: State, steps: list[list[float]]) -> None:
        self.bar.set_postfix(loss=f"{steps[-1][1]:.4f}", refresh=False)
        self.bar.update(len(steps))

    def on_epoch_end(self, state: State) -> None:
        self.bar.close()

    def on_fit_end(self, state: State) -> None:
        if self.bar is not None:
            self.bar.close()  # an epoch cut short: its line ends before an error is printed


class ProgressLines(Hook):
    """One plain line per evaluation, for output that is not a terminal (a log file, CI, a
    queued experiment), where the bar draws nothing: the epoch and step, the epoch's training
    loss so far, the selected validation metric (and whether it is the best yet), training
    samples/s since the previous line, and the seconds since it (validation included)."""

    def __init__(self, epochs: int, metric_key: str) -> None:
        self.epochs, self.metric_key = epochs, metric_key
        self.samples, self.seen = 0, 0  # since the last line; of the epoch, counted so far
        self.train_seconds: float | None = None  # state.train_seconds at the last line
        self.since = time.perf_counter()

    def on_epoch_start(self, state: State, batches: int) -> None:
        self.seen = state.epoch_samples  # 0, or where a resumed epoch stopped
        if self.train_seconds is None:  # (a resumed run's state counts the runs before it)
            self.train_seconds = state.train_seconds

    def on_steps(self, state: State, steps: list[list[float]]) -> None:
        self.samples += state.epoch_samples - self.seen
        self.seen = state.epoch_samples

    def on_evaluation(self, state: State, entry: dict) -> None:
        now = time.perf_counter()
        log.info("%s", self.line(state, entry, now - self.since))
        self.samples, self.train_seconds, self.since = 0, state.train_seconds, now

    def line(self, state: State, entry: dict, seconds: float) -> str:
        trained = state.train_seconds - (self.train_seconds or 0.0)
        rate = self.samples / trained if trained > 0 else 0.0
        best = " (best)" if state.best_evaluation == len(state.history) else ""
        metric = self.metric_key.removeprefix("val/")
        return (
            f"epoch {entry['epoch']}/{self.epochs} step {entry['step']}: "
            f"train loss {entry['train/epoch_loss']:.4f}, "
            f"val {metric} {entry[self.metric_key]:.4f}{best}, "
            f"{rate:.1f} samples/s, {seconds:.1f} s"
        )


def progress(epochs: int, metric_key: str, stream: TextIO | None = None) -> Hook:
    """The bar on a terminal; one line per evaluation where the bar would draw nothing (tqdm,
    as ProgressBar makes it, draws on stderr only when that is a terminal)."""
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        return ProgressBar(epochs)
    return ProgressLines(epochs, metric_key)


class EarlyStopping(Hook):
    """Stop when the best evaluation has not been improved on for `patience` evaluations (it
    is kept)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_evaluation(self, state: State, entry: dict) -> None:
        if len(state.history) - state.best_evaluation >= self.patience:
            state.finished = True


def configure_optimizer(
    trained: dict[str, torch.nn.Parameter],
    params: TrainParams,
    device: torch.device,
    capturable: bool = False,
) -> torch.optim.AdamW:
    """AdamW over the trained parameters; no weight decay on biases and LayerNorm gains
    (decaying them only hurts). Fused: one pass over each tensor instead of one per operation
    of the update, which matters when only a few blocks train and the step is mostly update.
    `capturable`: its step count on the device, so a CUDA graph can hold the step."""
    decay = [p for p in trained.values() if p.dim() >= 2]
    no_decay = [p for p in trained.values() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=params.lr, fused=fused, capturable=capturable)


def update_size(params: TrainParams) -> int:
    """Messages per optimizer update: train.accumulation_steps batches of train.batch_size."""
    return params.batch_size * params.accumulation_steps


def linear_schedule(
    optimizer: torch.optim.Optimizer, params: TrainParams, n_train: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up over train.warmup_ratio of all optimizer updates (epochs of n_train messages),
    then linear decay to 0 (lr_factor)."""
    total = params.epochs * math.ceil(n_train / update_size(params))
    warmup = max(1, round(params.warmup_ratio * total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def epoch_order(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int) -> list:
    """The batches of one epoch: a function of (seed, epoch) alone, so a resumed run sees
    the same order without replaying the RNG of earlier epochs."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return bucketed_order(lengths, batch_size, generator)


def validation(
    model: GPT2Classifier,
    split: Split,
    task: Task,
    weights: torch.Tensor | None,
    compute: runtime.Compute,
) -> tuple[float, dict]:
    """(loss weighted as training weighs it, metrics report) of `split` with dropout off, at
    the task's validation threshold (Task.validation)."""
    model.eval()
    probs = classifier.class_probabilities(model, split.inputs, compute)
    return task.validation(probs, split.labels, weights)


def global_loss_sum(local_sum: torch.Tensor, signalled: bool) -> tuple[torch.Tensor, bool]:
    """The global batch's weighted loss sum (float64 on the device; float32 on MPS, which has
    no float64) from each process's, and whether any process was signalled. Under torchrun
    one all-reduce carries both, and every process reads the flag back: they stop at the same
    step. With one process: no communication, and nothing is read back (the host does not
    wait for the device)."""
    local_sum = local_sum.detach()
    local_sum = local_sum if local_sum.device.type == "mps" else local_sum.double()
    if distributed.world_size() == 1:
        return local_sum, signalled
    flag = torch.tensor(float(signalled), dtype=torch.float64, device=local_sum.device)
    summed = distributed.all_sum(torch.stack([local_sum, flag]))
    return summed[0], bool(summed[1] > 0)


def shard_loss(
    task: Task,
    model: torch.nn.Module,
    split: Split,
    indices: torch.Tensor,
    loss_weights: torch.Tensor | None,
    compute: runtime.Compute,
) -> torch.Tensor:
    """This process's class-weighted loss sum over its share of the global batch `indices`
    (`loss_weights` on the device); divided by the weight of the whole update (Task.batch_weight)
    and summed over processes and accumulated batches, it is the update's weighted mean
    sum(w_i * loss_i) / sum(w_i) (with one process and one batch, F.cross_entropy's mean)."""
    mine, share = distributed.shard(indices), 1.0
    if len(mine) == 0:  # a last batch smaller than the processes: join with no weight
        mine, share = indices[:1], 0.0
    with runtime.autocast(compute):
        logits = classifier.logits(model, split.inputs, mine, compute.device)
    targets = runtime.to_device(split.labels[mine], compute.device)
    return share * task.loss_sum(logits.float(), targets, loss_weights)


def non_finite_loss(loss: float, state: State) -> SpamGPTError:
    """The error that stops training at a NaN or infinite `loss`, that of the step after
    `state`'s last; the checkpoint on disk is left as it is."""
    return SpamGPTError(
        f"training loss is {loss} at step {state.step + 1} (epoch {state.epoch + 1}); "
        f"stopped, the best checkpoint so far is kept; try a lower train.lr or "
        f"train.precision: fp32"
    )


def improves(score: tuple[float, float], best: tuple[float, float], min_delta: float) -> bool:
    """Is `score` (select_metric, -val loss) better than `best`: its metric by more than
    train.min_delta; with min_delta 0, also an equal metric at a lower val loss."""
    return score[0] > best[0] + min_delta or (min_delta == 0 and score > best)


def evaluation_entry(state: State, val_loss: float, report: dict, classes: Classes) -> dict:
    """One evaluation's line in the history (and metrics/val_epochs.csv, and MLflow): the
    epoch it falls in (1-based), the steps done, the current epoch's mean training loss so far,
    the validation metrics."""
    return {
        "epoch": state.epoch + 1,
        "step": state.step,
        "train/epoch_loss": state.epoch_loss_sum / max(1, state.epoch_samples),
        "val/loss": val_loss,
        **task_for(classes).flat(report, "val"),
    }


def graph_mode(setting: str | bool, compute: runtime.Compute) -> bool | None:
    """How train.cuda_graphs trains on compute.device: True, the StaticStep captured as CUDA
    graphs; False, the StaticStep run eagerly (true on a CPU or MPS); None, the plain step
    (false; auto off CUDA; and, with one log line, where graphs cannot be used)."""
    device = compute.device
    if setting is False or (setting == "auto" and device.type != "cuda"):
        return None
    cannot = (
        "train.devices > 1 (each process's all-reduce)" if distributed.world_size() > 1
        else "fp16 (the loss scale's checks)" if compute.precision == "fp16"
        else None
    )  # fmt: skip
    if cannot is not None:
        log.info("train.cuda_graphs: not with %s; the plain step", cannot)
        return None
    return device.type == "cuda"


class StaticStep:
    """One optimizer update on fixed-shape buffers, one set per padded width (of the update's
    longest message): train.batch_size x train.accumulation_steps rows, so a short last update
    is filled up with rows of weight 0, which add exactly 0 to the loss and the gradients;
    the loss is the weighted sum over the rows divided by their total weight, the mean of
    Trainer's plain step over the real rows. With `graphs` (CUDA) the whole update (forward,
    loss, backward, clipping, the fused AdamW step reading the learning rate from a device
    tensor) is captured once per width, after an eager update of that width has warmed it up,
    then replayed: a few launches per update instead of a thousand. A capture that fails is
    said in one log line and the updates run eagerly. Without `graphs` it runs eagerly."""

    def __init__(self, trainer: "Trainer", graphs: bool) -> None:
        self.trainer, self.graphs = trainer, graphs
        p = trainer.params
        self.rows = p.batch_size * p.accumulation_steps
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}  # by width
        self.warm: set[int] = set()  # widths updated eagerly once
        self.captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # Under graphs the fused step reads these while it runs (group["lr"] stays the
        # schedule's float, filled in before each update).
        groups = trainer.optimizer.param_groups if graphs else []
        self.lrs = [torch.tensor(g["lr"], device=trainer.compute.device) for g in groups]

    def update(self, indices: torch.Tensor) -> torch.Tensor:
        """The update on the global batch `indices`; its weighted mean loss (float64), a
        scalar left on the device."""
        width, buffers = self._fill(indices)
        if not self.graphs:
            return self._update(buffers)
        for lr, group in zip(self.lrs, self.trainer.optimizer.param_groups, strict=True):
            lr.fill_(group["lr"])
        if width in self.captured:
            graph, loss = self.captured[width]
            graph.replay()
            return loss.clone()  # the next replay overwrites `loss`
        if width not in self.warm:
            self.warm.add(width)
            return self._eager_warm_up(buffers)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                loss = self._update(buffers)
        except Exception as e:  # an op the graph cannot hold: nothing ran, the update is due
            log.info("train.cuda_graphs: capture failed (%s); the updates run eagerly", e)
            self.graphs = False
            return self._update(buffers)
        self.captured[width] = (graph, loss)
        graph.replay()
        return loss.clone()

    def _fill(self, indices: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
        """Copy the update's messages into the first rows of its width's buffers; the rest get
        weight 0 (their inputs are left as they are, finite: a length-1 message)."""
        t, pad = self.trainer, self.rows - len(indices)
        x, lengths = t.train_split.inputs.batch(indices)
        labels = t.train_split.labels[indices]
        weights = t.task.row_weights(labels, t.class_weights)
        host = {
            "lengths": torch.cat([lengths, lengths.new_ones(pad)]),
            "targets": torch.cat([labels, labels.new_zeros(pad, *labels.shape[1:])]),
            "weights": torch.cat([weights.float(), torch.zeros(pad)]),
        }
        width = x.shape[1]
        if width not in self.buffers:
            self.buffers[width] = {
                "x": x.new_zeros(self.rows, *x.shape[1:], device=t.compute.device),
                **{k: torch.empty_like(v, device=t.compute.device) for k, v in host.items()},
            }
        buffers = self.buffers[width]
        copy_in(buffers["x"][: len(indices)], x)
        for name, tensor in host.items():
            copy_in(buffers[name], tensor)
        return width, buffers

    def _update(self, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.trainer
        t.optimizer.zero_grad(set_to_none=True)  # in a graph: its own gradient tensors
        # Task.batch_weight's: each row's weight times the decisions its loss sums
        total = buffers["weights"].sum() * t.task.decisions_per_row(buffers["targets"])
        local = None  # the loss sum over the batches
        for rows in range(0, self.rows, t.params.batch_size):
            batch = {k: v[rows : rows + t.params.batch_size] for k, v in buffers.items()}
            with self._autocast():
                logits = t.model(batch["x"], batch["lengths"], t.train_split.inputs.frozen_blocks)
            loss = t.task.weighted_loss_sum(
                logits.float(), batch["targets"], batch["weights"], t.loss_weights
            )
            t.scaler.scale(loss / total).backward()
            local = loss.detach() if local is None else local + loss.detach()
        if t.params.grad_clip is not None:
            t.scaler.unscale_(t.optimizer)
            torch.nn.utils.clip_grad_norm_(t.trained.values(), t.params.grad_clip)
        groups = t.optimizer.param_groups
        rates = [g["lr"] for g in groups]
        if self.graphs:
            for group, lr in zip(groups, self.lrs, strict=True):
                group["lr"] = lr
        try:
            t.scaler.step(t.optimizer)
        finally:
            for group, rate in zip(groups, rates, strict=True):
                group["lr"] = rate
        t.scaler.update()
        return local.double() / total.double()

    def _eager_warm_up(self, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """An eager update on a side stream, as CUDA graphs want before a capture (lazy
        initialisations happen outside it); the optimizer's state exists after it."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = self._update(buffers)
        torch.cuda.current_stream().wait_stream(side)
        return loss

    def _autocast(self) -> contextlib.AbstractContextManager:
        """runtime.autocast, without its cache of cast weights under graphs (a graph would
        keep reading the casts of its capture, stale after the first step)."""
        t = self.trainer
        if t.compute.precision not in runtime.AUTOCAST_DTYPES:
            return contextlib.nullcontext()
        dtype = runtime.AUTOCAST_DTYPES[t.compute.precision]
        return torch.autocast(t.compute.device.type, dtype=dtype, cache_enabled=not self.graphs)


def copy_in(buffer: torch.Tensor, host: torch.Tensor) -> None:
    """Copy a host tensor into a device `buffer` without making the host wait (pinned memory,
    queued behind the device's work; runtime.to_device)."""
    if buffer.device.type == "cuda":
        buffer.copy_(host.pin_memory(), non_blocking=True)
    else:
        buffer.copy_(host)


class UnreadStep(NamedTuple):
    """A training step done whose loss has not been read back from the device yet."""

    loss: torch.Tensor  # scalar on the device (float64; float32 on MPS): the weighted mean
    lr: float
    samples: int  # messages in the global batch


class Trainer:
    """Trains the parameters named `trained_names` of `model` on `train`, validating on `val`
    after every epoch: fit(). Checkpointing it and resuming it: spamgpt.finetune.checkpoint."""

    def __init__(
        self,
        model: GPT2Classifier,
        trained_names: list[str],
        train: Split,
        val: Split,
        classes: Classes,
        params: TrainParams,
        compute: runtime.Compute,
    ) -> None:
        self.model, self.train_split, self.val_split = model, train, val
        self.classes, self.params, self.compute = classes, params, compute
        self.hooks: list[Hook] = []
        named = dict(model.named_parameters())
        self.trained = {name: named[name] for name in trained_names}
        graphs = graph_mode(params.cuda_graphs, compute)
        self.optimizer = configure_optimizer(self.trained, params, compute.device, graphs is True)
        self.scheduler = linear_schedule(self.optimizer, params, len(train))
        self.scaler = runtime.grad_scaler(compute)  # fp16: loss scaling
        # on the CPU; the training loss reads a copy on the device
        self.task = task_for(classes)
        self.task.start_head(model.head, train.labels)
        self.class_weights = self.task.loss_weights(train.labels, params.class_weights)
        self.loss_weights = (
            None if self.class_weights is None else self.class_weights.to(compute.device)
        )
        self.state = State()
        self._order: tuple[int, list[torch.Tensor]] = (-1, [])  # (epoch, its updates' batches)
        self.pending = interrupts.Pending()  # a signal fit() holds until the step is done
        # Under torchrun each process trains on its share of every batch; DDP averages the
        # gradients of the trainable tail (frozen parameters are left out of the all-reduce).
        parallel = distributed.world_size() > 1
        self.forward_model = DistributedDataParallel(model) if parallel else model
        self.static = None if graphs is None else StaticStep(self, graphs)

    def fit(self, saver: Saver, hooks: tuple[Hook, ...] = ()) -> State:
        """Train until epochs or patience run out, from self.state, calling `hooks`; a
        checkpoint after each evaluation. SIGINT or SIGTERM stops it between steps: a
        checkpoint is saved, then Interrupted."""
        s = self.state
        self.hooks = [*hooks, EarlyStopping(self.params.patience)]
        try:
            with interrupts.held() as self.pending:
                while not s.finished:  # (a run resumed after the loop ended: results left)
                    epoch_over = self._train_steps()  # until an evaluation, the epoch's end
                    if self.pending.signal is not None:  # ...or a signal
                        saver.save(self)
                        raise Interrupted(self.pending.name(), s.step)
                    evaluated = self._evaluation_due(epoch_over)
                    if evaluated:
                        self._evaluate()
                    if epoch_over:
                        self._end_epoch()  # after the last epoch, finished: so is its save
                    if evaluated:
                        saver.save(self)  # written while training goes on
        finally:
            self._call("on_fit_end", s)
            saver.wait()  # when fit() is done, so is every checkpoint it saved
        return s

    def _train_steps(self) -> bool:
        """The current epoch's steps up to the next evaluation, the epoch's end or a signal;
        whether the epoch's end was reached."""
        s, p = self.state, self.params
        if self._order[0] != s.epoch:  # an epoch begins (or resumes) in this process
            lengths = self.train_split.inputs.sequences.lengths
            self._order = (s.epoch, epoch_order(lengths, update_size(p), p.seed, s.epoch))
            self._call("on_epoch_start", s, len(self._order[1]))
        self.model.train()
        started = time.perf_counter()
        unread: list[UnreadStep] = []
        for indices in self._order[1][s.batch :]:
            if self._evaluation_due(False, s.step + len(unread)):
                break
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            unread.append(UnreadStep(self.train_step(indices), lr, len(indices)))
            if self.pending.signal is not None:
                break
            if len(unread) == READ_EVERY:
                self._read_losses(unread)
                unread = []
        self._read_losses(unread)  # before anything validates or saves these weights
        s.train_seconds += time.perf_counter() - started
        return s.batch == len(self._order[1])

    def _evaluation_due(self, epoch_over: bool, step: int | None = None) -> bool:
        """Is an evaluation due after `step` (default: the steps done)? At each epoch's end,
        or with train.eval_every once that many steps have passed since the last one, and
        after the last epoch."""
        s, every = self.state, self.params.eval_every
        if every is None:
            return epoch_over
        last = s.history[-1]["step"] if s.history else 0
        step = s.step if step is None else step
        return step - last >= every or (epoch_over and s.epoch + 1 == self.params.epochs)

    def _read_losses(self, unread: list[UnreadStep]) -> None:
        """Record the `unread` steps, their losses read back from the device at once (one wait
        for it). The NaN check is here, not in every step, so the steps after a non-finite
        loss have stepped on NaN gradients: it raises (once the steps before it are recorded)
        before anything validates or checkpoints those weights, and the last checkpoint is
        what a re-run resumes from. (fp16's GradScaler skips inf steps itself.)"""
        if not unread:
            return
        s = self.state
        losses = torch.stack([u.loss for u in unread]).tolist()
        finite = list(itertools.takewhile(math.isfinite, losses))
        for u, loss in zip(unread, finite, strict=False):
            s.steps.append([s.step + 1, loss, u.lr])
            s.batch, s.step = s.batch + 1, s.step + 1
            s.epoch_loss_sum += loss * u.samples
            s.epoch_samples += u.samples
        if finite:
            self._call("on_steps", s, s.steps[-len(finite) :])
        if len(finite) < len(losses):
            raise non_finite_loss(losses[len(finite)], s)

    def train_step(self, indices: torch.Tensor) -> torch.Tensor:
        """One optimizer update on the global batch `indices`, accumulated over batches of
        train.batch_size; its weighted mean loss, a scalar left on the device (reading it
        would make the host wait for the device)."""
        if self.static is not None:  # train.cuda_graphs
            loss = self.static.update(indices)
            self.scheduler.step()
            return loss
        total = self.task.batch_weight(self.train_split.labels[indices], self.class_weights)
        batches = indices.split(self.params.batch_size)
        local = None  # this process's loss sum over the batches (one: no extra kernel)
        for i, batch in enumerate(batches):
            # DDP all-reduces the gradients on the update's last batch only; the others add
            # theirs locally (no_sync).
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last else self._no_sync():
                loss = shard_loss(
                    self.task, self.forward_model, self.train_split, batch, self.loss_weights,
                    self.compute,
                )  # fmt: skip
                # DDP averages gradients over processes; scaling by their number makes the
                # result the gradient of the global mean.
                self.scaler.scale(loss * distributed.world_size() / total).backward()
            local = loss.detach() if local is None else local + loss.detach()
        loss_sum, signalled = global_loss_sum(local, self.pending.signal is not None)
        if signalled and self.pending.signal is None:
            self.pending.signal = interrupts.SIGNALS[1]  # another process was: stop with it
        if self.params.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trained.values(), self.params.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / total

    def _no_sync(self) -> contextlib.AbstractContextManager:
        parallel = isinstance(self.forward_model, DistributedDataParallel)
        return self.forward_model.no_sync() if parallel else contextlib.nullcontext()

    def _evaluate(self) -> None:
        """Validate; record the evaluation, keep its weights if it is the best so far."""
        s = self.state
        val_loss, report = validation(
            self.model, self.val_split, self.task, self.class_weights, self.compute
        )
        entry = evaluation_entry(s, val_loss, report, self.classes)
        s.history.append(entry)
        p = self.params
        selected = self.task.selection_score(report, val_loss, p.select_metric)
        score = (selected, -val_loss)
        if improves(score, s.best_score, p.min_delta):
            s.best_evaluation, s.best_score = len(s.history), score
            s.best_weights = self.trained_weights()
        self._call("on_evaluation", s, entry)

    def _end_epoch(self) -> None:
        s = self.state
        s.epoch, s.batch, s.epoch_loss_sum, s.epoch_samples = s.epoch + 1, 0, 0.0, 0
        s.finished = s.finished or s.epoch >= self.params.epochs  # (or early stopping)
        self._call("on_epoch_end", s)

    def _call(self, event: str, *args: object) -> None:
        for hook in self.hooks:
            getattr(hook, event)(*args)

    def trained_weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in self.trained.items()}
