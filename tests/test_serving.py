"""The MLflow model end to end: logged from a fine-tuned folder, loaded back, registered, and
served by the real `mlflow models serve` over HTTP, answering as `spamgpt classify` does.

The light model (the default: trained tensors + the base weights' identity) is served from
its workspace, which holds the base, and from a machine without it that reaches the hub; the
full one (registered) from a directory with neither workspace nor hub."""

import ast
import dataclasses
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    REPO,
    free_port,
    http_service,
    post,
    restored_tracking_uri,
    spamgpt,
    subprocess_env,
)
from fileserver import Faults, serve
from mlflow.models import Model
from mlflow.pyfunc import PythonModelContext
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from test_dvc_yaml import closure

from spamgpt.data import download as downloads
from spamgpt.data import tokenizer
from spamgpt.data.download import sha256_file
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.labels import SMS, Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.params import ModelParams
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute, resolve_precision
from spamgpt.serve import export, loader, serving
from spamgpt.serve.loader import ARTIFACT
from spamgpt.texts import HEAD, Truncation

REPO_ID = "openai-community/gpt2"
MESSAGES = ["free entry to win a prize, txt WIN to 80086", "see you at 7"]
THRESHOLD = 0.8  # "see you at 7" scores about 0.71: ham here, spam at the default 0.5
REGISTERED = "sms-spam-gpt2"
REVISION = "tiny"


# MLflow 3.17's SQLite store uses an SQLAlchemy loader option deprecated since SQLAlchemy 2.1.
@dataclass
class Logged:
    project: Path
    finetuned: Path
    pretrained: Path
    run_id: str
    uri: str  # the light model
    full_uri: str  # the full model, registered as REGISTERED version 1
    base: loader.BaseWeights
    env: dict[str, str]  # for subprocesses: the venv first on PATH, this store, no hub


def finetuned_folder(project: Path) -> Path:
    """models/finetuned as finetune leaves it: trained tensors only, the base in
    models/pretrained/<repo_id>; the head drawn so that probabilities spread over (0, 1)."""
    hub = make_hub(project / "hub", layers=2, dim=32, heads=4, n_ctx=64, revision=REVISION)
    shutil.copytree(hub, project / "models/pretrained" / REPO_ID)
    return light_folder(
        hub, GPT2Classifier(GPT2.from_pretrained(hub)), SMS, 0, project / "models/finetuned"
    )


def light_folder(
    hub: Path, model: GPT2Classifier, classes: Classes, seed: int, folder: Path
) -> Path:
    """`model`'s head drawn with `seed` (std 0.3), its last block trained, saved light (its
    base: `hub`'s weights) in `folder` with max_length 48, as finetune saves it."""
    torch.nn.init.normal_(model.head.weight, std=0.3, generator=torch.Generator().manual_seed(seed))
    trained = classifier.freeze(model, 1)
    params = ModelParams(
        hub_url="http://127.0.0.1", repo_id=REPO_ID, revision=REVISION, max_length=None,
        pretrained=True, init_seed=0, trainable_blocks=1, pooling="last", dropout=0.0,
        finetune="blocks", truncation="head", head_ratio=0.25,
    )  # fmt: skip
    meta = classifier.classifier_meta(params, classes, trained, 48, tokenizer.load(hub).eot_token)
    folder.mkdir(parents=True)
    classifier.save(model, folder, meta, hub, full=False)
    return folder


NO_HUB = f"http://127.0.0.1:{free_port()}"  # nothing listens there: refused at once

# commands run in this process set torch's threads (conftest's threads_restored)
pytestmark = pytest.mark.usefixtures("threads_restored")


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused download is retried after backoffs (test_download.py tests them): where a
    model here meets NO_HUB, on purpose, its retries follow at once instead (3.5 s each)."""
    monkeypatch.setattr(downloads, "time", SimpleNamespace(sleep=lambda seconds: None))


@pytest.fixture(scope="module")
def logged(empty_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A fine-tuned folder logged light into a finished run of a SQLite store, and logged
    full and registered into another run. Run from the project (the workspace), no hub."""
    project = tmp_path_factory.mktemp("serving")
    shutil.copy(empty_store, project / "mlflow.db")
    finetuned, pretrained = finetuned_folder(project), project / "models/pretrained"
    weights = pretrained / REPO_ID / "model.safetensors"
    base = loader.BaseWeights(REPO_ID, REVISION, sha256_file(weights), NO_HUB)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    cache = project / "cache"
    with restored_tracking_uri(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv(loader.CACHE_ENV, str(cache))
        mp.delenv(loader.HUB_ENV, raising=False)
        mp.delenv("DVC_ROOT", raising=False)
        mp.chdir(project)
        mlflow.set_tracking_uri(uri)  # wins over the variable if another test set one
        client = MlflowClient()
        exp = client.create_experiment("spam", artifact_location=(project / "art").as_uri())
        run_id, full_run_id = (client.create_run(exp).info.run_id for _ in range(2))
        client.set_terminated(run_id)
        client.set_terminated(full_run_id)
        model_uri = serving.log_model(run_id, finetuned, THRESHOLD, base=base)
        # str paths, as a user's script may give them
        full_uri = serving.log_model(
            full_run_id, str(finetuned), THRESHOLD, REGISTERED, str(pretrained)
        )
        env = {**subprocess_env(), "MLFLOW_TRACKING_URI": uri, loader.CACHE_ENV: str(cache)}
        yield Logged(project, finetuned, pretrained, run_id, model_uri, full_uri, base, env)


@pytest.fixture(scope="module")
def server(logged: Logged):
    """`mlflow models serve` on the light model's runs:/ URI, run from the workspace (which
    holds the base weights); its base URL once /ping answers."""
    cmd = ["mlflow", "models", "serve", "-m", logged.uri, "--env-manager", "local"]
    with http_service(
        lambda port: [*cmd, "-p", str(port), "--host", "127.0.0.1"],
        "/ping",
        logged.env,
        logged.project / "serve.log",
        cwd=logged.project,
    ) as url:
        yield url


def model_files(model_id: str, folder: str | None = None) -> set[str]:
    files = MlflowClient().list_logged_model_artifacts(model_id, folder)
    return {Path(f.path).name for f in files}


def download(model_id: str, path: str) -> Path:
    """A file or folder of the logged model's artifacts, downloaded."""
    location = MlflowClient().get_logged_model(model_id).artifact_location
    return Path(mlflow.artifacts.download_artifacts(f"{location}/{path}"))


def model_id_of(run_id: str) -> str:
    (output,) = MlflowClient().get_run(run_id).outputs.model_outputs
    return output.model_id


def classify_cli(logged: Logged, messages: list[str], *options: str) -> list[dict]:
    out = spamgpt(
        ["classify", "--json", "--threshold", str(THRESHOLD), "--model", str(logged.finetuned),
         "--pretrained", str(logged.pretrained), *options, *messages],
        logged.project,
    )  # fmt: skip
    return [json.loads(line) for line in out.splitlines()]


def test_logged_model_is_linked_to_its_run_which_stays_finished(logged: Logged) -> None:
    client = MlflowClient()
    run = client.get_run(logged.run_id)
    assert run.info.status == "FINISHED"
    assert logged.uri == f"runs:/{logged.run_id}/model"
    model = client.get_logged_model(model_id_of(logged.run_id))
    assert (model.name, model.source_run_id) == ("model", logged.run_id)


def test_light_model_holds_the_trained_tensors_and_the_base_identity(logged: Logged) -> None:
    model_id = model_id_of(logged.run_id)
    names = model_files(model_id, "artifacts/classifier")
    assert names == {
        "classifier.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "base.json",
    }
    folder = download(model_id, "artifacts/classifier")
    assert sha256_file(folder / "model.safetensors") == sha256_file(
        logged.finetuned / "model.safetensors"
    )  # models/finetuned as it is: no base weights
    assert json.loads((folder / "base.json").read_text()) == {
        "repo_id": REPO_ID, "revision": REVISION, "sha256": logged.base.sha256, "hub_url": NO_HUB
    }  # fmt: skip


def test_full_model_holds_every_tensor(logged: Logged) -> None:
    """Every tensor of the classifier, with the fine-tuned values, and no base to find."""
    model_id = model_id_of(logged.full_uri.split("/")[1])
    assert "base.json" not in model_files(model_id, "artifacts/classifier")
    folder = download(model_id, "artifacts/classifier")
    stored = load_file(folder / "model.safetensors")
    model, _ = classifier.load(logged.finetuned, logged.pretrained)
    state = model.state_dict()
    assert stored.keys() == state.keys()
    assert all(torch.equal(stored[name], state[name]) for name in state)


@pytest.mark.parametrize("which", ["light", "full"])
def test_model_is_logged_as_code_not_pickled(logged: Logged, which: str) -> None:
    run_id = logged.run_id if which == "light" else logged.full_uri.split("/")[1]
    model_id = model_id_of(run_id)
    names = model_files(model_id)
    assert "mlflow_model.py" in names and "python_model.pkl" not in names
    mlmodel = download(model_id, "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "python_model.pkl" not in mlmodel
    # the signature from predict's type hints; no example for MLflow to run the model on
    assert "signature:" in mlmodel and "saved_input_example_info" not in mlmodel
    assert model_files(model_id, "code") == {"spamgpt"}


def distribution(requirement: str) -> str:
    """The normalised distribution name a requirement ("pyyaml<7,>=5.1") names."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# the served model's own code: MLflow runs its functions (load_context, predict), so an import
# inside them is one the served model makes; in every other project file it reaches, an import
# inside a function is made by that function alone (the task modules' scikit-learn, cleanlab,
# scipy and matplotlib: the baseline, audit and figures of the pipeline's stages)
SERVED_CODE = {"spamgpt/serve/mlflow_model.py", "spamgpt/serve/serving.py"}


def imports_run(file: str) -> list[ast.AST]:
    """The import statements of `file` the served model runs: those at module level (not
    under `if TYPE_CHECKING:`, which never runs), and in SERVED_CODE those of its functions."""
    tree = ast.parse((REPO / file).read_text(encoding="utf-8"))
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            todo.extend(node.orelse)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and file not in SERVED_CODE:
            continue
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        else:
            todo.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt))
    return found


def test_the_pinned_requirements_are_what_the_served_model_imports() -> None:
    """Every package the model's code (mlflow_model.py and each project file it imports)
    imports when the model is loaded and predicts (imports_run), less MLflow and what MLflow
    requires itself: exactly serving.REQUIREMENTS."""
    owners = metadata.packages_distributions()
    imported = set()
    for file in closure("spamgpt/serve/mlflow_model.py"):
        for node in imports_run(file):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for top in {m.split(".")[0] for m in modules} - {"spamgpt"}:
                if top not in sys.stdlib_module_names:
                    imported |= {distribution(d) for d in owners[top]}
    mlflow_own = {"mlflow", "mlflow-skinny", "mlflow-tracing"}
    mlflow_own |= {distribution(r) for r in metadata.requires("mlflow-skinny") if "extra" not in r}
    assert imported - mlflow_own == {*serving.REQUIREMENTS, *serving.ONNX_REQUIREMENTS}
    assert "scikit-learn" not in serving.REQUIREMENTS


def test_log_model_leaves_a_running_run_running(logged: Logged) -> None:
    client = MlflowClient()
    run_id = client.create_run(client.get_run(logged.run_id).info.experiment_id).info.run_id
    serving.log_model(run_id, logged.finetuned, THRESHOLD, base=logged.base)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert mlflow.active_run() is None


def test_log_model_rejects_a_threshold_outside_0_1(logged: Logged) -> None:
    with pytest.raises(SpamGPTError, match="threshold"):
        serving.log_model(logged.run_id, logged.finetuned, 1.0, base=logged.base)


def test_loaded_model_predicts_like_the_cli(logged: Logged, monkeypatch) -> None:
    monkeypatch.chdir(logged.project)  # the workspace: the light model's base weights
    monkeypatch.setenv(loader.CACHE_ENV, str(logged.project / "cache"))
    model = mlflow.pyfunc.load_model(logged.uri)
    predictions = model.predict(MESSAGES)
    expected = classify_cli(logged, MESSAGES)
    assert [p.label for p in predictions] == ["spam", "ham"]
    for p, e in zip(predictions, expected, strict=True):
        assert p.spam_probability == pytest.approx(e["spam_probability"], abs=1e-4)
        assert p.label == e["label"]
        assert p.probabilities == pytest.approx(e["probabilities"], abs=1e-4)
    # A one-column DataFrame (mlflow.evaluate, spark_udf) gets the same answers.
    assert model.predict(pd.DataFrame({"text": MESSAGES})) == predictions
    assert model.predict([]) == []


def test_a_device_the_machine_lacks_is_refused_naming_the_model_config(
    logged: Logged, monkeypatch
) -> None:
    """mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"}) on a machine without
    CUDA: one line naming where the device was asked for, not the stages' train.device."""
    monkeypatch.chdir(logged.project)
    monkeypatch.setenv(loader.CACHE_ENV, str(logged.project / "cache"))
    device = "mps" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ParamsError) as error:
        mlflow.pyfunc.load_model(logged.uri, model_config={"device": device})
    assert str(error.value).startswith(
        f"model_config device: {device} is not available on this machine; allowed here: auto"
    )


def test_classify_scores_a_logged_model_as_it_scores_the_folder(
    logged: Logged, tmp_path: Path, monkeypatch
) -> None:
    """`spamgpt classify --model` takes what predict and export take: the light model's
    runs:/ URI, the registered full model's models:/ URI and an MLflow model folder on disk
    answer as the fine-tuned folder does, at the threshold logged with them (0.8: "see you
    at 7" is ham, where the folder, with no metrics/eval.json beside it, says spam at 0.5)."""
    monkeypatch.setenv(loader.CACHE_ENV, str(logged.project / "cache"))
    folder_answers = classify_cli(logged, MESSAGES)
    downloaded = Path(mlflow.artifacts.download_artifacts(logged.uri, dst_path=str(tmp_path)))
    for source in (logged.uri, f"models:/{REGISTERED}/1", str(downloaded)):
        out = spamgpt(["classify", "--json", "--model", source, *MESSAGES], logged.project)
        answers = [json.loads(line) for line in out.splitlines()]
        assert [a["label"] for a in answers] == ["spam", "ham"], source
        for a, f in zip(answers, folder_answers, strict=True):
            assert a["probabilities"] == pytest.approx(f["probabilities"], abs=1e-6), source
            assert a["label"] == f["label"]
    plain = spamgpt(["classify", "--model", str(logged.finetuned), *MESSAGES], logged.project)
    assert [line.split("\t")[0] for line in plain.splitlines()] == ["spam", "spam"]


@pytest.mark.parametrize(("runtime", "tolerance"), [("onnx", 1e-4), ("onnx-int8", 0.03)])
def test_the_onnx_model_answers_like_the_cli(
    logged: Logged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str, tolerance: float
) -> None:
    """mlflow.serve: onnx and onnx-int8. The light model carries the graph and scores with
    onnxruntime: loaded where there are no base weights (it needs none), it answers with
    the same schema, probabilities and threshold as `spamgpt classify`."""
    model, meta = classifier.load(logged.finetuned, logged.pretrained)
    graph = tmp_path / "model.onnx"
    export.to_onnx(model, meta, graph)
    if runtime == "onnx-int8":
        export.quantize_int8(graph, tmp_path / "int8.onnx")
        graph = tmp_path / "int8.onnx"
    client = MlflowClient()
    run_id = client.create_run(client.get_run(logged.run_id).info.experiment_id).info.run_id
    uri = serving.log_model(run_id, logged.finetuned, THRESHOLD, base=logged.base, onnx_file=graph)
    pinned = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text()
    assert f"onnxruntime=={metadata.version('onnxruntime')}" in pinned.split()
    messages = [*MESSAGES, "", "🎉🎉 you won!! 📱 call now", "a long message " * 40]
    expected = classify_cli(logged, messages, "--precision", "fp32")  # onnxruntime's
    monkeypatch.chdir(tmp_path)  # no workspace, no hub: the graph holds every weight
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    loaded = mlflow.pyfunc.load_model(uri)
    predictions = loaded.predict(messages)
    for p, e in zip(predictions, expected, strict=True):
        assert set(p.model_dump()) == {"label", "probability", "probabilities", "spam_probability"}
        assert p.spam_probability == pytest.approx(e["spam_probability"], abs=tolerance)
        assert p.probabilities == pytest.approx(e["probabilities"], abs=tolerance)
        if abs(e["spam_probability"] - THRESHOLD) > tolerance:
            assert p.label == e["label"]
    assert {p.label for p in predictions} == {"ham", "spam"}
    assert loaded.predict([]) == []
    assert not (tmp_path / "cache").exists()  # no base weights were looked for


@pytest.mark.parametrize(("full", "shift"), [(False, None), (True, {"ham": 0.0, "spam": -1.3})])
def test_a_temperature_is_written_beside_the_tensors_and_folded_as_it_loads(
    logged: Logged, tmp_path: Path, monkeypatch, full: bool, shift: dict | None
) -> None:
    """evaluate's temperature (and platt's shift) travels in the logged model's
    classifier.json, its tensors models/finetuned's own (light) or the whole model's (full);
    loaded, the head divides by it (and adds the shift): the probabilities of classifier.load
    with that temperature (and shift), bit for bit."""
    monkeypatch.chdir(logged.project)
    monkeypatch.setenv(loader.CACHE_ENV, str(logged.project / "cache"))
    client = MlflowClient()
    run_id = client.create_run(client.get_experiment_by_name("spam").experiment_id).info.run_id
    client.set_terminated(run_id)
    uri = serving.log_model(
        run_id, logged.finetuned, THRESHOLD, base=logged.base, full=full, temperature=2.5,
        shift=shift,
    )  # fmt: skip
    local = loader.download_logged(uri, tmp_path)
    folder = local / "artifacts" / loader.ARTIFACT
    written = json.loads((folder / classifier.CLASSIFIER_JSON).read_text())
    assert (written["temperature"], written.get("shift")) == (2.5, shift)
    raw, _ = classifier.load(logged.finetuned, logged.pretrained)
    assert torch.equal(load_file(folder / "model.safetensors")["head.weight"], raw.head.weight)
    logged_model = loader.load_model(local)
    served, meta = logged_model.model, logged_model.meta
    expected, _ = classifier.load(logged.finetuned, logged.pretrained, 2.5, shift)
    enc, fp32_cpu = tokenizer.load(folder), Compute(torch.device("cpu"), "fp32")
    got, _ = classifier.classify_texts(served, enc, MESSAGES, meta["max_length"], fp32_cpu)
    want, _ = classifier.classify_texts(expected, enc, MESSAGES, meta["max_length"], fp32_cpu)
    assert torch.equal(got, want)
    uncalibrated, _ = classifier.classify_texts(raw, enc, MESSAGES, meta["max_length"], fp32_cpu)
    assert not torch.allclose(got, uncalibrated)


def test_served_model_answers_like_the_cli(logged: Logged, server: str) -> None:
    messages = [*MESSAGES, "", "🎉🎉 you won!! 📱 call now"]
    answer = post(f"{server}/invocations", {"inputs": messages})
    expected = classify_cli(logged, messages)
    assert len(answer["predictions"]) == len(messages)
    for p, e in zip(answer["predictions"], expected, strict=True):
        assert set(p) == {"label", "probability", "probabilities", "spam_probability"}
        assert p["spam_probability"] == pytest.approx(e["spam_probability"], abs=1e-4)
        assert p["label"] == e["label"] == ("spam" if p["spam_probability"] >= THRESHOLD else "ham")
    assert {p["label"] for p in answer["predictions"]} == {"ham", "spam"}
    assert post(f"{server}/invocations", {"inputs": []}) == {"predictions": []}


def test_served_model_rejects_what_is_not_a_list_of_strings(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as error:
        post(f"{server}/invocations", {"inputs": [1, 2]})
    assert error.value.code == 400
    assert "list[str]" in json.load(error.value)["message"]


def test_registered_version_is_full_and_predicts_the_same_without_a_workspace(
    logged: Logged, tmp_path: Path, monkeypatch
) -> None:
    (version,) = MlflowClient().search_model_versions(f"name='{REGISTERED}'")
    assert (version.version, f"runs:/{version.run_id}/model") == (1, logged.full_uri)
    monkeypatch.chdir(logged.project)
    light = mlflow.pyfunc.load_model(logged.uri).predict(MESSAGES)
    # Elsewhere, nothing of the workspace and no hub: only the full model loads.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    assert mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1").predict(MESSAGES) == light
    with pytest.raises(SpamGPTError, match=r"base weights .* not found"):
        mlflow.pyfunc.load_model(logged.uri)


def test_light_model_refuses_other_base_weights_in_one_line(
    logged: Logged, tmp_path: Path, monkeypatch
) -> None:
    """A workspace whose models/pretrained holds other weights (a new download, another
    revision) and no hub: one line naming both, no model built on the wrong base."""
    other = tmp_path / "models/pretrained" / REPO_ID
    shutil.copytree(logged.pretrained / REPO_ID, other)
    with (other / "model.safetensors").open("ab") as f:
        f.write(b"\0")  # other bytes, other hash
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(SpamGPTError) as error:
        mlflow.pyfunc.load_model(logged.uri)
    message = str(error.value)
    assert "\n" not in message
    assert f"{other / 'model.safetensors'} holds other weights" in message
    assert NO_HUB in message and "mlflow.log_model: full" in message


def test_base_weights_changed_in_place_are_checked_again(
    logged: Logged, tmp_path: Path, monkeypatch
) -> None:
    """resolve_base hashes a file once per version: the same bytes again are not re-read,
    but bytes rewritten in place (same inode, same size, a later mtime) are."""
    workspace = tmp_path / "models/pretrained"
    shutil.copytree(logged.pretrained, workspace)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    assert loader.resolve_base(logged.base) == workspace
    hashed = []
    monkeypatch.setattr(loader, "sha256_file", lambda p: hashed.append(p) or sha256_file(p))
    assert loader.resolve_base(logged.base) == workspace and hashed == []
    weights = workspace / REPO_ID / "model.safetensors"
    before = weights.stat()
    with weights.open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    with pytest.raises(SpamGPTError, match="holds other weights"):
        loader.resolve_base(logged.base)
    assert hashed == [weights]


def test_light_model_downloads_its_base_from_the_hub(
    logged: Logged, tmp_path: Path, monkeypatch
) -> None:
    """On a machine without the workspace that reaches the hub: the base is downloaded into
    the cache, verified, and reused from there."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv(loader.CACHE_ENV, str(cache))
    with serve(logged.project / "hub") as hub:
        monkeypatch.setenv(loader.HUB_ENV, hub)
        predictions = mlflow.pyfunc.load_model(logged.uri).predict(MESSAGES)
    cached = cache / REVISION / REPO_ID / "model.safetensors"
    assert sha256_file(cached) == logged.base.sha256
    monkeypatch.setenv(loader.HUB_ENV, NO_HUB)  # now from the cache alone
    assert mlflow.pyfunc.load_model(logged.uri).predict(MESSAGES) == predictions
    monkeypatch.chdir(logged.project)
    assert mlflow.pyfunc.load_model(logged.uri).predict(MESSAGES) == predictions


def test_light_model_takes_its_base_as_download_weights_does(
    logged: Logged, tmp_path: Path, monkeypatch
) -> None:
    """Without the workspace: from the Hugging Face cache, also offline ($HF_HUB_OFFLINE:
    nothing else is tried, and what the cache lacks is named); else from the hub, which is
    sent $HF_TOKEN."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(loader.HUB_ENV, NO_HUB)
    hf_cache = tmp_path / "hf"
    snapshot = hf_cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(logged.pretrained / REPO_ID / name, snapshot / name)
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    predictions = mlflow.pyfunc.load_model(logged.uri).predict(MESSAGES)
    shutil.rmtree(hf_cache)
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(SpamGPTError, match=r"HF_HUB_OFFLINE is set and .* has no config\.json"):
        loader.resolve_base(logged.base)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    faults = Faults()
    with serve(logged.project / "hub", faults=faults) as hub:
        monkeypatch.setenv(loader.HUB_ENV, hub)
        assert mlflow.pyfunc.load_model(logged.uri).predict(MESSAGES) == predictions
    assert len(faults.requests) == 2
    assert {r.headers.get("Authorization") for r in faults.requests} == {"Bearer hf_test_token"}


def test_light_model_without_a_base_identity_is_refused(logged: Logged) -> None:
    client = MlflowClient()
    run_id = client.create_run(client.get_run(logged.run_id).info.experiment_id).info.run_id
    with pytest.raises(SpamGPTError, match="base weights"):
        serving.log_model(run_id, logged.finetuned, THRESHOLD)


def test_full_model_is_served_from_a_directory_without_workspace(
    logged: Logged, tmp_path: Path
) -> None:
    """`mlflow models serve` of the registered (full) model in an empty directory, with no
    hub and an empty cache: it answers as the CLI does."""
    cmd = ["mlflow", "models", "serve", "-m", f"models:/{REGISTERED}/1", "--env-manager", "local"]
    env = {**logged.env, loader.CACHE_ENV: str(tmp_path / "cache"), loader.HUB_ENV: NO_HUB}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with http_service(
        lambda port: [*cmd, "-p", str(port), "--host", "127.0.0.1"],
        "/ping",
        env,
        tmp_path / "serve.log",
        cwd=elsewhere,
    ) as url:
        answer = post(f"{url}/invocations", {"inputs": MESSAGES})
    expected = classify_cli(logged, MESSAGES)
    for p, e in zip(answer["predictions"], expected, strict=True):
        assert p["spam_probability"] == pytest.approx(e["spam_probability"], abs=1e-4)
        assert p["label"] == e["label"]
    assert not (tmp_path / "cache").exists()  # nothing downloaded, nothing looked up


def test_model_names_its_classes_in_its_metadata(logged: Logged) -> None:
    for uri in (logged.uri, logged.full_uri):
        info = mlflow.models.get_model_info(uri)
        assert info.metadata == {"labels": ["ham", "spam"], "positive_label": "spam"}
        fields = json.dumps(info.signature.outputs.to_dict())
        assert all(f'"{name}"' in fields for name in ("label", "probability", "probabilities"))


def test_onnx_probabilities_pads_each_message_to_its_own_width_at_most(tmp_path: Path) -> None:
    """A real onnxruntime session of a hand-made graph that answers, for each message, the
    width of the batch it came in and its length: every message is padded to its own
    padded_width (one_width batches), none to a longer batch-mate's; in the messages' order."""
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from spamgpt.data.batching import ModelInputs, PackedSequences, padded_width

    nodes = [
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["width"], axis=0),
        helper.make_node("Shape", ["lengths"], ["rows"]),
        helper.make_node("Expand", ["width", "rows"], ["widths"]),
        helper.make_node("Concat", ["widths", "lengths"], ["both"], axis=0),
        helper.make_node("Reshape", ["both", "two_by_rows"], ["pairs"]),
        helper.make_node("Transpose", ["pairs"], ["columns"], perm=[1, 0]),
        helper.make_node("Cast", ["columns"], ["probabilities"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "widths",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"]),
         helper.make_tensor_value_info("lengths", TensorProto.INT64, ["b"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["b", 2])],
        [numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
         numpy_helper.from_array(np.array([2, -1], dtype=np.int64), "two_by_rows")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString())
    lengths = torch.tensor([33, 61, 9, 40, 27, 56, 33])
    inputs = ModelInputs(PackedSequences(torch.zeros(int(lengths.sum()), dtype=torch.long),
                                         lengths), None)  # fmt: skip
    got = serving.onnx_probabilities(session, inputs)
    assert got[:, 1].tolist() == lengths.tolist()
    assert got[:, 0].tolist() == [padded_width(int(n), 61) for n in lengths]
    assert got[:, 0].tolist() == [40, 61, 16, 40, 32, 56, 40]


# --- The pyfunc models and log_model in this process ------------------------------------
# (the module's unit tests: mutation testing runs them, without `mlflow models serve`)

CPU = torch.device("cpu")
FIELDS = ["subject", "body"]
LONG = "a long message that is cut " * 12  # over max_length (48) tokens


def edited(folder: Path, dest: Path, **changes: object) -> Path:
    """A copy of the model folder `folder` whose classifier.json has `changes`."""
    shutil.copytree(folder, dest)
    meta = json.loads((dest / classifier.CLASSIFIER_JSON).read_text())
    (dest / classifier.CLASSIFIER_JSON).write_text(json.dumps({**meta, **changes}))
    return dest


def number_folder(project: Path) -> Path:
    """A regression model (data.label_format number) on the project's base weights."""
    hub = project / "hub" / REPO_ID / "resolve" / REVISION
    model = GPT2Classifier(GPT2.from_pretrained(hub), 1, "last", "number")
    return light_folder(
        hub, model, Classes(("score",), None, "number"), 1, project / "models/number"
    )


@dataclass(frozen=True)
class Kinds:
    project: Path  # the workspace: models/pretrained holds the base weights
    folders: dict[str, Path]  # each kind of model folder, as finetune leaves them
    base: loader.BaseWeights


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> Kinds:
    project = tmp_path_factory.mktemp("kinds")
    single = finetuned_folder(project)
    models = project / "models"
    folders = {
        "single": single,
        "fields": edited(single, models / "fields", text_columns=FIELDS, truncation="tail"),
        "multi": edited(single, models / "multi", label_format="multi", positive_label=None),
        "number": number_folder(project),
        "tail": edited(single, models / "tail", truncation="tail"),
    }
    for kind in ("multi", "number"):  # the same models, of two fields
        folders[f"{kind}_fields"] = edited(
            folders[kind], models / f"{kind}_fields", text_columns=FIELDS
        )
    weights = project / "models/pretrained" / REPO_ID / "model.safetensors"
    return Kinds(
        project, folders, loader.BaseWeights(REPO_ID, REVISION, sha256_file(weights), NO_HUB)
    )


# model_config as log_model writes it for each kind, and the pyfunc model it makes
CONFIGS = {
    "single": {"threshold": THRESHOLD, "device": "cpu"},
    "fields": {"threshold": 0.3, "device": "cpu", "text_columns": FIELDS},
    "multi": {"threshold": {"ham": 0.4, "spam": 0.6}, "multi_label": True},
    "number": {"threshold": None, "device": "auto", "label_format": "number"},
}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, serving.TextClassifierModel),
        ({"text_columns": FIELDS}, serving.FieldsClassifierModel),
        ({"multi_label": True}, serving.MultiLabelClassifierModel),
        ({"label_format": "multi"}, serving.MultiLabelClassifierModel),
        ({"multi_label": True, "text_columns": FIELDS}, serving.MultiLabelFieldsClassifierModel),
        ({"label_format": "number"}, serving.NumberModel),
        ({"label_format": "number", "text_columns": FIELDS}, serving.NumberFieldsModel),
        ({"label_format": "single", "multi_label": True}, serving.TextClassifierModel),
        ({"text_columns": []}, serving.TextClassifierModel),
    ],
)
def test_the_pyfunc_model_is_the_one_its_config_names(config: dict, expected: type) -> None:
    assert type(serving.model_for(config)) is expected


def pyfunc(kind: str, kinds: Kinds, config: dict | None = None, **artifacts: str):
    """The pyfunc model of `kind` loaded as MLflow loads it (load_context on the artifacts
    and model_config), from the workspace; (model, context)."""
    config = CONFIGS[kind] if config is None else config
    model = serving.model_for(config)
    context = PythonModelContext({ARTIFACT: str(kinds.folders[kind]), **artifacts}, config)
    model.load_context(context)
    return model, context


def expected_answers(
    folder: Path, texts: list[str], threshold, answer_type: type, precision: str = "auto"
) -> list:
    """classifier.answers on the probabilities of `spamgpt classify`'s path for the joined
    texts, cut as the folder's classifier.json says, at `precision` (auto: the CPU's)."""
    model, meta = classifier.load(folder, folder.parent / "pretrained")
    compute = Compute(CPU, resolve_precision(precision, CPU))
    truncation = Truncation.from_dict(meta)
    enc = tokenizer.load(folder)
    probs, _ = classifier.classify_texts(model, enc, texts, meta["max_length"], compute, truncation)
    return [
        answer_type(**a) for a in classifier.answers(probs, classifier.classes_of(meta), threshold)
    ]


def test_the_pyfunc_model_answers_each_message_at_the_logged_threshold(
    kinds: Kinds, monkeypatch
) -> None:
    monkeypatch.chdir(kinds.project)
    model, context = pyfunc("single", kinds)
    messages = [*MESSAGES, LONG, ""]
    got = model.predict(context, messages)
    assert got == expected_answers(kinds.folders["single"], messages, THRESHOLD, serving.Prediction)
    assert [p.label for p in got[:2]] == ["spam", "ham"]  # ham at 0.8, spam at 0.5
    assert set(got[0].model_dump()) == {"label", "probability", "probabilities", "spam_probability"}
    assert model.predict(context, []) == []


def test_a_model_logged_uncalibrated_is_not_calibrated_by_the_workspace(
    kinds: Kinds, tmp_path: Path, monkeypatch
) -> None:
    """Served from a workspace whose evaluate fitted a temperature (another run's), a model
    logged without one answers with its raw probabilities, as `spamgpt classify` does; its
    threshold is its model_config's. (load_context loaded the artifact folder as a fine-tuned
    folder, which takes the workspace's models/calibration.json: the temperature was folded.)"""
    (tmp_path / "models").mkdir()
    (tmp_path / "models/pretrained").symlink_to(kinds.project / "models/pretrained")
    calibration = {"method": "temperature", "temperature": 3.0}
    (tmp_path / "models/calibration.json").write_text(json.dumps(calibration))
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/evaluation.json").write_text(json.dumps({"threshold": 0.1}))
    monkeypatch.chdir(tmp_path)
    model, context = pyfunc("single", kinds)
    expected = expected_answers(kinds.folders["single"], MESSAGES, THRESHOLD, serving.Prediction)
    assert model.predict(context, MESSAGES) == expected


def test_a_device_the_machine_lacks_is_refused_naming_model_config(
    kinds: Kinds, monkeypatch
) -> None:
    monkeypatch.chdir(kinds.project)
    device = "mps" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ParamsError) as error:
        pyfunc("single", kinds, {"threshold": THRESHOLD, "device": device})
    assert str(error.value).startswith(
        f"model_config device: {device} is not available on this machine; allowed here: auto"
    )


def test_the_fields_model_joins_each_rows_fields_and_cuts_as_logged(
    kinds: Kinds, monkeypatch
) -> None:
    """A DataFrame with the fields in any order (and other columns), numbers as text: each
    row's fields joined in the model's order, cut at the tail as its classifier.json says."""
    monkeypatch.chdir(kinds.project)
    model, context = pyfunc("fields", kinds)
    frame = pd.DataFrame(
        {"body": ["see you at", LONG, "x"], "other": [1, 2, 3], "subject": [7, "WIN", "now"]}
    )
    texts = ["7\n\nsee you at", f"WIN\n\n{LONG}", "now\n\nx"]
    expected = expected_answers(kinds.folders["fields"], texts, 0.3, serving.Prediction)
    assert model.predict(context, frame) == expected
    assert model.predict(context, frame.to_dict(orient="records")) == expected
    head_cut = expected_answers(kinds.folders["single"], texts[1:2], 0.3, serving.Prediction)
    assert head_cut[0].probabilities != expected[1].probabilities  # the tail, not the head
    with pytest.raises(SpamGPTError) as error:
        model.predict(context, pd.DataFrame({"text": ["hi"]}))
    assert str(error.value) == "each message needs the fields subject, body; 'subject' is missing"
    with pytest.raises(SpamGPTError, match=r"; 'body' is missing$"):
        model.predict(context, pd.DataFrame({"subject": ["hi"]}))


@pytest.mark.parametrize(
    ("kind", "answer_type", "fields"),
    [
        ("multi", serving.MultiLabelPrediction, ["labels", "probabilities"]),
        ("number", serving.NumberPrediction, ["prediction"]),
    ],
)
def test_multi_label_and_number_models_answer_their_kind(
    kinds: Kinds, monkeypatch, kind: str, answer_type: type, fields: list[str]
) -> None:
    monkeypatch.chdir(kinds.project)
    model, context = pyfunc(kind, kinds)
    got = model.predict(context, MESSAGES)
    threshold = CONFIGS[kind]["threshold"]
    assert got == expected_answers(kinds.folders[kind], MESSAGES, threshold, answer_type)
    assert [sorted(a.model_dump()) for a in got] == [fields, fields]
    frame = pd.DataFrame({"subject": ["free entry", "see"], "body": ["to win", "you at 7"]})
    fields_config = {**CONFIGS[kind], "text_columns": FIELDS}
    fields_model, fields_context = pyfunc(f"{kind}_fields", kinds, fields_config)
    joined = ["free entry\n\nto win", "see\n\nyou at 7"]
    assert fields_model.predict(fields_context, frame) == model.predict(context, joined)


@pytest.fixture(scope="module")
def onnx_graph(kinds: Kinds) -> Path:
    model, meta = classifier.load(kinds.folders["single"], kinds.project / "models/pretrained")
    graph = kinds.project / "model.onnx"
    export.to_onnx(model, meta, graph)
    return graph


def test_the_onnx_pyfunc_model_answers_as_the_pytorch_one_without_base_weights(
    kinds: Kinds, onnx_graph: Path, tmp_path: Path, monkeypatch
) -> None:
    """mlflow.serve onnx: the graph scores, the classifier folder gives the tokenizer, cut,
    classes and threshold; no base weights are looked for (an empty directory, offline)."""
    messages = [*MESSAGES, LONG, "", "🎉🎉 you won!! 📱 call now"]
    folder = kinds.folders["tail"]  # the graph's weights; its long messages cut at the tail
    expected = expected_answers(folder, messages, THRESHOLD, serving.Prediction, "fp32")
    head = expected_answers(kinds.folders["single"], [LONG], THRESHOLD, serving.Prediction, "fp32")
    assert head[0].probabilities != pytest.approx(expected[2].probabilities, abs=1e-3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(loader.HUB_ENV, NO_HUB)
    model, context = pyfunc(
        "tail", kinds, CONFIGS["single"], **{serving.ONNX_ARTIFACT: str(onnx_graph)}
    )
    got = model.predict(context, messages)
    assert [p.label for p in got] == [e.label for e in expected]
    for p, e in zip(got, expected, strict=True):
        assert p.probabilities == pytest.approx(e.probabilities, abs=1e-4)
        assert p.probability == pytest.approx(e.probability, abs=1e-4)
    assert model.predict(context, []) == []
    assert list(tmp_path.iterdir()) == []


def test_onnx_probabilities_are_in_the_messages_order(kinds: Kinds, onnx_graph: Path) -> None:
    """Messages of different lengths (batched by length): each row is its message's."""
    import onnxruntime

    from spamgpt.data import tokenized
    from spamgpt.data.batching import ModelInputs

    model, meta = classifier.load(kinds.folders["single"], kinds.project / "models/pretrained")
    enc = tokenizer.load(kinds.folders["single"])
    messages = [LONG, "hi", *MESSAGES, "win " * 20]
    ids = tokenized.pack_ids(tokenized.encode(enc, messages), meta["max_length"], HEAD)
    session = onnxruntime.InferenceSession(str(onnx_graph))
    got = serving.onnx_probabilities(session, ModelInputs(ids, None))
    fp32 = Compute(CPU, "fp32")
    want, _ = classifier.classify_texts(model, enc, messages, meta["max_length"], fp32)
    assert got.dtype == np.float32 and got.shape == (5, 2)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


@pytest.fixture
def store(local_store: MlflowClient, kinds: Kinds, tmp_path: Path, monkeypatch) -> MlflowClient:
    """A fresh SQLite store in tmp_path, the project (DVC_ROOT, the working directory) whose
    models/pretrained holds the base weights."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models/pretrained").symlink_to(kinds.project / "models/pretrained")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(loader.HUB_ENV, raising=False)
    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    return local_store


def finished_run(client: MlflowClient) -> str:
    run_id = client.create_run("0").info.run_id
    client.set_terminated(run_id)
    return run_id


def pins(*names: str) -> list[str]:
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in names]


def test_log_model_logs_the_light_model_its_config_metadata_and_pins(
    kinds: Kinds, store: MlflowClient, tmp_path: Path
) -> None:
    """The light model of a finished run: models/finetuned as it is plus base.json, logged
    as code with the spamgpt package, model_config {threshold, device auto}, the classes as
    metadata, the signature from predict's hints (no example), the exact pins; the run stays
    finished and no run is left active."""
    run_id = finished_run(store)
    folder = kinds.folders["single"]
    uri = serving.log_model(run_id, folder, THRESHOLD, base=kinds.base)
    assert uri == f"runs:/{run_id}/model"
    assert store.get_run(run_id).info.status == "FINISHED" and mlflow.active_run() is None
    local = loader.download_logged(uri, tmp_path / "dl")
    mlmodel = Model.load(local)
    assert mlmodel.flavors["python_function"]["config"] == {
        "threshold": THRESHOLD,
        "device": "auto",
    }
    assert mlmodel.metadata == {"labels": ["ham", "spam"], "positive_label": "spam"}
    assert mlmodel.saved_input_example_info is None
    assert mlmodel.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    assert mlmodel.signature.outputs.to_dict() == answers_schema("single")
    requirements = (local / "requirements.txt").read_text().split()
    assert [r for r in requirements if not r.startswith("mlflow")] == pins(*serving.REQUIREMENTS)
    artifact = local / "artifacts" / ARTIFACT
    assert sorted(p.name for p in artifact.iterdir()) == sorted(
        [*(p.name for p in folder.iterdir()), "base.json"]
    )
    for name in ("classifier.json", "model.safetensors", "vocab.json"):
        assert (artifact / name).read_bytes() == (folder / name).read_bytes()
    base = dataclasses.asdict(kinds.base)
    assert (artifact / "base.json").read_text() == json.dumps(base, indent=2) + "\n"
    assert (local / "code/spamgpt/serve/serving.py").is_file()
    assert (local / "mlflow_model.py").read_bytes() == serving.MODEL_CODE.read_bytes()
    assert mlflow.pyfunc.load_model(uri).predict(MESSAGES)[1].label == "ham"


def test_log_model_leaves_a_running_run_running_in_this_process(
    kinds: Kinds, store: MlflowClient
) -> None:
    run_id = store.create_run("0").info.run_id
    serving.log_model(run_id, kinds.folders["single"], None, base=kinds.base)
    assert store.get_run(run_id).info.status == "RUNNING" and mlflow.active_run() is None


@pytest.mark.parametrize("kind", ["fields", "multi", "number"])
def test_log_model_names_the_fields_and_the_task_in_the_config(
    kinds: Kinds, store: MlflowClient, tmp_path: Path, kind: str
) -> None:
    """Several fields: the signature names them, and MLflow runs the input example (a
    DataFrame of them) through the loaded model; the task's own config keys."""
    run_id = finished_run(store)
    threshold = CONFIGS[kind]["threshold"]
    uri = serving.log_model(run_id, kinds.folders[kind], threshold, base=kinds.base)
    local = loader.download_logged(uri, tmp_path / "dl")
    mlmodel = Model.load(local)
    config = {k: v for k, v in CONFIGS[kind].items() if k != "device"}
    assert mlmodel.flavors["python_function"]["config"] == {**config, "device": "auto"}
    meta = json.loads((kinds.folders[kind] / classifier.CLASSIFIER_JSON).read_text())
    assert mlmodel.metadata == classifier.classes_of(meta).to_dict()
    if kind == "fields":
        assert mlmodel.signature.inputs.input_names() == FIELDS
        assert {c.type.name for c in mlmodel.signature.inputs.inputs} == {"string"}
        example = mlmodel.load_input_example(local)
        assert example.to_dict(orient="list") == {f: serving.INPUT_EXAMPLE for f in FIELDS}
    else:
        assert mlmodel.saved_input_example_info is None


# The outputs MLflow infers from a one-text model's predict hints (list[Prediction] etc.):
# one object column, each answer's fields as its properties (the extra spam_probability not
# among them); a fields model's signature declares the same.
DOUBLES = {"type": "map", "values": {"type": "double"}, "required": True}
ANSWERS = {
    "single": {
        "label": {"type": "string", "required": True},
        "probabilities": DOUBLES,
        "probability": {"type": "double", "required": True},
    },
    "multi": {
        "labels": {"type": "array", "items": {"type": "string"}, "required": True},
        "probabilities": DOUBLES,
    },
    "number": {"prediction": {"type": "double", "required": True}},
}


ANSWER_TYPES = {
    "single": serving.Prediction,
    "multi": serving.MultiLabelPrediction,
    "number": serving.NumberPrediction,
}


def answers_schema(kind: str) -> list[dict]:
    return [{"type": "object", "properties": ANSWERS[kind], "required": True}]


@pytest.mark.parametrize("kind", ["single", "multi", "number"])
def test_a_fields_model_declares_its_fields_in_and_the_answers_out(
    kinds: Kinds, store: MlflowClient, kind: str
) -> None:
    """Each field a string column in, the answers out as the one-text model of its kind
    declares them; the model loaded by MLflow (its input checked against the signature)
    answers a DataFrame with the fields in another order and another column."""
    run_id = finished_run(store)
    folder = kinds.folders["fields" if kind == "single" else f"{kind}_fields"]
    uri = serving.log_model(run_id, folder, CONFIGS[kind]["threshold"], base=kinds.base)
    signature = mlflow.models.get_model_info(uri).signature
    string = {"type": "string", "required": True}
    assert signature.inputs.to_dict() == [{**string, "name": field} for field in FIELDS]
    assert signature.outputs.to_dict() == answers_schema(kind)
    frame = pd.DataFrame({"body": ["a prize", "at 7"], "id": [1, 2], "subject": ["WIN", "hi"]})
    answers = mlflow.pyfunc.load_model(uri).predict(frame)
    texts = ["WIN\n\na prize", "hi\n\nat 7"]
    threshold, answer_type = CONFIGS[kind]["threshold"], ANSWER_TYPES[kind]
    assert answers == expected_answers(folder, texts, threshold, answer_type)


@pytest.mark.parametrize("shift", [None, {"ham": 0.0, "spam": -1.3}])
def test_log_model_writes_the_temperature_into_the_classifier_json(
    kinds: Kinds, store: MlflowClient, tmp_path: Path, shift: dict | None
) -> None:
    run_id = finished_run(store)
    folder = kinds.folders["single"]
    uri = serving.log_model(
        run_id, folder, THRESHOLD, base=kinds.base, temperature=2.5, shift=shift
    )
    written = loader.download_logged(uri, tmp_path / "dl") / "artifacts" / ARTIFACT
    meta = json.loads((folder / classifier.CLASSIFIER_JSON).read_text())
    expected = {**meta, "temperature": 2.5, **({} if shift is None else {"shift": shift})}
    text = (written / classifier.CLASSIFIER_JSON).read_text(encoding="utf-8")
    assert text == json.dumps(expected, indent=2) + "\n"


def test_log_model_writes_every_tensor_for_a_registered_model(
    kinds: Kinds, store: MlflowClient, tmp_path: Path, onnx_graph: Path
) -> None:
    """Registered: full, from the model the caller has loaded (`loaded`) when given; with an
    ONNX graph, carried as an artifact and onnxruntime pinned."""
    run_id = finished_run(store)
    folder = kinds.folders["single"]
    model, meta = classifier.load(folder, kinds.project / "models/pretrained")
    with torch.no_grad():
        model.head.bias.add_(1.0)  # the caller's model, not the folder's again
    uri = serving.log_model(
        run_id, folder, THRESHOLD, "spam-model", base=kinds.base, loaded=(model, meta),
        onnx_file=onnx_graph,
    )  # fmt: skip
    (version,) = store.search_model_versions("name='spam-model'")
    assert version.run_id == run_id
    local = loader.download_logged(uri, tmp_path / "dl")
    artifact = local / "artifacts" / ARTIFACT
    assert not (artifact / "base.json").exists()
    stored = load_file(artifact / "model.safetensors")
    assert stored.keys() == model.state_dict().keys()
    assert torch.equal(stored["head.bias"], model.head.bias)
    assert (local / "artifacts" / "model.onnx").read_bytes() == onnx_graph.read_bytes()
    requirements = (local / "requirements.txt").read_text().split()
    assert [r for r in requirements if not r.startswith("mlflow")] == pins(
        *serving.REQUIREMENTS, *serving.ONNX_REQUIREMENTS
    )


def test_log_model_full_loads_the_folder_on_its_pretrained_root(
    kinds: Kinds, store: MlflowClient, tmp_path: Path
) -> None:
    """full without `loaded`: the folder on `pretrained_root` (here not the workspace's)."""
    (tmp_path / "models/pretrained").unlink()
    run_id = finished_run(store)
    folder = kinds.folders["single"]
    uri = serving.log_model(
        run_id, folder, THRESHOLD, pretrained_root=kinds.project / "models/pretrained", full=True
    )
    artifact = loader.download_logged(uri, tmp_path / "dl") / "artifacts" / ARTIFACT
    model, _ = classifier.load(folder, kinds.project / "models/pretrained")
    stored = load_file(artifact / "model.safetensors")
    assert stored.keys() == model.state_dict().keys()
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())


def test_a_randomly_initialised_model_is_logged_whole_as_it_is(
    kinds: Kinds, store: MlflowClient, tmp_path: Path
) -> None:
    """A folder that holds every tensor already (model.pretrained false): copied as it is,
    no base.json even where a base is given, registered or not."""
    folder = edited(kinds.folders["single"], tmp_path / "random", full=True)
    uri = serving.log_model(finished_run(store), folder, THRESHOLD, base=kinds.base, full=True)
    artifact = loader.download_logged(uri, tmp_path / "dl") / "artifacts" / ARTIFACT
    names = sorted(p.name for p in folder.iterdir())
    assert sorted(p.name for p in artifact.iterdir()) == names
    assert all((artifact / n).read_bytes() == (folder / n).read_bytes() for n in names)


def test_log_model_refuses_a_threshold_outside_0_1_in_one_line(kinds: Kinds) -> None:
    with pytest.raises(SpamGPTError) as error:
        serving.log_model("0123", kinds.folders["single"], 1.5, base=kinds.base)
    assert str(error.value) == "threshold must be between 0 and 1, got 1.5"


def test_a_light_model_without_a_base_identity_is_refused_before_logging(
    kinds: Kinds, store: MlflowClient
) -> None:
    run_id = finished_run(store)
    with pytest.raises(SpamGPTError) as error:
        serving.log_model(run_id, kinds.folders["single"], THRESHOLD)
    assert str(error.value) == "a light model needs the identity of its base weights"
    assert store.get_run(run_id).outputs.model_outputs == []
