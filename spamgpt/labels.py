"""The classes of a dataset: their names in the order of the model's outputs, the positive
class, and the label column's format (how its values become training targets); how
probabilities become labels is the task's (spamgpt.tasks.registry).

Class names are strings (an integer label 3 is the class "3"), in the order of the model's
outputs. A positive class (data.positive_label) is the one whose F1 picks the best epoch and
whose probability a threshold applies to, with two classes; without one, macro F1 picks and
the most probable class is the label.

Multi-label classes (data.label_format: multi, spamgpt.tasks.classification.MultiLabel) are
independent labels; in a split file a row's labels are a JSON list.
"""

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from spamgpt.errors import ParamsError, SpamGPTError


@dataclass(frozen=True)
class Classes:
    names: tuple[str, ...]
    positive: str | None = None
    # data.label_format: single, multi (independent labels, a JSON list a row), or number
    # (regression: one output, named after data.label_column); what task_for decides by
    label_format: str = "single"

    def __post_init__(self) -> None:
        if self.label_format not in _TARGETS:  # a caller's mistake: params checks the user's
            allowed = ", ".join(_TARGETS)
            raise ValueError(f"label_format {self.label_format!r}; allowed: {allowed}")
        if self.positive is not None and self.positive not in self.names:
            raise ParamsError(
                f"data.positive_label: {self.positive!r} is not a class of the data; "
                f"allowed: one of {', '.join(self.names)}, or null"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def positive_index(self) -> int | None:
        return None if self.positive is None else self.names.index(self.positive)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def targets(self, values: Iterable[str]) -> np.ndarray:
        """The training targets of a split file's label column: class indices (N,), or for
        multi-label (N, labels) float32 indicators of each row's JSON list of labels; numbers,
        (N,) float32."""
        return _TARGETS[self.label_format](self, values)

    def named(self, indices: Iterable[int]) -> list[str]:
        return [self.names[i] for i in indices]

    def metric_name(self, name: str) -> str:
        """The class's name as MLflow accepts it in a metric name (letters, digits, _ - .)."""
        return re.sub(r"[^\w.-]", "_", name, flags=re.ASCII)

    def to_dict(self) -> dict:
        kind = self.label_format
        given = {} if kind == "single" else {"label_format": kind}
        return {"labels": list(self.names), "positive_label": self.positive, **given}

    @classmethod
    def from_dict(cls, d: dict) -> "Classes":
        """The classes as to_dict wrote them (metrics/data.json, classifier.json)."""
        return cls(tuple(d["labels"]), d.get("positive_label"), d.get("label_format", "single"))


def _class_indices(classes: Classes, values: Iterable[str]) -> np.ndarray:
    return np.array([classes.index(value) for value in values], dtype=np.int64)


def _indicators(classes: Classes, values: Iterable[str]) -> np.ndarray:
    rows = [json.loads(value) for value in values]
    out = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, [classes.index(name) for name in row]] = 1.0
    return out


def _numbers(classes: Classes, values: Iterable[str]) -> np.ndarray:
    return np.array([float(value) for value in values], dtype=np.float32)


# Classes.targets of each data.label_format
_TARGETS = {"single": _class_indices, "multi": _indicators, "number": _numbers}


def check_threshold_values(threshold: float | dict[str, float] | None, name: str) -> None:
    """A threshold to apply, from a flag or an argument (`name`): each one strictly between 0
    and 1 (evaluate.threshold's own rule: params.check_threshold)."""
    each = threshold.values() if isinstance(threshold, dict) else [threshold]
    if any(t is not None and not 0 < t < 1 for t in each):
        raise SpamGPTError(f"{name} must be between 0 and 1, got {threshold}")


SMS = Classes(("ham", "spam"), "spam")  # the SMS Spam Collection's
NONE = "(none)"  # a multi-label row's empty label set, as shown (and the confusion plot's)


def found(
    labels: Iterable[str],
    requested: list | None,
    positive: str | int | None,
    label_format: str = "single",
) -> Classes:
    """The classes of a dataset (data.label_format single or multi): `requested`
    (data.labels) in its order, or the sorted set of `labels` found (numerically where every
    one is an integer); multi-label, `labels` are the rows' JSON lists."""
    if requested is not None:
        names = tuple(str(label) for label in requested)
    else:
        distinct = set(labels)
        if label_format == "multi":
            distinct = set().union(*(json.loads(row) for row in distinct))
        numeric = all(re.fullmatch(r"-?\d+", name) for name in distinct)
        names = tuple(sorted(distinct, key=int if numeric else None))
    return Classes(names, None if positive is None else str(positive), label_format)
