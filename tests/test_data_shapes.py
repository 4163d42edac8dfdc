"""Data as it comes, end to end through `dvc repro`: given train/val/test JSON Lines files with
leaks between them, each message a subject and a body, bodies longer than model.max_length
whose class is decided by their ending (model.truncation: head_tail); then `spamgpt classify`
and `spamgpt predict` (also with the logged MLflow model) taking the fields, the served
model's signature naming them, and a changed file re-running the pipeline from its start."""

import json
import random
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import (
    make_project,
    read_json,
    restored_tracking_uri,
    run,
    tiny_params,
    write_jsonl,
)
from mlflow.tracking import MlflowClient

from spamgpt.data import download
from spamgpt.serve import cli

CLASSES = ["billing", "outage", "sales"]
ENDINGS = {
    "billing": "so please refund the invoice",
    "outage": "so the site is down again",
    "sales": "so send a quote for seats",
}
FILLER = [
    "hello",
    "thanks",
    "we",
    "tried",
    "many",
    "things",
    "over",
    "the",
    "weekend",
    "and",
    "still",
    "wonder",
    "about",
    "it",
]
TEMPLATE = "Subject: {subject}\n\n{body}"


def mails(n: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": f"{prefix}{i}",
            "subject": f"ticket {prefix}{i}",
            "body": " ".join(rng.choices(FILLER, k=30)) + " " + ENDINGS[CLASSES[i % 3]],
            "team": CLASSES[i % 3],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def project(mirror, empty_store, tmp_path_factory):
    files = {s: {"url": f"data/local/{s}.jsonl", "sha256": None} for s in ("train", "val", "test")}
    params = tiny_params(
        mirror,
        data={
            "url": None, "mirrors": [], "member": None, "sha256": None, "format": "jsonl",
            "text_column": ["subject", "body"], "text_template": TEMPLATE,
            "label_column": "team", "labels": None, "positive_label": None, "files": files,
        },
        model={"max_length": 24, "truncation": "head_tail"},
        train={"epochs": 2, "lr": 3e-3},
        evaluate={"threshold": None},
    )  # fmt: skip
    path = make_project(tmp_path_factory.mktemp("shapes"), params, store=empty_store)
    train, val, test = mails(90, 0, "a"), mails(24, 1, "v"), mails(24, 2, "t")
    test += [train[0], train[1], val[0]]  # leaks: two train texts and a val text in test
    for name, records in (("train", train), ("val", val), ("test", test)):
        write_jsonl(path / f"data/local/{name}.jsonl", records)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "mail"], path)
    run(["dvc", "repro"], path)
    return path


def run_id_of(path: Path) -> str:
    return read_json(path / "models/mlflow_run.json")["run_id"]


def test_each_source_its_hash_and_the_leaks_are_reported(project: Path) -> None:
    report = read_json(project / "metrics/data.json")
    for name in ("train", "val", "test"):
        source = report["sources"][name]
        assert source["source"] == f"data/local/{name}.jsonl"
        assert source["sha256"] == download.sha256_file(project / source["source"])
    assert report["cross_duplicates"] == {"train-val": 0, "train-test": 2, "val-test": 1}
    assert report["cross_duplicates_removed"] == 2
    assert sum(report["train"].values()) == 88 and sum(report["test"].values()) == 27
    assert report["labels"] == CLASSES
    loaders = read_json(project / "metrics/loaders.json")
    assert loaders["max_length"] == 24
    assert all(loaders[s]["truncated"] == loaders[s]["samples"] for s in ("train", "val", "test"))


def test_mlflow_names_each_source_and_the_messages_cut(project: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run_ = client.get_run(run_id_of(project))
    report = read_json(project / "metrics/data.json")
    digests = {
        d.dataset.name.rsplit("-", 1)[1]: d.dataset.digest for d in run_.inputs.dataset_inputs
    }
    assert digests == {s: report["sources"][s]["sha256"][:36] for s in ("train", "val", "test")}
    assert run_.data.metrics["truncated/test"] == 27
    artifacts = {f.path for f in client.list_artifacts(run_.info.run_id, "evaluation")}
    assert "evaluation/predictions_test.csv" in artifacts
    predictions = pd.read_csv(project / "reports/predictions_test.csv")
    assert len(predictions) == 27 and {f"p_{c}" for c in CLASSES} <= set(predictions.columns)


def spamgpt(args: list[str], capsys) -> tuple[int, str, str]:
    """`spamgpt ...` in this process (its imports are paid once): (exit code, out, err)."""
    try:
        with restored_tracking_uri():
            cli.main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_classify_takes_the_fields_as_json(project: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(project)
    message = json.dumps({"subject": "hi", "body": "the site is down again"})
    code, out, _ = spamgpt(["classify", "--json", message], capsys)
    assert code == 0 and json.loads(out)["label"] in CLASSES
    code, _, err = spamgpt(["classify", "the site is down"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "give each message as a JSON object of them" in err


def test_predict_with_the_workspace_and_the_logged_model(project: Path, capsys, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's mlflow.db
    records = mails(40, 9, "n")
    for r in records:
        r["title"] = r.pop("subject")
    write_jsonl(project / "new.jsonl", records)
    args = ["--text-column", "title", "body", "--keep", "id"]
    assert spamgpt(["predict", "new.jsonl", "-o", "here.csv", *args], capsys)[0] == 0
    uri = f"runs:/{run_id_of(project)}/model"
    logged = ["predict", "new.jsonl", "-o", "logged.parquet", "--model", uri, *args]
    assert spamgpt(logged, capsys)[0] == 0
    here, logged = pd.read_csv(project / "here.csv"), pd.read_parquet(project / "logged.parquet")
    assert here["id"].tolist() == logged["id"].tolist() == [r["id"] for r in records]
    assert here["label"].tolist() == logged["label"].tolist()
    assert (here["p_sales"] - logged["p_sales"]).abs().max() < 1e-5
    assert here["truncated"].all()


def test_the_logged_model_takes_the_fields(project: Path, monkeypatch) -> None:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.chdir(project)  # the light model finds its base weights in the workspace
    with restored_tracking_uri():
        mlflow.set_tracking_uri(uri)
        model_uri = f"runs:/{run_id_of(project)}/model"
        assert mlflow.models.get_model_info(model_uri).signature.inputs.input_names() == [
            "subject",
            "body",
        ]
        served = mlflow.pyfunc.load_model(model_uri)
        frame = pd.DataFrame([{"subject": "hi", "body": ENDINGS["sales"]}] * 2)
        answers = served.predict(frame)
    assert len(answers) == 2 and answers[0].label in CLASSES


def test_the_given_files_split_again_the_same(project: Path) -> None:
    """`dvc repro -f` of the stages that read the given files writes every output as before
    (dvc.lock unchanged but for the stages' timelines, seconds that no stage reads), so
    nothing after them is stale: the same inputs, and the rest of the pipeline regenerates
    identical outputs from them (test_reliability_finetune)."""
    lock = locked_outputs(project)
    out = run(["dvc", "repro", "-f", "split"], project)
    assert re.findall(r"Running stage '([^']+)'", out.stdout) == ["download_data", "split"]
    assert locked_outputs(project) == lock
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}


def test_a_changed_file_reruns_the_pipeline_but_not_the_weights(project: Path) -> None:
    write_jsonl(project / "data/local/val.jsonl", mails(24, 5, "w"))
    out = run(["dvc", "repro", "split"], project)
    assert re.findall(r"Running stage '([^']+)'", out.stdout) == ["download_data", "split"]
    changed = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert {"baseline", "loaders", "finetune", "evaluate"} <= set(changed)
    assert "download_weights" not in changed


def test_a_missing_file_of_a_split_stops_in_one_line(project: Path) -> None:
    raw = project / "data/raw/dataset"
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    (project / "data/local/val.jsonl").unlink()
    out = run(["dvc", "repro", "download_data"], project, check=False)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: data.files.val.url: could not download val (val.jsonl): data/local/val.jsonl: "
        "no such file"
    ]
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before  # the last good copies
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["data"]["files"]["val"]["url"] == "data/local/val.jsonl"


def test_one_parquet_file_with_a_split_column(project: Path) -> None:
    """The whole pipeline again from one Parquet file whose `part` column names each row's
    split, val carved from train."""
    parts = {"train": mails(60, 3, "p"), "test": mails(15, 4, "q")}  # no val: carved
    rows = [{**r, "part": name.upper()} for name, records in parts.items() for r in records]
    pd.DataFrame(rows).to_parquet(project / "data/local/all.parquet", index=False)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(
        url="data/local/all.parquet", files=None, format="parquet", split_column="part",
        split_names={"train": "TRAIN", "val": "VAL", "test": "TEST"},
    )  # fmt: skip
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], project)
    assert "download_weights" not in re.findall(r"Running stage '([^']+)'", out.stdout)
    report = read_json(project / "metrics/data.json")
    assert report["split_column"] == "part" and report["val_carved"] is True
    assert report["sources"]["dataset"]["source"] == "data/local/all.parquet"
    assert sum(report["test"].values()) == 15
    assert sum(report["train"].values()) + sum(report["val"].values()) == 60
    predictions = pd.read_csv(project / "reports/predictions_test.csv")
    assert sorted(predictions["label"]) == sorted(r["team"] for r in parts["test"])
    assert set(predictions["predicted"]) <= set(CLASSES)
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}


def locked_outputs(project: Path) -> dict:
    """dvc.lock's stages, each output a stage's timeline (reports/timelines/) left out."""
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for stage in stages.values():
        stage["outs"] = [o for o in stage.get("outs", []) if "reports/timelines/" not in o["path"]]
    return stages
