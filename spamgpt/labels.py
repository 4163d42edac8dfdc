"""The classes and how probabilities become labels: the one decision rule that validation,
evaluate, the baseline, `spamgpt classify` and the MLflow model all use.

Class names are strings (an integer label 3 is the class "3"), in the order of the model's
outputs. A positive class (data.positive_label) is the one whose F1 picks the best epoch and
whose probability a threshold applies to, with two classes; without one, macro F1 picks and
the most probable class is the label.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from spamgpt.errors import ParamsError


@dataclass(frozen=True)
class Classes:
    names: tuple[str, ...]
    positive: str | None = None

    def __post_init__(self) -> None:
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

    def predicted(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Class index of each row of (N, classes) probabilities: with a threshold (two
        classes and a positive one), the positive class where its probability is >=
        threshold and the other elsewhere; otherwise the most probable class."""
        probabilities = np.asarray(probabilities)
        if threshold is None or self.positive_index is None or len(self.names) != 2:
            return probabilities.argmax(axis=1)
        positive = self.positive_index
        return np.where(probabilities[:, positive] >= threshold, positive, 1 - positive)

    def named(self, indices: Iterable[int]) -> list[str]:
        return [self.names[i] for i in indices]

    def metric_name(self, name: str) -> str:
        """The class's name as MLflow accepts it in a metric name (letters, digits, _ - .)."""
        return re.sub(r"[^\w.-]", "_", name, flags=re.ASCII)

    def to_dict(self) -> dict:
        return {"labels": list(self.names), "positive_label": self.positive}


SMS = Classes(("ham", "spam"), "spam")  # the SMS Spam Collection's


def found(labels: Iterable[str], requested: list | None, positive: str | int | None) -> Classes:
    """The classes of a dataset: `requested` (data.labels) in its order, or the sorted set of
    `labels` found (numerically where every one is an integer)."""
    if requested is not None:
        names = tuple(str(label) for label in requested)
    else:
        distinct = set(labels)
        numeric = all(re.fullmatch(r"-?\d+", name) for name in distinct)
        names = tuple(sorted(distinct, key=int if numeric else None))
    return Classes(names, None if positive is None else str(positive))
