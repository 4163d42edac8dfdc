"""Where each stage reads and writes, relative to the repository root (dvc.yaml names the same)."""

from pathlib import Path

RAW_DATA = Path("data/raw/SMSSpamCollection")
SPLIT_DIR = Path("data/split")
TOKENS_DIR = Path("data/tokens")
PRETRAINED_DIR = Path("models/pretrained")
METRICS_DIR = Path("metrics")

SPLITS = ("train", "val", "test")


def pretrained_dir(repo_id: str) -> Path:
    """models/pretrained/<owner>/<name>: the downloaded hub files of one model."""
    return PRETRAINED_DIR / repo_id


def split_file(split: str) -> Path:
    return SPLIT_DIR / f"{split}.csv"


def tokens_file(split: str) -> Path:
    return TOKENS_DIR / f"{split}.safetensors"


TRUNK_DIR = Path("data/trunk")
TRUNK_INFO = TRUNK_DIR / "info.json"
FINETUNED_DIR = Path("models/finetuned")
# The MLflow run of the model in FINETUNED_DIR: beside it, so that the model's hash in dvc.lock
# changes only with the model; in git (not DVC's cache), so each experiment's commit names it.
MLFLOW_RUN = Path("models/mlflow_run.json")
CHECKPOINT_DIR = Path("models/checkpoints")
REPORTS_DIR = Path("reports")


def trunk_file(split: str) -> Path:
    return TRUNK_DIR / f"{split}.safetensors"
