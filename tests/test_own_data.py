"""Your own data, end to end: a CSV of support tickets with columns of other names and three
classes, in data/local/ of a fresh git + DVC project, through `dvc repro`: per-class metrics
in metrics/ and MLflow, a 3x3 confusion matrix, `spamgpt classify` and `mlflow models serve`
answering with the class names; editing the file re-runs the pipeline from the first stage."""

import csv
import json
import random
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import (
    http_service,
    make_project,
    post,
    read_json,
    run,
    spamgpt,
    subprocess_env,
    tiny_params,
)
from mlflow.tracking import MlflowClient

TEAMS = {
    "billing": ["I was charged twice for {n}", 'refund, please: invoice "{n}" is wrong'],
    "outage": ["the site is down since {n}", "error {n} when I log in,\nand again now"],
    "sales": ["how much for {n} seats?", "do you offer a discount on {n} licences"],
}
CLASSES = sorted(TEAMS)


def tickets(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        team = CLASSES[i % 3]
        rows.append({"id": i, "message": rng.choice(TEAMS[team]).format(n=i), "team": team})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["id", "message", "team"])
        writer.writeheader()
        writer.writerows(rows)


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def project(mirror, empty_store, tmp_path_factory):
    params = tiny_params(mirror)
    params["data"].update(
        url="data/local/tickets.csv",
        mirrors=[],
        member=None,
        sha256=None,
        format="csv",
        text_column="message",
        label_column="team",
        labels=None,
        positive_label=None,
    )
    path = make_project(tmp_path_factory.mktemp("own"), params, store=empty_store)
    write_csv(path / "data/local/tickets.csv", tickets(150, seed=0))
    run(["git", "add", "data/local/tickets.csv"], path)
    run(["git", "commit", "-qm", "tickets"], path)
    first = run(["dvc", "repro"], path)
    return path, first.stdout + first.stderr


def test_classes_are_found_and_split(project) -> None:
    path, _ = project
    report = read_json(path / "metrics/data.json")
    assert report["labels"] == CLASSES and report["positive_label"] is None
    assert report["raw_rows"] == 150 and report["bad_lines"] == 0
    for split in ("train", "val", "test"):
        assert set(report[split]) == set(CLASSES) and min(report[split].values()) > 0


def test_metrics_are_per_class_with_a_3x3_confusion_matrix(project) -> None:
    path, _ = project
    ev = read_json(path / "reports/evaluation.json")
    assert ev["threshold"] is None and ev["best_val_threshold"] is None
    for split in ("val", "test"):
        report = ev[split]
        matrix = report["confusion_matrix"]
        assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
        for i, name in enumerate(CLASSES):
            assert sum(matrix[i]) == report[name]["support"]
        assert report["roc_auc"] is None  # curves and AUCs need a positive class of two
    confusion = (path / "metrics/confusion_test.csv").read_text().splitlines()
    assert {tuple(line.split(",")) for line in confusion[1:]} <= {
        (a, p) for a in CLASSES for p in CLASSES
    }
    baseline = read_json(path / "metrics/baseline.json")
    assert set(CLASSES) <= set(baseline["test"]) and baseline["threshold"] is None


def test_mlflow_has_per_class_metrics_and_the_confusion_matrix(project, tmp_path: Path) -> None:
    path, _ = project
    client = MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")
    run_id = read_json(path / "models/mlflow_run.json")["run_id"]
    metrics = client.get_run(run_id).data.metrics
    for name in CLASSES:
        assert {f"test/{name}_f1", f"test/{name}_recall", f"baseline/{name}_f1"} <= set(metrics)
        assert len(client.get_metric_history(run_id, f"val/{name}_f1")) >= 1
    artifacts = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/test_confusion_matrix.png" in artifacts
    labels = Path(client.download_artifacts(run_id, "labels.json", str(tmp_path)))
    assert json.loads(labels.read_text())["labels"] == CLASSES


def test_classify_answers_with_the_class_names(project) -> None:
    path, _ = project
    out = spamgpt(["classify", "--json", "the site is down", "charged twice"], path)
    for line in out.splitlines():
        answer = json.loads(line)
        assert answer["label"] in CLASSES
        assert set(answer["probabilities"]) == set(CLASSES)
        assert answer["probability"] == answer["probabilities"][answer["label"]]
        assert sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    plain = spamgpt(["classify", "the site is down"], path)
    assert plain.split("\t")[0] in CLASSES


def test_served_model_answers_with_the_class_names(project) -> None:
    path, _ = project
    run_id = read_json(path / "models/mlflow_run.json")["run_id"]
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}"}
    cmd = ["mlflow", "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager", "local"]
    with http_service(
        lambda port: [*cmd, "-p", str(port), "--host", "127.0.0.1"], "/ping", env, path / "s.log"
    ) as url:
        answer = post(f"{url}/invocations", {"inputs": ["refund please", "site down"]})
    for p in answer["predictions"]:
        assert p["label"] in CLASSES and set(p["probabilities"]) == set(CLASSES)


def test_the_same_split_given_as_files_gives_the_same_metrics(project, tmp_path: Path) -> None:
    """data/split/*.csv of the random split, given back as train/val/test files."""
    path, _ = project
    given = tmp_path / "given"
    shutil.copytree(path, given, symlinks=True)  # its DVC cache: the weights are not fetched
    for split in ("train", "val", "test"):
        shutil.copy(given / f"data/split/{split}.csv", given / f"data/local/{split}.csv")
    params = yaml.safe_load((given / "params.yaml").read_text())
    files = {s: {"url": f"data/local/{s}.csv", "sha256": None} for s in ("train", "val", "test")}
    params["data"].update(url=None, files=files, text_column="text", label_column="label")
    (given / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], given)
    assert "download_weights" not in ran_stages(out.stdout)
    report = read_json(given / "metrics/data.json")
    assert report["cross_duplicates"] == {"train-val": 0, "train-test": 0, "val-test": 0}
    for name in ("metrics/eval.json", "metrics/baseline.json", "reports/evaluation.json"):
        assert read_json(given / name) == read_json(path / name), name
    assert (
        read_json(given / "reports/training.json")["val"]
        == read_json(path / "reports/training.json")["val"]
    )


def test_editing_the_local_file_reruns_the_pipeline(project) -> None:
    path, _ = project
    assert ran_stages(run(["dvc", "repro"], path).stdout) == []  # nothing changed
    write_csv(path / "data/local/tickets.csv", tickets(180, seed=1))
    # The data stages run, and DVC's status names those that read their outputs next: what
    # `dvc repro` would run (the whole pipeline on a file is the fixture's)
    out = run(["dvc", "repro", "split"], path)
    assert ran_stages(out.stdout) == ["download_data", "split"]
    assert read_json(path / "metrics/data.json")["raw_rows"] == 180
    changed = json.loads(run(["dvc", "status", "--json"], path).stdout)
    assert {"baseline", "loaders", "audit", "finetune", "evaluate"} <= set(changed)


def test_a_threshold_with_three_classes_and_a_positive_one_is_refused(project) -> None:
    path, _ = project
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["data"].update(labels=CLASSES, positive_label="outage")
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], path, check=False)
    assert out.returncode != 0 and ran_stages(out.stdout) == ["split"]  # the first that reads it
    assert (
        "error: evaluate.threshold: a threshold applies to two classes only, the data has 3; "
        "allowed: null (the most probable class)"
    ) in out.stderr + out.stdout
