"""The fine-tuning loop: AdamW, warm-up then linear decay, gradient clipping, a class-weighted
loss, validation every epoch, the best epoch kept by validation spam F1, early stopping, and a
checkpoint after every epoch (or on SIGINT/SIGTERM) from which a run resumes exactly.

Why this recipe: a head-only fine-tune with a weighted loss once predicted almost everything
as spam after epoch 1, then collapsed to ham-only by epoch 3 and kept the last epoch. Keeping
the best epoch and logging per-class metrics every epoch makes such a collapse harmless and
visible.
"""

import hashlib
import json
import math
import pickle
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from spamgpt import atomic, distributed, metrics, runtime
from spamgpt.batching import bucketed_order
from spamgpt.classifier import predict_logits
from spamgpt.errors import SpamGPTError
from spamgpt.model import GPT2Classifier
from spamgpt.params import TrainParams
from spamgpt.trunk import Features

CHECKPOINT = "checkpoint.pt"


class MetricsLogger(Protocol):
    def log_metrics(self, values: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...


class _NoLogger:
    def log_metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass


NO_LOGGER = _NoLogger()  # for processes that train but do not record (ranks above 0)


class Interrupted(SpamGPTError):
    """SIGINT or SIGTERM: a checkpoint was saved; the next run resumes from it."""

    exit_code = 130


@dataclass
class Split:
    features: Features
    labels: torch.Tensor  # (N,) 0 ham, 1 spam

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class State:
    """Everything a resumed run needs to continue exactly where this one stopped."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed within the current epoch
    step: int = 0  # optimizer steps completed, over all epochs
    history: list[dict] = field(default_factory=list)  # one entry per completed epoch
    steps: list[list[float]] = field(default_factory=list)  # [step, loss, lr] per step
    best_epoch: int = 0  # 1-based; 0 before the first validation
    best_key: tuple[float, float] = (-1.0, 0.0)  # (val spam F1, -val loss): larger is better
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch_loss_sum: float = 0.0  # running sums of the current epoch (mid-epoch resume)
    epoch_samples: int = 0
    train_seconds: float = 0.0
    finished: bool = False  # the training loop is over (epochs or patience ran out)
    exported: bool = False  # ...and its results were written: nothing left to resume


def fingerprint(settings: dict) -> str:
    """Identifies what a checkpoint was trained with: resume only into the same settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def load_checkpoint_file(checkpoint_dir: Path, expected_fingerprint: str) -> dict | None:
    """The checkpoint of these same settings that still has work left (training, or writing
    the results after it), or None (start afresh). Loaded with weights_only=True: tensors and
    plain containers, never arbitrary pickled objects.

    Also removes the temporary file of a checkpoint write that kill -9 cut short: the stage
    holds DVC's lock, so no other process is writing one now."""
    path = checkpoint_dir / CHECKPOINT
    atomic.remove_leftovers(path)
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles: one line only
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, i.e. running the file's code.
        raise SpamGPTError(
            f"{path}: refused: it holds pickled objects other than tensors, which could run "
            f"code; it is not a spamgpt checkpoint, delete it to start afresh"
        ) from None
    except Exception as e:  # truncated or not a zip: unusable
        raise SpamGPTError(
            f"{path}: cannot load checkpoint ({str(e).splitlines()[0]}); delete it to start afresh"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("fingerprint") != expected_fingerprint:
        return None
    if checkpoint["state"].get("exported"):
        return None
    return checkpoint


def class_weights(labels: torch.Tensor, mode: str) -> torch.Tensor | None:
    """'balanced': n / (classes * n_c), so each class carries the same total weight."""
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=2).float()
    return len(labels) / (len(counts) * counts.clamp(min=1))


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


class Trainer:
    def __init__(
        self,
        model: GPT2Classifier,
        trained: list[str],
        train: Split,
        val: Split,
        params: TrainParams,
        device: torch.device,
        precision: str,
        checkpoint_dir: Path,
        logger: MetricsLogger,
    ) -> None:
        self.model, self.train_split, self.val_split = model, train, val
        self.params, self.device, self.precision = params, device, precision
        self.checkpoint_dir, self.logger = checkpoint_dir, logger
        named = dict(model.named_parameters())
        self.trained = {name: named[name] for name in trained}
        # No weight decay on biases and LayerNorm gains: decaying them only hurts.
        decay = [p for p in self.trained.values() if p.dim() >= 2]
        no_decay = [p for p in self.trained.values() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": params.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=params.lr,
            # One fused pass over each tensor instead of a dozen over a block's 7M weights: the
            # optimizer took 38% of a training step on a 2-core CPU (see the README's speed).
            fused=device.type in ("cpu", "cuda"),
        )
        self.batches_per_epoch = math.ceil(len(train) / params.batch_size)
        total = params.epochs * self.batches_per_epoch
        warmup = max(1, round(params.warmup_ratio * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total, warmup)
        )
        weights = class_weights(train.labels, params.class_weights)
        self.loss_weights = None if weights is None else weights.to(device)
        self.state = State()
        self.stop_signal: int | None = None
        # Under torchrun each process trains on its share of every batch; DDP averages the
        # gradients of the trainable tail (frozen parameters are left out of the all-reduce).
        self.forward_model = model
        if distributed.world_size() > 1:
            self.forward_model = DistributedDataParallel(model)

    # -- checkpoints -------------------------------------------------------------------------

    def trained_weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.trained.items()}

    def save_checkpoint(self, extra: dict) -> None:
        """Atomically replace the checkpoint (a reader never sees half of it). Metrics are
        flushed first; a resumed run skips the steps the store already has. Under torchrun
        only rank 0 writes: every process holds the same weights and state."""
        if not distributed.is_main():
            return
        self.logger.flush()
        s = self.state
        checkpoint = {
            **extra,
            "state": {k: v for k, v in vars(s).items() if k != "best_weights"},
            "best_weights": s.best_weights,
            "weights": self.trained_weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        with atomic.atomic_path(self.checkpoint_dir / CHECKPOINT) as tmp:
            torch.save(checkpoint, tmp)

    def mark_exported(self, extra: dict) -> None:
        """The results are written: a later run with the same settings starts afresh."""
        self.state.exported = True
        self.save_checkpoint(extra)

    def load_checkpoint(self, checkpoint: dict) -> None:
        self.state = State(**checkpoint["state"], best_weights=checkpoint["best_weights"])
        self.state.best_key = tuple(self.state.best_key)
        with torch.no_grad():
            for name, tensor in checkpoint["weights"].items():
                self.trained[name].copy_(tensor)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"])

    # -- the loop ----------------------------------------------------------------------------

    def validate(self) -> tuple[float, dict]:
        """(val loss, metrics report at threshold 0.5) with dropout off."""
        self.model.eval()
        val = self.val_split
        logits = predict_logits(
            lambda idx: val.features.logits(self.model, idx, self.device),
            val.features.packed.lengths,
            self.device,
            self.precision,
        )
        loss = F.cross_entropy(logits, val.labels, weight=_cpu(self.loss_weights)).item()
        spam_prob = torch.softmax(logits, dim=-1)[:, 1]
        return loss, metrics.report(val.labels.numpy(), spam_prob.numpy(), 0.5)

    def train_step(self, indices: torch.Tensor) -> float:
        """One optimizer step on the global batch `indices`; its weighted mean loss."""
        labels = self.train_split.labels[indices]
        # The weighted mean over the whole global batch: sum(w_i * loss_i) / sum(w_i), each
        # process summing its own share. With one process this is F.cross_entropy's mean.
        total = float(
            labels.numel() if self.loss_weights is None else _cpu(self.loss_weights)[labels].sum()
        )
        mine = distributed.shard(indices)
        share = 1.0
        if len(mine) == 0:  # a last batch smaller than the processes: join with no weight
            mine, share = indices[:1], 0.0
        with runtime.autocast(self.device, self.precision):
            logits = self.train_split.features.logits(self.forward_model, mine, self.device)
        local = share * F.cross_entropy(
            logits.float(),
            self.train_split.labels[mine].to(self.device),
            weight=self.loss_weights,
            reduction="sum",
        )
        # One all-reduce for both: the global loss, and whether any process was signalled.
        flag = float(self.stop_signal is not None)
        summed = distributed.all_sum(torch.tensor([local.item(), flag], dtype=torch.float64))
        loss = summed[0].item() / total
        if summed[1] > 0 and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM  # another process was: stop at the same step
        if not math.isfinite(loss):
            raise SpamGPTError(
                f"training loss is {loss} at step {self.state.step + 1} (epoch "
                f"{self.state.epoch + 1}); stopped, the best checkpoint so far is kept; "
                f"try a lower train.lr or train.precision: fp32"
            )
        # DDP averages gradients over processes; scaling by their number makes the result the
        # gradient of the global mean.
        (local * distributed.world_size() / total).backward()
        if self.params.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.trained.values(), self.params.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def fit(self, checkpoint_extra: dict) -> State:
        """Train until epochs or patience run out; resumes from self.state (set by a loaded
        checkpoint). SIGINT/SIGTERM save a checkpoint, then raise Interrupted."""
        s, p = self.state, self.params
        if s.finished:  # resumed after the loop had ended: only the results are left to write
            return s
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            while s.epoch < p.epochs and not s.finished:
                self._run_epoch(checkpoint_extra)
                self._stop_if_signalled()  # one that came during validation
            s.finished = True
            self.save_checkpoint(checkpoint_extra)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return s

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_signal = signum  # acted on between steps, where the state is consistent

    def _stop_if_signalled(self) -> None:
        """Raise Interrupted if a signal came; call only right after a checkpoint was saved."""
        if self.stop_signal is not None:
            name, step = signal.Signals(self.stop_signal).name, self.state.step
            raise Interrupted(f"{name} at step {step}: checkpoint saved; re-run to resume")

    def _run_epoch(self, checkpoint_extra: dict) -> None:
        s, p = self.state, self.params
        order = epoch_order(self.train_split.features.packed.lengths, p.batch_size, p.seed, s.epoch)
        self.model.train()
        started = time.perf_counter()
        bar = tqdm(
            total=len(order), initial=s.batch, desc=f"epoch {s.epoch + 1}/{p.epochs}", disable=None
        )
        for indices in order[s.batch :]:
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            loss = self.train_step(indices)
            s.steps.append([s.step + 1, loss, lr])
            s.batch += 1
            s.step += 1
            s.epoch_loss_sum += loss * len(indices)
            s.epoch_samples += len(indices)
            self.logger.log_metrics({"train/loss": loss, "train/lr": lr}, s.step)
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if self.stop_signal is not None:
                s.train_seconds += time.perf_counter() - started
                self.save_checkpoint(checkpoint_extra)
                bar.close()
                self._stop_if_signalled()
        bar.close()
        s.train_seconds += time.perf_counter() - started

        val_loss, report = self.validate()
        s.epoch += 1
        entry = {
            "epoch": s.epoch,
            "step": s.step,
            "train/epoch_loss": s.epoch_loss_sum / max(1, s.epoch_samples),
            "val/loss": val_loss,
            **metrics.flat(report, "val"),
        }
        s.history.append(entry)
        self.logger.log_metrics({k: v for k, v in entry.items() if "/" in k}, s.epoch)
        key = (report["spam"]["f1"], -val_loss)
        if key > s.best_key:
            s.best_epoch, s.best_key, s.best_weights = s.epoch, key, self.trained_weights()
        elif s.epoch - s.best_epoch >= p.patience:
            s.finished = True  # early stop: no better val spam F1 for `patience` epochs
        s.batch, s.epoch_loss_sum, s.epoch_samples = 0, 0.0, 0
        self.save_checkpoint(checkpoint_extra)


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.cpu()
