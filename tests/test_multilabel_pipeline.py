"""Multi-label data end to end: a JSON Lines file of tickets whose labels (a list each, maybe
empty) depend on different words of the text, in data/local/ of a fresh git + DVC project,
through `dvc repro` with the tiny random model trained fully: per-label metrics and the set
metrics in metrics/eval.json, the DVC plot data and MLflow, the TF-IDF baseline beside them,
`spamgpt classify`, `spamgpt predict` and the MLflow model answering label sets."""

import json
import random

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import make_project, read_json, run, spamgpt, tiny_params, write_jsonl
from mlflow.tracking import MlflowClient

# Each label is carried by a message holding one of its words; the words of the others and
# neutral filler around them.
WORDS = {  # upper case, in letters of their own: the tiny model's tokens are mostly letters
    "billing": ["BILL", "FEE"],
    "shipping": ["TRUCK", "DOCK"],
    "urgent": ["ASAP", "!!!"],
}
FILLER = ["please", "help", "with", "my", "account", "today", "thanks", "hello", "order", "the"]
LABELS = sorted(WORDS)


def tickets(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [name for name in LABELS if rng.random() < 0.4]
        words = rng.sample(FILLER, 2) + [rng.choice(WORDS[name]) for name in labels]
        rng.shuffle(words)
        rows.append({"id": i, "body": f"{' '.join(words)} {i}", "tags": labels})
    return rows


@pytest.fixture(scope="module")
def project(mirror, empty_store, tmp_path_factory):
    params = tiny_params(mirror)
    params["data"].update(
        url="data/local/tickets.jsonl",
        mirrors=[],
        member=None,
        sha256=None,
        format="jsonl",
        text_column="body",
        label_column="tags",
        label_format="multi",
        allow_empty_labels=True,
        labels=None,
        positive_label=None,
    )
    params["model"].update(trainable_blocks="all")
    params["train"].update(epochs=6, batch_size=8, lr=3e-3, warmup_ratio=0.05, patience=6)
    params["evaluate"].update(threshold="auto")
    params["mlflow"].update(log_checkpoints=False)
    path = make_project(tmp_path_factory.mktemp("multi"), params, store=empty_store)
    rows = tickets(360, seed=0)
    rows.append({"id": 360, "body": rows[0]["body"], "tags": ["urgent"]})  # a label conflict
    write_jsonl(path / "data/local/tickets.jsonl", rows)
    run(["git", "add", "data/local/tickets.jsonl"], path)
    run(["git", "commit", "-qm", "tickets"], path)
    run(["dvc", "repro"], path)
    return path


def test_labels_are_found_split_and_conflicts_counted(project) -> None:
    report = read_json(project / "metrics/data.json")
    assert report["labels"] == LABELS and report["label_format"] == "multi"
    assert report["label_conflicts"] == 1 and report["duplicates_removed"] == 1
    for split in ("train", "val", "test"):
        assert set(report[split]) == set(LABELS) and min(report[split].values()) > 0
    train = pd.read_csv(project / "data/split/train.csv")
    assert all(isinstance(json.loads(labels), list) for labels in train["label"])


def test_reaches_micro_f1_with_the_baseline_beside_it(project) -> None:
    compared = read_json(project / "metrics/eval.json")  # what experiments are compared by
    assert compared["micro_f1"] >= 0.9, compared
    assert compared["baseline"]["micro_f1"] >= 0.9 and "threshold" not in compared
    ev = read_json(project / "reports/evaluation.json")  # the whole report, every threshold
    test, rows = ev["test"], len(pd.read_csv(project / "data/split/test.csv"))
    assert test["micro_f1"] == compared["micro_f1"] and set(ev["threshold"]) == set(LABELS)
    kept = [name for name in LABELS if ev["val"][name]["support"] < 10]  # evaluate.min_support
    assert ev["kept_default_threshold"] == kept
    for name in LABELS:
        label = test[name]
        (tn, fp), (fn, tp) = label["confusion_matrix"]
        assert tp + fn == label["support"] and tn + fp + fn + tp == rows
        assert label["threshold"] == ev["threshold"][name]
    for key in ("macro_f1", "samples_f1", "accuracy", "hamming_loss"):
        assert 0 <= test[key] <= 1 and compared[key] == test[key]
    baseline = ev["baseline"]["test"]
    assert set(LABELS) <= set(baseline) and baseline["micro_f1"] == compared["baseline"]["micro_f1"]
    confusion = pd.read_csv(project / "metrics/confusion_test.csv")
    assert set(confusion["actual"]) <= {*LABELS, "(none)"}
    assert set(pd.read_csv(project / "metrics/roc_test.csv")["class"]) == set(LABELS)


def test_mlflow_has_per_label_and_set_metrics(project) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run_id = read_json(project / "models/mlflow_run.json")["run_id"]
    metrics = client.get_run(run_id).data.metrics
    for name in LABELS:
        assert {f"test/{name}_f1", f"baseline/{name}_f1", f"test/threshold_{name}"} <= set(metrics)
    assert {"test/micro_f1", "test/samples_f1", "test/hamming_loss", "val/micro_f1"} <= set(metrics)


def test_the_label_audit_reads_label_sets(project) -> None:
    report = read_json(project / "metrics/audit.json")
    audited = sum(len(pd.read_csv(project / f"data/split/{s}.csv")) for s in ("train", "val"))
    assert report["enabled"] and report["rows"] == audited
    assert report["models"] == ["tfidf"]  # every block trains: no trunk cache to probe
    assert set(report["by_label"]) == set(LABELS)
    issues = pd.read_csv(project / "reports/label_issues.csv", keep_default_na=False)
    assert len(issues) == report["label_issues"]
    for given, suggested in zip(issues["label"], issues["suggested"], strict=True):
        assert set(json.loads(given)) <= set(LABELS) and set(json.loads(suggested)) <= set(LABELS)


def test_classify_predict_and_the_mlflow_model_answer_label_sets(project, tmp_path) -> None:
    texts = ["BILL my TRUCK ASAP", "hello thanks"]
    out = spamgpt(["classify", "--json", *texts], project).splitlines()
    answers = [json.loads(line) for line in out]
    thresholds = read_json(project / "reports/evaluation.json")["threshold"]
    for answer in answers:  # those at or over their thresholds, every label's probability
        p = answer["probabilities"]
        assert set(p) == set(LABELS)
        assert answer["labels"] == [name for name in LABELS if p[name] >= thresholds[name]]

    source = tmp_path / "in.csv"
    pd.DataFrame({"body": texts}).to_csv(source, index=False)
    spamgpt(["predict", str(source), "-o", str(tmp_path / "out.csv")], project)
    predicted = pd.read_csv(tmp_path / "out.csv")
    assert [json.loads(v) for v in predicted["labels"]] == [a["labels"] for a in answers]
    for name in LABELS:
        assert predicted[f"p_{name}"].tolist() == pytest.approx(
            [a["probabilities"][name] for a in answers], abs=1e-5
        )

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    run_id = read_json(project / "models/mlflow_run.json")["run_id"]
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert info.metadata["label_format"] == "multi" and info.metadata["labels"] == LABELS
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(texts)
    assert [p.labels for p in served] == [a["labels"] for a in answers]
    for p, answer in zip(served, answers, strict=True):
        assert p.probabilities == pytest.approx(answer["probabilities"], abs=1e-5)


def test_a_cost_policy_applies_to_each_label_through_dvc_repro(project) -> None:
    """(Last: it changes the project's threshold.) Only evaluate re-runs; each label's
    threshold meets the policy on validation, all of them in the report, none in DVC's
    metrics."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["threshold"] = {"min_precision": 0.9}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], project).stdout
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    assert ran == ["evaluate"]
    ev = read_json(project / "reports/evaluation.json")
    assert set(ev["val_at_threshold"]) == set(LABELS)
    for name in LABELS:
        reached = ev["val_at_threshold"][name]
        if name in ev["kept_default_threshold"]:
            assert ev["threshold"][name] == 0.5
        else:
            assert reached["precision"] >= 0.9
        (_, fp), (_, tp) = ev["val"][name]["confusion_matrix"]
        assert reached["precision"] == (tp / (tp + fp) if tp + fp else 0.0)
    compared = read_json(project / "metrics/eval.json")
    assert "threshold" not in compared and "val_at_threshold" not in compared
