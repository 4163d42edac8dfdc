"""The whole pipeline, end to end, as a user drives it: `dvc repro` in a fresh git + DVC
project fetching from 127.0.0.1, then MLflow read back, `dvc exp run -S`, the diffs, plots
and `spamgpt classify`. One project per module: the stages run once and the tests read it."""

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    REPO,
    STAGES,
    assert_same_answers,
    evaluated_temperature,
    expected_answers,
    read_json,
    restored_tracking_uri,
    run,
    spamgpt,
    subprocess_env,
)
from mlflow.tracking import MlflowClient


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def project(reproduced):
    """conftest's reproduced project itself: the other modules work on copies of it."""
    return reproduced.path, reproduced.output


@pytest.fixture(scope="module")
def mlflow_client(project):
    path, _ = project
    return MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")


PRETRAINED = "models/pretrained"  # the project's base weights, under its root


def test_repro_runs_every_stage_in_order(project):
    _, output = project
    ran = ran_stages(output)
    assert sorted(ran) == sorted(STAGES)
    for name in STAGES:  # each stage's phases, the first from the process's start
        phases = read_json(project[0] / "reports/timelines" / f"{name}.json")["phases"]
        assert [p["phase"] for p in phases][:3] == ["imports", "params", "main"]
        assert phases[0]["start_s"] == 0 and phases[0]["seconds"] > 0
        for p, after in itertools.pairwise(phases):
            assert p["start_s"] + p["seconds"] == pytest.approx(after["start_s"], abs=2e-3)
    finetune = read_json(project[0] / "reports/timelines/finetune.json")["phases"]
    assert [p["phase"] for p in finetune][3:] == ["load", "train", "save", "log"]
    for before, after in [
        ("download_data", "split"),
        ("split", "baseline"),
        ("split", "loaders"),
        ("download_weights", "loaders"),
        ("loaders", "trunk"),
        ("trunk", "finetune"),
        ("trunk", "audit"),
        ("audit", "evaluate"),
        ("finetune", "evaluate"),
        ("baseline", "evaluate"),
    ]:
        assert ran.index(before) < ran.index(after)


def declared_outputs(stage: dict) -> set[str]:
    """The paths a dvc.yaml stage declares it writes: outs, metrics and plots, each a path or
    a one-key mapping of a path to its options."""
    entries = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def test_dvc_yaml_declares_what_the_library_writes():
    """dvc.yaml and spamgpt.paths agree, or DVC would miss outputs (or restore stale ones):
    each file the stages write is a declared output of the stage that writes it."""
    from spamgpt import paths

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    writes = {
        "download_data": [paths.RAW_DATA],
        "download_weights": [paths.pretrained_dir("${model.repo_id}"), paths.WEIGHTS_METRICS],
        "split": [paths.SPLIT_DIR, paths.DATA_METRICS],
        "baseline": [paths.BASELINE_METRICS],
        "loaders": [paths.TOKENS_DIR, paths.TOKENS_METRICS],
        "trunk": [paths.TRUNK_DIR],
        "audit": [paths.LABEL_ISSUES, paths.AUDIT_METRICS],
        "finetune": [
            paths.FINETUNED_DIR, paths.MLFLOW_RUN, paths.CHECKPOINT_DIR, paths.TRAIN_METRICS,
            paths.TRAIN_LOSS_PLOT, paths.VAL_EPOCHS_PLOT, paths.TRAIN_REPORT,
        ],
        "evaluate": [
            paths.EVAL_REPORT, paths.MISCLASSIFIED_TEST, paths.PREDICTIONS_TEST,
            paths.CONFUSION_TEST_PLOT, paths.curve_plot("roc"), paths.curve_plot("pr"),
            paths.RELIABILITY_TEST_PLOT, paths.SCATTER_TEST_PLOT, paths.CALIBRATION,
            paths.EVAL_METRICS,
        ],
    }  # fmt: skip
    assert set(writes) == set(stages)
    for name, files in writes.items():
        files = [*files, paths.timeline(name)]  # every stage's phases (spamgpt.stage)
        assert {str(f) for f in files} == declared_outputs(stages[name]), name


def test_data_and_loader_metrics(project, mirror):
    path, _ = project
    data = read_json(path / "metrics/data.json")
    assert data["raw_rows"] == 300 and data["bad_lines"] == 0
    assert data["raw_sha256"] == mirror.data_sha256
    assert data["duplicates_removed"] > 0  # the generator repeats some texts
    kept = 300 - data["duplicates_removed"]
    assert sum(data[s]["ham"] + data[s]["spam"] for s in ("train", "val", "test")) == kept
    loaders = read_json(path / "metrics/loaders.json")
    for split in ("train", "val", "test"):
        assert loaders[split]["samples"] == data[split]["ham"] + data[split]["spam"]
    weights = read_json(path / "metrics/weights.json")
    assert weights["files"]["model.safetensors"]["verified"] is False  # unknown revision: recorded


def test_second_repro_does_nothing(project):
    path, _ = project
    out = run(["dvc", "repro"], path)
    assert ran_stages(out.stdout + out.stderr) == []


def test_metrics_files(project):
    path, _ = project
    train = read_json(path / "metrics/train.json")
    assert 1 <= train["best_epoch"] <= train["epochs_run"] <= 2
    assert train["samples_per_second"] > 0 and train["train_seconds"] > 0
    assert read_json(path / "reports/training.json").items() >= train.items()
    ev = read_json(path / "reports/evaluation.json")
    compared = read_json(path / "metrics/eval.json")  # DVC's metrics: the test figures
    assert compared == {
        "accuracy": ev["test"]["accuracy"],
        "macro_f1": ev["test"]["macro_f1"],
        "spam": {k: ev["test"]["spam"][k] for k in ("precision", "recall", "f1")},
        "threshold": ev["threshold"],
        "baseline": {"spam": {"f1": ev["baseline"]["test"]["spam"]["f1"]}},
    }
    calibration = read_json(path / "models/calibration.json")
    assert calibration["test"] == {
        "ece": ev["calibration"]["test"]["calibrated"]["ece"],
        "log_loss": ev["calibration"]["test"]["calibrated"]["log_loss"],
        "ece_uncalibrated": ev["calibration"]["test"]["uncalibrated"]["ece"],
    }
    shown = run(["dvc", "metrics", "show"], path).stdout
    assert max(map(len, shown.splitlines())) <= 200, shown
    for split in ("val", "test"):
        report = ev[split]
        (tn, fp), (fn, tp) = report["confusion_matrix"]
        assert tn + fp == report["ham"]["support"] and fn + tp == report["spam"]["support"]
        assert report["accuracy"] == pytest.approx((tn + tp) / (tn + fp + fn + tp))
        for key in ("macro_f1", "roc_auc", "pr_auc"):
            assert 0 <= report[key] <= 1
    assert set(ev["baseline"]) == {"val", "test"}
    assert ev["baseline"]["test"].keys() == ev["test"].keys()  # the same names, side by side
    assert 0 < ev["best_val_threshold"] < 1
    confusion = (path / "metrics/confusion_test.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted"
    assert len(confusion) - 1 == ev["test"]["ham"]["support"] + ev["test"]["spam"]["support"]


def test_mlflow_run_has_everything(project, mlflow_client, monkeypatch):
    path, _ = project
    params = yaml.safe_load((path / "params.yaml").read_text())
    run_id = read_json(path / "models/mlflow_run.json")["run_id"]
    run_ = mlflow_client.get_run(run_id)
    assert run_.info.status == "FINISHED"
    assert run_.data.params["train.lr"] == str(params["train"]["lr"])
    assert run_.data.params["model.repo_id"] == params["model"]["repo_id"]
    assert run_.data.tags["data_sha256"] == read_json(path / "metrics/data.json")["raw_sha256"]
    assert "weights_sha256" in run_.data.tags

    train = read_json(path / "reports/training.json")
    losses = mlflow_client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, train["steps"] + 1))
    for key in ("val/loss", "val/accuracy", "val/spam_f1", "val/ham_recall"):
        history = mlflow_client.get_metric_history(run_id, key)
        assert [m.step for m in history] == list(range(1, train["epochs_run"] + 1))
    ev = read_json(path / "reports/evaluation.json")
    assert run_.data.metrics["test/accuracy"] == pytest.approx(ev["test"]["accuracy"])
    assert math.isfinite(run_.data.metrics["test/roc_auc"])
    assert (
        run_.data.metrics["train/samples_per_second"] > 0 and run_.data.metrics["train/seconds"] > 0
    )
    timelines = {k for k in run_.data.metrics if k.startswith("timeline/")}
    assert {"timeline/finetune/train_s", "timeline/evaluate/predict_s"} <= timelines
    assert run_.data.metrics["timeline/finetune/train_s"] >= train["train_seconds"] - 0.01
    assert run_.data.metrics["baseline/accuracy"] == pytest.approx(
        ev["baseline"]["test"]["accuracy"]
    )
    calibration = ev["calibration"]
    assert run_.data.metrics["calibration/temperature"] == pytest.approx(calibration["temperature"])
    assert run_.data.metrics["test/ece"] == pytest.approx(calibration["test"]["calibrated"]["ece"])
    assert run_.data.metrics["val/ece_uncalibrated"] == pytest.approx(
        calibration["val"]["uncalibrated"]["ece"]
    )
    assert run_.data.metrics["test/ece_floor"] == pytest.approx(
        calibration["test"]["calibrated"]["ece_floor"]
    )

    def listing(folder=None):
        return {f.path for f in mlflow_client.list_artifacts(run_id, folder)}

    # The best epoch's tensors are the light model's model.safetensors: not logged twice.
    assert listing("checkpoints") == {"checkpoints/last.safetensors"}
    (output,) = run_.outputs.model_outputs
    model = mlflow_client.get_logged_model(output.model_id)
    files = mlflow_client.list_logged_model_artifacts(model.model_id, "artifacts/classifier")
    sizes = {Path(f.path).name: f.file_size for f in files}
    best = path / "models/checkpoints/best.safetensors"
    assert sizes["model.safetensors"] == best.stat().st_size  # the trained tensors only
    assert "base.json" in sizes
    evaluation = listing("evaluation")
    assert "evaluation/test_reliability.png" in evaluation
    assert "evaluation/calibration.json" in evaluation
    for split in ("val", "test"):
        assert f"evaluation/{split}_confusion_matrix.png" in evaluation
        assert f"evaluation/{split}_metrics.json" in evaluation
    assert "evaluation/misclassified_test.csv" in evaluation
    audit = read_json(path / "metrics/audit.json")  # the label audit's table and counts
    assert "audit/label_issues.json" in listing("audit")
    assert run_.data.metrics["audit/label_issues"] == audit["label_issues"]
    assert run_.data.metrics["audit/rows"] == audit["rows"]
    assert "params.yaml" in listing()
    assert list((path / "mlartifacts").rglob("test_confusion_matrix.png"))  # beside mlflow.db
    assert not (path / "mlruns").exists()
    monkeypatch.chdir(path)  # the light model finds its base weights in the workspace
    monkeypatch.setenv("SPAMGPT_CACHE", str(path / "no-cache"))
    with restored_tracking_uri():
        mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
        served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")  # logged by evaluate
    answers = [p.model_dump() for p in served.predict(["see you at 7", "WIN a prize now"])]
    threshold = read_json(path / "metrics/eval.json")["threshold"]
    expected = expected_answers(
        path / "models/finetuned", ["see you at 7", "WIN a prize now"], threshold,
        path / PRETRAINED, evaluated_temperature(path),
    )  # fmt: skip
    assert_same_answers(
        [a["label"] for a in answers], [a["spam_probability"] for a in answers], expected,
        threshold,
    )  # fmt: skip
    assert not (path / "no-cache").exists()  # nothing downloaded: the workspace's base
    inputs = run_.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == run_.data.tags["data_sha256"][:36]


def test_plots_render(project):
    path, _ = project
    out = run(["dvc", "plots", "show", "--json"], path)
    shown = json.loads(out.stdout)["data"]
    for name, plots in shown.items():
        if name == "test predicted vs true":  # the regression task's plot: a classifier has none
            assert plots == []
            continue
        (plot,) = plots
        assert plot["content"]["data"]["values"], name
    assert {p["class"] for p in shown["test ROC"][0]["content"]["data"]["values"]} == {"spam"}
    reliability = shown["test reliability"][0]["content"]["data"]["values"]
    assert {p["class"] for p in reliability} == {"perfect", "uncalibrated", "calibrated"}


def test_classify_answers(project):
    path, _ = project
    out = spamgpt(
        ["classify", "--json", "WIN a FREE prize now, call 09061701", "see you at 7"], path
    )
    answers = [json.loads(line) for line in out.splitlines()]
    texts = ["WIN a FREE prize now, call 09061701", "see you at 7"]
    assert [a["text"] for a in answers] == texts
    threshold = read_json(path / "metrics/eval.json")["threshold"]
    temperature = evaluated_temperature(path)
    expected = expected_answers(
        path / "models/finetuned", texts, threshold, path / PRETRAINED, temperature
    )
    labels, probabilities = [a["label"] for a in answers], [a["spam_probability"] for a in answers]
    assert_same_answers(labels, probabilities, expected, threshold)


def test_classify_gives_evaluates_calibrated_probabilities(project):
    """The test messages' spam probabilities in reports/predictions_test.csv (evaluate's,
    calibrated, from the trunk cache) are what `spamgpt classify` gives (the whole model,
    evaluate's temperature folded into its head), both in fp32 (classify's auto is bf16 on a
    CPU that has it)."""
    path, _ = project
    temperature = evaluated_temperature(path)
    assert temperature is not None and temperature != 1.0
    predictions = pd.read_csv(path / "reports/predictions_test.csv")
    texts = predictions["text"].tolist()
    answers = [
        json.loads(line)
        for line in spamgpt(
            ["classify", "--json", "--precision", "fp32", *texts], path
        ).splitlines()
    ]
    assert [a["spam_probability"] for a in answers] == pytest.approx(
        predictions["p_spam"].tolist(), abs=2e-6
    )
    assert [a["label"] for a in answers] == predictions["predicted"].tolist()


def test_calibration_keeps_decisions_and_rankings(project, monkeypatch):
    """The uncalibrated probabilities (evaluate.calibration: none) give the test figures
    evaluate reported with the calibrated ones at 0.5: accuracy, P/R/F1, confusion, ROC and
    PR AUC; the calibrated ones are better calibrated on validation, where T was fitted."""
    from spamgpt import contracts, paths
    from spamgpt.evaluate import results
    from spamgpt.model import classifier
    from spamgpt.model.trunk import Split
    from spamgpt.runtime import Compute
    from spamgpt.tasks.registry import task_for

    path, _ = project
    monkeypatch.chdir(path)
    ev = read_json(path / "reports/evaluation.json")
    assert ev["threshold"] == 0.5
    classes = contracts.read_classes()
    splits = {s: Split.read(s, contracts.read_frozen_blocks()) for s in ("val", "test")}
    model, _ = classifier.load(paths.FINETUNED_DIR)
    on_cpu = Compute(torch.device("cpu"), "fp32")
    logits = {
        s: classifier.class_logits(model, x.inputs, on_cpu).numpy() for s, x in splits.items()
    }
    labels = {s: x.labels.numpy() for s, x in splits.items()}
    raw, none = results.calibrate("none", classes, labels, logits)
    uncalibrated = task_for(classes).report(labels["test"], raw["test"], 0.5)
    for key in ("accuracy", "macro_f1", "roc_auc", "pr_auc", "confusion_matrix", "spam", "ham"):
        assert uncalibrated[key] == ev["test"][key], key
    calibration = ev["calibration"]
    assert none.scores["test"]["uncalibrated"] == calibration["test"]["uncalibrated"]
    val = calibration["val"]
    assert val["calibrated"]["log_loss"] <= val["uncalibrated"]["log_loss"]


def test_exp_run_reruns_only_training(project, mlflow_client):
    path, _ = project
    out = run(["dvc", "exp", "run", "-S", "train.lr=3e-3", "-n", "faster"], path)
    assert ran_stages(out.stdout + out.stderr) == ["finetune", "evaluate"]
    # The project's first experiment, after its `dvc repro`: dvc.lock has every output's hash,
    # so DVC's checkout warns of none (docs/troubleshooting.md: it does before any repro).
    assert "No file hash info" not in out.stdout + out.stderr
    params = run(["dvc", "params", "diff", "--json"], path)
    assert json.loads(params.stdout)["params.yaml"]["train.lr"]["new"] == 0.003
    changed = json.loads(run(["dvc", "metrics", "diff", "--json"], path).stdout)
    assert "metrics/eval.json" in changed

    runs = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name("sms-spam-gpt2").experiment_id]
    )
    by_name = {r.info.run_name: r for r in runs}
    assert "faster" in by_name  # DVC_EXP_NAME names the MLflow run
    assert by_name["faster"].data.params["train.lr"] == "0.003"
    assert by_name["faster"].data.tags["DVC_EXP_NAME"] == "faster"


def test_lora_recipe_runs_and_classifies(project, mlflow_client):
    path, _ = project
    out = run(
        [
            "dvc",
            "exp",
            "run",
            "-n",
            "lora-all",
            "-S",
            "model.finetune=lora",
            "-S",
            "model.trainable_blocks=all",
            "-S",
            "lora.targets=[c_attn,mlp.c_fc]",
        ],
        path,
    )
    assert ran_stages(out.stdout + out.stderr) == ["trunk", "audit", "finetune", "evaluate"]
    meta = read_json(path / "models/finetuned/classifier.json")
    assert "gpt.h.0.attn.c_attn.weight" in meta["trained"]  # adapters merged into the weight
    assert not any("lora" in name for name in meta["trained"])
    answer = json.loads(spamgpt(["classify", "--json", "txt WIN to claim your prize"], path))
    threshold = read_json(path / "metrics/eval.json")["threshold"]
    expected = expected_answers(
        path / "models/finetuned", ["txt WIN to claim your prize"], threshold, path / PRETRAINED,
        evaluated_temperature(path),
    )  # fmt: skip
    assert_same_answers([answer["label"]], [answer["spam_probability"]], expected, threshold)
    # Merged adapters are not the trained tensors: the best ones are logged on their own.
    run_id = read_json(path / "models/mlflow_run.json")["run_id"]
    logged = {f.path for f in mlflow_client.list_artifacts(run_id, "checkpoints")}
    assert logged == {"checkpoints/best.safetensors", "checkpoints/last.safetensors"}


AUDIT = """
import os, runpy, sys
seen = set()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        if "r" in mode and "+" not in mode:
            seen.add(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(hook)
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
finally:
    with open(sys.argv[2], "w") as f:
        f.write("\\n".join(sorted(seen)))
"""


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_reads_no_project_file_its_deps_do_not_list(project, tmp_path, name):
    """Each stage re-run in a copy of the finished project, every file it opens for reading
    recorded: those inside the project are its deps, its outputs (finetune resumes from its
    own checkpoint), params.yaml, or DVC's, git's and MLflow's own files."""
    path, _ = project
    copy = tmp_path / "project"
    shutil.copytree(path, copy, symlinks=True)
    stage = yaml.safe_load((copy / "dvc.yaml").read_text())["stages"][name]
    lock = yaml.safe_load((copy / "dvc.lock").read_text())["stages"][name]
    listed = [d["path"] for d in lock["deps"]] + [o["path"] for o in lock.get("outs", [])]
    listed += [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
    # .git: MLflow tags a logged model with the commit it was made at, as it does a run
    own = ["params.yaml", ".dvc", ".git", "mlflow.db", "mlartifacts"]
    allowed = [copy / p for p in [*listed, *own]]
    record = tmp_path / "opened.txt"
    script = (copy / stage["cmd"].split()[-1]).relative_to(copy)
    run([sys.executable, "-c", AUDIT, str(script), str(record)], copy)
    # spamgpt.atomic writes an output under a temporary name beside it (and reads it to fsync)
    temporary = re.compile(r"\.(.+)\.[^.]+\.tmp")
    opened = [
        p.with_name(m[1]) if (m := temporary.fullmatch(p.name)) else p
        for p in map(Path, record.read_text().splitlines())
    ]
    # (os.open relative to a directory's descriptor, as shutil.rmtree does, names no file of
    # the project: MLflow removing its temporary copy of spamgpt/data/ opens "data". Only
    # files that exist count: what a stage reads of a folder, it reads from its files.)
    inside = [p for p in opened if p.is_relative_to(copy) and p.is_file()]
    inside = [p for p in inside if "__pycache__" not in p.parts]
    code = [copy / "stages", copy / "spamgpt"]  # imports: tests/test_dvc_yaml.py checks them
    unlisted = [
        str(p.relative_to(copy))
        for p in inside
        if not any(p == a or p.is_relative_to(a) for a in [*allowed, *code])
    ]
    assert not unlisted, f"stage {name} reads {unlisted}, which dvc.yaml does not list"


# --- a stage that fails under `dvc repro` leaves every output as it was ---------------------
# (dvc.yaml: `persist: true`, so DVC does not delete outputs before a stage runs.) These run
# last: each puts back what it changed, but an interrupted finetune's resume point stays.

CHECKPOINTS = "models/checkpoints"  # the resume point: an interrupted finetune updates it


def workspace_hashes(path: Path) -> dict[str, str]:
    """The sha256 of every file the pipeline writes or reads in the workspace (outputs,
    metrics, plots, reports, temporary files), and of dvc.lock; the resume point aside."""
    files = [path / "dvc.lock"] + [
        p for folder in ("data", "models", "metrics", "reports") for p in (path / folder).rglob("*")
    ]
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file() and not p.relative_to(path).as_posix().startswith(CHECKPOINTS)
    }


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


@contextlib.contextmanager
def edited(path: Path, name: str, edit) -> Iterator[None]:
    """`name` in the project rewritten by edit(text) for the block, then put back."""
    file = path / name
    original = file.read_text()
    new = edit(original)
    assert new != original
    file.write_text(new)
    try:
        yield
    finally:
        file.write_text(original)


def with_params(**sections: dict):
    def edit(text: str) -> str:
        params = yaml.safe_load(text)
        for section, values in sections.items():
            params[section].update(values)
        return yaml.safe_dump(params, sort_keys=False)

    return edit


def failed_repro(path: Path) -> str:
    out = run(["dvc", "repro"], path, check=False)
    assert out.returncode != 0, out.stdout
    return out.stdout + out.stderr


def test_bad_data_in_split_loses_nothing(project, tmp_path):
    path, _ = project
    bad = tmp_path / "messages.tsv"
    bad.write_text("ham\tsee you at 7\nspam\n")
    before, lock = workspace_hashes(path), (path / "dvc.lock").read_text()
    timeline = path / "reports/timelines/download_data.json"  # not in DVC's cache: kept here
    kept = timeline.read_bytes()
    params = with_params(data={"url": str(bad), "member": None, "sha256": None})
    try:
        with edited(path, "params.yaml", params):
            output = failed_repro(path)
        assert "error: " in output and "failed to reproduce 'split'" in output
        # download_data did its job (a new copy, its timeline, its dvc.lock entry); nothing
        # else moved
        assert changed(before, workspace_hashes(path)) == {
            "data/raw/dataset", "reports/timelines/download_data.json", "dvc.lock"
        }  # fmt: skip
        old, new = (yaml.safe_load(t)["stages"] for t in (lock, (path / "dvc.lock").read_text()))
        assert {k for k in old | new if old.get(k) != new.get(k)} == {"download_data"}
    finally:
        (path / "dvc.lock").write_text(lock)
        timeline.write_bytes(kept)
        run(["dvc", "checkout", "data/raw/dataset"], path)
    assert workspace_hashes(path) == before


def test_bad_parameter_refused_by_finetune_loses_nothing(project):
    path, _ = project
    before = workspace_hashes(path)
    with edited(path, "params.yaml", with_params(train={"lr": -1})):
        output = failed_repro(path)
    assert "error: train.lr: must be > 0, got -1" in output
    assert "failed to reproduce 'finetune'" in output
    assert workspace_hashes(path) == before


def test_an_exception_in_a_stage_loses_nothing(project):
    """A bug in the trunk stage once the new cache is computed, before its last file."""
    path, _ = project
    before = workspace_hashes(path)
    write_info = "        if distributed.is_main():\n            contracts.write_trunk_info("
    bug = '        raise RuntimeError("a bug")\n' + write_info
    with edited(path, "stages/trunk.py", lambda text: text.replace(write_info, bug)):
        output = failed_repro(path)
    assert "RuntimeError: a bug" in output and "failed to reproduce 'trunk'" in output
    assert workspace_hashes(path) == before


def test_ctrl_c_during_a_stage_loses_nothing(project, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while finetune trains."""
    path, _ = project
    before = workspace_hashes(path)
    checkpoints, kept = path / CHECKPOINTS, tmp_path / "checkpoints"
    shutil.copytree(checkpoints, kept)
    checkpoint = checkpoints / "checkpoint.pt"
    written = checkpoint.stat().st_mtime_ns
    longer = with_params(train={"epochs": 500, "patience": 500})
    try:
        with edited(path, "params.yaml", longer):
            proc = subprocess.Popen(
                ["dvc", "repro"],
                cwd=path,
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            deadline = time.monotonic() + 120
            while checkpoint.stat().st_mtime_ns == written:  # an epoch trained
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            output, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "failed to reproduce 'finetune'" in output and "exited with 130" in output
        assert workspace_hashes(path) == before
    finally:
        shutil.rmtree(checkpoints)
        shutil.copytree(kept, checkpoints)
