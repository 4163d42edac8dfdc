"""spamgpt.evaluate.results: what finetune and evaluate write for DVC, read back from the files
and by DVC itself. A 10-class run's and a 27-label run's `dvc metrics show` fit a 200-column
terminal and `dvc plots show` has data in every plot (one ROC and precision-recall line per
class); the whole report, every threshold with it, is in reports/."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run, subprocess_env

from spamgpt import contracts, paths
from spamgpt.data import readers
from spamgpt.evaluate import results
from spamgpt.finetune import outputs
from spamgpt.finetune.train import State, evaluation_entry
from spamgpt.labels import Classes
from spamgpt.runtime import Compute
from spamgpt.tasks.registry import task_for

TEN = Classes(tuple(f"team_{i}" for i in range(10)), None)


def evaluation(classes: Classes, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and (n, classes) probabilities that favour the right class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(TEN)
    probs = rng.dirichlet(np.ones(len(TEN)), n)
    probs[np.arange(n), labels] += rng.uniform(0, 1, n)
    return labels, probs / probs.sum(axis=1, keepdims=True)


def write_run(classes: Classes, threshold: float | None) -> None:
    """In the working directory: what finetune (3 epochs) and evaluate write of a run."""
    labels, probs = evaluation(classes)
    test = pd.DataFrame({"line": range(len(labels)), "label": classes.named(labels)})
    readers.write_split(
        test.assign(text=[f"message {i}" for i in test["line"]]), paths.split_file("test")
    )
    reports = {s: task_for(classes).report(labels, probs, threshold) for s in ("val", "test")}
    baseline = {
        s: task_for(classes).report(labels, np.roll(probs, 1, axis=0), threshold) for s in reports
    }
    curves = task_for(classes).curve_frames(labels, probs)
    splits = {s: labels for s in reports}
    _, calibration = results.calibrate(
        "temperature", classes, splits, {s: np.log(probs) for s in reports}
    )
    evaluated = results.Evaluation(
        classes, reports, baseline, curves, labels, probs, threshold, calibration=calibration
    )
    results.write_evaluation(evaluated)
    state = State()
    for epoch in (1, 2, 3):  # each evaluated at its end
        state.epoch, state.step, state.epoch_samples, state.epoch_loss_sum = (
            epoch - 1,
            10 * epoch,
            len(labels),
            0.5 * len(labels),
        )
        state.steps += [[10 * (epoch - 1) + i, 0.7 - 0.01 * i, 1e-3] for i in range(1, 11)]
        state.history.append(evaluation_entry(state, 0.6, reports["val"], classes))
    state.epoch, state.epoch_samples = 3, 0
    state.best_evaluation, state.train_seconds = 2, 12.5
    outputs.write_training(state, len(labels), Compute(torch.device("cpu"), "fp32"))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC project holding the pipeline's dvc.yaml and the files of one run (ham and
    spam: tests/test_pipeline.py reads those of a real run the same ways)."""
    path = tmp_path_factory.mktemp("results")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, path / name)
    run(["git", "init", "-q"], path)
    run(["dvc", "init", "-q"], path)
    shutil.copytree(REPO / paths.PLOT_TEMPLATES, path / paths.PLOT_TEMPLATES)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(path)
        write_run(TEN, None)
    return path


def test_dvc_metrics_show_fits_a_terminal(project):
    path = project
    shown = run(["dvc", "metrics", "show"], path, env={**subprocess_env(), "COLUMNS": "200"})
    width = max(map(len, shown.stdout.splitlines()))
    assert width <= 200, shown.stdout
    assert [line.split()[0] for line in shown.stdout.splitlines()[1:]] == [
        "metrics/train.json", "metrics/eval.json"
    ]  # fmt: skip
    evaluated = json.loads((path / paths.EVAL_METRICS).read_text())
    assert set(evaluated) == {"accuracy", "macro_f1", "threshold", "baseline"}
    assert set(json.loads((path / paths.TRAIN_METRICS).read_text())) == {
        "best_epoch", "best_step", "epochs_run", "train_seconds", "samples_per_second"
    }  # fmt: skip


# 27 labels, as long as real tags (`interface::graphical`)
MANY = Classes(tuple(f"topic::subject_{i:02d}" for i in range(27)), None, label_format="multi")


def write_multilabel_evaluation(classes: Classes, n: int = 240, seed: int = 0) -> None:
    """In the working directory: what evaluate writes of a multi-label run, its thresholds
    chosen by auto (a few labels too rare to choose on)."""
    rng = np.random.default_rng(seed)
    rates = np.where(np.arange(len(classes)) % 9 == 0, 0.02, 0.2)  # every 9th label rare
    targets = (rng.random((n, len(classes))) < rates).astype(np.float32)
    probs = np.clip(0.4 * targets + 0.6 * rng.random(targets.shape), 0, 1)
    labels, probabilities = {"val": targets, "test": targets}, {"val": probs, "test": probs}
    reference = {s: task_for(classes).report(targets, probs * 0.9, 0.5) for s in labels}
    evaluated = results.evaluate("auto", classes, labels, probabilities, reference, "micro_f1")
    test = pd.DataFrame({"line": range(n), "label": task_for(classes).label_lists(targets > 0.5)})
    readers.write_split(
        test.assign(text=[f"message {i}" for i in range(n)]), paths.split_file("test")
    )
    results.write_evaluation(evaluated)


@pytest.fixture(scope="module")
def many_labels(tmp_path_factory):
    """The project of `project`, evaluated on 27 labels."""
    path = tmp_path_factory.mktemp("many-labels")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, path / name)
    run(["git", "init", "-q"], path)
    run(["dvc", "init", "-q"], path)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(path)
        write_run(TEN, None)
        write_multilabel_evaluation(MANY)
    return path


def test_many_labels_metrics_hold_the_set_figures_and_the_report_each_label(many_labels):
    path = many_labels
    evaluated = json.loads((path / paths.EVAL_METRICS).read_text())
    assert evaluated == {
        **{k: evaluated[k] for k in ("accuracy", "micro_f1", "macro_f1", "samples_f1")},
        "hamming_loss": evaluated["hamming_loss"],
        "baseline": {"micro_f1": evaluated["baseline"]["micro_f1"]},
    }  # 6 figures, whatever the number of labels
    report = json.loads((path / paths.EVAL_REPORT).read_text())
    assert report["test"]["micro_f1"] == evaluated["micro_f1"]
    assert set(report["threshold"]) == set(MANY.names)
    rare = [name for i, name in enumerate(MANY.names) if report["val"][name]["support"] < 10]
    assert rare and report["kept_default_threshold"] == rare
    assert all(report["threshold"][name] == 0.5 for name in rare)
    with pytest.MonkeyPatch.context() as m:  # classify's thresholds: the report's
        m.chdir(path)
        assert contracts.read_threshold() == report["threshold"]


def test_many_labels_dvc_metrics_show_fits_a_terminal(many_labels):
    env = {**subprocess_env(), "COLUMNS": "200"}
    shown = run(["dvc", "metrics", "show"], many_labels, env=env).stdout
    assert max(map(len, shown.splitlines())) <= 200, shown
    assert "threshold" not in shown and "topic::" not in shown


def test_the_whole_report_is_in_reports(project):
    path = project
    report = json.loads((path / paths.EVAL_REPORT).read_text())
    for split in ("val", "test"):
        assert set(TEN.names) <= report[split].keys() <= report["baseline"][split].keys()
        assert len(report[split]["confusion_matrix"]) == len(TEN)
    evaluated = json.loads((path / paths.EVAL_METRICS).read_text())
    assert evaluated["accuracy"] == report["test"]["accuracy"]
    picked_by = task_for(TEN).selection_score(report["baseline"]["test"], 0.0)
    assert task_for(TEN).selection_score(evaluated["baseline"], 0.0) == picked_by
    calibration = report["calibration"]
    assert calibration["method"] == "temperature" and calibration["bins"] == 15
    for split in ("val", "test"):
        assert set(calibration[split]) == {"uncalibrated", "calibrated"}
    summary = json.loads((path / paths.CALIBRATION).read_text())
    assert summary["test"]["ece"] == calibration["test"]["calibrated"]["ece"]
    assert summary["temperature"] == calibration["temperature"] > 0
    assert contracts.read_temperature() is None  # read where classify reads, here no project
    training = json.loads((path / paths.TRAIN_REPORT).read_text())
    assert training["val"]["macro_f1"] == report["val"]["macro_f1"] and training["steps"] == 30


def test_every_plot_has_data_and_a_line_per_class(project):
    path = project
    shown = json.loads(run(["dvc", "plots", "show", "--json"], path).stdout)["data"]
    assert set(shown) == {
        "training loss", "loss by epoch", "validation accuracy and macro F1",
        "test confusion matrix", "test ROC", "test precision-recall", "test reliability",
        "test predicted vs true",
    }  # fmt: skip
    assert shown.pop("test predicted vs true") == []  # number labels' (docs/regression.md)
    for name, (plot,) in shown.items():
        assert plot["content"]["data"]["values"], name
    curves = [
        shown[name][0]["content"]["data"]["values"]
        for name in ("test ROC", "test precision-recall")
    ]
    drawn = {point["class"] for curve in curves for point in curve}
    assert shown["test ROC"][0]["content"]["encoding"]["color"]["field"] == "class"
    assert drawn == set(TEN.names)  # no positive class: each one against the rest
    reliability = shown["test reliability"][0]["content"]["data"]["values"]
    assert {point["class"] for point in reliability} == {"perfect", "uncalibrated", "calibrated"}
    html = path / "html"
    run(["dvc", "plots", "show", "-o", str(html)], path)
    page = (html / "index.html").read_text()
    empty = re.findall(r"var spec = \{\};\s*vegaEmbed\('#(\w+)'", page)
    assert empty == ["test_predicted_vs_true"]  # number labels' alone: nothing to draw here


# What evaluate writes beside the metrics, for a few messages read back from the files

TEST = pd.DataFrame(
    {"line": [3, 5, 8, 9], "label": ["spam", "ham", "ham", "spam"], "text": ["a", "b", "c", "d"]}
)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    readers.write_split(TEST, paths.split_file("test"))
    return tmp_path


def evaluate(classes: Classes, probs: list[list[float]], threshold: float | None) -> pd.DataFrame:
    labels = np.array([classes.names.index(label) for label in TEST["label"]])
    reports = {"test": task_for(classes).report(labels, np.array(probs), threshold)}
    curves = task_for(classes).curve_frames(labels, np.array(probs))
    baseline = {"test": reports["test"], "val": {}}
    evaluated = results.Evaluation(
        classes, reports, baseline, curves, labels, np.array(probs), threshold, 0.7
    )
    results.write_evaluation(evaluated)
    return readers.read_split(paths.MISCLASSIFIED_TEST)


def test_the_positive_class_first_is_thresholded_on_its_own_column(workspace: Path) -> None:
    """spam is column 0: at 0.6, messages 1 and 4 are spam only if column 0 says so."""
    classes = Classes(("spam", "ham"), "spam")
    wrong = evaluate(classes, [[0.7, 0.3], [0.65, 0.35], [0.2, 0.8], [0.55, 0.45]], 0.6)
    assert list(wrong.columns) == ["line", "label", "predicted", "spam_probability", "text"]
    assert wrong.to_dict("list") == {
        "line": [5, 9], "label": ["ham", "spam"], "predicted": ["spam", "ham"],
        "spam_probability": [0.65, 0.55], "text": ["b", "d"],
    }  # fmt: skip
    confusion = pd.read_csv(paths.CONFUSION_TEST_PLOT)
    assert confusion.to_dict("list") == {
        "actual": ["spam", "ham", "ham", "spam"], "predicted": ["spam", "spam", "ham", "ham"]
    }  # fmt: skip
    evaluation = contracts.read_threshold()
    assert evaluation == 0.6
    roc = pd.read_csv(paths.curve_plot("roc"))
    assert roc.columns.tolist() == ["class", "point", "fpr", "tpr"]
    assert set(roc["class"]) == {"spam"}


def test_without_a_positive_class_the_most_probable_class_and_its_probability(
    workspace: Path,
) -> None:
    classes = Classes(("ham", "spam", "other"))
    probs = [[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.3, 0.6, 0.1]]
    wrong = evaluate(classes, probs, None)
    assert wrong.to_dict("list") == {
        "line": [3, 8], "label": ["spam", "ham"], "predicted": ["other", "spam"],
        "probability": [0.7, 0.6], "text": ["a", "c"],
    }  # fmt: skip
    assert contracts.read_threshold() is None


def test_every_file_evaluate_writes_holds_its_values(workspace: Path) -> None:
    """write_evaluation's files for two classes with a policy and platt: the whole report
    (every key), eval.json, calibration.json, the predictions (probabilities to 6 places), the
    reliability, scatter and curve plot data."""
    classes = Classes(("spam", "ham"), "spam")
    task = task_for(classes)
    labels = np.array([0, 1, 1, 0])
    spam = np.array([0.91234567, 0.65, 0.2, 0.55])
    probs = np.column_stack([spam, 1 - spam])
    reports = {s: task.report(labels, probs, 0.6) for s in ("val", "test")}
    baseline = {s: task.report(labels, probs[::-1], 0.5) for s in ("val", "test", "train")}
    curves = task.curve_frames(labels, probs)
    reliability = task.reliability_frame(labels, {"uncalibrated": probs})
    found = results.Calibration("platt", 1.25, SCORES, reliability, {"spam": 0.5, "ham": 0.0})
    evaluated = results.Evaluation(
        classes, reports, baseline, curves, labels, probs, 0.6, 0.45, {"precision": 1.0},
        calibration=found,
    )  # fmt: skip
    results.write_evaluation(evaluated)
    report = json.loads(paths.EVAL_REPORT.read_text())
    assert report == json.loads(json.dumps({
        "threshold": 0.6, "best_val_threshold": 0.45, "val_at_threshold": {"precision": 1.0},
        **reports, "baseline": {"val": baseline["val"], "test": baseline["test"]},
        "calibration": found.report(),
    }))  # fmt: skip
    assert json.loads(paths.EVAL_METRICS.read_text()) == json.loads(
        json.dumps(task.compared(reports["test"], baseline["test"], evaluated.choice))
    )
    assert json.loads(paths.CALIBRATION.read_text()) == found.summary()
    assert pd.read_csv(paths.RELIABILITY_TEST_PLOT).equals(reliability)
    predictions = readers.read_split(paths.PREDICTIONS_TEST)
    assert predictions.to_dict("list") == {
        "line": [3, 5, 8, 9], "label": ["spam", "ham", "ham", "spam"],
        "predicted": ["spam", "spam", "ham", "ham"],
        "probability": [0.912346, 0.65, 0.8, 0.45], "p_spam": [0.912346, 0.65, 0.2, 0.55],
        "p_ham": [0.087654, 0.35, 0.8, 0.45], "text": ["a", "b", "c", "d"],
    }  # fmt: skip
    scatter = pd.read_csv(paths.SCATTER_TEST_PLOT)
    assert scatter.equals(task.scatter_frame(labels, probs))
    for name, frame in curves.items():
        assert not frame.empty and pd.read_csv(paths.curve_plot(name)).equals(frame)


def test_a_multi_label_report_names_the_labels_kept_at_one_half(workspace: Path) -> None:
    classes = Classes(("a", "b"), None, label_format="multi")
    task = task_for(classes)
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.35]])
    reports = {"test": task.report(targets, probs, {"a": 0.5, "b": 0.3})}
    evaluated = results.Evaluation(
        classes, reports, {"test": reports["test"]}, task.curve_frames(targets, probs), targets,
        probs, {"a": 0.5, "b": 0.3}, {"a": 0.5, "b": 0.3}, kept_default_threshold=["a"],
    )  # fmt: skip
    results.write_evaluation(evaluated)
    report = json.loads(paths.EVAL_REPORT.read_text())
    assert report["kept_default_threshold"] == ["a"] and "val_at_threshold" not in report
    assert "calibration" not in report and not paths.CALIBRATION.exists()
    assert not paths.RELIABILITY_TEST_PLOT.exists()
    # at b's 0.3 (not 0.5) the third message is right, the fourth wrong
    assert readers.read_split(paths.MISCLASSIFIED_TEST)["line"].tolist() == [9]


def test_number_labels_write_the_predicted_vs_true_points(workspace: Path) -> None:
    classes = Classes(("rating",), label_format="number")
    task = task_for(classes)
    readers.write_split(TEST.assign(label=["1.5", "2", "3", "4"]), paths.split_file("test"))
    targets = np.array([1.5, 2.0, 3.0, 4.0])
    predicted = np.array([[1.25], [2.5], [3.0], [3.1234567]])
    reports = {"test": task.report(targets, predicted, None)}
    evaluated = results.Evaluation(
        classes, reports, {"test": reports["test"]}, task.curve_frames(targets, predicted),
        targets, predicted, None,
    )  # fmt: skip
    results.write_evaluation(evaluated)
    scatter = pd.read_csv(paths.SCATTER_TEST_PLOT)
    assert scatter.to_dict("list") == {
        "actual": [1.5, 2.0, 3.0, 4.0], "predicted": [1.25, 2.5, 3.0, 3.123457]
    }  # fmt: skip


def test_every_split_is_reported_at_the_threshold_chosen_on_validation() -> None:
    """auto: the positive class's validation F1 optimum (0.3 here, not 0.5 nor the most
    probable class), applied to val and test alike."""
    classes = Classes(("ham", "spam"), "spam")
    labels = np.array([0, 0, 0, 1, 1, 1])
    spam = np.array([0.1, 0.2, 0.25, 0.3, 0.35, 0.9])
    probs = np.column_stack([1 - spam, spam])
    split = {"val": labels, "test": labels}
    evaluated = results.evaluate("auto", classes, split, {"val": probs, "test": probs}, {})
    assert evaluated.threshold == pytest.approx(0.3)
    for name in ("val", "test"):
        assert evaluated.reports[name]["confusion_matrix"] == [[3, 0], [0, 3]]
        assert evaluated.reports[name] == task_for(classes).report(labels, probs, 0.3)
    assert evaluated.classes == classes and evaluated.baseline == {}
    assert evaluated.test_labels is labels and evaluated.test_probabilities is probs
    curves = task_for(classes).curve_frames(labels, probs)
    assert evaluated.curves.keys() == curves.keys()
    for name, frame in curves.items():
        pd.testing.assert_frame_equal(evaluated.curves[name], frame)


def test_a_label_with_ten_validation_positives_gets_its_own_threshold() -> None:
    """evaluate.min_support's default, 10: a label with 10 validation positives is chosen
    for, one with 9 keeps 0.5."""
    classes = Classes(("ten", "nine"), None, label_format="multi")
    targets = np.zeros((40, 2))
    targets[:10, 0] = targets[:9, 1] = 1
    probs = np.where(targets > 0, 0.3, 0.1)  # every positive under 0.5: 0.3 separates them
    split = {"val": targets, "test": targets}
    evaluated = results.evaluate("auto", classes, split, {"val": probs, "test": probs}, {})
    assert evaluated.kept_default_threshold == ["nine"]
    assert evaluated.threshold == {"ten": pytest.approx(0.3), "nine": 0.5}


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, folder):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


# log_evaluation's own: hand-made figures (platt on val and test, one figure missing on test)
SCORES = {
    "val": {
        "uncalibrated": {"ece": 0.3, "ece_floor": 0.05, "brier": 0.2, "log_loss": 0.6},
        "calibrated": {"ece": 0.1, "ece_floor": 0.04, "brier": 0.15, "log_loss": 0.5},
    },
    "test": {
        "uncalibrated": {"ece": 0.35, "ece_floor": 0.06, "brier": 0.25, "log_loss": 0.7},
        "calibrated": {"ece": 0.12, "brier": 0.18, "log_loss": 0.55},
    },
}


def test_the_evaluation_in_the_mlflow_run(workspace: Path, local_store, monkeypatch) -> None:
    """log_evaluation, log_label_issues and log_best_checkpoint into a real MLflow store (SQLite
    in the test's folder): each metric under its name with its value at step 0, each artifact
    at its path, each figure's lines; the best checkpoint logged only when the light model does
    not hold its bytes."""
    from spamgpt import tracking
    from spamgpt.model import classifier

    classes = Classes(("spam", "ham"), "spam")
    task = task_for(classes)
    labels = np.array([0, 1, 1, 0])
    spam = np.array([0.9, 0.65, 0.2, 0.55])
    probs = np.column_stack([spam, 1 - spam])
    reports = {s: task.report(labels, probs, 0.6) for s in ("val", "test")}
    baseline = {s: task.report(labels, probs[::-1], 0.5) for s in ("val", "test")}
    curves = task.curve_frames(labels, probs)
    reliability = task.reliability_frame(labels, {"uncalibrated": probs, "calibrated": probs})
    found = results.Calibration("platt", 1.25, SCORES, reliability, {"spam": 0.5, "ham": 0.0})
    choice = {"precision": 1.0}
    evaluated = results.Evaluation(
        classes, reports, baseline, {"empty": pd.DataFrame(), **curves}, labels, probs, 0.6, 0.45,
        choice, calibration=found,
    )  # fmt: skip
    for name in (paths.MISCLASSIFIED_TEST, paths.PREDICTIONS_TEST):
        readers.write_split(TEST.assign(predicted="spam"), name)
    issues = pd.DataFrame({"split": ["train"], "file": ["a.csv"], "line": [3], "text": ["x"],
                           "label": ["ham"], "suggested": ["spam"], "score": [0.1]})  # fmt: skip
    contracts.write_label_issues(issues)
    audit = {"enabled": True, "rows": 40, "label_issues": 1, "by_split": {"train": 1, "val": 0}}
    best = paths.checkpoint_weights("best")
    light = paths.FINETUNED_DIR / classifier.WEIGHTS
    best.parent.mkdir(parents=True)
    light.parent.mkdir(parents=True)
    best.write_bytes(b"best weights")
    light.write_bytes(b"best weights")
    client, figures = local_store, {}
    with tracking.Run.open("results") as run:
        logging = run.log_figure  # each figure logged, kept to read its lines and labels
        monkeypatch.setattr(
            run, "log_figure", lambda f, name: figures.update({name: f}) or logging(f, name)
        )
        results.log_evaluation(run, evaluated)
        results.log_label_issues(run, audit)
        results.log_label_issues(run, {"enabled": False})
        results.log_best_checkpoint(run, light_model_logged=True)  # the same bytes: none
    metrics = client.get_run(run.run_id).data.metrics
    logged = artifact_paths(client, run.run_id)
    light.write_bytes(b"merged weights")
    with tracking.Run.open("results") as other:
        results.log_best_checkpoint(other, light_model_logged=True)
        results.log_label_issues(other, {"enabled": False})
    numbers = Classes(("rating",), label_format="number")  # a figure of the test answers
    targets, predicted = np.array([1.5, 2.0, 3.0, 4.0]), np.array([[1.25], [2.5], [3.0], [3.5]])
    rated = {"test": task_for(numbers).report(targets, predicted, None)}
    frames = task_for(numbers).curve_frames(targets, predicted)  # empty: none drawn
    none = results.Calibration(
        "none", None, {"test": {"uncalibrated": {"ece": 0.3}}}, frames["roc"]
    )
    scored = results.Evaluation(
        numbers, rated, rated, frames, targets, predicted, None, calibration=none
    )
    with tracking.Run.open("results") as regression:
        logging = regression.log_figure
        monkeypatch.setattr(
            regression, "log_figure", lambda f, name: figures.update({name: f}) or logging(f, name)
        )
        results.log_evaluation(regression, scored)
    assert artifact_paths(client, regression.run_id) == {
        "evaluation/test_metrics.json", "evaluation/per_class_metrics.json",
        "evaluation/misclassified_test.csv", "evaluation/predictions_test.csv",
        "evaluation/test_predicted_vs_true.png", "evaluation/calibration.json",
    }  # fmt: skip
    rated_metrics = client.get_run(regression.run_id).data.metrics
    assert rated_metrics == pytest.approx(
        {
            **task_for(numbers).flat(rated["test"], "test"),
            **task_for(numbers).flat(rated["test"], "baseline"),
            "test/ece": 0.3,
        }
    )
    (axes,) = figures["evaluation/test_predicted_vs_true.png"].axes
    (points,) = axes.collections
    np.testing.assert_array_equal(points.get_offsets(), np.column_stack([targets, predicted]))
    assert artifact_paths(client, other.run_id) == {"checkpoints/best.safetensors"}
    kept = client.download_artifacts(other.run_id, "checkpoints/best.safetensors")
    assert Path(kept).read_bytes() == b"best weights"
    assert client.get_run(other.run_id).data.metrics == {}
    expected = task.flat(reports["test"], "test") | task.flat(baseline["test"], "baseline")
    assert expected["test/spam_recall"] == 0.5 and expected["baseline/spam_recall"] == 1.0
    expected |= {"test/threshold": 0.6, "val/best_threshold": 0.45, "val/threshold_precision": 1}
    expected |= {"audit/rows": 40, "audit/label_issues": 1}
    expected |= {"audit/label_issues_train": 1, "audit/label_issues_val": 0}
    expected |= {"val/ece": 0.1, "val/ece_floor": 0.04, "val/brier": 0.15, "val/log_loss": 0.5}
    expected |= {"test/ece": 0.12, "test/brier": 0.18, "test/log_loss": 0.55}
    expected |= {"val/ece_uncalibrated": 0.3, "test/ece_uncalibrated": 0.35}
    expected |= {"calibration/temperature": 1.25}
    expected |= {"calibration/shift_spam": 0.5, "calibration/shift_ham": 0.0}
    assert metrics == pytest.approx(expected)
    for key in metrics:
        assert [m.step for m in client.get_metric_history(run.run_id, key)] == [0], key
    assert logged == {
        "evaluation/val_metrics.json", "evaluation/test_metrics.json",
        "evaluation/val_confusion_matrix.png", "evaluation/test_confusion_matrix.png",
        "evaluation/per_class_metrics.json", "evaluation/misclassified_test.csv",
        "evaluation/predictions_test.csv", "evaluation/calibration.json",
        "evaluation/test_reliability.png", "evaluation/test_roc_curve.png",
        "evaluation/test_pr_curve.png", "audit/label_issues.json",
    }  # fmt: skip

    def read(name: str) -> str:
        return Path(client.download_artifacts(run.run_id, name)).read_text()

    for s in ("val", "test"):
        assert json.loads(read(f"evaluation/{s}_metrics.json")) == json.loads(
            json.dumps(reports[s])
        )
    table = json.loads(read("evaluation/per_class_metrics.json"))
    assert table == json.loads(json.dumps(task.per_class_table(reports)))
    assert table["split"] == ["val", "val", "test", "test"]
    assert read("evaluation/misclassified_test.csv") == paths.MISCLASSIFIED_TEST.read_text()
    assert read("evaluation/predictions_test.csv") == paths.PREDICTIONS_TEST.read_text()
    assert json.loads(read("evaluation/calibration.json")) == json.loads(json.dumps(found.report()))
    issues_table = json.loads(read("audit/label_issues.json"))
    assert issues_table["columns"] == list(contracts.LABEL_ISSUE_COLUMNS)
    assert issues_table["data"] == [["train", "a.csv", 3, "x", "ham", "spam", 0.1]]
    for name, x, title in (("roc", "fpr", "roc"), ("pr", "recall", "pr")):
        (axes,) = figures[f"evaluation/test_{name}_curve.png"].axes
        assert [line.get_label() for line in axes.get_lines()] == ["spam (test)"]
        assert axes.get_xlabel() == x and axes.get_title() == title
        (line,) = axes.get_lines()
        points = curves[name]
        assert list(line.get_xdata()) == list(points[x])
        assert list(line.get_ydata()) == list(points[points.columns[-1]])
    (axes, *_) = figures["evaluation/test_reliability.png"].axes
    assert axes.get_title() == "test reliability"


def test_a_policys_choice_and_the_calibration_go_into_the_evaluation() -> None:
    classes = Classes(("ham", "spam"), "spam")
    labels = np.array([0, 0, 0, 1, 1, 1])
    spam = np.array([0.1, 0.2, 0.4, 0.3, 0.45, 0.9])
    probs = np.column_stack([1 - spam, spam])
    policy = {"min_precision": 1.0}
    choice = task_for(classes).choose_threshold(policy, labels, probs)
    assert choice.reached is not None and choice.best_f1 is not None  # the test means something
    found = results.Calibration("none", None, {}, pd.DataFrame())
    split, given = {"val": labels, "test": labels}, {"val": probs, "test": probs}
    evaluated = results.evaluate(policy, classes, split, given, {}, calibration=found)
    assert evaluated.choice == choice and evaluated.calibration is found


def test_the_calibration_report_names_its_method_temperature_and_shift() -> None:
    scores = {"test": {"uncalibrated": {"ece": 0.2}, "calibrated": {"ece": 0.1}}}
    platt = results.Calibration("platt", 1.5, scores, pd.DataFrame(), {"spam": 0.25})
    assert platt.report() == {
        "method": "platt", "temperature": 1.5, "shift": {"spam": 0.25}, "bins": 15, **scores
    }  # fmt: skip
    plain = results.Calibration("temperature", 2.0, scores, pd.DataFrame())
    assert plain.report() == {"method": "temperature", "temperature": 2.0, "bins": 15, **scores}


def test_the_calibration_summary_gives_the_test_figures_of_the_probabilities_given() -> None:
    before, after = {"ece": 0.2, "log_loss": 0.5, "brier": 0.1}, {"ece": 0.1, "log_loss": 0.4}
    platt = results.Calibration(
        "platt", 1.5, {"test": {"uncalibrated": before, "calibrated": after}}, pd.DataFrame(),
        {"spam": 0.25},
    )  # fmt: skip
    assert platt.summary() == {
        "method": "platt", "temperature": 1.5, "shift": {"spam": 0.25},
        "test": {"ece": 0.1, "log_loss": 0.4, "ece_uncalibrated": 0.2},
    }  # fmt: skip
    none = results.Calibration("none", None, {"test": {"uncalibrated": before}}, pd.DataFrame())
    assert none.summary() == {
        "method": "none", "temperature": None, "test": {"ece": 0.2, "log_loss": 0.5}
    }  # fmt: skip


def test_calibrate_fits_on_validation_and_scales_every_split() -> None:
    """temperature: T fitted on val alone; each split's probabilities the softmax of logits / T
    and its scores before and after. none: the logits' own softmax, nothing fitted."""
    classes = Classes(("ham", "spam"), "spam")
    rng = np.random.default_rng(0)
    labels = {"val": rng.integers(0, 2, 60), "test": rng.integers(0, 2, 30)}
    logits = {s: 3 * rng.normal(size=(len(y), 2)) + 2 * np.eye(2)[y] for s, y in labels.items()}
    task = task_for(classes)
    fitted, shift = task.fit_calibration("temperature", logits["val"], labels["val"])
    probabilities, found = results.calibrate("temperature", classes, labels, logits)
    assert found.method == "temperature" and found.shift is None
    assert found.temperature == task.temperature(fitted) != 1.0
    for s in labels:
        expected = torch.softmax(torch.tensor(logits[s] / fitted, dtype=torch.float32), -1)
        np.testing.assert_allclose(probabilities[s], expected.numpy(), rtol=1e-5)
        assert found.scores[s] == {
            "uncalibrated": task.calibration_scores(labels[s], logits[s], 1.0),
            "calibrated": task.calibration_scores(labels[s], logits[s], fitted, shift),
        }
    probabilities, found = results.calibrate("none", classes, labels, logits)
    assert found.method == "none" and found.temperature is None
    for s in labels:
        expected = torch.softmax(torch.tensor(logits[s], dtype=torch.float32), -1)
        np.testing.assert_allclose(probabilities[s], expected.numpy(), rtol=1e-6)
        assert set(found.scores[s]) == {"uncalibrated"}


def test_platt_scales_and_shifts_every_split_and_draws_both_curves() -> None:
    """platt: T and a shift per class fitted on val; each split's float32 probabilities the
    softmax of logits / T + shift, the test reliability diagram of the logits as they are and
    as calibrated."""
    classes = Classes(("spam", "ham"), "spam")
    rng = np.random.default_rng(1)
    labels = {"val": rng.integers(0, 2, 60), "test": rng.integers(0, 2, 30)}
    logits = {s: 2 * rng.normal(size=(len(y), 2)) + np.eye(2)[y] + 1.0 for s, y in labels.items()}
    task = task_for(classes)
    fitted, shift = task.fit_calibration("platt", logits["val"], labels["val"])
    assert (shift != 0).any() and (fitted != 1).all()  # the test means something
    probabilities, found = results.calibrate("platt", classes, labels, logits)
    assert found.method == "platt" and found.temperature == task.temperature(fitted)
    assert found.shift == {"spam": float(shift[0]), "ham": float(shift[1])}
    for s in labels:
        scaled = torch.tensor(logits[s] / fitted + shift, dtype=torch.float32)
        assert probabilities[s].dtype == np.float32
        np.testing.assert_allclose(probabilities[s], torch.softmax(scaled, -1).numpy(), rtol=1e-5)
        assert found.scores[s] == {
            "uncalibrated": task.calibration_scores(labels[s], logits[s], 1.0),
            "calibrated": task.calibration_scores(labels[s], logits[s], fitted, shift),
        }
    curves = {
        "uncalibrated": task.calibrated(logits["test"], 1.0),
        "calibrated": task.calibrated(logits["test"], fitted, shift),
    }
    pd.testing.assert_frame_equal(found.reliability, task.reliability_frame(labels["test"], curves))
    uncalibrated = results.calibrated_probabilities(task, logits["test"], np.ones(2))
    assert uncalibrated.dtype == np.float32


def test_a_label_calibration_cannot_fit_is_named(caplog) -> None:
    """Multi-label platt: a label separated perfectly on validation keeps T = 1 and no shift,
    and the log names it; one temperature for all the classes names none."""
    classes = Classes(("clear", "noisy", "sure"), None, label_format="multi")
    rng = np.random.default_rng(2)
    targets = (rng.random((80, 3)) < 0.5).astype(np.float32)
    logits = np.column_stack([8 * targets[:, 0] - 4, 2 * targets[:, 1] + rng.normal(size=80),
                              6 * targets[:, 2] - 3])  # fmt: skip
    split, given = {"val": targets, "test": targets}, {"val": logits, "test": logits}
    with caplog.at_level("INFO", logger=results.log.name):
        _, found = results.calibrate("platt", classes, split, given)
    assert found.temperature["clear"] == found.temperature["sure"] == 1.0
    assert found.shift["clear"] == found.shift["sure"] == 0.0
    assert found.temperature["noisy"] != 1.0
    assert caplog.messages == [
        "evaluate.calibration: platt kept at T = 1 for clear, sure: on validation, one value or "
        "separated perfectly, nothing to fit"
    ]
    caplog.clear()
    separated = np.column_stack([np.full(6, 5.0), np.where(np.arange(6) < 3, 9.0, -9.0)])
    labels = np.where(np.arange(6) < 3, 1, 0)
    single = Classes(("ham", "spam"), "spam")
    with caplog.at_level("INFO", logger=results.log.name):
        results.calibrate("temperature", single, {"val": labels, "test": labels},
                          {"val": separated, "test": separated})  # fmt: skip
    assert caplog.messages == [
        "evaluate.calibration: temperature kept at T = 1 for the classes: on validation, one "
        "value or separated perfectly, nothing to fit"
    ]


def test_a_threshold_the_classes_cannot_take_is_refused_before_any_work() -> None:
    from spamgpt.errors import ParamsError

    results.check_threshold(0.3, Classes(("ham", "spam"), "spam"))
    results.check_threshold(None, Classes(("a", "b", "c"), "a"))
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: a threshold applies to two"):
        results.check_threshold(0.3, Classes(("a", "b", "c"), "a"))
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: multi-label data needs"):
        results.check_threshold(None, Classes(("a", "b"), None, label_format="multi"))
