"""finetune under fire: Ctrl-C during the trunk pass, SIGINT mid-epoch, a NaN loss, SIGTERM
mid-epoch, kill -9 while a checkpoint is written, SIGTERM while the results are written and a
malicious checkpoint, all in one project, then `dvc repro -f` finishes the training.

The interrupted and resumed training must end exactly (bit for bit, on CPU) where the
uninterrupted run of the same project ended, in one MLflow run that holds every step once.
Signals go to the process group, as a terminal's Ctrl-C or a job scheduler's kill does.
"""

import array
import contextlib
import fcntl
import hashlib
import io
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    TINY_REVISION,
    Mirror,
    make_project,
    run,
    serve_mirror,
    sms_collection,
    subprocess_env,
    tiny_params,
)
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from spamgpt.random_hub import make_hub

CHECKPOINT = Path("models/checkpoints/checkpoint.pt")
TIMING = ("train_seconds", "samples_per_second")  # differ between any two runs
# Everything finetune and evaluate report; train.json and training.json without TIMING.
REPORTS = [
    "metrics/eval.json",
    "reports/evaluation.json",
    "metrics/train_loss.csv",
    "metrics/val_epochs.csv",
    "metrics/confusion_test.csv",
    "metrics/roc_test.csv",
    "metrics/pr_test.csv",
    "reports/misclassified_test.csv",
    "models/finetuned/model.safetensors",
    "models/finetuned/classifier.json",
]


@pytest.fixture(scope="module")
def wide_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """The test SMS data and a GPT-2 of width 128: its checkpoint (one block, two AdamW
    moments, the best weights) is ~3 MB, so a write lasts long enough to be caught."""
    root = tmp_path_factory.mktemp("wide-mirror")
    make_hub(root, layers=2, dim=128, heads=4, n_ctx=64, revision=TINY_REVISION)
    member = sms_collection(n_ham=2000, n_spam=500)  # 762 messages: epochs of 0.1 s or more
    with serve_mirror(root, member) as mirror:
        yield mirror


class Stage:
    """A stage run as from a shell: in its own process group (a signal reaches it and its
    children), stdout and stderr on a terminal, so that tqdm draws its progress bars there
    (every step: TQDM_MININTERVAL=0) and the test can tell how far training has got."""

    def __init__(self, cmd: list[str], cwd: Path) -> None:
        leader, terminal = pty.openpty()
        # 50 rows of 200 columns: at its default 0 x 0, tqdm draws empty bars.
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=subprocess_env() | {"TQDM_MININTERVAL": "0"},
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=terminal,
        )
        os.close(terminal)
        self._chunks: list[bytes] = []
        self._leader = leader
        self._reader = threading.Thread(target=self._read, args=(leader,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with contextlib.suppress(OSError):  # EIO once the process has closed the terminal
            while chunk := os.read(fd, 1 << 16):
                self._chunks.append(chunk)
        os.close(fd)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace").replace("\r\n", "\n")

    def last_step(self) -> tuple[int, int, int]:
        """(epoch, step in it, steps in it) of the last step drawn; (0, 0, 0) before any."""
        steps = re.findall(r"epoch (\d+)/\d+:[^|]*\|[^|]*\| (\d+)/(\d+)", self.output)
        return tuple(map(int, steps[-1])) if steps else (0, 0, 0)

    def in_epoch(self, epoch: int) -> bool:
        """Is the last step drawn one of `epoch`, with at least two left (so that the step
        during which a signal arrives is not the epoch's last)?"""
        at, step, steps = self.last_step()
        return at == epoch and 1 <= step <= steps - 2

    def drain(self) -> None:
        """Wait until the reader has taken all the output written so far (of a paused group)."""
        pending = array.array("i", [0])
        with contextlib.suppress(OSError):  # closed: everything was read
            while fcntl.ioctl(self._leader, termios.FIONREAD, pending) == 0 and pending[0]:
                time.sleep(0.001)
        time.sleep(0.1)  # the last chunk read may still be on its way into the list

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group has ended
            os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        """SIGSTOP the group and wait until every process in it has stopped: kill() returns
        before the signal takes effect, and what the test reads next must not change."""
        self.signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while any(state not in "TtZX" for state in group_states(self.proc.pid)):
            assert time.monotonic() < deadline, "the process group did not stop"
            time.sleep(0.001)

    def wait_for(
        self, condition: Callable[[], bool], timeout: float = 300, every: float = 0.002
    ) -> None:
        """Poll until `condition` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)
                raise AssertionError(f"exited {self.proc.returncode} first\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out\n{self.output[-4000:]}")
            time.sleep(every)

    def finish(self) -> tuple[int, str]:
        """(exit code, everything it printed) once it has ended."""
        self.proc.wait(timeout=300)
        self._reader.join(timeout=10)
        return self.proc.returncode, self.output


def group_states(pgid: int) -> list[str]:
    """The state letter (R, S, T, Z, ...) of each process in process group `pgid`."""
    states = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that has just ended
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid:
                states.append(state)
    return states


def finetune(cwd: Path) -> Stage:
    return Stage([sys.executable, "stages/finetune.py"], cwd)


def temp_files(project: Path) -> list[str]:
    return sorted(p.name for p in (project / CHECKPOINT.parent).glob(".checkpoint.pt.*.tmp"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_state(project: Path) -> dict:
    checkpoint = torch.load(project / CHECKPOINT, map_location="cpu", weights_only=True)
    return {
        **checkpoint["state"],
        "run_id": checkpoint["run_id"],
        "best": checkpoint["best_weights"],
    }


def outputs(project: Path) -> dict[str, object]:
    """What an interrupted-then-resumed run must reproduce exactly."""
    found = {}
    for name in ("metrics/train.json", "reports/training.json"):
        train = json.loads((project / name).read_text())
        found[name] = {k: v for k, v in train.items() if k not in TIMING}
    return found | {name: (project / name).read_bytes() for name in REPORTS}


def lock_hashes(project: Path) -> dict[str, str]:
    """Every output's hash in dvc.lock."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def error_line(stderr: str) -> str:
    """The one error line of a stage's stderr (beside its log lines), never a traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in re.split(r"[\r\n]", stderr) if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def paused_in_epoch(project: Path, epoch: int, reset: Callable[[], object]) -> Stage:
    """finetune started and paused in the middle of `epoch`. An epoch lasts ~0.1 s: when the
    poll sees it too late, that attempt is killed, `reset()` puts back what the next needs,
    and training starts again."""
    for _ in range(5):
        proc = finetune(project)
        proc.wait_for(lambda proc=proc: proc.last_step() >= (epoch, 1, 0))
        proc.pause()
        proc.drain()
        if proc.in_epoch(epoch):
            return proc
        proc.signal(signal.SIGKILL)
        proc.finish()
        reset()
    pytest.fail(f"five attempts missed the middle of epoch {epoch}")


@pytest.fixture(scope="module")
def story(wide_mirror: Mirror, empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Drive the project through every interruption in turn; record what each left behind.
    The tests below read the record."""
    # No MLflow model: evaluate runs twice here, and the logged model is other modules' subject
    train = {"epochs": 5, "batch_size": 8, "patience": 10}
    params = tiny_params(wide_mirror, train=train, mlflow={"log_model": False})
    project = make_project(tmp_path_factory.mktemp("finetune"), params)
    shutil.copy(empty_store, project / "mlflow.db")  # a fresh store, made once (conftest)
    seen: dict = {"project": project}
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")

    # Ctrl-C to `dvc repro` while the trunk stage runs (it builds the new data/trunk in a
    # temporary folder beside it, then renames it). The pass lasts ~0.1 s: stop the group as
    # soon as that folder shows, so that the signal lands mid-stage. On a loaded machine the
    # poll can see it too late, after the stage has renamed it: then that attempt tested
    # nothing, and it is made again from where the first began.
    run(["dvc", "repro", "loaders", "baseline"], project)
    lock = (project / "dvc.lock").read_text()
    for _ in range(5):
        (project / "dvc.lock").write_text(lock)
        shutil.rmtree(project / "data/trunk", ignore_errors=True)
        proc = Stage(["dvc", "repro", "trunk"], project)
        proc.wait_for(lambda: any((project / "data").glob(".trunk.*.tmp")))
        proc.pause()
        trunk_done = (project / "data/trunk").exists()
        proc.signal(signal.SIGINT)
        proc.signal(signal.SIGCONT)
        seen["trunk"] = (*proc.finish(), trunk_done)
        seen["trunk_leftovers"] = sorted(p.name for p in (project / "data").glob(".trunk.*"))
        if not trunk_done:
            break
    repro = run(["dvc", "repro"], project)
    seen["after_trunk"] = re.findall(r"Running stage '([^']+)'", repro.stdout)
    seen["reference"] = outputs(project)
    seen["reference_lock"] = lock_hashes(project)
    seen["reference_run"] = json.loads((project / "models/mlflow_run.json").read_text())

    # SIGINT in the middle of epoch 2. An epoch lasts ~0.1 s: when the poll sees it too late,
    # that attempt is killed and training starts again without its checkpoint.
    proc = paused_in_epoch(project, 2, lambda: shutil.rmtree(project / CHECKPOINT.parent))
    proc.signal(signal.SIGINT)
    proc.signal(signal.SIGCONT)
    seen["sigint"] = (*proc.finish(), checkpoint_state(project))
    run_id = seen["sigint"][2]["run_id"]
    seen["sigint_status"] = client.get_run(run_id).info.status

    # A NaN loss: the cached trunk features of the training split turned to NaN.
    trunk_file = project / "data/trunk/train.safetensors"
    good = trunk_file.read_bytes()
    features = load_file(str(trunk_file))
    save_file({**features, "hidden": torch.full_like(features["hidden"], float("nan"))}, trunk_file)
    kept = sha256(project / CHECKPOINT)
    nan = run([sys.executable, "stages/finetune.py"], project, check=False)
    trunk_file.write_bytes(good)
    failed = client.get_run(run_id)
    artifacts = tmp_path_factory.mktemp("artifacts")
    traceback_file = client.download_artifacts(run_id, "error/traceback.txt", str(artifacts))
    seen["nan"] = {
        "returncode": nan.returncode,
        "stderr": nan.stderr,
        "checkpoint_kept": sha256(project / CHECKPOINT) == kept,
        "status": failed.info.status,
        "error_tag": failed.data.tags.get("error", ""),
        "traceback": Path(traceback_file).read_text(),
    }

    # SIGTERM in the middle of epoch 3, as a job scheduler stops a job. An attempt whose poll
    # sees the epoch too late is killed and the checkpoint put back; the steps it logged are
    # in the store once, as after any kill -9.
    resume_from = (project / CHECKPOINT).read_bytes()
    proc = paused_in_epoch(project, 3, lambda: (project / CHECKPOINT).write_bytes(resume_from))
    proc.signal(signal.SIGTERM)
    proc.signal(signal.SIGCONT)
    seen["sigterm"] = (*proc.finish(), checkpoint_state(project))
    seen["sigterm_status"] = client.get_run(run_id).info.status

    # kill -9 while a checkpoint is written: stop the process as soon as a temporary file
    # shows, and kill it if the write is still under way (else let it go on to the next).
    proc = finetune(project)
    while True:
        proc.wait_for(lambda: bool(temp_files(project)), every=0.0005)  # a write: ~10 ms
        proc.pause()
        if temp_files(project):
            complete = sha256(project / CHECKPOINT)
            proc.signal(signal.SIGKILL)
            break
        proc.signal(signal.SIGCONT)
    proc.finish()
    seen["sigkill"] = {
        "temp_files": temp_files(project),
        "checkpoint_kept": sha256(project / CHECKPOINT) == complete,
        "status": client.get_run(run_id).info.status,
    }

    # Resumed from the last complete checkpoint, the run trains to the end; SIGTERM while it
    # writes the model and metrics (Trainer's handler is gone by then: the stage's acts).
    # Should the poll see the model too late, after the results are all written, that attempt
    # is made again from the same checkpoint.
    model_file = project / "models/finetuned/model.safetensors"
    resume_from = (project / CHECKPOINT).read_bytes()
    for _ in range(5):
        model_file.unlink(missing_ok=True)
        (project / CHECKPOINT).write_bytes(resume_from)
        proc = finetune(project)
        proc.wait_for(model_file.exists)
        proc.pause()
        if proc.proc.poll() is None and not checkpoint_state(project)["exported"]:
            break
        proc.signal(signal.SIGCONT)
        proc.finish()
    proc.signal(signal.SIGTERM)
    proc.signal(signal.SIGCONT)
    seen["export"] = (*proc.finish(), checkpoint_state(project), temp_files(project))
    seen["export_status"] = client.get_run(run_id).info.status

    # Everything again, forced: finetune resumes (only its results are left to write).
    repro = run(["dvc", "repro", "-f"], project)
    seen["final_log"] = repro.stdout + repro.stderr
    seen["final"] = outputs(project)
    seen["final_lock"] = lock_hashes(project)
    seen["final_run"] = json.loads((project / "models/mlflow_run.json").read_text())
    seen["run"] = client.get_run(run_id)
    seen["history"] = {
        key: client.get_metric_history(run_id, key) for key in ("train/loss", "val/loss")
    }
    seen["reference_history"] = client.get_metric_history(
        seen["reference_run"]["run_id"], "train/loss"
    )
    return seen


def test_ctrl_c_during_the_trunk_pass(story: dict) -> None:
    returncode, stderr, trunk_done = story["trunk"]
    assert returncode != 0
    assert "interrupted (SIGINT)" in stderr and "exited with 130" in stderr
    assert not trunk_done  # it was stopped mid-stage
    assert story["trunk_leftovers"] == []  # its temporary folder removed
    assert story["after_trunk"] == ["trunk", "audit", "finetune", "evaluate"]


@pytest.mark.parametrize(("name", "epoch"), [("SIGINT", 2), ("SIGTERM", 3)])
def test_signal_mid_epoch_saves_a_checkpoint_and_ends_the_run_killed(
    story: dict, name: str, epoch: int
) -> None:
    returncode, stderr, state = story[name.lower()]
    assert returncode == 130
    assert re.fullmatch(
        rf"error: {name} at step (\d+): checkpoint saved; re-run to resume", error_line(stderr)
    )
    assert state["epoch"] == epoch - 1 and state["batch"] >= 1  # in the middle of `epoch`
    assert f"step {state['step']}:" in stderr
    assert story[f"{name.lower()}_status"] == "KILLED"
    if name == "SIGTERM":
        assert state["step"] > story["sigint"][2]["step"]  # resumed from the SIGINT checkpoint


def test_nan_loss_names_the_step_and_keeps_the_checkpoint(story: dict) -> None:
    nan = story["nan"]
    resumed_at = story["sigint"][2]["step"] + 1
    assert nan["returncode"] == 1
    line = error_line(nan["stderr"])
    assert line.startswith(f"error: training loss is nan at step {resumed_at} ")
    assert nan["checkpoint_kept"]  # epoch 1 and its best weights are still there
    assert story["sigint"][2]["best_evaluation"] == 1 and story["sigint"][2]["best"]
    assert nan["status"] == "FAILED"
    assert f"nan at step {resumed_at}" in nan["error_tag"]
    assert nan["traceback"].startswith("Traceback") and "SpamGPTError" in nan["traceback"]


def test_kill_9_while_a_checkpoint_is_written(story: dict) -> None:
    killed = story["sigkill"]
    assert killed["temp_files"]  # it died mid-write...
    assert killed["checkpoint_kept"]  # ...and the last complete checkpoint is untouched
    assert killed["status"] == "RUNNING"  # nothing could end the run


def test_sigterm_while_results_are_written(story: dict) -> None:
    returncode, stderr, state, temp_left = story["export"]
    assert returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted (SIGTERM)"
    assert "Traceback" not in stderr
    assert state["finished"] and not state["exported"]
    assert temp_left == []  # the resumed run removed what kill -9 left
    assert story["export_status"] == "KILLED"
    assert "training is done, writing its results" in story["final_log"]


def test_resumed_training_ends_exactly_where_the_uninterrupted_one_did(story: dict) -> None:
    assert story["final"] == story["reference"]


def test_one_mlflow_run_holds_every_step_once(story: dict) -> None:
    run_ = story["run"]
    assert story["final_run"]["run_id"] == run_.info.run_id != story["reference_run"]["run_id"]
    assert run_.info.status == "FINISHED"
    assert "error" not in run_.data.tags  # the NaN failure was overcome
    losses = sorted((m.step, m.value) for m in story["history"]["train/loss"])
    reference = sorted((m.step, m.value) for m in story["reference_history"])
    assert [step for step, _ in losses] == list(range(1, len(reference) + 1))
    assert losses == reference
    assert sorted(m.step for m in story["history"]["val/loss"]) == [1, 2, 3, 4, 5]


def test_repro_f_regenerates_identical_outputs(story: dict) -> None:
    """Determinism: `dvc repro -f` recomputes every stage (finetune resuming, see above) and
    each output hashes as in the first run, the model included, but for the timing fields of
    train.json and training.json, the stages' timelines (reports/timelines/: seconds) and
    the MLflow run id in the checkpoint and in models/mlflow_run.json."""
    changed = {
        path
        for path, md5 in story["final_lock"].items()
        if story["reference_lock"].get(path) != md5 and not path.startswith("reports/timelines/")
    }
    assert changed == {
        "metrics/train.json",
        "reports/training.json",
        "models/checkpoints",
        "models/mlflow_run.json",
    }


def test_malicious_checkpoint_is_refused_unexecuted(story: dict) -> None:
    project = story["project"]
    marker = project / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state": Payload()}, project / CHECKPOINT)
    result = run([sys.executable, "stages/finetune.py"], project, check=False)
    assert result.returncode == 1
    line = error_line(result.stderr)
    assert line.startswith(f"error: {CHECKPOINT}: refused: it holds pickled objects")
    assert not marker.exists()


def finetune_outputs(project: Path) -> dict[str, object]:
    """What finetune writes that a resumed run must reproduce exactly."""
    found = outputs(project)
    return {name: found[name] for name in found if name.startswith(("models/", "metrics/t"))} | {
        "metrics/val_epochs.csv": found["metrics/val_epochs.csv"]
    }


@pytest.fixture(scope="module")
def eval_every_story(
    story: dict, empty_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """train.eval_every: 20 in a copy of the story's project (its trunk cache; a new MLflow
    store): finetune uninterrupted, then again killed with -9 in epoch 2, so that it resumes
    from the checkpoint of a mid-epoch evaluation, then resumed."""
    project = tmp_path_factory.mktemp("eval-every") / "project"
    ignore = shutil.ignore_patterns("mlflow.db*", "mlartifacts", "checkpoints")
    shutil.copytree(story["project"], project, ignore=ignore)
    shutil.copy(empty_store, project / "mlflow.db")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(epochs=2, eval_every=20)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "stages/finetune.py"], project)
    seen = {"reference": finetune_outputs(project)}
    proc = paused_in_epoch(project, 2, lambda: shutil.rmtree(project / CHECKPOINT.parent))
    proc.signal(signal.SIGKILL)
    proc.finish()
    seen["killed"] = checkpoint_state(project)
    run([sys.executable, "stages/finetune.py"], project)
    seen["resumed"] = finetune_outputs(project)
    return seen


def test_kill_9_mid_epoch_with_eval_every_resumes_exactly(eval_every_story: dict) -> None:
    killed = eval_every_story["killed"]
    assert not killed["exported"] and not killed["finished"]
    assert killed["step"] % 20 == 0 and killed["batch"] > 0  # a mid-epoch evaluation's
    assert [entry["step"] for entry in killed["history"]] == list(range(20, killed["step"] + 1, 20))
    reference, resumed = eval_every_story["reference"], eval_every_story["resumed"]
    assert resumed == reference
    steps = list(pd.read_csv(io.BytesIO(reference["metrics/val_epochs.csv"]))["step"])
    last = len(pd.read_csv(io.BytesIO(reference["metrics/train_loss.csv"])))  # a row a step
    assert steps == sorted({*range(20, last + 1, 20), last})  # and once after the last step
