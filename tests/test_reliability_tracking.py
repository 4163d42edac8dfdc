"""MLflow tracking when it is hard: several processes creating the SQLite store at once,
experiments run in parallel from DVC's queue, a tracking server that does not answer, and a
run reopened by a resumed training or a re-run evaluate."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    Reproduced,
    run,
    subprocess_env,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from spamgpt import interrupts, stage, tracking
from spamgpt.errors import SpamGPTError

EXPERIMENT = "sms-spam-gpt2"

# One run, as a stage would record it: argv = log file, this process's name, the other's.
# The log records each process's way through tracking.connect's critical section (the store
# created under a file lock). The first process to hold the lock stays inside until the other
# has asked for it: the two collide at the lock on every run, however slow their start.
RECORD_A_RUN = textwrap.dedent(
    """
    import fcntl, sys, time
    from pathlib import Path
    from spamgpt import tracking

    log, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    def note(event):
        with open(log, "a") as f:
            f.write(f"{me} {event}\\n")

    def seen(event):
        return f"{other} {event}" in log.read_text().splitlines()

    class Fcntl:
        LOCK_EX = fcntl.LOCK_EX

        @staticmethod
        def flock(fd, operation):
            note("wants the lock")
            fcntl.flock(fd, operation)
            note("holds the lock")
            if not seen("holds the lock"):
                while not seen("wants the lock"):
                    time.sleep(0.01)

    retry, calls = tracking._retry, []

    def first_retry_is_the_store(call, *args):
        result = retry(call, *args)
        if not calls:
            note("created the store")  # inside the lock: _create_store's one call
        calls.append(call)
        return result

    tracking.fcntl, tracking._retry = Fcntl, first_retry_is_the_store
    tracking.connect()
    with tracking.Run.open("parallel") as run:
        run.log_metrics({"x": 1.0}, 1)
    """
)


def test_parallel_runs_on_a_fresh_store_all_succeed(tmp_path: Path) -> None:
    """MLflow creates a fresh SQLite store unguarded: without the lock in tracking.connect,
    processes starting together fail with 'table already exists' or 'duplicate column'."""
    env = subprocess_env() | {"DVC_ROOT": str(tmp_path)}
    log = tmp_path / "events.log"
    log.touch()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RECORD_A_RUN, str(log), me, other],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("A", "B"), ("B", "A"))
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)  # a hang guard
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:  # one that died early leaves the other waiting at the lock
            proc.kill()
            proc.wait()
    events = log.read_text().splitlines()
    first = events[[e.endswith("holds the lock") for e in events].index(True)].split()[0]
    second = "B" if first == "A" else "A"
    at = {event: i for i, event in enumerate(events)}
    # the second asked for the lock while the first held it, and got it only once the first
    # had created the store
    assert at[f"{first} holds the lock"] < at[f"{first} created the store"]
    assert at[f"{second} wants the lock"] < at[f"{first} created the store"]
    assert at[f"{first} created the store"] < at[f"{second} holds the lock"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] * 2


def steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# What MLflow raises when SQLite's busy timeout (MLflow sets 20 s) runs out under a writer.
LOCKED = "(sqlite3.OperationalError) database is locked\n[SQL: UPDATE runs SET status=?]"


def locked_then(result: object, failures: int) -> tuple[Callable[[], object], list[int]]:
    """A call that meets a locked database `failures` times, then returns `result`; and the
    list its calls are counted in."""
    calls: list[int] = []

    def call() -> object:
        calls.append(1)
        if len(calls) <= failures:
            raise MlflowException(LOCKED)
        return result

    return call, calls


def test_database_is_locked_is_retried_with_backoff(backoffs: list[float]) -> None:
    call, calls = locked_then("done", failures=3)
    assert tracking._retry(call) == "done"
    assert len(calls) == 4
    assert backoffs == [0.2, 0.4, 0.8]


def test_database_locked_for_good_gives_up_after_the_last_attempt(backoffs: list[float]) -> None:
    call, calls = locked_then("never", failures=100)
    with pytest.raises(MlflowException, match="database is locked"):
        tracking._retry(call, attempts=5)
    assert len(calls) == 5 and len(backoffs) == 4


def test_other_mlflow_errors_are_not_retried(backoffs: list[float]) -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run 123")

    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        tracking._retry(call)
    assert len(calls) == 1 and backoffs == []


def test_a_run_writes_through_a_locked_database(
    local_store: MlflowClient, backoffs: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store answers 'database is locked' to the run's first two writes of a tag (another
    process writing), then takes it: the tag is in the store once."""
    with tracking.Run.open(EXPERIMENT) as run:
        set_tag, calls = run.client.set_tag, []

        def busy_then_set(*args: object) -> None:
            calls.append(args)
            if len(calls) <= 2:
                raise MlflowException(LOCKED)
            set_tag(*args)

        monkeypatch.setattr(run.client, "set_tag", busy_then_set)
        run.set_tag("data_sha256", "abc")
    assert len(calls) == 3 and backoffs == [0.2, 0.4]
    assert local_store.get_run(run.run_id).data.tags["data_sha256"] == "abc"


def test_resumed_run_logs_each_step_once_and_drops_its_old_error(
    local_store: MlflowClient,
) -> None:
    with pytest.raises(RuntimeError), tracking.Run.open(EXPERIMENT) as run:
        run.log_metrics({"train/loss": 0.5}, 1)
        run.log_metrics({"train/loss": 0.4}, 2)
        run_id = run.run_id
        raise RuntimeError("disk on fire")
    failed = local_store.get_run(run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == "RuntimeError: disk on fire"

    # The resumed training replays step 2 (its checkpoint was from step 1), then goes on.
    with tracking.Run.open(EXPERIMENT, run_id, skip_logged_steps=True) as run:
        for step, loss in ((2, 0.4), (3, 0.3)):
            run.log_metrics({"train/loss": loss}, step)
    resumed = local_store.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert "error" not in resumed.data.tags
    assert steps(local_store, run_id, "train/loss") == [(1, 0.5), (2, 0.4), (3, 0.3)]


def test_reopening_a_run_the_store_lacks_says_so_in_one_line(local_store: MlflowClient) -> None:
    """models/mlflow_run.json names a run of a deleted store (or of another tracking URI)."""
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(SpamGPTError) as info, tracking.Run.open(EXPERIMENT, missing):
        pass
    message = str(info.value)
    assert message.startswith(f"MLflow run {missing} is not in sqlite:///")
    assert "MLFLOW_TRACKING_URI" in message and "\n" not in message


def test_reopened_run_takes_a_new_value_for_a_logged_step(local_store: MlflowClient) -> None:
    """evaluate re-run with another threshold: its new test metrics must show."""
    with tracking.Run.open(EXPERIMENT) as run:
        run.log_metrics({"test/accuracy": 0.9}, 0)
    with tracking.Run.open(EXPERIMENT, run.run_id) as reopened:
        reopened.log_metrics({"test/accuracy": 0.8}, 0)
    assert local_store.get_run(run.run_id).data.metrics["test/accuracy"] == 0.8


def test_an_error_caused_by_ctrl_c_ends_the_run_killed(
    local_store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors turns the KeyboardInterrupt of a Ctrl-C into a ValueError: the run must
    still end KILLED (not FAILED), and the stage exit as interrupted."""
    shutil.copy(REPO / "params.yaml", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(interrupts, "_received", [])  # this process's record of signals
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    run_ids = []

    def main(params: object) -> None:
        with tracking.Run.open(EXPERIMENT) as run:
            run_ids.append(run.run_id)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler runs in here
            except KeyboardInterrupt:
                raise ValueError("could not determine the shape of object type") from None

    try:
        with pytest.raises(SystemExit) as info:
            stage.run(main)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert info.value.code == 130
    assert local_store.get_run(run_ids[0]).info.status == "KILLED"


@pytest.fixture(scope="module")
def project(reproduced: Reproduced, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reproduced pipeline (conftest's, copied), its results committed as a user commits
    them before queueing experiments: an experiment starts from the last commit, and then
    re-runs only the stages its -S changes (finetune and evaluate), not the whole pipeline."""
    path = reproduced.copy(tmp_path_factory.mktemp("tracking") / "project")
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "results"], path)
    return path


def exp_names(project: Path) -> list[str]:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"], project).stdout
    return sorted(ref.rsplit("/", 1)[1] for ref in refs.split() if "/celery/" not in ref)


@pytest.fixture(scope="module")
def queued(project: Path) -> str:
    """Two experiments from `dvc exp run --queue`, run by two workers at once: `dvc queue
    status` once both are done."""
    for seed in (1, 2):
        run(
            ["dvc", "exp", "run", "--queue", "-n", f"seed-{seed}", "-S", f"train.seed={seed}"],
            project,
        )
    # The workers it starts keep the output they inherit open until they stop, which they do
    # once their queue has been empty at a check made every 10 s: output to a file, not to a
    # pipe, lets the command return at once, and the test stop waiting as the last one ends.
    with (project.parent / "queue-start.log").open("w") as log:
        subprocess.run(
            ["dvc", "queue", "start", "-j", "2"],
            cwd=project, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
    # DVC 3 has no `dvc queue wait`. Its status costs a second of CPU: look for the
    # experiments' git refs instead, and at the status once both are there or now and then
    # (a failed experiment leaves no ref), until it shows neither queued nor running.
    started = last_status = time.monotonic()
    while True:
        time.sleep(1)
        if exp_names(project) == ["seed-1", "seed-2"] or time.monotonic() - last_status > 20:
            status, last_status = run(["dvc", "queue", "status"], project).stdout, time.monotonic()
            if not any(word in status for word in ("Queued", "Running")):
                return status
        if time.monotonic() - started > 900:  # a hang guard, not a measure of speed
            pytest.fail(f"the queue hung:\n{run(['dvc', 'queue', 'status'], project).stdout}")


def test_queued_experiments_run_in_parallel_and_both_are_recorded(
    project: Path, queued: str
) -> None:
    assert queued.count("Success") == 2, queued
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"seed-1", "seed-2"} <= set(by_name)  # in the main store, not the temp copies
    for seed in (1, 2):
        recorded = by_name[f"seed-{seed}"]
        assert recorded.info.status == "FINISHED"
        assert recorded.data.params["train.seed"] == str(seed)
        assert "test/accuracy" in recorded.data.metrics  # evaluate found the same run


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_before_training(project: Path) -> None:
    """With every input in place, finetune would read the trunk cache, train afresh and
    write a checkpoint after epoch 1: it must stop at the tracking check first. The cache is
    moved away meanwhile: had the stage read it before the check, its error would be the
    missing cache, not the server."""
    checkpoint = project / "models/checkpoints/checkpoint.pt"
    before = checkpoint.read_bytes()
    assert torch.load(checkpoint, weights_only=True)["state"]["exported"]  # nothing to resume
    uri = f"http://127.0.0.1:{closed_port()}"
    env = subprocess_env() | {"MLFLOW_TRACKING_URI": uri}
    cache, away = project / "data/trunk", project / "trunk-moved-away"
    cache.rename(away)
    try:
        result = run([sys.executable, "stages/finetune.py"], project, check=False, env=env)
    finally:
        away.rename(cache)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: MLflow tracking server {uri} is unreachable (")
    assert line.endswith(f"unset MLFLOW_TRACKING_URI to record runs in {project / 'mlflow.db'}")
    assert checkpoint.read_bytes() == before
