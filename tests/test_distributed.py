"""Data-parallel fine-tuning: `train.devices: 2` runs finetune as 2 CPU processes under
torchrun (gloo) and must learn what one process learns from the same global batches, here
accumulated from two batches of half the size (train.accumulation_steps: 2)."""

import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
import torch
import torch.distributed as dist
import yaml
from conftest import as_ranks_0_and_1, free_port, run

from spamgpt import distributed
from spamgpt.errors import SpamGPTError

TOLERANCE = 1e-4  # float sums in another order (all-reduce, half batches); nothing else differs
TRUNK_TOLERANCE = 1e-5  # the same batches, sums split over another number of threads


@pytest.fixture(scope="module")
def project(reproduced, tmp_path_factory):
    """One project for the module: a reproduced pipeline (conftest's, copied; 2 epochs), whose
    trunk and finetune stages the fixtures below run again by their scripts."""
    return reproduced.copy(tmp_path_factory.mktemp("ddp") / "project")


def set_train(path: Path, **values: object) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["train"].update(values)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def copy_of(project: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    dest = tmp_path_factory.mktemp(name) / "project"
    shutil.copytree(project, dest, symlinks=True)
    return dest


def run_at_once(script: str, folders: dict[int, Path]) -> dict[int, str]:
    """`script` run in each folder at the same time (each mostly Python start-ups on one
    core; torchrun --standalone picks a free port): {devices: its output}."""
    with ThreadPoolExecutor(max_workers=len(folders)) as pool:
        started = {d: pool.submit(run, ["python", script], path) for d, path in folders.items()}
        return {d: out.result().stdout + out.result().stderr for d, out in started.items()}


@pytest.fixture(scope="module")
def trunk_caches(project, tmp_path_factory):
    """The trunk stage's cache files with 2 processes (in a copy of the project) and with 1
    (in the project: the cache finetune reads below, as `dvc repro trunk` writes it), both at
    once: {devices: {split: bytes}}, and the 2-process log."""
    folders = {2: copy_of(project, tmp_path_factory, "ddp-trunk"), 1: project}
    for devices, path in folders.items():
        set_train(path, devices=devices)
    logs = run_at_once("stages/trunk.py", folders)
    caches = {
        devices: {p.name: p.read_bytes() for p in (path / "data/trunk").iterdir()}
        for devices, path in folders.items()
    }
    return caches, logs[2]


@pytest.fixture(scope="module")
def runs(project, trunk_caches, tmp_path_factory):
    """finetune with 1 process (in the project), and with 2 accumulating two batches of 8 into
    each update of 16 (in a copy of it), both at once on the one-process trunk cache; each
    starts afresh (the reproduced checkpoint is exported): (metrics, per-step losses) each."""
    folders = {1: project, 2: copy_of(project, tmp_path_factory, "ddp-finetune")}
    for devices, path in folders.items():
        set_train(path, devices=devices, batch_size=16 // devices, accumulation_steps=devices)
    logs = run_at_once("stages/finetune.py", folders)
    return {
        devices: (
            json.loads((path / "metrics/train.json").read_text()),
            pd.read_csv(path / "metrics/train_loss.csv"),
            pd.read_csv(path / "metrics/val_epochs.csv"),
            logs[devices],
        )
        for devices, path in folders.items()
    }


def test_two_processes_ran(runs):
    assert "rank 0 of 1" in runs[1][3]
    log = runs[2][3]
    assert "rank 0 of 2" in log and "rank 1 of 2" in log


def test_same_losses_at_every_step(runs):
    one, two = runs[1][1], runs[2][1]
    assert list(one["step"]) == list(two["step"])  # same global batches: same step count
    assert (one["loss"] - two["loss"]).abs().max() < TOLERANCE
    assert list(one["lr"]) == pytest.approx(list(two["lr"]))


def test_same_validation_metrics(runs):
    one, two = runs[1][2], runs[2][2]
    for column in ("val_loss", "val_accuracy", "val_spam_f1"):
        assert (one[column] - two[column]).abs().max() < TOLERANCE, column
    assert runs[1][0]["best_epoch"] == runs[2][0]["best_epoch"]


def test_trunk_on_two_processes_writes_the_cache_of_one(trunk_caches):
    caches, log = trunk_caches
    assert "rank 0 of 2" in log and "rank 1 of 2" in log
    names = ["info.json", "test.safetensors", "train.safetensors", "val.safetensors"]
    assert sorted(caches[1]) == sorted(caches[2]) == names  # one file per split, no temp left
    assert caches[2]["info.json"] == caches[1]["info.json"]
    for name in names[1:]:  # the same batches; one thread per process instead of two
        one, two = (safetensors.torch.load(caches[d][name]) for d in (1, 2))
        assert torch.equal(one["lengths"], two["lengths"])
        assert one["hidden"].dtype == two["hidden"].dtype == torch.float32  # precision fp32
        assert not two["hidden"].eq(0).all(dim=1).any(), "a row no process wrote"
        torch.testing.assert_close(two["hidden"], one["hidden"], rtol=0, atol=TRUNK_TOLERANCE)


# --- in-process: the functions on their own, one process, and two (this one and a fork) ---


def test_rank_and_world_size_come_from_torchruns_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (3, 4, False)


def test_each_process_shards_every_world_size_th_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(distributed.shard(list(range(8))))
        assert distributed.shard(torch.arange(8)).tolist() == shares[-1]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]


def test_under_torchrun_each_process_takes_the_card_of_its_local_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(torch.device names a card without one being there: no GPU needed.)"""
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.process_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert distributed.backend(torch.device("cuda", 1)) == "nccl"
    cpu = torch.device("cpu")
    assert distributed.process_device(cpu) is cpu and distributed.backend(cpu) == "gloo"


class Exec(Exception):
    """os.execv's arguments: the process it would have become."""


@pytest.fixture
def execv(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.execv raises Exec(path, argv) instead of replacing the test process."""

    def record(path: str, argv: list[str]) -> None:
        raise Exec(path, argv)

    monkeypatch.setattr(os, "execv", record)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_relaunch_becomes_torchrun_on_the_same_script(
    execv: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun from PATH, else beside the Python running (a venv's bin, not on PATH); the
    same command line on `devices` processes on this machine. With 1 device, or under torchrun
    already (LOCAL_RANK), nothing happens."""
    monkeypatch.setattr(sys, "argv", ["stages/finetune.py", "--flag"])
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv/bin/python"))
    on_path = executable(tmp_path / "path/torchrun")
    monkeypatch.setenv("PATH", str(on_path.parent))
    with pytest.raises(Exec) as become:
        distributed.relaunch(3)
    assert become.value.args == (
        str(on_path),
        [str(on_path), "--standalone", "--nproc_per_node=3", "stages/finetune.py", "--flag"],
    )
    beside = executable(tmp_path / "venv/bin/torchrun")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Exec) as become:
        distributed.relaunch(2)
    assert become.value.args[0] == str(beside) and become.value.args[1][:3] == [
        str(beside), "--standalone", "--nproc_per_node=2",
    ]  # fmt: skip
    distributed.relaunch(1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    distributed.relaunch(2)


def test_relaunch_without_torchrun_says_so(
    execv: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SpamGPTError) as error:
        distributed.relaunch(2)
    assert str(error.value) == (
        "train.devices > 1 needs torchrun (installed with torch); not found"
    )


@pytest.fixture
def one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No torchrun: no process group either (a collective called would raise)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()


def test_one_process_joins_no_group_and_waits_for_nothing(
    one_process: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = torch.device("cpu")
    with caplog.at_level("INFO", logger="spamgpt.distributed"):
        assert distributed.setup(device) is device
    assert [r.getMessage() for r in caplog.records] == ["rank 0 of 1"]
    assert not dist.is_initialized()
    distributed.barrier()
    values = torch.tensor([1.5, 2.0])
    assert distributed.all_sum(values) is values and values.tolist() == [1.5, 2.0]
    distributed.teardown()  # nothing to tear down


def test_one_process_writes_its_outputs_atomically(one_process: None, tmp_path: Path) -> None:
    """shared_output and replaced_dir are atomic.atomic_path's and atomic.replaced_dir's."""
    dest = tmp_path / "trunk"
    (dest / "old").mkdir(parents=True)
    with distributed.replaced_dir(dest) as folder:
        assert folder.parent == tmp_path and folder != dest and not any(folder.iterdir())
        with distributed.shared_output(folder / "train.bin") as tmp:
            assert tmp.parent == folder and tmp.name != "train.bin" and tmp.exists()
            tmp.write_bytes(b"cache")
            assert not (folder / "train.bin").exists()
        assert (folder / "train.bin").read_bytes() == b"cache"
    assert [p.name for p in tmp_path.iterdir()] == ["trunk"]
    assert [p.name for p in dest.iterdir()] == ["train.bin"]


def roles(rank: int, dest: Path) -> dict:
    """What one of two processes (gloo, on CPU) sees of each function; both write their half
    of one shared file, in a folder rank 0 builds."""
    seen: dict = {}
    handler = logging.Handler()
    handler.emit = lambda record: seen.setdefault("log", []).append(record.getMessage())
    logger = logging.getLogger("spamgpt.distributed")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        device = distributed.setup(torch.device("cpu"))
    finally:
        logger.removeHandler(handler)
    seen["group"] = [str(device), dist.get_backend(), dist.get_rank(), dist.get_world_size()]
    seen["shard"] = distributed.shard(list(range(7)))
    seen["sum"] = distributed.all_sum(torch.tensor([rank + 1.0, 10.0 * (rank + 1)])).tolist()
    with distributed.replaced_dir(dest) as folder:
        seen["folder"] = str(folder)
        with distributed.shared_output(folder / "cache.bin") as tmp:
            seen["tmp"] = str(tmp)
            if rank == 0:
                tmp.write_bytes(bytes(8))  # the file at its full size before anyone writes
            distributed.barrier()
            if rank == 1:
                time.sleep(0.2)  # late: rank 0 must wait for this write before renaming
            with open(tmp, "r+b") as f:
                f.seek(4 * rank)
                f.write(f"rk{rank}.".encode())
    distributed.barrier()
    seen["files"] = sorted(p.name for p in dest.parent.iterdir())
    seen["cache"] = (dest / "cache.bin").read_bytes().decode()
    distributed.teardown()
    seen["initialized after teardown"] = dist.is_initialized()
    return seen


def test_two_processes_share_the_batches_sums_and_one_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This process as rank 0 and a fork of it as rank 1, as torchrun would start them: each
    joins the gloo group, takes every other item, gets the sum of both; both write into one
    temporary file, whose name rank 0 sends, in rank 0's temporary folder, which becomes the
    output once both are done (rank 1 writes late: rank 0 waits for it)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    dest, report = tmp_path / "out" / "trunk", tmp_path / "rank1.json"
    dest.parent.mkdir()

    def report_rank1() -> None:
        os.environ.update(RANK="1", LOCAL_RANK="1")
        report.write_text(json.dumps(roles(1, dest)))

    rank0 = as_ranks_0_and_1(lambda: roles(0, dest), report_rank1)
    rank1 = json.loads(report.read_text())

    assert rank0["log"] == ["rank 0 of 2"] and rank1["log"] == ["rank 1 of 2"]
    assert rank0["group"] == ["cpu", "gloo", 0, 2] and rank1["group"] == ["cpu", "gloo", 1, 2]
    assert (rank0["shard"], rank1["shard"]) == ([0, 2, 4, 6], [1, 3, 5])
    assert rank0["sum"] == rank1["sum"] == [3.0, 30.0]
    assert Path(rank0["folder"]).parent == dest.parent and rank0["folder"] != str(dest)
    assert rank1["folder"] == str(dest)  # it writes only where rank 0 tells it
    assert rank1["tmp"] == rank0["tmp"] and Path(rank0["tmp"]).parent == Path(rank0["folder"])
    assert rank0["cache"] == rank1["cache"] == "rk0.rk1."
    assert rank0["files"] == rank1["files"] == ["trunk"]  # no temporary file or folder left
    assert [p.name for p in dest.iterdir()] == ["cache.bin"]
    assert rank0["initialized after teardown"] is rank1["initialized after teardown"] is False
