"""MLflow wiring, in one place: where runs are stored, how a run starts, resumes and ends,
what it is tagged with, and metrics buffered into few database writes.

Runs go to MLFLOW_TRACKING_URI when set, else to SQLite at the repository root (mlflow.db,
artifacts in mlartifacts/ beside it). The root is found from DVC_ROOT, and a temporary copy
made by `dvc exp run --temp` or `--queue` (under <repo>/.dvc/tmp/exps/) maps back to <repo>,
so such runs land in the same store as plain `dvc repro` runs instead of being lost with the
copy.
"""

import contextlib
import fcntl
import os
import sqlite3
import subprocess
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from spamgpt import interrupts, paths
from spamgpt.errors import SpamGPTError

# The warning MLflow gives when two of its source classes claim a dataset's source, here the
# same one twice (mlflow.data registers LocalArtifactDatasetSource twice)
AMBIGUOUS_SOURCE = r"The specified dataset source can be interpreted in multiple ways: (\w+), \1\. "

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
BATCH_LIMIT = 1000  # MLflow's cap on metrics per log_batch call

T = TypeVar("T")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.repo_root() / DB_FILE}"


def _retry(call: Callable[[], T], attempts: int = 8) -> T:
    """SQLite allows one writer: parallel runs (dvc queue start -j 2) can meet 'database is
    locked'. Back off and try again rather than lose the run."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as e:
            if "database is locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _check_database(db: Path) -> None:
    """The store's file, where there is one, is an SQLite database: a text file or a truncated
    database is one line naming it, not SQLAlchemy's traceback when MLflow opens it. Read-only
    (the file is left as it is); a database another process is writing (locked) is MLflow's
    to wait for."""
    if not db.is_file():  # none yet: MLflow makes it
        return
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0)
        ) as database:
            database.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:  # locked, or not readable now: not a matter of its format
        return
    except sqlite3.DatabaseError as e:  # "file is not a database", "... image is malformed"
        raise SpamGPTError(
            f"{db} is not an SQLite database ({e}); MLflow's store there must be one, or no "
            f"file (a new store is made): move it away, or set MLFLOW_TRACKING_URI to another "
            f"store"
        ) from None


def _create_store(uri: str, db: Path) -> None:
    """Create the SQLite store (tables, schema migrations, MLflow's default experiment) under
    an exclusive lock. MLflow does this unguarded on first use, so parallel runs on a fresh
    database (dvc queue start -j 2) fail with 'table already exists' or 'duplicate column'.
    Once created, opening it is safe in parallel and this costs one lock and one query."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        _retry(lambda: MlflowClient(uri).search_experiments(max_results=1))


def connect(timeout: float = 10.0) -> str:
    """Point MLflow at the store and check it answers, before any training is done."""
    uri = tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        _check_database(db)  # before the lock file is made beside it: a refusal leaves nothing
        _create_store(uri, db)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SpamGPTError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, or unset "
                f"MLFLOW_TRACKING_URI to record runs in {paths.repo_root() / DB_FILE}"
            ) from None
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """The experiment's id, created on first use (artifacts beside a local SQLite store)."""
    client = MlflowClient()
    found = _retry(lambda: client.get_experiment_by_name(name))
    if found is not None:
        return found.experiment_id
    # Beside a SQLite file, not MLflow's default ./mlruns of whatever the working directory
    # is; a server (http) or another database keeps its own artifact root.
    db = _sqlite_path(mlflow.get_tracking_uri())
    location = (db.parent / ARTIFACTS_DIR).as_uri() if db is not None else None
    try:
        return _retry(lambda: client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created meanwhile by a parallel run
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.repo_root(), capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def run_tags(data_sha256: str, weights_sha256: str) -> dict[str, str]:
    """What a training run is tagged with: the git commit, the data's and the pretrained
    weights' hashes, and the DVC experiment it belongs to when run by `dvc exp run`."""
    names = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
    return {
        "mlflow.source.git.commit": git_commit() or "",
        "data_sha256": data_sha256,
        "weights_sha256": weights_sha256,
        **{name: os.environ[name] for name in names if os.environ.get(name)},
    }


class Run:
    """One MLflow run, driven through the client so metrics can be buffered."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = MlflowClient()
        self._pending: list[Metric] = []
        self._logged_until: dict[str, int] = {}  # key -> last step already in the store

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        experiment: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        skip_logged_steps: bool = False,
    ) -> Iterator["Run"]:
        """Start a run (or reopen `run_id`); end it FINISHED, KILLED on Ctrl-C/SIGTERM, or
        FAILED with the error as a tag, and always flush buffered metrics first.

        `skip_logged_steps`: a resumed training replays steps the store may already hold
        (flushed before a kill -9): log each (key, step) once. Off, a value logged again
        (evaluate re-run with a new threshold) replaces the old one as the run's latest."""
        if run_id is None:
            exp_id = experiment_id(experiment)
            name = os.environ.get("DVC_EXP_NAME") or None
            run = _retry(lambda: MlflowClient().create_run(exp_id, run_name=name, tags=tags))
            run_id = run.info.run_id
        else:
            existing = _existing_run(run_id)
            _retry(lambda: MlflowClient().update_run(run_id, status="RUNNING"))
            # A resumed run that failed before: its error no longer describes it (the
            # traceback artifact stays, as the record of what happened).
            if "error" in existing.data.tags:
                _retry(lambda: MlflowClient().delete_tag(run_id, "error"))
            if tags:
                for key, value in tags.items():
                    _retry(lambda k=key, v=value: MlflowClient().set_tag(run_id, k, v))
        self = cls(run_id)
        if skip_logged_steps:
            self._logged_until = self._last_steps()
        status = "FINISHED"
        try:
            yield self
        except BaseException as e:
            status = "KILLED" if _is_interruption(e) else "FAILED"
            with contextlib.suppress(Exception):
                self.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
                self.log_text(traceback.format_exc(), "error/traceback.txt")
            raise
        finally:
            with contextlib.suppress(Exception):
                self.flush()
            _retry(lambda: self.client.set_terminated(self.run_id, status=status))

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            _retry(
                lambda chunk=items[i : i + 100]: self.client.log_batch(self.run_id, params=chunk)
            )

    def set_tag(self, key: str, value: str) -> None:
        _retry(lambda: self.client.set_tag(self.run_id, key, value))

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        """Buffered: written in batches of up to 1000, so per-step logging stays cheap. Steps
        the store already holds (a resumed run replaying them) are not written twice."""
        now = int(time.time() * 1000)
        self._pending.extend(
            Metric(k, float(v), now, step)
            for k, v in values.items()
            if step > self._logged_until.get(k, -1)
        )
        if len(self._pending) >= BATCH_LIMIT:
            self.flush()

    def _last_steps(self) -> dict[str, int]:
        run = _retry(lambda: self.client.get_run(self.run_id))
        return {
            key: max(
                m.step for m in _retry(lambda k=key: self.client.get_metric_history(self.run_id, k))
            )
            for key in run.data.metrics
        }

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:BATCH_LIMIT], self._pending[BATCH_LIMIT:]
            _retry(lambda c=chunk: self.client.log_batch(self.run_id, metrics=c))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        _retry(lambda: self.client.log_figure(self.run_id, figure, artifact_file))

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        _retry(lambda: self.client.log_dict(self.run_id, obj, artifact_file))

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        """A table MLflow's UI shows as one (artifact_file: a .json path)."""
        _retry(lambda: self.client.log_table(self.run_id, frame, artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_dataset(
        self, frame: pd.DataFrame, name: str, sha256: str, source: str, context: str = "training"
    ) -> None:
        """Data as an MLflow dataset input, used in `context` (training, validation, testing).
        MLflow caps digests at 36 characters: the digest is the sha256's prefix, the whole
        hash is a tag beside it."""
        with warnings.catch_warnings():
            # MLflow registers its local-file source class twice, then calls a local path
            # ambiguous between the two (the same class): a warning no user can act on.
            warnings.filterwarnings("ignore", AMBIGUOUS_SOURCE, UserWarning)
            dataset = mlflow.data.from_pandas(
                frame[["label", "text"]],
                source=source,
                targets="label",
                name=name,
                digest=sha256[:36],
            )
        tags = [InputTag("mlflow.data.context", context), InputTag("sha256", sha256)]
        entity = DatasetInput(Dataset(**dataset.to_dict()), tags=tags)
        _retry(lambda: self.client.log_inputs(self.run_id, datasets=[entity]))


def _existing_run(run_id: str) -> mlflow.entities.Run:
    """The run to reopen (named by a checkpoint or models/mlflow_run.json); one that the store
    does not hold is one line, not MLflow's traceback."""
    try:
        return _retry(lambda: MlflowClient().get_run(run_id))
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise SpamGPTError(
            f"MLflow run {run_id} is not in {tracking_uri()} (deleted, or another store?): "
            f"set MLFLOW_TRACKING_URI to the store that holds it, or train and record anew: "
            f"rm -r models/checkpoints && dvc repro -f finetune"
        ) from None


def _is_interruption(e: BaseException) -> bool:
    # Some extensions turn the KeyboardInterrupt of a signal into another error (see stage).
    return (
        isinstance(e, KeyboardInterrupt)
        or getattr(e, "exit_code", None) == 130
        or interrupts.received() is not None
    )
