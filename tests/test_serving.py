"""The MLflow model end to end: logged from a fine-tuned folder, loaded back, registered, and
served by the real `mlflow models serve` over HTTP, answering as `spamgpt classify` does."""

import json
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from conftest import http_service, post, restored_tracking_uri, run, subprocess_env
from mlflow.tracking import MlflowClient
from tiny_gpt2 import make_tiny_hub

from spamgpt import classifier, serving, tokenizer
from spamgpt.errors import SpamGPTError
from spamgpt.labels import SMS
from spamgpt.model import GPT2, GPT2Classifier
from spamgpt.params import ModelParams

REPO_ID = "openai-community/gpt2"
MESSAGES = ["free entry to win a prize, txt WIN to 80086", "see you at 7"]
THRESHOLD = 0.8  # "see you at 7" scores about 0.71: ham here, spam at the default 0.5
REGISTERED = "sms-spam-gpt2"


# MLflow 3.17's SQLite store uses an SQLAlchemy loader option deprecated since SQLAlchemy 2.1.
@dataclass
class Logged:
    project: Path
    finetuned: Path
    pretrained: Path
    run_id: str
    uri: str
    env: dict[str, str]  # for subprocesses: the venv first on PATH, this store


def finetuned_folder(project: Path) -> Path:
    """models/finetuned as finetune leaves it: trained tensors only, the base in
    models/pretrained/<repo_id>; the head drawn so that probabilities spread over (0, 1)."""
    hub = make_tiny_hub(project / "hub", layers=2, dim=32, heads=4, n_ctx=64)
    shutil.copytree(hub, project / "models/pretrained" / REPO_ID)
    model = GPT2Classifier(GPT2.from_pretrained(hub))
    torch.nn.init.normal_(model.head.weight, std=0.3, generator=torch.Generator().manual_seed(0))
    trained = classifier.freeze(model, 1)
    params = ModelParams(
        hub_url="http://127.0.0.1", repo_id=REPO_ID, revision="tiny", max_length=None,
        pretrained=True, init_seed=0, trainable_blocks=1, pooling="last", dropout=0.0,
        finetune="blocks",
    )  # fmt: skip
    meta = classifier.classifier_meta(params, SMS, trained, 48, tokenizer.load(hub).eot_token)
    folder = project / "models/finetuned"
    folder.mkdir(parents=True)
    classifier.save(model, folder, meta, hub, full=False)
    return folder


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory):
    """A fine-tuned folder logged (and registered) into a finished run of a SQLite store."""
    project = tmp_path_factory.mktemp("serving")
    finetuned, pretrained = finetuned_folder(project), project / "models/pretrained"
    uri = f"sqlite:///{project / 'mlflow.db'}"
    with restored_tracking_uri(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # wins over the variable if another test set one
        client = MlflowClient()
        exp = client.create_experiment("spam", artifact_location=(project / "art").as_uri())
        run_id = client.create_run(exp).info.run_id
        client.set_terminated(run_id)
        model_uri = serving.log_model(run_id, finetuned, THRESHOLD, REGISTERED, pretrained)
        env = {**subprocess_env(), "MLFLOW_TRACKING_URI": uri}
        yield Logged(project, finetuned, pretrained, run_id, model_uri, env)


@pytest.fixture(scope="module")
def server(logged: Logged):
    """`mlflow models serve` on the runs:/ URI; its base URL once /ping answers."""
    cmd = ["mlflow", "models", "serve", "-m", logged.uri, "--env-manager", "local"]
    with http_service(
        lambda port: [*cmd, "-p", str(port), "--host", "127.0.0.1"],
        "/ping",
        logged.env,
        logged.project / "serve.log",
    ) as url:
        yield url


def classify_cli(logged: Logged, messages: list[str]) -> list[dict]:
    out = run(
        ["spamgpt", "classify", "--json", "--threshold", str(THRESHOLD), "--model",
         str(logged.finetuned), "--pretrained", str(logged.pretrained), *messages],
        logged.project, env=logged.env,
    ).stdout  # fmt: skip
    return [json.loads(line) for line in out.splitlines()]


def test_logged_model_is_linked_to_its_run_which_stays_finished(logged: Logged) -> None:
    client = MlflowClient()
    run = client.get_run(logged.run_id)
    assert run.info.status == "FINISHED"
    assert logged.uri == f"runs:/{logged.run_id}/model"
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert (model.name, model.source_run_id) == ("model", logged.run_id)
    files = client.list_logged_model_artifacts(output.model_id, "artifacts/classifier")
    names = {Path(f.path).name for f in files}
    assert names == {"classifier.json", "model.safetensors", "vocab.json", "merges.txt"}


def test_log_model_leaves_a_running_run_running(logged: Logged) -> None:
    client = MlflowClient()
    run_id = client.create_run(client.get_run(logged.run_id).info.experiment_id).info.run_id
    serving.log_model(run_id, logged.finetuned, THRESHOLD, pretrained_root=logged.pretrained)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert mlflow.active_run() is None


def test_log_model_rejects_a_threshold_outside_0_1(logged: Logged) -> None:
    with pytest.raises(SpamGPTError, match="threshold"):
        serving.log_model(logged.run_id, logged.finetuned, 1.0, pretrained_root=logged.pretrained)


def test_loaded_model_predicts_like_the_cli(logged: Logged) -> None:
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


def test_registered_version_predicts_the_same(logged: Logged) -> None:
    (version,) = MlflowClient().search_model_versions(f"name='{REGISTERED}'")
    assert (version.version, version.run_id) == (1, logged.run_id)
    registered = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1").predict(MESSAGES)
    assert registered == mlflow.pyfunc.load_model(logged.uri).predict(MESSAGES)


def test_model_names_its_classes_in_its_metadata(logged: Logged) -> None:
    info = mlflow.models.get_model_info(logged.uri)
    assert info.metadata == {"labels": ["ham", "spam"], "positive_label": "spam"}
    fields = json.dumps(info.signature.outputs.to_dict())
    assert all(f'"{name}"' in fields for name in ("label", "probability", "probabilities"))
