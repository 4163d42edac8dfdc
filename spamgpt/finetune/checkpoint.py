"""The resume checkpoint of a training run, apart from the loop (as timm's CheckpointSaver).

One file holds everything a resumed run needs: the trained tensors, the best epoch's, the
optimizer, schedule and RNG, the loop's State, the MLflow run, and a fingerprint of the
settings it was trained with. It is replaced atomically after every evaluation and on SIGINT or
SIGTERM; once the results are written it is marked exported, so the next run starts afresh.
An epoch's checkpoint is written in the background while the next epoch trains.
"""

import hashlib
import json
import logging
import os
import pickle
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from spamgpt import atomic, distributed
from spamgpt.errors import SpamGPTError
from spamgpt.finetune.train import State, Trainer
from spamgpt.params import Params, flatten

log = logging.getLogger(__name__)

FORMAT = 3  # bumped when the checkpoint's layout changes: older ones are not resumed


def fingerprint(params: Params, data_report: dict) -> str:
    """Identifies what a run trains with (model, lora and train params, the data): a
    checkpoint is resumed only into the same."""
    settings = {
        k: v for k, v in flatten(params).items() if k.startswith(("model.", "lora.", "train."))
    }
    document = {**settings, "data": data_report, "format": FORMAT}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def load(path: str | os.PathLike, expected_fingerprint: str) -> dict | None:
    """The checkpoint at `path` of these same settings that still has work left (training,
    or writing the results after it), or None (start afresh). Loaded with weights_only=True:
    tensors and plain containers, never arbitrary pickled objects.

    Also removes the temporary file of a write that kill -9 cut short: the stage holds DVC's
    lock, so no other process is writing one now."""
    path = Path(path)
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
    state = checkpoint["state"]
    if state.get("exported"):
        return None
    progress = (
        "training is done, writing its results"
        if state["finished"]
        else f"epoch {state['epoch'] + 1}, after step {state['step']}"
    )
    log.info("resuming MLflow run %s: %s", checkpoint["run_id"], progress)
    return checkpoint


def state_of(trainer: Trainer) -> dict:
    """What a checkpoint holds of a trainer: its State, the trained tensors (now and at the
    best epoch), the optimizer, schedule, loss scale and RNG; once its results are exported,
    the State alone."""
    s = trainer.state
    state = {k: v for k, v in vars(s).items() if k != "best_weights"}
    if s.exported:  # nothing is left to resume: the state alone says so, no tensors
        return {"state": state}
    return {
        "state": state,
        "best_weights": s.best_weights,
        "weights": trainer.trained_weights(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": torch.get_rng_state(),
    }


def resume(trainer: Trainer, checkpoint: dict) -> None:
    """Put `trainer` back where the run that saved `checkpoint` stopped."""
    trainer.state = State(**checkpoint["state"], best_weights=checkpoint["best_weights"])
    trainer.state.best_score = tuple(trainer.state.best_score)
    with torch.no_grad():
        for name, tensor in checkpoint["weights"].items():
            trainer.trained[name].copy_(tensor)
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"])


class CheckpointSaver:
    """Writes the checkpoint of one run: `save(trainer)` after each epoch or signal, tagged
    with the settings' fingerprint and the MLflow run. Under torchrun only rank 0 writes:
    every process holds the same weights and state. `before_save` runs first (the metrics
    buffer is flushed, so a resumed run skips the steps the store already has).

    save() copies what it writes onto the CPU, then writes it in a background thread (as
    torch.distributed.checkpoint's async_save stages and writes): the next epoch trains
    meanwhile instead of waiting for the disk. One write at a time: the next save(), and
    wait(), wait for it and raise its error. A write killed half-way leaves the previous
    checkpoint in place (atomic)."""

    def __init__(
        self,
        path: str | os.PathLike,
        fingerprint: str,
        run_id: str | None = None,
        before_save: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = Path(path)
        self.tags = {"fingerprint": fingerprint, "run_id": run_id}
        self.before_save = before_save
        self._writing: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, trainer: Trainer) -> None:
        """Start writing `trainer`'s checkpoint; training may change the trainer meanwhile."""
        if not distributed.is_main():
            return
        self.wait()
        self.before_save()
        contents = _copied({**self.tags, **state_of(trainer)})
        self._writing = threading.Thread(target=self._write_in_background, args=(contents,))
        self._writing.start()

    def wait(self) -> None:
        """Return once the checkpoint save() started is on disk; raise its error if it failed."""
        if self._writing is not None:
            self._writing.join()
            self._writing = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def write(self, contents: dict) -> None:
        """Atomically replace the checkpoint with `contents` and the tags, now."""
        self.wait()
        self.before_save()
        self._write({**self.tags, **contents})

    def _write(self, checkpoint: dict) -> None:
        with atomic.atomic_path(self.path) as tmp:
            torch.save(checkpoint, tmp)

    def _write_in_background(self, checkpoint: dict) -> None:
        try:
            self._write(checkpoint)
        except BaseException as e:  # raised in the training thread, by wait()
            self._error = e


def _copied(value: object) -> object:
    """`value` with every container rebuilt and every tensor copied onto the CPU: what a
    background write reads, which training can no longer change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copied(v) for v in value)
    return value
