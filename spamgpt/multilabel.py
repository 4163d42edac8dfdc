"""Multi-label classification (data.label_format: multi): independent labels, a sigmoid each,
trained with binary cross-entropy, answered as label sets (their metrics and thresholds:
spamgpt.multilabel_metrics).

A message carries every label whose probability reaches that label's threshold, maybe none
(labels.Classes.predicted). Targets are (N, labels) 0/1 floats. The loss is the mean over
every (message, label) decision of F.binary_cross_entropy_with_logits, each label's positives
weighted by its pos_weight (train.class_weights: balanced is negatives over positives).
"""

import json

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from spamgpt.labels import Classes


def pos_weight(
    targets: torch.Tensor, setting: str | dict, names: tuple[str, ...]
) -> torch.Tensor | None:
    """Each label's weight of its positives in the loss, for train.class_weights: balanced is
    negatives / positives (of `targets`, the training split's); a mapping gives each label its
    own; none: None."""
    if setting == "none":
        return None
    if isinstance(setting, dict):
        weights = {str(name): float(weight) for name, weight in setting.items()}
        return torch.tensor([weights[name] for name in names])
    positives = targets.sum(dim=0)
    return (len(targets) - positives) / positives.clamp(min=1)


def loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """The summed binary cross-entropy of (B, labels) logits against 0/1 targets."""
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights, reduction="sum")


def validation_loss(
    probabilities: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
) -> float:
    """The training loss (its mean per decision) from sigmoid probabilities."""
    tiny = torch.finfo(probabilities.dtype).tiny
    log_p, log_q = probabilities.clamp_min(tiny).log(), (1 - probabilities).clamp_min(tiny).log()
    positive = targets * log_p * (1 if weights is None else weights)
    return float(-(positive + (1 - targets) * log_q).mean())


def answers(
    probabilities: np.ndarray, classes: Classes, threshold: float | dict[str, float] | None
) -> list[dict]:
    """Each message's answer: `labels` (those at or over their thresholds, in the classes'
    order) and every label's probability."""
    probs = np.asarray(probabilities, dtype=float)
    names = classes.names
    return [
        {
            "labels": [n for n, on in zip(names, row_on, strict=True) if on],
            "probabilities": dict(zip(names, row.tolist(), strict=True)),
        }
        for row, row_on in zip(probs, classes.predicted(probs, threshold), strict=True)
    ]


def label_lists(on: np.ndarray, classes: Classes) -> list[str]:
    """Each row's labels of (N, labels) booleans as a JSON list (a split file's label)."""
    names = classes.names
    return [json.dumps([n for n, v in zip(names, row, strict=True) if v]) for row in on]


def prediction_frame(
    probabilities: np.ndarray, classes: Classes, threshold: float | dict[str, float] | None
) -> pd.DataFrame:
    """The answers as a table: `labels` (a JSON list) and `p_<label>` for every label."""
    probs = np.asarray(probabilities, dtype=np.float64)
    frame = pd.DataFrame({"labels": label_lists(classes.predicted(probs, threshold), classes)})
    for i, name in enumerate(classes.names):
        frame[f"p_{name}"] = probs[:, i]
    return frame
