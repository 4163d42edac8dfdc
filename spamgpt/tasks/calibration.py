"""Temperature scaling (evaluate.calibration): one temperature T, fitted on the validation split
by log loss, divides the logits (multi-label: one T per label); Platt scaling, a temperature and
a shift c per class (multi-label: per label) fitted together, gives softmax(logits / T + c);
and the figures that say how far probabilities are from frequencies: expected calibration
error, Brier score, log loss.

T > 0 keeps each logit's sign and every ordering of logits, so decisions at 0.5 (two classes,
or each label), the most probable class and every ranking metric (ROC and PR AUC) are those
of the uncalibrated model; only the probabilities move. Each label's log loss is convex in
1/T, so the fit is a bisection on the sign of its derivative, exact to float64. A shift moves
the decision boundary (two classes: p = sigmoid(margin / T + c) is 0.5 where margin = -cT, not
0): it corrects a bias a temperature cannot (a model trained with class weights), and changes
decisions at 0.5. Its log loss is convex in (1/T, c), so its fit is Newton's method.

Each function is of one shape, and the task (spamgpt.tasks.classification) calls its own:
single-label class indices and a softmax (fit_temperature, fit_platt, probabilities, scores,
top_class), or multi-label 0/1 targets and a sigmoid per label (fit_label_temperatures,
fit_label_platt, label_probabilities, label_scores, each_label).

The figures are numpy, with scikit-learn's definitions (tests/test_calibration.py checks them
against brier_score_loss and log_loss):
- single-label: ECE on the top class's probability (confidence) against whether that class is
  the true one (beside it ece_floor, what perfectly calibrated confidences would show); Brier
  score the mean over messages of sum_k (p_k - y_k)^2, halved for two classes (the positive
  class's (p - y)^2, as scikit-learn's binary form); log loss the mean -log p(true class).
- multi-label: every (message, label) pair as a binary prediction of its probability: ECE on
  the label's probability against its presence, Brier (p - y)^2, log loss the binary
  cross-entropy; pooled over all pairs, and per label."""

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BINS = 15  # equal-width confidence bins of the expected calibration error
# The temperatures a fit searches. A split the model separates perfectly drives the log loss's
# optimum to T -> 0 (and one it gets all wrong to T -> infinity): such a T would round every
# float32 probability to 0 or 1, tying messages a ranking tells apart, so T stays 1 there.
T_RANGE = (0.01, 100.0)
BISECTIONS = 100  # halvings of log(1/T)'s range: far below float64's resolution of T
NEWTON_STEPS = 100  # Platt's fit: each step squares the error near the optimum; ~10 suffice


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The temperature minimising the log loss of softmax(logits / T) for class indices
    `labels` (N,), shape (1,): 1 where the optimum is outside T_RANGE (the split separated
    perfectly, or all wrong)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    return np.array([_bisect(lambda beta: _softmax_slope(z, y, beta))])


def fit_label_temperatures(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each label's temperature minimising the log loss of sigmoid(logits[:, j] / T_j) for
    0/1 targets (N, labels): shape (labels,). T = 1 where the optimum is outside T_RANGE and
    for a label all present or all absent (its log loss only falls as T does): there is
    nothing to fit."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets)
    out = np.ones(z.shape[1])
    for j in range(z.shape[1]):
        yj = y[:, j] > 0.5
        if yj.all() or not yj.any():
            continue
        out[j] = _bisect(lambda beta, zj=z[:, j], yj=yj: _sigmoid_slope(zj, yj, beta))
    return out


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Platt scaling: the temperature T and shifts c minimising the log loss of
    softmax(logits / T + c) for class indices `labels` (N,), c of the first class 0: T of
    shape (1,), c (classes,). T = 1, c = 0 where there is nothing to fit: the optimum is not
    finite (a split the shifted logits separate perfectly, a class with no message) or its T
    is outside T_RANGE."""
    z = np.asarray(logits, dtype=np.float64)
    found = _platt_newton(z, np.asarray(labels))
    return (np.ones(1), np.zeros(z.shape[1])) if found is None else found


def fit_label_platt(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Platt scaling of each label: T_j and c_j minimising the log loss of
    sigmoid(logits[:, j] / T_j + c_j) for 0/1 targets (N, labels): both (labels,). T = 1,
    c = 0 where there is nothing to fit (as fit_platt), and for a label all present or all
    absent."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets)
    temperature, shift = np.ones(z.shape[1]), np.zeros(z.shape[1])
    for j in range(z.shape[1]):
        yj = y[:, j] > 0.5
        if yj.all() or not yj.any():
            continue
        # sigmoid(u) is the softmax of (0, u): the two-class fit, the first class's logit 0
        found = _platt_newton(np.stack([np.zeros(len(z)), z[:, j]], axis=1), yj.astype(int))
        if found is not None:
            temperature[j], shift[j] = found[0][0], found[1][1]
    return temperature, shift


def _platt_newton(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(T (1,), c (classes,)) minimising the mean of logsumexp(u) - u_y for u = beta z + c
    (c_0 = 0, T = 1/beta), by Newton's method with a halving line search from beta 1, c 0;
    None where a class has no message (its c would fall without end) or the fit does not
    converge to a T in T_RANGE."""
    n, k = z.shape
    if len(np.unique(y)) < k:
        return None
    one_hot = np.eye(k)[y]

    def logits(theta: np.ndarray) -> np.ndarray:
        return theta[0] * z + np.concatenate([[0.0], theta[1:]])

    def loss(theta: np.ndarray) -> float:
        u = logits(theta)
        return float(np.mean(np.logaddexp.reduce(u, axis=1) - u[np.arange(n), y]))

    theta = np.zeros(k)
    theta[0] = 1.0
    for _ in range(NEWTON_STEPS):
        p = _softmax(logits(theta))
        # theta = (beta, c_1, ..., c_{k-1}); d u_i / d beta = z_i, d u_i / d c_j = [i = j]
        expected_z = (p * z).sum(axis=1)
        gradient = np.concatenate([[np.mean(expected_z - z[np.arange(n), y])],
                                   (p - one_hot)[:, 1:].mean(axis=0)])  # fmt: skip
        hessian = np.empty((k, k))
        hessian[0, 0] = np.mean((p * z * z).sum(axis=1) - expected_z**2)
        hessian[0, 1:] = hessian[1:, 0] = (p * (z - expected_z[:, None]))[:, 1:].mean(axis=0)
        hessian[1:, 1:] = np.diag(p[:, 1:].mean(axis=0)) - p[:, 1:].T @ p[:, 1:] / n
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:  # a flat direction: logits that do not vary
            return None
        decrement = float(gradient @ step)  # twice the loss's fall a full step promises
        if not np.isfinite(decrement) or decrement < 1e-24:
            break
        now, size = loss(theta), 1.0
        while loss(theta - size * step) > now - size * decrement / 4 and size > 1e-12:
            size /= 2
        theta = theta - size * step
    else:  # no convergence
        return None
    # Where the shifted logits separate the split, the loss falls without end along theta and
    # the steps stop only as it underflows; at a finite optimum, twice theta is worse.
    if (
        loss(2 * theta) <= loss(theta)
        or theta[0] <= 0
        or not T_RANGE[0] <= 1 / theta[0] <= T_RANGE[1]
    ):
        return None  # T <= 0 would reverse the ranking; beyond T_RANGE, as fit_temperature
    return np.array([1 / theta[0]]), np.concatenate([[0.0], theta[1:]])


def _softmax_slope(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """d/d(beta) of the mean of logsumexp(beta z) - beta z_y: E_p[z] - z_y."""
    p = _softmax(beta * z)
    return float(np.mean((p * z).sum(axis=1) - z[np.arange(len(z)), y]))


def _sigmoid_slope(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """d/d(beta) of the mean binary cross-entropy of sigmoid(beta z): (sigmoid - y) z."""
    return float(np.mean((_sigmoid(beta * z) - y) * z))


def _bisect(slope) -> float:
    """T = 1/beta at the root of the increasing `slope` (a convex loss's derivative in beta);
    1 where the root is outside T_RANGE."""
    lo, hi = np.log(1 / T_RANGE[1]), np.log(1 / T_RANGE[0])  # log beta
    if slope(np.exp(lo)) >= 0 or slope(np.exp(hi)) <= 0:
        return 1.0
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(np.exp(mid)) < 0 else (lo, mid)
    return float(1 / np.exp((lo + hi) / 2))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def probabilities(
    logits: np.ndarray, temperature: np.ndarray, shift: np.ndarray | None = None
) -> np.ndarray:
    """float64 softmax of logits / temperature + shift (None: 0)."""
    return _softmax(_scaled(logits, temperature, shift))


def label_probabilities(
    logits: np.ndarray, temperature: np.ndarray, shift: np.ndarray | None = None
) -> np.ndarray:
    """float64 sigmoid of each label's logit / temperature + shift (None: 0)."""
    return _sigmoid(_scaled(logits, temperature, shift))


def _scaled(logits: np.ndarray, temperature: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)
    return z if shift is None else z + np.asarray(shift, dtype=np.float64)


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray) -> float:
    """Sum over BINS equal-width bins of confidence ((0, 1/15], ..., (14/15, 1]; 0 in the
    first) of the bin's share of predictions times |mean outcome - mean confidence|."""
    confidence, outcome = np.asarray(confidence, float).ravel(), np.asarray(outcome, float).ravel()
    bins = _bin_of(confidence)
    gap = np.bincount(bins, outcome - confidence, minlength=BINS)
    return float(np.abs(gap).sum() / max(len(confidence), 1))


def ece_floor(confidence: np.ndarray) -> float:
    """The ECE that perfectly calibrated predictions with these confidences would show on
    average, from the finite count alone: an outcome drawn as Bernoulli(confidence) makes each
    bin's sum of outcome - confidence about normal, of mean 0 and variance sum c (1 - c), whose
    mean absolute value is sqrt(2 / pi) times its deviation. An ECE near it is as calibrated
    as this many predictions can show (docs/calibration.md: within 0.0005 of a simulation's
    mean on the SMS runs)."""
    confidence = np.asarray(confidence, float).ravel()
    variance = np.bincount(_bin_of(confidence), confidence * (1 - confidence), minlength=BINS)
    return float(np.sqrt(2 / np.pi * variance).sum() / max(len(confidence), 1))


def _bin_of(confidence: np.ndarray) -> np.ndarray:
    return np.clip(np.ceil(confidence * BINS).astype(int) - 1, 0, BINS - 1)


def top_class(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ECE and the reliability diagram compare of class probabilities (N, classes) and
    class indices: the top class's probability and whether it is the true one."""
    probs = np.asarray(probs)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)


def each_label(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ECE and the reliability diagram compare of label probabilities and 0/1 targets
    (N, labels): each label's probability and its presence."""
    return np.asarray(probs), (np.asarray(targets) > 0.5).astype(float)


def scores(
    labels: np.ndarray,
    logits: np.ndarray,
    temperature: np.ndarray,
    shift: np.ndarray | None = None,
) -> dict:
    """{"ece", "ece_floor", "brier", "log_loss"} of softmax(logits / temperature + shift)
    against class indices `labels`."""
    z = _scaled(logits, temperature, shift)
    probs = _softmax(z)
    labels = np.asarray(labels)
    one_hot = np.eye(z.shape[1])[labels]
    brier = ((probs - one_hot) ** 2).sum(axis=1).mean() / (2 if z.shape[1] == 2 else 1)
    log_softmax = z - z.max(axis=1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    return {
        "ece": expected_calibration_error(*top_class(probs, labels)),
        "ece_floor": ece_floor(probs.max(axis=1)),
        "brier": float(brier),
        "log_loss": float(-log_softmax[np.arange(len(z)), labels].mean()),
    }


def label_scores(
    targets: np.ndarray,
    logits: np.ndarray,
    temperature: np.ndarray,
    names: list[str],
    shift: np.ndarray | None = None,
) -> dict:
    """{"ece", "ece_floor", "brier", "log_loss"} of each label's sigmoid(logit / temperature
    + shift) against 0/1 `targets` (N, labels), pooled over every (message, label) pair, and
    "per_label": {name: those four} for the label `names`."""
    z = _scaled(logits, temperature, shift)
    probs, y = each_label(_sigmoid(z), targets)
    brier = (probs - y) ** 2
    log_loss = np.logaddexp(0.0, z) - y * z  # binary cross-entropy with logits
    per_label = {
        name: {
            "ece": expected_calibration_error(probs[:, j], y[:, j]),
            "ece_floor": ece_floor(probs[:, j]),
            "brier": float(brier[:, j].mean()),
            "log_loss": float(log_loss[:, j].mean()),
        }
        for j, name in enumerate(names)
    }
    pooled = {
        "ece": expected_calibration_error(probs, y),
        "ece_floor": ece_floor(probs),
        "brier": float(brier.mean()),
        "log_loss": float(log_loss.mean()),
    }
    return {**pooled, "per_label": per_label}


def reliability_frame(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """The reliability diagram's plot data: for each named (confidence, outcome) pair (of
    top_class, or each_label's pooled over labels), each non-empty bin's mean confidence and
    observed frequency, and count; columns class (the curve's name), point, confidence,
    accuracy, count; and the diagonal of perfect calibration as the curve "perfect"."""
    frames = [
        pd.DataFrame(
            {"class": "perfect", "point": [0, 1], "confidence": [0.0, 1.0], "accuracy": [0.0, 1.0]}
        ).assign(count=0)
    ]
    for name, (confidence, outcome) in curves.items():
        confidence, outcome = np.ravel(confidence), np.ravel(outcome)
        bins = _bin_of(confidence)
        count = np.bincount(bins, minlength=BINS)
        used = count > 0
        frames.append(
            pd.DataFrame(
                {
                    "class": name,
                    "point": np.arange(used.sum()),
                    "confidence": np.bincount(bins, confidence, BINS)[used] / count[used],
                    "accuracy": np.bincount(bins, outcome, BINS)[used] / count[used],
                    "count": count[used],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def reliability_figure(frame: pd.DataFrame, title: str) -> "Figure":
    """The reliability diagram of reliability_frame's data: each curve's bins as points (mean
    confidence, observed frequency), the perfect diagonal dashed."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for name, part in frame.groupby("class", sort=False):
        style = {"linestyle": "--", "color": "grey"} if name == "perfect" else {"marker": "o"}
        ax.plot(part["confidence"], part["accuracy"], label=name, **style)
    ax.set(xlabel="confidence", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
