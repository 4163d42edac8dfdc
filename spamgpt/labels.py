"""The classes and how probabilities become labels: the one decision rule that validation,
evaluate, the baseline, `spamgpt classify` and the MLflow model all use."""

import numpy as np

LABELS = ("ham", "spam")  # class index = position: ham 0, spam 1
POSITIVE = LABELS.index("spam")  # the class a threshold applies to


def predicted_classes(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class index of each row of (N, classes) probabilities: with a threshold, the positive
    class where its probability is >= threshold and the other class elsewhere; without one,
    the most probable class."""
    probabilities = np.asarray(probabilities)
    if threshold is None:
        return probabilities.argmax(axis=1)
    negative = 1 - POSITIVE
    return np.where(probabilities[:, POSITIVE] >= threshold, POSITIVE, negative)


def names(classes: np.ndarray) -> list[str]:
    """Class indices as label names."""
    return [LABELS[i] for i in classes]
