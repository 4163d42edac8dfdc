"""The one way a fine-tuned model is loaded for inference: `spamgpt classify`, `predict`,
`export` and the MLflow model's load_context all call load_model (or opened, where the
model's files are needed while it is in use).

A source is one of:

- a fine-tuned model folder (models/finetuned: classifier.json, the tensors, the tokenizer
  files), its base weights from `pretrained_root`; the threshold is the one evaluate chose
  (metrics/eval.json), as the folder has none of its own;
- an MLflow model URI: runs:/<run_id>/model, models:/<name>/<version> (or @alias), or any
  artifact URI with a scheme (s3://, mlflow-artifacts://, file://), downloaded from the
  tracking store MLFLOW_TRACKING_URI or the project's mlflow.db names; the threshold is the
  one logged with it (model_config);
- an MLflow model folder on disk (its MLmodel file, as `mlflow artifacts download` leaves it).

The artifact folder inside a logged model (what MLflow hands the model's load_context) is
load_artifact's: the workspace's evaluation is not its own.

A logged model is light (the trained tensors and base.json, the identity of the base weights,
found by resolve_base) or full (every tensor). A transformers export is not a source: it has
lost the head's bias (folded into ln_f) and the tokenization settings; transformers loads it.
"""

import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tiktoken

from spamgpt import contracts, paths
from spamgpt.data import hub, tokenizer
from spamgpt.data.download import sha256_file
from spamgpt.errors import SpamGPTError
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2Classifier

# The one rule telling a logged model from a folder: these prefixes, or a scheme's "://".
MLFLOW_PREFIXES = ("runs:/", "models:/")
ARTIFACT = "classifier"  # the classifier folder's name among a logged model's artifacts
BASE_JSON = "base.json"  # in a light model's artifact folder: which base weights it needs
MLMODEL = "MLmodel"  # the file that makes a folder an MLflow model
CACHE_ENV = "SPAMGPT_CACHE"  # where light models keep base weights downloaded from the hub
HUB_ENV = "SPAMGPT_HUB_URL"  # a hub (or mirror) to use instead of the one the model names
SOURCES = (
    "a fine-tuned model folder (models/finetuned), an MLflow model folder, "
    "runs:/<run_id>/model or models:/<name>/<version>"
)


@dataclasses.dataclass(frozen=True)
class BaseWeights:
    """The pretrained weights a light model is trained on top of."""

    repo_id: str
    revision: str
    sha256: str  # of model.safetensors
    hub_url: str

    def describe(self) -> str:
        return f"{self.repo_id}@{self.revision} (model.safetensors sha256 {self.sha256[:12]}...)"


@dataclasses.dataclass
class LoadedModel:
    """A fine-tuned classifier ready to score texts."""

    model: GPT2Classifier  # in eval mode, on the CPU
    meta: dict  # its classifier.json
    enc: tiktoken.Encoding
    folder: Path  # its classifier folder (tokenizer files); only inside opened()'s block
    threshold: float | dict[str, float] | None  # the one it was evaluated or logged with


def is_logged(source: str | os.PathLike) -> bool:
    """Whether `source` names a logged MLflow model rather than a folder on this machine."""
    source = str(source)
    return source.startswith(MLFLOW_PREFIXES) or "://" in source


def load_model(
    source: str | os.PathLike,
    pretrained_root: str | os.PathLike = paths.PRETRAINED_DIR,
    setting: str = "--model",
) -> LoadedModel:
    """The model `source` names (see the module's docstring); `setting`: the flag or key the
    source came from, which errors name."""
    with opened(source, pretrained_root, setting) as loaded:
        return loaded


@contextmanager
def opened(
    source: str | os.PathLike,
    pretrained_root: str | os.PathLike = paths.PRETRAINED_DIR,
    setting: str = "--model",
) -> Iterator[LoadedModel]:
    """load_model, with the model's folder kept (a logged model's download) for the block."""
    if is_logged(source):
        with tempfile.TemporaryDirectory() as tmp:
            folder = download_logged(str(source), tmp, setting)
            yield _from_mlflow_model(folder, pretrained_root, str(source))
        return
    folder = Path(source)
    if (folder / MLMODEL).is_file():
        yield _from_mlflow_model(folder, pretrained_root, str(source))
    elif (folder / classifier.CLASSIFIER_JSON).is_file():
        yield _loaded(
            folder,
            pretrained_root,
            contracts.read_threshold(),
            contracts.read_temperature(),
            contracts.read_shift(),
        )
    elif _is_transformers_export(folder):
        raise SpamGPTError(
            f"{setting} {source} is a transformers export: load it with transformers "
            f"(GPT2ForSequenceClassification); {setting} takes {SOURCES}"
        )
    else:
        what = "no such folder" if not folder.exists() else "not a model (no classifier.json)"
        raise SpamGPTError(f"{setting} {source}: {what}; {setting} takes {SOURCES}")


def load_artifact(folder: str | os.PathLike) -> LoadedModel:
    """The classifier folder of a logged model (what MLflow hands the model's load_context):
    the temperature its classifier.json names, or none where it was logged uncalibrated; never
    the working directory's evaluation and calibration, which are another run's."""
    return _loaded(Path(folder), paths.PRETRAINED_DIR, None)


def _is_transformers_export(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "architectures" in config


def _from_mlflow_model(
    folder: Path, pretrained_root: str | os.PathLike, source: str
) -> LoadedModel:
    """The classifier of an MLflow model folder, with the threshold logged in its config."""
    from mlflow.models import Model  # MLflow: only where a logged model is asked for

    config = Model.load(folder).flavors.get("python_function", {}).get("config") or {}
    artifact = folder / "artifacts" / ARTIFACT
    if not (artifact / classifier.CLASSIFIER_JSON).is_file():
        raise SpamGPTError(f"{source} is an MLflow model not logged by spamgpt")
    return _loaded(artifact, pretrained_root, config.get("threshold"))


def _loaded(
    folder: Path,
    pretrained_root: str | os.PathLike,
    threshold: float | dict | None,
    temperature: float | dict | None = None,
    shift: dict[str, float] | None = None,
) -> LoadedModel:
    """The classifier folder `folder`: a light logged one on its base weights (found as
    resolve_base says), else on `pretrained_root`'s (or none: every tensor inside); its head
    takes `temperature` and `shift` (a fine-tuned folder's: evaluate's) unless its
    classifier.json names a temperature (a logged model's): classifier.load."""
    base_file = folder / BASE_JSON
    if base_file.exists():
        base = BaseWeights(**json.loads(base_file.read_text(encoding="utf-8")))
        pretrained_root = resolve_base(base)
    model, meta = classifier.load(folder, pretrained_root, temperature, shift)
    return LoadedModel(model, meta, tokenizer.load(folder), folder, threshold)


def download_logged(uri: str, dest: str | os.PathLike, setting: str = "--model") -> Path:
    """The MLflow model `uri` downloaded into `dest`: its folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from spamgpt import tracking

    tracking.connect()  # the store MLFLOW_TRACKING_URI or the project's mlflow.db names
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except (MlflowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpamGPTError(f"{setting} {uri}: {first}") from None
    if not (local / MLMODEL).is_file():
        raise SpamGPTError(f"{setting} {uri} is not an MLflow model (no MLmodel file)")
    return local


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spamgpt")


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path: Path, inode: int, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _sha256_of(path: Path) -> str:
    """sha256_file, once per version of a file in this process (its inode, size and mtime, as
    DVC's state database keys its hashes): logging a light model loads it twice (MLflow's run
    of the input example, its serving check), each time checking the same base weights."""
    stat = path.stat()
    return _sha256_of_version(path, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def resolve_base(base: BaseWeights) -> Path:
    """A folder that holds <repo_id>/{config.json, model.safetensors} of exactly these
    weights (classifier.load's pretrained_root): the workspace's models/pretrained when its
    model.safetensors has the hash, else the cache, each file taken into it by
    hub.fetch_file. Raises SpamGPTError, one line, when neither gives them."""
    seen, tried = set(), []
    for root in (Path.cwd(), paths.repo_root()):
        candidate = (root / paths.PRETRAINED_DIR).resolve()
        weights = candidate / base.repo_id / classifier.WEIGHTS
        if candidate in seen or not weights.is_file():
            continue
        seen.add(candidate)
        if _sha256_of(weights) == base.sha256:
            return candidate
        tried.append(f"{weights} holds other weights")
    cached = cache_root() / base.revision
    hub_url = os.environ.get(HUB_ENV) or base.hub_url
    known = hub.KNOWN_HASHES.get((base.repo_id, base.revision), {})
    expected = {"config.json": known.get("config.json"), classifier.WEIGHTS: base.sha256}
    try:
        missing = []
        for name, sha in expected.items():
            target = cached / base.repo_id / name
            # The cache holds this revision's files only: one with no known hash is kept.
            kept = _sha256_of(target) if sha is None and target.is_file() else None
            if (
                hub.fetch_file(hub_url, base.repo_id, base.revision, name, target, sha, kept)
                is None
            ):
                missing.append(name)
        if missing:
            raise hub.offline_error(base.repo_id, base.revision, missing, cached)
    except SpamGPTError as e:
        tried.append(str(e))
        raise SpamGPTError(
            f"base weights {base.describe()} not found: {'; '.join(tried)}; put them in "
            f"models/pretrained/{base.repo_id}, set {HUB_ENV} to a hub that has them, or log "
            f"the model with mlflow.log_model: full"
        ) from None
    return cached
