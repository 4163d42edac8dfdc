"""What one stage tells the next, each file written by one function and read by one.

download_weights -> finetune, evaluate: the weights' identity and hash (metrics/weights.json);
split -> finetune: the data's hash and counts (metrics/data.json), which also tells loaders,
baseline and evaluate the classes; loaders -> finetune: max_length and the pad id
(metrics/loaders.json); trunk -> finetune, evaluate: how many blocks the cache skips
(data/trunk/info.json); finetune -> evaluate: its MLflow run (models/mlflow_run.json);
baseline -> evaluate: its scores (metrics/baseline.json); audit -> evaluate: the label
issues' counts (metrics/audit.json) and table (reports/label_issues.csv); evaluate -> classify:
the threshold (reports/evaluation.json: multi-label, a threshold per label, too wide for DVC's
metrics) and the temperature (models/calibration.json).
"""

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from spamgpt import atomic, paths
from spamgpt.labels import Classes


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_weights(repo_id: str, revision: str, files: dict[str, dict], hub_url: str) -> None:
    atomic.write_json(
        paths.WEIGHTS_METRICS,
        {"repo_id": repo_id, "revision": revision, "hub_url": hub_url, "files": files},
    )


def read_weights() -> dict | None:
    """metrics/weights.json as download_weights last wrote it; None before it ever ran."""
    return _read(paths.WEIGHTS_METRICS) if Path(paths.WEIGHTS_METRICS).is_file() else None


def read_weights_sha256() -> str:
    """The sha256 of the pretrained model.safetensors."""
    return _read(paths.WEIGHTS_METRICS)["files"]["model.safetensors"]["sha256"]


def read_base_weights() -> dict[str, str]:
    """The pretrained weights' identity: repo_id, revision, sha256 (of model.safetensors),
    hub_url."""
    report = _read(paths.WEIGHTS_METRICS)
    sha256 = report["files"]["model.safetensors"]["sha256"]
    return {k: report[k] for k in ("repo_id", "revision", "hub_url")} | {"sha256": sha256}


def write_data_report(report: dict) -> None:
    atomic.write_json(paths.DATA_METRICS, report)


def read_data_report() -> dict:
    """metrics/data.json: raw_sha256, row counts, bad lines, per-split label counts, the
    classes."""
    return _read(paths.DATA_METRICS)


def read_classes() -> Classes:
    """The classes the split stage found (or was given), in the model's output order."""
    return Classes.from_dict(read_data_report())


@dataclass(frozen=True)
class Tokenization:
    max_length: int  # tokens kept per message
    pad_id: int  # the end-of-text token


def write_tokenization(tokenization: Tokenization, split_stats: dict[str, dict]) -> None:
    atomic.write_json(
        paths.TOKENS_METRICS,
        {"max_length": tokenization.max_length, "pad_id": tokenization.pad_id, **split_stats},
    )


def read_tokens_report() -> dict:
    """metrics/loaders.json: max_length, pad_id and each split's token stats (truncated: the
    messages cut)."""
    return _read(paths.TOKENS_METRICS)


def read_tokenization() -> Tokenization:
    report = _read(paths.TOKENS_METRICS)
    return Tokenization(report["max_length"], report["pad_id"])


def write_trunk_info(
    frozen_blocks: int | None,
    device: str,
    precision: str,
    folder: str | os.PathLike = paths.TRUNK_DIR,
) -> None:
    """Into `folder`: where the trunk stage builds the new TRUNK_DIR."""
    atomic.write_json(
        Path(folder) / paths.TRUNK_INFO.name,
        {"frozen_blocks": frozen_blocks, "device": device, "precision": precision},
    )


def read_frozen_blocks() -> int | None:
    """How many leading blocks the trunk cache skips; None: nothing is cached (all train)."""
    return _read(paths.TRUNK_INFO)["frozen_blocks"]


def write_mlflow_run(run_id: str) -> None:
    atomic.write_json(paths.MLFLOW_RUN, {"run_id": run_id})


def read_mlflow_run() -> str:
    return _read(paths.MLFLOW_RUN)["run_id"]


def write_baseline(report: dict) -> None:
    atomic.write_json(paths.BASELINE_METRICS, report)


def read_baseline() -> dict:
    return _read(paths.BASELINE_METRICS)


def write_audit(report: dict) -> None:
    atomic.write_json(paths.AUDIT_METRICS, report)


def read_audit() -> dict:
    """metrics/audit.json: enabled, and where it ran, the rows audited and flagged."""
    return _read(paths.AUDIT_METRICS)


LABEL_ISSUE_COLUMNS = ("split", "file", "line", "text", "label", "suggested", "score")


def write_label_issues(table: pd.DataFrame) -> None:
    """reports/label_issues.csv, every text quoted as in the split files (a line break in a
    message cannot split its row)."""
    with atomic.atomic_open(paths.LABEL_ISSUES, "w", encoding="utf-8", newline="") as f:
        table.reindex(columns=list(LABEL_ISSUE_COLUMNS)).to_csv(
            f, index=False, quoting=csv.QUOTE_NONNUMERIC
        )


def read_label_issues() -> pd.DataFrame:
    return pd.read_csv(
        paths.LABEL_ISSUES,
        dtype={"line": "int64", "label": "str", "suggested": "str", "text": "str"},
        keep_default_na=False,
    )


def write_evaluation(compared: dict) -> None:
    """metrics/eval.json: the figures experiments are compared by."""
    atomic.write_json(paths.EVAL_METRICS, compared)


def write_evaluation_report(report: dict) -> None:
    """reports/evaluation.json: every split's whole report and the threshold applied."""
    atomic.write_json(paths.EVAL_REPORT, report)


def read_threshold(default: float = 0.5) -> float | dict[str, float] | None:
    """The threshold evaluate used (None: it labelled by the most probable class; multi-label:
    {label: threshold}), else `default` (no evaluation yet, or unreadable)."""
    try:
        threshold = _read(paths.EVAL_REPORT)["threshold"]
        if isinstance(threshold, dict):
            return {str(k): float(v) for k, v in threshold.items()}
        return None if threshold is None else float(threshold)
    except (OSError, ValueError, KeyError, TypeError):
        return default


def write_calibration(summary: dict) -> None:
    """`summary`: "method", "temperature" (read_temperature's), platt's "shift" (read_shift's)
    and the test figures."""
    atomic.write_json(paths.CALIBRATION, summary)


def read_temperature() -> float | dict[str, float] | None:
    """The temperature evaluate fitted (multi-label: {label: T}); None where there is none
    (no evaluation yet, evaluate.calibration none, or unreadable): the raw probabilities."""
    try:
        calibration = _read(paths.CALIBRATION)
        if calibration["method"] == "none":
            return None
        temperature = calibration["temperature"]
        if isinstance(temperature, dict):
            return {str(k): float(v) for k, v in temperature.items()}
        return float(temperature)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_shift() -> dict[str, float] | None:
    """The shift per class (multi-label: per label) evaluate fitted with its temperature
    (evaluate.calibration platt); None where there is none (another method, or unreadable)."""
    try:
        calibration = _read(paths.CALIBRATION)
        if calibration["method"] == "none" or calibration.get("shift") is None:
            return None
        return {str(k): float(v) for k, v in calibration["shift"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
