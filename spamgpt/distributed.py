"""Data-parallel fine-tuning over processes that torchrun starts: gloo on CPU, nccl on CUDA.

Every process holds the whole (small) trainable tail and the cached trunk, computes the same
global batch order, and takes its share of each global batch; DistributedDataParallel averages
the gradients. Logging, checkpoints and MLflow happen on rank 0 only.
"""

import logging
import os
import shutil
import sys

import torch
import torch.distributed as dist

from spamgpt.errors import SpamGPTError

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
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This process's share of a global batch (every process sees the same batch)."""
    return indices[rank() :: world_size()]


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes (identity with one)."""
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
