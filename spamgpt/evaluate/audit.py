"""Likely label errors in the training and validation data, found by confident learning.

Every train and validation row gets out-of-fold probabilities from cheap models: k-fold
(audit.folds) logistic regression on the baseline's TF-IDF features and, where the trunk stage
cached the frozen blocks' output, on each message's mean hidden state; the two are averaged.
cleanlab's `find_label_issues` (its multi-label variant for data.label_format: multi) then
flags the rows whose given label the held-out models confidently disagree with, ranked by
self-confidence (the averaged probability of the given label, low first). Nothing is changed:
the rows are reported (reports/label_issues.csv) for a person to review in the user's file.

Logistic regression rather than the baseline's SVM: confident learning compares probabilities
per class, and a sigmoid of SVM margins is not one.
"""

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from spamgpt import contracts, paths
from spamgpt.data.batching import PackedSequences
from spamgpt.data.download import source_name
from spamgpt.errors import SpamGPTError
from spamgpt.evaluate import baseline
from spamgpt.labels import Classes
from spamgpt.model import trunk
from spamgpt.params import DataParams
from spamgpt.tasks.registry import task_for
from spamgpt.tasks.task import Task

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix
    from sklearn.multiclass import OneVsRestClassifier

AUDITED_SPLITS = ("train", "val")  # test is never looked at: it stays an unbiased judge
POOL_CHUNK = 2048  # messages whose hidden states are read from the trunk cache at a time
SEED = 0  # the folds' shuffle


def logistic(C: float) -> "OneVsRestClassifier":
    """Logistic regression, one per class against the rest (liblinear, a few times faster
    than lbfgs on the sparse TF-IDF rows, fits one class at a time); multi-label: one per
    label, each its own probability."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(LogisticRegression(C=C, solver="liblinear", max_iter=1000))


def tfidf_features(texts: list[str]) -> "csr_matrix":
    """The baseline's TF-IDF rows of every audited text, fitted once on all of them: the
    vocabulary and IDF see no label, so no fold learns from its held-out rows' labels."""
    return baseline.features().fit_transform(texts)


def standardised(hidden: np.ndarray) -> np.ndarray:
    """Each feature at mean 0, variance 1 (GPT-2's hidden states have a few dimensions
    hundreds of times larger than the rest), likewise label-blind."""
    return (hidden - hidden.mean(axis=0)) / (hidden.std(axis=0) + 1e-6)


def out_of_fold(
    features: "np.ndarray | csr_matrix", targets: np.ndarray, folds: int, C: float, task: Task
) -> np.ndarray:
    """(N, classes) probabilities of each row from logistic regression fitted on the other
    folds (Task.audit_folds: stratified by class; multi-label, shuffled)."""
    from sklearn.model_selection import cross_val_predict

    cv = task.audit_folds(folds, SEED)
    model = logistic(C)
    return cross_val_predict(model, features, targets, cv=cv, method="predict_proba")


def mean_hidden(sequences: PackedSequences) -> np.ndarray:
    """(N, n_embd) each message's mean hidden state over its real tokens, read from the trunk
    cache a chunk of messages at a time."""
    pooled = []
    for first in range(0, len(sequences), POOL_CHUNK):
        lengths = sequences.lengths[first : first + POOL_CHUNK]
        start = int(sequences.starts[first])
        rows = sequences.rows[start : start + int(lengths.sum())]
        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        sums = torch.zeros(len(lengths), rows.shape[1]).index_add_(0, owner, rows.float())
        pooled.append(sums / lengths.clamp(min=1)[:, None])
    return torch.cat(pooled).numpy()


def check_folds(folds: int, rows: int) -> None:
    """audit.folds splits the audited rows: each fold needs a row."""
    if folds > rows:
        raise SpamGPTError(
            f"audit.folds: {folds} folds of {rows} train and val rows; allowed: 2 to {rows}"
        )


def trunk_features(splits: tuple[str, ...], rows: int) -> np.ndarray | None:
    """The cached trunk's mean hidden state of every row of `splits`, in order; None where
    the trunk stage cached nothing (every block trains)."""
    if contracts.read_frozen_blocks() is None:
        return None
    hidden = np.concatenate([mean_hidden(trunk.load(paths.trunk_file(s))) for s in splits])
    if len(hidden) != rows:
        raise SpamGPTError(
            f"{paths.TRUNK_DIR}: {len(hidden)} messages cached, the splits hold {rows}; "
            f"re-run the loaders and trunk stages (dvc repro trunk)"
        )
    return hidden


def targets_of(frame: pd.DataFrame, classes: Classes) -> np.ndarray:
    """(N,) class indices, or (N, labels) 0/1 for multi-label data."""
    return classes.targets(frame["label"]).astype(np.int64)


def source_file(split: str, d: DataParams) -> str:
    """The user's file a row of `split` came from, as messages name it (a val carved from
    the given train file: that file)."""
    if d.files is None:
        return source_name(d.url, d.member)
    sources = d.files.sources()
    return source_name(sources.get(split, sources["train"]).url)


def audit(
    frames: dict[str, pd.DataFrame],
    files: dict[str, str],
    classes: Classes,
    folds: int,
    hidden: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The flagged rows of `frames` (the audited splits, in order, concatenated; `files`: the
    user's file of each), most likely wrong first, and the out-of-fold probabilities of every
    row. `hidden`: the trunk's pooled features of the same rows, or None (TF-IDF alone)."""
    rows = pd.concat(
        [f.assign(split=name, file=files[name]) for name, f in frames.items()], ignore_index=True
    )
    targets, task = targets_of(rows, classes), task_for(classes)
    # C: TF-IDF rows are unit length, so C=1 leaves every probability timid; the trunk's
    # hundreds of standardised features of a few thousand messages want a probe, not a fit
    probs = out_of_fold(tfidf_features(rows["text"].tolist()), targets, folds, 10.0, task)
    if hidden is not None:
        probs = (probs + out_of_fold(standardised(hidden), targets, folds, 0.1, task)) / 2
    flagged = task.label_issues(targets, probs)
    scores = task.label_quality(targets, probs)
    table = rows.iloc[flagged].assign(
        suggested=np.asarray(task.suggested_labels(probs), dtype=object)[flagged],
        score=scores[flagged].round(4),
    )
    return table.reset_index(drop=True), probs


def summary(table: pd.DataFrame, audited: dict[str, int], classes: Classes) -> dict:
    """metrics/audit.json's counts: rows audited and flagged, per split and per given label
    (multi-label: flagged rows carrying each label)."""
    per_split = table.groupby("split").size()
    carried = Counter(
        name for value in table["label"] for name in task_for(classes).given_labels(value)
    )
    return {
        "rows": sum(audited.values()),
        "label_issues": len(table),
        "by_split": {name: int(per_split.get(name, 0)) for name in audited},
        "by_label": {name: carried[name] for name in classes.names},
    }


def no_issues() -> pd.DataFrame:
    """The table of a run that audits nothing (audit.enabled: false): its columns only."""
    return pd.DataFrame(columns=contracts.LABEL_ISSUE_COLUMNS)
