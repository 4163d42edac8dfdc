"""Every file the pipeline writes, relative to the repository root: the one place that names
them (dvc.yaml names the same)."""

import os
from pathlib import Path

SPLITS = ("train", "val", "test")
# What a copy of the pipeline needs (the tests' and benchmarks' throwaway projects)
PIPELINE_FILES = ("dvc.yaml", ".gitignore", "stages", "spamgpt", "data/local")
PLOT_TEMPLATES = Path(".dvc/plots")  # dvc.yaml's own plot templates: copied after `dvc init`

# The verified copy of data.url (or its archive member); with given splits (data.files), a
# folder of one file per split (raw_split_file).
RAW_DATA = Path("data/raw/dataset")
SPLIT_DIR = Path("data/split")
TOKENS_DIR = Path("data/tokens")
TRUNK_DIR = Path("data/trunk")
TRUNK_INFO = TRUNK_DIR / "info.json"  # the frozen blocks the cache was computed with

PRETRAINED_DIR = Path("models/pretrained")
FINETUNED_DIR = Path("models/finetuned")
# The MLflow run of the model in FINETUNED_DIR: beside it, so that the model's hash in dvc.lock
# changes only with the model; in git (not DVC's cache), so each experiment's commit names it.
MLFLOW_RUN = Path("models/mlflow_run.json")
# The temperature evaluate fitted (evaluate.calibration), which classify, predict and export
# fold into models/finetuned's head: beside the model, in git, as the MLflow run is.
CALIBRATION = Path("models/calibration.json")
CHECKPOINT_DIR = Path("models/checkpoints")
CHECKPOINT = CHECKPOINT_DIR / "checkpoint.pt"  # the resume point: weights, optimizer, state

METRICS_DIR = Path("metrics")
WEIGHTS_METRICS = METRICS_DIR / "weights.json"
DATA_METRICS = METRICS_DIR / "data.json"
BASELINE_METRICS = METRICS_DIR / "baseline.json"
AUDIT_METRICS = METRICS_DIR / "audit.json"  # the label audit's counts
TOKENS_METRICS = METRICS_DIR / "loaders.json"
TRAIN_METRICS = METRICS_DIR / "train.json"
TRAIN_LOSS_PLOT = METRICS_DIR / "train_loss.csv"
VAL_EPOCHS_PLOT = METRICS_DIR / "val_epochs.csv"
EVAL_METRICS = METRICS_DIR / "eval.json"
CONFUSION_TEST_PLOT = METRICS_DIR / "confusion_test.csv"
RELIABILITY_TEST_PLOT = METRICS_DIR / "reliability_test.csv"  # before and after calibration
SCATTER_TEST_PLOT = METRICS_DIR / "scatter_test.csv"  # number labels: predicted against true

# The full reports: every figure per split and per class (DVC's metrics files, above, hold the
# few that experiments are compared by, so that `dvc metrics show` fits on a terminal)
REPORTS_DIR = Path("reports")
TRAIN_REPORT = REPORTS_DIR / "training.json"
EVAL_REPORT = REPORTS_DIR / "evaluation.json"
MISCLASSIFIED_TEST = REPORTS_DIR / "misclassified_test.csv"
PREDICTIONS_TEST = REPORTS_DIR / "predictions_test.csv"  # every test message's answer
LABEL_ISSUES = REPORTS_DIR / "label_issues.csv"  # train and val rows whose label looks wrong
# `spamgpt export --to onnx --quantize int8`: the int8 graph's test figures beside PyTorch's
EXPORT_ONNX_INT8_REPORT = REPORTS_DIR / "export_onnx_int8.json"
TIMELINES_DIR = REPORTS_DIR / "timelines"  # each stage's phases (imports, load, train, ...)


def pretrained_dir(repo_id: str) -> Path:
    """models/pretrained/<owner>/<name>: the downloaded hub files of one model."""
    return PRETRAINED_DIR / repo_id


def raw_split_file(split: str) -> Path:
    """The verified copy of a given split's file (data.files)."""
    return RAW_DATA / split


def split_file(split: str, folder: str | os.PathLike = SPLIT_DIR) -> Path:
    """`folder`: where a stage builds the new SPLIT_DIR (spamgpt.atomic.replaced_dir)."""
    return Path(folder) / f"{split}.csv"


def tokens_file(split: str, folder: str | os.PathLike = TOKENS_DIR) -> Path:
    return Path(folder) / f"{split}.safetensors"


def trunk_file(split: str, folder: str | os.PathLike = TRUNK_DIR) -> Path:
    return Path(folder) / f"{split}.safetensors"


def checkpoint_weights(name: str) -> Path:
    """The trained tensors of the best or the last epoch, as safetensors."""
    return CHECKPOINT_DIR / f"{name}.safetensors"


def timeline(stage: str) -> Path:
    """The seconds of each phase of a stage's last run (spamgpt.stage.write_timeline)."""
    return TIMELINES_DIR / f"{stage}.json"


def curve_plot(name: str) -> Path:
    return METRICS_DIR / f"{name}_test.csv"


def repo_root() -> Path:
    """The repository the stages run for, also from inside DVC's temporary experiment copies
    (`dvc exp run --temp` or `--queue` work under <repo>/.dvc/tmp/exps/): found from DVC_ROOT,
    else the working directory."""
    root = Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 2):  # every run of 3 parts, the last 3 too
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root
