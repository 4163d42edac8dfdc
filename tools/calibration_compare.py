"""Calibration methods side by side on a two-class project's own validation and test logits
(docs/calibration.md's comparison): run in the project after `dvc repro`.

    python tools/calibration_compare.py [--reps N] [--seed S]

Each method is fitted on validation by log loss: none, evaluate's temperature and platt
(spamgpt.tasks.calibration), and two that no linear head can hold, isotonic regression on the margin
and beta calibration (Kull et al., 2017: a logistic regression on log p and -log(1 - p)). For
each it prints how many test decisions at 0.5 it moves, the validation and test ECE (evaluate's
15 equal-width bins on the top class) beside the ECE perfectly calibrated probabilities would
show (calibration.ece_floor), the 90% interval of the test ECE's change from uncalibrated over
--reps paired bootstrap resamples of the test messages, and the test Brier score and log loss.
The logits are evaluate's: the same cached trunk, model, device and precision (params.yaml).
"""

import argparse

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from spamgpt import contracts, params, paths, runtime
from spamgpt.model import classifier
from spamgpt.model.trunk import Split
from spamgpt.tasks import calibration

EPS = 1e-12  # keeps a probability of 0 or 1 (isotonic's) out of log's domain errors


def fitted_methods(val_margin: np.ndarray, val_labels: np.ndarray) -> dict:
    """{name: function from margins (logit of class 1 - logit of class 0) to p(class 1)},
    each fitted on the validation margins and labels."""
    pair = np.stack([np.zeros_like(val_margin), val_margin], axis=1)
    (t,) = calibration.fit_temperature(pair, val_labels)
    (tp,), shift = calibration.fit_platt(pair, val_labels)
    isotonic = IsotonicRegression(out_of_bounds="clip").fit(val_margin, val_labels)
    beta = LogisticRegression(C=np.inf, max_iter=10000).fit(_beta_features(val_margin), val_labels)
    return {
        "none": _sigmoid,
        f"temperature (T {t:.3f})": lambda m: _sigmoid(m / t),
        f"platt (T {tp:.3f}, c {shift[1]:+.3f})": lambda m: _sigmoid(m / tp + shift[1]),
        "isotonic": isotonic.predict,
        "beta": lambda m: beta.predict_proba(_beta_features(m))[:, 1],
    }


def _sigmoid(m: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -m))


def _beta_features(m: np.ndarray) -> np.ndarray:
    return np.stack([-np.logaddexp(0.0, -m), np.logaddexp(0.0, m)], axis=1)  # log p, -log(1-p)


def figures(p: np.ndarray, labels: np.ndarray) -> dict:
    """ECE (top class, as evaluate), its floor, Brier score and log loss of p(class 1)."""
    confidence = np.maximum(p, 1 - p)
    right = (p > 0.5) == (labels == 1)
    p = np.clip(p, EPS, 1 - EPS)
    return {
        "ece": calibration.expected_calibration_error(confidence, right),
        "floor": calibration.ece_floor(confidence),
        "brier": float(np.mean((p - labels) ** 2)),
        "log_loss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))),
    }


def compare(margins: dict, labels: dict, reps: int, seed: int) -> list[dict]:
    """One row per method: its test decisions moved at 0.5, val and test figures, and the 90%
    interval of test ECE minus the uncalibrated test ECE over paired bootstrap resamples."""
    methods = fitted_methods(margins["val"], labels["val"])
    resamples = np.random.default_rng(seed).integers(
        0, len(labels["test"]), (reps, len(labels["test"]))
    )
    raw = _sigmoid(margins["test"])
    rows = []
    for name, method in methods.items():
        p = method(margins["test"])
        change = [
            figures(p[i], labels["test"][i])["ece"] - figures(raw[i], labels["test"][i])["ece"]
            for i in resamples
        ]
        rows.append({
            "method": name,
            "moved": int(((p > 0.5) != (raw > 0.5)).sum()),
            "val": figures(method(margins["val"]), labels["val"]),
            "test": figures(p, labels["test"]),
            "change": tuple(np.percentile(change, [5, 95])),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = params.load().train
    compute = runtime.setup(train.device, train.precision)
    model, meta = classifier.load(paths.FINETUNED_DIR)  # uncalibrated: no temperature given
    if len(meta["labels"]) != 2 or classifier.classes_of(meta).label_format == "multi":
        raise SystemExit("calibration_compare: two classes only")
    margins, labels = {}, {}
    for s in ("val", "test"):
        split = Split.read(s, contracts.read_frozen_blocks())
        logits = classifier.class_logits(model.to(compute.device), split.inputs, compute)
        margins[s] = (logits[:, 1].double() - logits[:, 0].double()).numpy()
        labels[s] = split.labels.numpy()
    print(f"val {len(labels['val'])} messages, test {len(labels['test'])}; {args.reps} resamples")
    for row in compare(margins, labels, args.reps, args.seed):
        v, t, (lo, hi) = row["val"], row["test"], row["change"]
        print(
            f"{row['method']:32} moved {row['moved']:4} | val ECE {v['ece']:.4f} (floor "
            f"{v['floor']:.4f}) | test ECE {t['ece']:.4f} (floor {t['floor']:.4f}), change 90% "
            f"[{lo:+.4f}, {hi:+.4f}] | test Brier {t['brier']:.4f}, log loss {t['log_loss']:.4f}"
        )


if __name__ == "__main__":
    main()
