"""spamgpt.serve.loader: the one rule telling an MLflow model from a folder, and one line naming
--model and what it takes for a source that is neither, from each command that loads a model.
(Loading each kind of source, answers compared: test_serving.py, test_predict.py,
test_export.py.)"""

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import restored_tracking_uri
from fileserver import serve
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from test_serving import finetuned_folder

from spamgpt.data import hub, tokenizer
from spamgpt.data.download import sha256_file
from spamgpt.errors import SpamGPTError
from spamgpt.model import classifier
from spamgpt.serve import cli, loader

ALLOWED = "--model takes " + loader.SOURCES

# commands run in this process set torch's threads (conftest's threads_restored)
pytestmark = pytest.mark.usefixtures("threads_restored")


@pytest.mark.parametrize(
    ("source", "logged"),
    [
        ("runs:/0a1b/model", True),
        ("models:/spam/3", True),
        ("models:/spam@champion", True),
        ("mlflow-artifacts://host/0/model", True),
        ("s3://bucket/model", True),
        ("models/finetuned", False),
        ("runs/model", False),
        ("runs:0a1b", False),  # no slash: not MLflow's form, so a (missing) folder
        ("C:/models/finetuned", False),
    ],
)
def test_a_logged_model_is_told_from_a_folder_by_one_rule(source: str, logged: bool) -> None:
    assert loader.is_logged(source) is logged


def command_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and err.count("\n") == 1, err
    return err


COMMANDS = {
    "classify": ["classify", "hello"],
    "predict": ["predict", "in.csv", "-o", "out.csv"],
    "export": ["export", "--to", "onnx", "out.onnx"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_source_is_one_line_naming_model_and_what_it_takes(
    command: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("text\nhello\n")
    argv = COMMANDS[command]
    err = command_error(capsys, [*argv, "--model", "nowhere"])
    assert f"spamgpt: error: --model nowhere: no such folder; {ALLOWED}\n" == err
    (tmp_path / "empty").mkdir()
    err = command_error(capsys, [*argv, "--model", "empty"])
    assert f"--model empty: not a model (no classifier.json); {ALLOWED}\n" in err
    exported = tmp_path / "hf"
    exported.mkdir()
    (exported / "config.json").write_text(json.dumps({"architectures": ["GPT2ForSeq..."]}))
    err = command_error(capsys, [*argv, "--model", "hf"])
    assert "--model hf is a transformers export: load it with transformers" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "hf", "in.csv"]


def test_a_run_the_store_does_not_have_is_one_line_naming_model(
    empty_store: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    with restored_tracking_uri():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        err = command_error(capsys, ["classify", "hi", "--model", "runs:/0123abcd/model"])
    assert err.startswith("spamgpt: error: --model runs:/0123abcd/model: ")
    assert "0123abcd" in err.split("--model runs:/0123abcd/model: ", 1)[1]


# Loading each kind of source, in this process: a tiny fine-tuned folder on its base weights
# (test_serving.finetuned_folder), a workspace's reports and calibration, MLflow model folders
# written as MLflow writes them (mlflow.models.Model) and logged into a real SQLite store.

REPO_ID = "openai-community/gpt2"
REVISION = "tiny"
NO_HUB = "http://127.0.0.1:9"  # the discard port: nothing answers


@dataclass(frozen=True)
class Tiny:
    project: Path  # holds models/finetuned and models/pretrained/<REPO_ID>
    hub: Path  # served by fileserver.serve: <REPO_ID>/resolve/<REVISION>/...
    base: loader.BaseWeights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    project = tmp_path_factory.mktemp("loader")
    finetuned_folder(project)
    weights = project / "models/pretrained" / REPO_ID / classifier.WEIGHTS
    return Tiny(
        project,
        project / "hub",
        loader.BaseWeights(REPO_ID, REVISION, sha256_file(weights), NO_HUB),
    )


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no DVC_ROOT, no hub variable, an empty cache and Hugging
    Face cache, offline: a base is found only where a test puts it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv(loader.HUB_ENV, raising=False)
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cwd


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_model(loaded: loader.LoadedModel, expected: torch.nn.Module) -> None:
    got, want = loaded.model.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not loaded.model.training


def workspace(root: Path, tiny: Tiny) -> Path:
    """`root` with models/pretrained holding the base weights; its models/pretrained."""
    shutil.copytree(tiny.project / "models/pretrained", root / "models/pretrained")
    return (root / "models/pretrained").resolve()


def test_base_weights_describe_themselves_by_repo_revision_and_hash() -> None:
    base = loader.BaseWeights("org/model", "rev1", "0123456789abcdef" * 4, NO_HUB)
    assert base.describe() == "org/model@rev1 (model.safetensors sha256 0123456789ab...)"


def test_a_finetuned_folder_takes_evaluates_threshold_and_calibration(
    tiny: Tiny, nowhere: Path
) -> None:
    """models/finetuned in a workspace: the threshold evaluate chose, the head divided by its
    temperature plus platt's shift, the base from `pretrained_root`."""
    shutil.copytree(tiny.project / "models/finetuned", nowhere / "models/finetuned")
    (nowhere / "reports").mkdir()
    (nowhere / "reports/evaluation.json").write_text(json.dumps({"threshold": 0.7}))
    shift = {"ham": 0.0, "spam": -0.5}
    calibration = {"method": "platt", "temperature": 2.0, "shift": shift}
    (nowhere / "models/calibration.json").write_text(json.dumps(calibration))
    pretrained = tiny.project / "models/pretrained"
    loaded = loader.load_model("models/finetuned", pretrained)
    assert loaded.threshold == 0.7 and loaded.folder == Path("models/finetuned")
    meta = json.loads((nowhere / "models/finetuned/classifier.json").read_text())
    assert loaded.meta == meta
    expected, _ = classifier.load(nowhere / "models/finetuned", pretrained, 2.0, shift)
    assert_same_model(loaded, expected)
    raw, _ = classifier.load(nowhere / "models/finetuned", pretrained)
    assert not torch.equal(loaded.model.head.bias, raw.head.bias)
    text = "free entry to win"
    assert loaded.enc.encode(text) == tokenizer.load(tiny.project / "models/finetuned").encode(text)
    # the default pretrained_root: the workspace's models/pretrained
    workspace(nowhere, tiny)
    assert_same_model(loader.load_model("models/finetuned"), expected)


def test_a_logged_models_artifact_folder_keeps_its_own_calibration(
    tiny: Tiny, nowhere: Path, tmp_path: Path
) -> None:
    """load_artifact (a model's load_context): the temperature its classifier.json names, or
    none; never the workspace's calibration (nor its threshold: MLflow's model_config has it)."""
    workspace(nowhere, tiny)
    (nowhere / "models/calibration.json").write_text(
        json.dumps({"method": "temperature", "temperature": 3.0})
    )
    (nowhere / "reports").mkdir()
    (nowhere / "reports/evaluation.json").write_text(json.dumps({"threshold": 0.7}))
    artifact = mlflow_folder(tmp_path / "model", tiny, None) / "artifacts" / loader.ARTIFACT
    pretrained = tiny.project / "models/pretrained"
    raw, meta = classifier.load(artifact, pretrained)
    loaded = loader.load_artifact(str(artifact))
    assert (loaded.threshold, loaded.meta, loaded.folder) == (None, meta, artifact)
    assert_same_model(loaded, raw)
    (artifact / classifier.CLASSIFIER_JSON).write_text(json.dumps({**meta, "temperature": 2.0}))
    calibrated, _ = classifier.load(tiny.project / "models/finetuned", pretrained, 2.0)
    assert_same_model(loader.load_artifact(artifact), calibrated)


def mlflow_folder(
    dest: Path, tiny: Tiny, config: dict | None, flavor: str = "python_function", base=None
) -> Path:
    """An MLflow model folder as `mlflow artifacts download` leaves one of spamgpt's: MLmodel
    (the flavor and its model_config), artifacts/classifier (+ base.json)."""
    model = Model()
    model.add_flavor(flavor, **({} if config is None else {"config": config}))
    dest.mkdir(parents=True)
    model.save(dest / loader.MLMODEL)
    artifact = dest / "artifacts" / loader.ARTIFACT
    shutil.copytree(tiny.project / "models/finetuned", artifact)
    if base is not None:
        (artifact / loader.BASE_JSON).write_text(json.dumps(dataclasses.asdict(base)))
    return dest


def test_an_mlflow_model_folder_takes_the_threshold_logged_in_its_config(
    tiny: Tiny, nowhere: Path, tmp_path: Path
) -> None:
    """The light model's base found by resolve_base (the workspace here), the threshold its
    model_config names; the workspace's evaluation and calibration are not its own."""
    workspace(nowhere, tiny)
    (nowhere / "reports").mkdir()
    (nowhere / "reports/evaluation.json").write_text(json.dumps({"threshold": 0.7}))
    folder = mlflow_folder(tmp_path / "light", tiny, {"threshold": 0.3}, base=tiny.base)
    loaded = loader.load_model(folder, pretrained_root=tmp_path / "nothing")
    assert loaded.threshold == 0.3
    assert loaded.folder == folder / "artifacts" / loader.ARTIFACT
    expected, meta = classifier.load(
        tiny.project / "models/finetuned", tiny.project / "models/pretrained"
    )
    assert loaded.meta == meta
    assert_same_model(loaded, expected)


@pytest.mark.parametrize(
    ("config", "flavor"), [(None, "python_function"), ({"threshold": 0.3}, "other_flavor")]
)
def test_an_mlflow_model_without_a_logged_threshold_has_none(
    tiny: Tiny, nowhere: Path, tmp_path: Path, config: dict | None, flavor: str
) -> None:
    """No config (or none under python_function): no threshold; without base.json, the
    base from `pretrained_root`."""
    folder = mlflow_folder(tmp_path / "model", tiny, config, flavor)
    loaded = loader.load_model(folder, tiny.project / "models/pretrained")
    assert loaded.threshold is None


def test_an_mlflow_model_not_logged_by_spamgpt_is_one_line(nowhere: Path) -> None:
    model = Model()
    model.add_flavor("python_function", config={"threshold": 0.5})
    (nowhere / "other").mkdir()
    model.save(nowhere / "other" / loader.MLMODEL)
    with pytest.raises(SpamGPTError) as error:
        loader.load_model("other")
    assert str(error.value) == "other is an MLflow model not logged by spamgpt"


@pytest.mark.parametrize(
    "config", ['["architectures"]', "{not json", '{"model_type": "gpt2"}', None]
)
def test_a_folder_is_a_transformers_export_only_with_architectures_in_its_config(
    nowhere: Path, config: str | None
) -> None:
    """A config.json that is a list, not JSON, an object without "architectures", or none:
    not a model; the setting the source came from is the one named, twice."""
    (nowhere / "folder").mkdir()
    if config is not None:
        (nowhere / "folder/config.json").write_text(config)
    with pytest.raises(SpamGPTError) as error:
        loader.load_model("folder", setting="model.source")
    assert str(error.value) == (
        "model.source folder: not a model (no classifier.json); model.source takes "
        + loader.SOURCES
    )
    (nowhere / "folder/config.json").write_text('{"architectures": []}')
    with pytest.raises(SpamGPTError) as error:
        loader.load_model("folder", setting="model.source")
    assert str(error.value) == (
        "model.source folder is a transformers export: load it with transformers "
        "(GPT2ForSequenceClassification); model.source takes " + loader.SOURCES
    )


def test_a_missing_folder_names_the_setting_it_came_from(nowhere: Path) -> None:
    with pytest.raises(SpamGPTError) as error:
        loader.load_model("absent", setting="model.source")
    assert str(error.value) == (
        "model.source absent: no such folder; model.source takes " + loader.SOURCES
    )


@pytest.fixture
def store_run(local_store: MlflowClient) -> tuple[MlflowClient, str]:
    """A run of the project's store (tracking.connect's: DVC_ROOT's mlflow.db)."""
    return local_store, local_store.create_run("0").info.run_id


def test_a_logged_model_is_downloaded_for_the_block_and_removed_after(
    tiny: Tiny, store_run: tuple[MlflowClient, str], tmp_path: Path, monkeypatch
) -> None:
    """runs:/<id>/model: downloaded from the project's store into a temporary folder that
    lives as long as opened()'s block; the threshold its model_config names."""
    client, run_id = store_run
    folder = mlflow_folder(tmp_path / "logged/model", tiny, {"threshold": 0.25})
    client.log_artifacts(run_id, str(folder), "model")
    monkeypatch.chdir(tmp_path)
    uri = f"runs:/{run_id}/model"
    with loader.opened(uri, tiny.project / "models/pretrained") as loaded:
        assert loaded.folder.parts[-3:] == ("model", "artifacts", loader.ARTIFACT)
        assert (loaded.folder / classifier.CLASSIFIER_JSON).is_file()
        assert loaded.threshold == 0.25
        expected, _ = classifier.load(loaded.folder, tiny.project / "models/pretrained")
        assert_same_model(loaded, expected)
    assert not loaded.folder.parents[2].exists()
    downloaded = loader.download_logged(uri, tmp_path / "dest")
    assert downloaded == tmp_path / "dest" / "model"
    assert (downloaded / loader.MLMODEL).is_file()


def test_a_logged_folder_that_is_not_a_model_is_one_line(
    store_run: tuple[MlflowClient, str], tmp_path: Path
) -> None:
    client, run_id = store_run
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/readme.txt").write_text("no model here\n")
    client.log_artifacts(run_id, str(tmp_path / "notes"), "notes")
    uri = f"runs:/{run_id}/notes"
    with pytest.raises(SpamGPTError) as error:
        loader.load_model(uri, setting="mlflow.model")
    assert str(error.value) == f"mlflow.model {uri} is not an MLflow model (no MLmodel file)"
    with pytest.raises(SpamGPTError) as error:
        loader.download_logged(uri, tmp_path / "dest")
    assert str(error.value) == f"--model {uri} is not an MLflow model (no MLmodel file)"
    with pytest.raises(SpamGPTError) as error:
        loader.load_model(f"runs:/{run_id}/absent", setting="mlflow.model")
    assert str(error.value).startswith(f"mlflow.model runs:/{run_id}/absent: ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("raised", "said"),
    [
        (MlflowException("first line\nsecond line"), "first line"),
        (OSError(), "OSError"),
        (MlflowException("  \n"), "MlflowException"),
    ],
)
def test_a_failed_download_is_its_first_line_or_its_kind(
    local_store: MlflowClient, monkeypatch, raised: Exception, said: str
) -> None:
    """What MLflow raises while downloading (a fault injected into download_artifacts): its
    first line, or the exception's name where it says nothing."""

    def fails(**kwargs: object) -> str:
        raise raised

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", fails)
    with pytest.raises(SpamGPTError) as error:
        loader.download_logged("models:/spam/1", "dest", "mlflow.model")
    assert str(error.value) == f"mlflow.model models:/spam/1: {said}"


def test_the_cache_is_spamgpt_cache_else_under_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "c"))
    assert loader.cache_root() == tmp_path / "c"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(loader.CACHE_ENV, "")
    assert loader.cache_root() == tmp_path / "home/.cache/spamgpt"
    monkeypatch.delenv(loader.CACHE_ENV)
    assert loader.cache_root() == tmp_path / "home/.cache/spamgpt"


def test_a_file_is_hashed_once_per_version(tmp_path: Path, monkeypatch) -> None:
    """The same bytes again are not re-read; bytes rewritten in place (same inode, same
    size, a later mtime) are."""
    hashed = []
    monkeypatch.setattr(loader, "sha256_file", lambda p: hashed.append(p) or sha256_file(p))
    path = tmp_path / "weights"
    path.write_bytes(b"abc")
    before = path.stat()
    assert loader._sha256_of(path) == loader._sha256_of(path) == hashlib.sha256(b"abc").hexdigest()
    assert hashed == [path]
    with path.open("r+b") as f:
        f.write(b"abd")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert loader._sha256_of(path) == hashlib.sha256(b"abd").hexdigest()
    assert hashed == [path, path]
    # Other bytes at the same mtime: a longer file in place, another file moved over it
    mtime = path.stat().st_mtime_ns
    path.write_bytes(b"abcd")
    os.utime(path, ns=(mtime, mtime))
    assert loader._sha256_of(path) == hashlib.sha256(b"abcd").hexdigest()
    other = tmp_path / "other"
    other.write_bytes(b"abce")
    os.utime(other, ns=(mtime, mtime))
    os.replace(other, path)
    assert loader._sha256_of(path) == hashlib.sha256(b"abce").hexdigest()
    assert hashed == [path] * 4


def test_the_base_is_the_working_directorys_workspace(tiny: Tiny, nowhere: Path) -> None:
    expected = workspace(nowhere, tiny)
    assert loader.resolve_base(tiny.base) == expected


def test_the_base_is_the_repositorys_when_the_working_directory_has_none(
    tiny: Tiny, nowhere: Path, tmp_path: Path, monkeypatch
) -> None:
    """cwd without models/pretrained, or with other weights there: DVC_ROOT's workspace."""
    repo = tmp_path / "repo"
    monkeypatch.setenv("DVC_ROOT", str(repo))
    expected = workspace(repo, tiny)
    assert loader.resolve_base(tiny.base) == expected
    other = workspace(nowhere, tiny) / REPO_ID / classifier.WEIGHTS
    other.write_bytes(other.read_bytes() + b"\0")
    assert loader.resolve_base(tiny.base) == expected


def test_no_base_anywhere_names_every_place_tried_in_one_line(
    tiny: Tiny, nowhere: Path, tmp_path: Path, monkeypatch
) -> None:
    """Other weights in cwd's and the repository's workspaces (the same folder named once),
    offline with an empty Hugging Face cache: one line naming each and what to do."""
    other = workspace(nowhere, tiny) / REPO_ID / classifier.WEIGHTS
    other.write_bytes(other.read_bytes() + b"\0")
    monkeypatch.setenv("DVC_ROOT", str(nowhere))
    with pytest.raises(SpamGPTError) as error:
        loader.resolve_base(tiny.base)
    cache = tmp_path / "cache" / REVISION
    assert str(error.value) == (
        f"base weights {tiny.base.describe()} not found: {other} holds other weights; "
        f"HF_HUB_OFFLINE is set and {REPO_ID}@{REVISION} has no config.json, model.safetensors "
        f"in the Hugging Face cache {tmp_path / 'hf'} (nor a verified copy in {cache}): put "
        f"them there (huggingface-cli download {REPO_ID} --revision {REVISION}), or unset "
        f"HF_HUB_OFFLINE; put them in models/pretrained/{REPO_ID}, set SPAMGPT_HUB_URL to a "
        "hub that has them, or log the model with mlflow.log_model: full"
    )
    repo = tmp_path / "repo"
    other_repo = workspace(repo, tiny) / REPO_ID / classifier.WEIGHTS
    other_repo.write_bytes(other_repo.read_bytes() + b"\1")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    with pytest.raises(SpamGPTError) as error:
        loader.resolve_base(tiny.base)
    assert f": {other} holds other weights; {other_repo} holds other weights; HF_HUB" in str(
        error.value
    )


@pytest.mark.parametrize("hub_from", ["variable", "model"])
def test_the_base_is_downloaded_into_the_cache_from_the_hub(
    tiny: Tiny, nowhere: Path, tmp_path: Path, monkeypatch, hub_from: str
) -> None:
    """From $SPAMGPT_HUB_URL where it is set, else the hub the model names: each file
    into <cache>/<revision>/<repo_id>, the weights verified."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with serve(tiny.hub) as url:
        if hub_from == "variable":
            monkeypatch.setenv(loader.HUB_ENV, url)
            base = tiny.base
        else:
            base = dataclasses.replace(tiny.base, hub_url=url)
        cached = loader.resolve_base(base)
    assert cached == tmp_path / "cache" / REVISION
    for name in ("config.json", classifier.WEIGHTS):
        got = cached / REPO_ID / name
        assert (
            got.read_bytes() == (tiny.project / "models/pretrained" / REPO_ID / name).read_bytes()
        )


def test_a_cached_config_without_a_known_hash_is_kept(
    tiny: Tiny, nowhere: Path, tmp_path: Path
) -> None:
    """Offline, a cache holding this revision's config.json (no known hash: whatever is
    there) and the weights of the hash: the cache, nothing fetched."""
    cached = tmp_path / "cache" / REVISION / REPO_ID
    shutil.copytree(tiny.project / "models/pretrained" / REPO_ID, cached)
    assert loader.resolve_base(tiny.base) == tmp_path / "cache" / REVISION


def test_a_cached_config_of_a_known_revision_is_checked(
    tiny: Tiny, nowhere: Path, tmp_path: Path
) -> None:
    """GPT-2's known revision: its config.json must have the known hash, offline too."""
    (revision,) = [rev for repo, rev in hub.KNOWN_HASHES if repo == REPO_ID]
    base = dataclasses.replace(tiny.base, revision=revision)
    cached = tmp_path / "cache" / revision / REPO_ID
    shutil.copytree(tiny.project / "models/pretrained" / REPO_ID, cached)
    with pytest.raises(SpamGPTError, match=r"has no config\.json in the Hugging Face cache"):
        loader.resolve_base(base)


@pytest.mark.usefixtures("ascii_locale")
def test_a_transformers_export_is_told_whatever_the_locale(nowhere: Path) -> None:
    """config.json is read as UTF-8 (transformers writes it so): a non-ASCII name in it does
    not hide the export under an ASCII locale."""
    (nowhere / "hf").mkdir()
    config = {"architectures": ["GPT2ForSequenceClassification"], "_name_or_path": "modèle"}
    (nowhere / "hf/config.json").write_text(json.dumps(config, ensure_ascii=False), "utf-8")
    with pytest.raises(SpamGPTError, match="hf is a transformers export"):
        loader.load_model("hf")


@pytest.mark.usefixtures("ascii_locale")
def test_base_json_is_read_as_utf8_whatever_the_locale(
    tiny: Tiny, nowhere: Path, tmp_path: Path
) -> None:
    workspace(nowhere, tiny)
    folder = mlflow_folder(tmp_path / "model", tiny, {"threshold": 0.3})
    base = {**dataclasses.asdict(tiny.base), "hub_url": "http://hüb.example"}
    base_file = folder / "artifacts" / loader.ARTIFACT / loader.BASE_JSON
    base_file.write_text(json.dumps(base, ensure_ascii=False), "utf-8")
    assert loader.load_model(folder).threshold == 0.3
