"""Regression end to end (data.label_format: number): a CSV of reviews whose rating is a sum
of the weights of the words each holds, in data/local/ of a fresh git + DVC project, through
`dvc repro` with the tiny random model trained fully: RMSE, MAE, R² and Spearman in
metrics/eval.json beside the TF-IDF ridge baseline, the predicted-vs-true plot data, then
`spamgpt classify`, `spamgpt predict`, the MLflow model and the transformers export answering
the same numbers."""

import json
import random

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import make_project, read_json, run, spamgpt, tiny_params

# A review's rating: 3, plus each of these words it holds (upper case, letters of their own:
# the tiny model's tokens are mostly letters), among neutral filler.
WEIGHTS = {"GREAT": 2.0, "GOOD": 1.0, "BAD": -1.0, "AWFUL": -2.0}
FILLER = ["the", "food", "was", "and", "service", "staff", "room", "view", "price", "again"]


def reviews(n: int, seed: int) -> pd.DataFrame:
    """`n` reviews and their ratings (a function of the words in them, nothing else)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [w for w in WEIGHTS if rng.random() < 0.4]
        rating = 3 + sum(WEIGHTS[w] for w in words)
        words += rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"review": f"{' '.join(words)} {i}", "rating": rating})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def project(mirror, empty_store, tmp_path_factory):
    params = tiny_params(mirror)
    params["data"].update(
        url="data/local/reviews.csv",
        mirrors=[],
        member=None,
        sha256=None,
        format="csv",
        text_column="review",
        label_column="rating",
        label_format="number",
        labels=None,
        positive_label=None,
    )
    params["model"].update(trainable_blocks="all")
    params["train"].update(
        epochs=6, batch_size=8, lr=3e-3, warmup_ratio=0.05, patience=6, class_weights="none"
    )
    params["evaluate"].update(threshold=None)
    params["mlflow"].update(log_checkpoints=False, export=["transformers"])
    path = make_project(tmp_path_factory.mktemp("regression"), params, store=empty_store)
    reviews(300, seed=0).to_csv(path / "data/local/reviews.csv", index=False)
    run(["git", "add", "data/local/reviews.csv"], path)
    run(["git", "commit", "-qm", "reviews"], path)
    run(["dvc", "repro"], path)
    return path


def test_the_numbers_are_split_in_strata_and_summarised(project) -> None:
    report = read_json(project / "metrics/data.json")
    assert report["label_format"] == "number" and report["labels"] == ["rating"]
    split_rows = {s: pd.read_csv(project / f"data/split/{s}.csv") for s in ("train", "val", "test")}
    for name, frame in split_rows.items():
        assert report[name]["count"] == len(frame)
        assert report[name]["mean"] == pytest.approx(frame["label"].mean())
        assert frame["label"].min() < 3 < frame["label"].max()  # low and high in each


def test_it_learns_the_ratings_with_the_ridge_baseline_beside(project) -> None:
    compared = read_json(project / "metrics/eval.json")
    assert set(compared) == {"rmse", "mae", "r2", "spearman", "baseline"}
    assert compared["r2"] > 0.5, compared  # the mean predictor's is 0
    assert compared["baseline"]["r2"] > 0.5, compared
    predictions = pd.read_csv(project / "reports/predictions_test.csv")
    truth, predicted = predictions["label"].to_numpy(), predictions["predicted"].to_numpy()
    rmse = float(np.sqrt(((predicted - truth) ** 2).mean()))
    assert compared["rmse"] == pytest.approx(rmse, abs=1e-5)
    scatter = pd.read_csv(project / "metrics/scatter_test.csv")
    assert scatter["actual"].tolist() == truth.tolist()
    # nothing to calibrate or audit, said so where their figures would be
    calibration = read_json(project / "models/calibration.json")
    assert calibration == {"method": "not applicable", "temperature": None, "test": {}}
    assert read_json(project / "metrics/audit.json") == {
        "enabled": False,
        "not_applicable": "number labels: confident learning audits classes",
    }
    for empty in ("reports/label_issues.csv", "metrics/reliability_test.csv"):
        assert pd.read_csv(project / empty).empty


def test_classify_predict_mlflow_and_transformers_answer_the_same_number(project, tmp_path) -> None:
    texts = ["GREAT GOOD the food", "AWFUL BAD the room"]
    out = spamgpt(["classify", "--json", *texts], project).splitlines()
    answers = [json.loads(line)["prediction"] for line in out]
    assert answers[0] > answers[1]  # the model's order: high words above low ones

    source = tmp_path / "in.csv"
    pd.DataFrame({"review": texts}).to_csv(source, index=False)
    spamgpt(["predict", str(source), "-o", str(tmp_path / "out.csv")], project)
    predicted = pd.read_csv(tmp_path / "out.csv")["predicted"].tolist()
    assert predicted == pytest.approx(answers, abs=1e-5)

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    run_id = read_json(project / "models/mlflow_run.json")["run_id"]
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(texts)
    assert [p.prediction for p in served] == pytest.approx(answers, abs=1e-5)

    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    folder = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="transformers", dst_path=str(tmp_path / "hf")
    )
    hf = GPT2ForSequenceClassification.from_pretrained(folder).eval()
    assert hf.config.problem_type == "regression" and hf.config.num_labels == 1
    batch = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    got = hf(**batch).logits[:, 0].detach().numpy()
    fp32 = spamgpt(["classify", "--json", "--precision", "fp32", *texts], project).splitlines()
    expected = [json.loads(line)["prediction"] for line in fp32]  # (auto: bf16 on some CPUs)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_the_onnx_export_answers_the_number(project, tmp_path) -> None:
    import onnxruntime

    from spamgpt.data import tokenizer

    texts = ["GREAT GOOD the food", "AWFUL the room"]
    fp32 = spamgpt(["classify", "--json", "--precision", "fp32", *texts], project).splitlines()
    expected = [json.loads(line)["prediction"] for line in fp32]
    spamgpt(["export", "--to", "onnx", str(tmp_path / "model.onnx")], project)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    rows = tokenizer.load(project / "models/finetuned").encode_ordinary_batch(texts)
    ids = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    (got,) = session.run(None, {"input_ids": ids, "lengths": lengths})
    assert got.shape == (2, 1)  # one output: the number
    np.testing.assert_allclose(got[:, 0], expected, rtol=0, atol=1e-4)
