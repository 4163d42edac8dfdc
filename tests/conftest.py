"""Fixtures shared by the end-to-end tests: a generated SMS dataset and a tiny GPT-2, served
over HTTP on 127.0.0.1 like UCI and the Hugging Face hub, and a DVC project pointed at them."""

import contextlib
import hashlib
import io
import json
import locale
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml
from fileserver import serve
from mlflow.tracking import MlflowClient

from spamgpt import paths, runtime, tracking
from spamgpt.data import tokenizer
from spamgpt.model import classifier
from spamgpt.random_hub import make_hub
from spamgpt.serve import cli

REPO = Path(__file__).resolve().parents[1]
TINY_REVISION = "tiny-test"  # not in the known-hash table: accepted with a warning, recorded
# dvc.yaml's stages, in an order that runs each after what it needs
STAGES = [
    "download_data",
    "download_weights",
    "split",
    "baseline",
    "loaders",
    "trunk",
    "audit",
    "finetune",
    "evaluate",
]

HAM = [
    "Ok lar, see you at {n} then",
    "Can you pick up some milk on the way home?",
    'He said "I will be late, sorry',
    "Sorry, I'll call you later. In a meeting till {n}",
    "Are we still on for dinner tomorrow at {n}?",
    "Happy birthday! Hope you have a great day",
    "I'm at the station, where are you",
    "Thanks for yesterday, it was lovely, talk soon",
    "Don't forget mum's party on Saturday, {n} pm",
    "Running {n} mins late, traffic is awful",
]
SPAM = [
    "WINNER!! You have won a £{n}00 prize! Call 0906170{n} to claim now",
    'FREE entry to win "cash" txt WIN to 8{n}21 T&Cs apply',
    "URGENT! Your mobile number has been awarded £{n}000. Call 09061{n} now",
    "Congratulations, you've been selected for a FREE holiday. Reply YES to {n}",
    "Claim your free ringtone now! Text TONE to 8{n}75, 150p/msg",
]


def sms_collection(n_ham: int = 240, n_spam: int = 60, seed: int = 0) -> bytes:
    """A small SMS Spam Collection look-alike: `label<TAB>text` lines, unbalanced quotes,
    and a few exact duplicates, as in the real file."""
    rng = random.Random(seed)
    lines = [f"ham\t{rng.choice(HAM).format(n=rng.randint(1, 99))}" for _ in range(n_ham)]
    lines += [f"spam\t{rng.choice(SPAM).format(n=rng.randint(1, 99))}" for _ in range(n_spam)]
    rng.shuffle(lines)
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Mirror:
    """A local stand-in for UCI + the hub: the URLs and hashes a params.yaml needs."""

    url: str  # http://127.0.0.1:PORT
    root: Path
    data_sha256: str

    @property
    def zip_url(self) -> str:
        return f"{self.url}/sms+spam+collection.zip"


@contextlib.contextmanager
def serve_mirror(root: Path, member: bytes) -> Iterator[Mirror]:
    """Serve `root` (hubs made by make_hub) on 127.0.0.1, with `member` zipped as UCI
    ships the SMS Spam Collection (beside a readme)."""
    with zipfile.ZipFile(root / "sms+spam+collection.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("SMSSpamCollection", member)
        z.writestr("readme", "generated for tests\n")
    with serve(root) as url:
        yield Mirror(url, root, hashlib.sha256(member).hexdigest())


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    root = tmp_path_factory.mktemp("mirror")
    make_hub(root, layers=2, dim=32, heads=4, n_ctx=64, revision=TINY_REVISION)
    with serve_mirror(root, sms_collection()) as mirror:
        yield mirror


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store (mlflow.db) as the first run of a project creates it: its tables,
    their migrations and the default experiment. Made once: a copy is a fresh store, without
    the seconds each creation takes (a hundred statements, each committed to disk)."""
    db = tmp_path_factory.mktemp("empty-store") / tracking.DB_FILE
    MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


def subprocess_env() -> dict[str, str]:
    """The environment for dvc/python subprocesses: this venv first on PATH, no telemetry,
    no tracking URI or Hugging Face variable (HF_HUB_OFFLINE, HF_ENDPOINT) from outside, a
    git identity for commits on a bare CI machine, and bash as the shell DVC runs each
    stage's cmd with (it takes $SHELL, else /bin/sh). Where /bin/sh is dash and $SHELL is
    unset, as on a CI machine, dash does not hand the process over to the stage: a Ctrl-C
    kills dash itself, and DVC reports that, not the stage's exit. torch's OpenMP threads
    sleep at a barrier instead of spinning (OMP_WAIT_POLICY=PASSIVE): the tests run processes
    side by side (bench scripts, queued experiments, a stage beside a test that polls it), and
    a spinning thread keeps the other process off its core (docs/how-it-is-fast.md)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "HF_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="spamgpt tests",
        GIT_AUTHOR_EMAIL="tests@spamgpt.invalid",
        GIT_COMMITTER_NAME="spamgpt tests",
        GIT_COMMITTER_EMAIL="tests@spamgpt.invalid",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
        SHELL=shutil.which("bash") or "/bin/bash",
        OMP_WAIT_POLICY="PASSIVE",
    )
    return env


def run_stage(name: str, cwd: Path, **popen: object) -> subprocess.Popen:
    """A stage script of this repository, started in `cwd` (a workspace with params.yaml)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(REPO / "stages" / f"{name}.py")],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@contextlib.contextmanager
def restored_tracking_uri() -> Iterator[None]:
    """MLflow's tracking URI is process-wide: whatever the block sets it to (or a stage's
    tracking.connect() does), the tests after it get the previous one back."""
    previous = mlflow.get_tracking_uri()
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def as_ranks_0_and_1(rank0: Callable[[], object], rank1: Callable[[], None]) -> object:
    """rank1() in a fork of this process and rank0() here, as torchrun's ranks 1 and 0 of a
    gloo group (each joins it in its function): the fork never returns into pytest, an alarm
    ends it if a collective waits for ever (a bug), the group is torn down here after rank 0,
    and the fork must have exited 0. Returns rank0()'s value."""
    import torch.distributed as dist

    child = os.fork()
    if child == 0:
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(60)
            rank1()
            code = 0
        finally:
            os._exit(code)
    try:
        mine = rank0()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return mine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def http_service(
    command: Callable[[int], list[str]],
    ready_path: str,
    env: dict[str, str],
    log: Path,
    cwd: Path | None = None,
) -> Iterator[str]:
    """Run `command(port)` on a free 127.0.0.1 port (in `cwd`), in its own process group (its
    workers die with it), output to `log`; yield its base URL once GET `ready_path` answers;
    then stop it."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            command(port),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server not up (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}{ready_path}", timeout=2):
                    break
            except OSError:  # refused, or not ready yet (URLError, HTTPError)
                time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have died on its own
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def post(url: str, payload: dict) -> dict:
    """POST `payload` as JSON; the JSON answer."""
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON object per line, as a JSON Lines data file holds them."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def run(cmd: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env=kwargs.pop("env", subprocess_env()),
        capture_output=True,
        text=True,
        **kwargs,
    )
    if check and result.returncode != 0:
        tail = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{tail}")
    return result


def spamgpt(args: list[str], cwd: Path) -> str:
    """What `spamgpt ARGS` prints, run in `cwd` in this process (cli.main): the command's
    output without a Python start and torch's import. A failing command raises SystemExit,
    its error line on stderr."""
    printed, before = io.StringIO(), os.getcwd()
    os.chdir(cwd)  # not contextlib.chdir: Python 3.10 has none
    try:
        with contextlib.redirect_stdout(printed):
            cli.main(args)
    finally:
        os.chdir(before)
    return printed.getvalue()


def tiny_params(mirror: Mirror, **overrides: dict) -> dict:
    """The repository's params.yaml pointed at the mirror, sized for a 2-block toy model."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(url=mirror.zip_url, mirrors=[], sha256=mirror.data_sha256)
    params["split"].update(val=0.2, test=0.2)
    params["model"].update(hub_url=mirror.url, revision=TINY_REVISION)
    params["train"].update(epochs=2, batch_size=16, lr=1e-3, device="cpu", precision="fp32")
    for section, values in overrides.items():
        params[section].update(values)
    return params


def make_project(path: Path, params: dict, store: Path | None = None) -> Path:
    """A fresh git + DVC project holding this repository's pipeline and the given params;
    `store`, an MLflow store to start from (empty_store: a fresh one, without the seconds
    finetune takes to create it; git ignores it)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in paths.PIPELINE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, path / name)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path)
    run(["dvc", "init", "-q"], path)
    shutil.copytree(REPO / paths.PLOT_TEMPLATES, path / paths.PLOT_TEMPLATES)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "project"], path)
    if store is not None:
        shutil.copy(store, path / tracking.DB_FILE)
    return path


@dataclass
class Reproduced:
    """A project of tiny_params(mirror) after its first `dvc repro`."""

    path: Path  # test_pipeline.py's alone: its tests change it
    output: str  # what that `dvc repro` printed
    snapshot: Path  # the project as the repro left it, without its MLflow store: see copy()

    def copy(self, dest: Path) -> Path:
        """A reproduced project of its own at `dest`, every stage's outputs in place and no
        MLflow store yet (models/mlflow_run.json names a run of the original's)."""
        shutil.copytree(self.snapshot, dest, symlinks=True)
        return dest


@pytest.fixture(scope="session")
def reproduced(mirror: Mirror, tmp_path_factory: pytest.TempPathFactory) -> Reproduced:
    """The whole pipeline run once for the modules that start from its results."""
    path = make_project(tmp_path_factory.mktemp("project"), tiny_params(mirror))
    first = run(["dvc", "repro"], path)
    snapshot = tmp_path_factory.mktemp("reproduced") / "project"
    store = shutil.ignore_patterns(f"{tracking.DB_FILE}*", tracking.ARTIFACTS_DIR)
    shutil.copytree(path, snapshot, symlinks=True, ignore=store)
    return Reproduced(path, first.stdout + first.stderr, snapshot)


def expected_answers(
    model_dir: Path,
    texts: list[str],
    threshold: float | None,
    pretrained_root: Path = paths.PRETRAINED_DIR,
    temperature: float | dict[str, float] | None = None,
) -> list[dict]:
    """The prediction path's answers to `texts`, computed in this process: the model folder
    loaded (`temperature` folded into its head: evaluate's, as classify applies it), its
    probabilities (classify_texts, on the device and precision `spamgpt classify` and the
    served model resolve), then classifier.answers at `threshold`."""
    model, meta = classifier.load(model_dir, pretrained_root, temperature)
    device = runtime.resolve_device("auto")
    compute = runtime.Compute(device, runtime.resolve_precision("auto", device))
    enc = tokenizer.load(model_dir)
    probs, _ = classifier.classify_texts(model.to(device), enc, texts, meta["max_length"], compute)
    return classifier.answers(probs, classifier.classes_of(meta), threshold)


def evaluated_temperature(project: Path) -> float | dict[str, float] | None:
    """The temperature evaluate fitted in `project` (models/calibration.json)."""
    calibration = read_json(project / paths.CALIBRATION)
    return None if calibration["method"] == "none" else calibration["temperature"]


def assert_same_answers(
    labels: list[str],
    spam_probabilities: list[float],
    expected: list[dict],
    threshold: float,
    tolerance: float = 1e-5,
) -> None:
    """Answers another process gave (labels, and spam probabilities as it printed them, to
    `tolerance`) are the prediction path's. A label is compared unless its probability is
    within the tolerance of the threshold, where the last bits of a sum decide."""
    assert len(labels) == len(spam_probabilities) == len(expected)
    for label, probability, answer in zip(labels, spam_probabilities, expected, strict=True):
        assert probability == pytest.approx(answer["spam_probability"], abs=tolerance)
        near = abs(answer["spam_probability"] - threshold) <= tolerance
        assert label == answer["label"] or near


@pytest.fixture
def ascii_locale() -> Iterator[None]:
    """The C locale's ASCII as open()'s default encoding during the test: a file opened
    without encoding="utf-8" then fails on non-ASCII text (under the C.UTF-8 the tests run
    in, it would not show). Nothing to see in Python's UTF-8 mode (PYTHONUTF8=1)."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


@pytest.fixture
def local_store(
    tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MlflowClient]:
    """tracking.connect() pointed at a fresh SQLite store under tmp_path, in this process."""
    shutil.copy(empty_store, tmp_path / tracking.DB_FILE)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with restored_tracking_uri():
        yield MlflowClient(tracking_uri=tracking.connect())


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """tracking's sleeps between attempts, recorded instead of slept."""
    sleeps: list[float] = []
    monkeypatch.setattr(tracking, "time", SimpleNamespace(sleep=sleeps.append, time=time.time))
    return sleeps


@pytest.fixture
def threads_restored() -> Iterator[None]:
    """`spamgpt classify` and the other commands set torch's intra-op threads to the cores
    (runtime.use_all_cores): set back after each test (`pytestmark =
    pytest.mark.usefixtures("threads_restored")` in a module whose tests run them). A process
    forked while more than one is set (mutmut runs each mutant's tests in a fork of the
    process that ran them all) waits for ever on the first parallel op: the fork has no copy
    of the OpenMP threads."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_core() -> Iterator[None]:
    """The test's process may run on one core (as in a container of one CPU), so runtime.setup
    gives torch one intra-op thread. For tests that run a command in this process under
    tools/mutate.py: mutmut forks each mutant's run from a process that ran the tests, and
    OpenMP's threads, once started there, do not survive the fork (the run hangs in its first
    parallel op)."""
    import torch

    cores = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if cores is not None:
        os.sched_setaffinity(0, {min(cores)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if cores is not None:
        os.sched_setaffinity(0, cores)


@pytest.fixture(scope="module")
def tqdm_thread_lock() -> Iterator[None]:
    """tqdm's bars locked by a lock of this process only. Its default lock includes a
    multiprocessing one, shared with every process forked from here: mutmut forks each
    mutant's run (tools/mutate.py), and a run killed while holding it (a timeout) left every
    later run waiting for it forever."""
    import threading

    from tqdm import tqdm

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tqdm, "_lock", threading.RLock(), raising=False)
        yield
