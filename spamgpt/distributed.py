"""Processes that torchrun starts, for the trunk pass and fine-tuning: gloo on CPU, nccl on
CUDA.

Fine-tuning: every process holds the whole (small) trainable tail and reads the cached trunk,
computes the same global batch order, and takes its share of each global batch;
DistributedDataParallel averages the gradients. Logging, checkpoints and MLflow happen on rank
0 only. The trunk pass: each process computes every world_size-th batch into one shared file.
"""

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from spamgpt import atomic
from spamgpt.errors import SpamGPTError

Work = TypeVar("Work", torch.Tensor, list)

log = logging.getLogger(__name__)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def relaunch(devices: int) -> None:
    """With train.devices > 1, replace this process by torchrun running the same script on
    `devices` processes; under torchrun (or with 1 device) return and train here."""
    if devices == 1 or "LOCAL_RANK" in os.environ:
        return
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        raise SpamGPTError("train.devices > 1 needs torchrun (installed with torch); not found")
    argv = [torchrun, "--standalone", f"--nproc_per_node={devices}", *sys.argv]
    os.execv(torchrun, argv)


def setup(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun; the device this process uses."""
    log.info("rank %d of %d", rank(), world_size())
    if world_size() == 1:
        return device
    device = process_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend(device))
    return device


def process_device(device: torch.device) -> torch.device:
    """Under torchrun: on CUDA, the card of this process's LOCAL_RANK (one card each);
    elsewhere `device` itself."""
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def backend(device: torch.device) -> str:
    """The process group's: nccl between CUDA cards, gloo on CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def shard(items: Work) -> Work:
    """This process's share: every world_size-th item (of a global batch; of the trunk's
    batches, which every process lists alike)."""
    return items[rank() :: world_size()]


def barrier() -> None:
    """Wait for every process (nothing to wait for with one)."""
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def shared_output(dest: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `dest` that every process writes its part of (rank 0 creates
    the file); once the block has ended in every process, rank 0 renames it onto `dest`
    (spamgpt.atomic). The processes share one file system: torchrun --standalone."""
    if not is_main():
        name = [None]
        dist.broadcast_object_list(name, src=0)
        yield Path(name[0])
        dist.barrier()
        return
    with atomic.atomic_path(dest) as tmp:
        if world_size() > 1:
            dist.broadcast_object_list([str(tmp)], src=0)
        yield tmp
        barrier()


@contextlib.contextmanager
def replaced_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """spamgpt.atomic.replaced_dir in rank 0, which makes the folder and renames it; the other
    processes write only into shared_output files in it, whose names rank 0 sends them."""
    if not is_main():
        yield Path(dest)
        return
    with atomic.replaced_dir(dest) as tmp:
        yield tmp


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes (identity with one)."""
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
