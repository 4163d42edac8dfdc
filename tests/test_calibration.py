"""Temperature scaling and the calibration figures: the fit recovers a known temperature, the
figures are scikit-learn's and the hand-computed ones, and the temperature folded into the
head gives the probabilities of divided logits."""

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

from spamgpt import calibration, classifier, results
from spamgpt.errors import SpamGPTError
from spamgpt.labels import Classes
from spamgpt.model import GPT2, GPT2Classifier, GPTConfig


def calibrated_source(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from them: softmax(logits) is each label's true probability."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, classes))
    p = calibration.probabilities(z, 1.0, multi_label=False)
    labels = (rng.random(n)[:, None] > p.cumsum(axis=1)).sum(axis=1)
    return z, labels


@pytest.mark.parametrize("classes", [2, 4])
def test_fit_recovers_a_known_temperature(classes: int) -> None:
    z, labels = calibrated_source(20000, classes, seed=classes)
    (t,) = calibration.fit_temperature(z * 3, labels, multi_label=False)
    assert t == pytest.approx(3, rel=0.05)
    (t,) = calibration.fit_temperature(z, labels, multi_label=False)
    assert t == pytest.approx(1, rel=0.05)  # a calibrated source keeps T = 1


def test_fit_is_the_log_loss_optimum() -> None:
    # the fitted T beats every T of a fine grid on the loss it minimises (to float rounding)
    z, labels = calibrated_source(2000, 3, seed=7)
    (t,) = calibration.fit_temperature(z / 2, labels, multi_label=False)
    loss = {
        u: calibration.scores(labels, z / 2, u, False)["log_loss"] for u in (t, t * 0.98, t * 1.02)
    }
    assert loss[t] < loss[t * 0.98] and loss[t] < loss[t * 1.02]
    assert t == pytest.approx(0.5, rel=0.1)


def test_multi_label_fits_one_temperature_per_label() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=(20000, 3))
    y = (rng.random(z.shape) < calibration.probabilities(z, 1.0, multi_label=True)).astype(float)
    y[:, 2] = 0  # a label never present: nothing to fit, T stays 1
    fitted = calibration.fit_temperature(z * np.array([3.0, 0.5, 2.0]), y, multi_label=True)
    assert fitted[:2] == pytest.approx([3.0, 0.5], rel=0.05)
    assert fitted[2] == 1.0


def test_a_split_separated_perfectly_or_all_wrong_keeps_temperature_1() -> None:
    # the log loss's optimum is T -> 0 (or infinity): every probability would round to 0 or 1
    z = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert calibration.fit_temperature(z, np.array([1, 0]), False)[0] == 1.0
    assert calibration.fit_temperature(z, np.array([0, 1]), False)[0] == 1.0
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    separated = np.array([[2.0, -1.0], [-2.0, 1.0], [0.5, -0.3]])  # label 1: one wrong
    fitted = calibration.fit_temperature(separated, y, multi_label=True)
    assert fitted[0] == 1.0 and fitted[1] != 1.0


def test_scores_are_scikit_learns() -> None:
    z, labels = calibrated_source(500, 2, seed=3)
    probs = calibration.probabilities(z, 1.7, multi_label=False)
    found = calibration.scores(labels, z, 1.7, multi_label=False)
    assert found["brier"] == pytest.approx(brier_score_loss(labels, probs[:, 1]), abs=1e-12)
    assert found["log_loss"] == pytest.approx(log_loss(labels, probs), abs=1e-12)
    z3, labels3 = calibrated_source(500, 3, seed=4)
    probs3 = calibration.probabilities(z3, 0.8, multi_label=False)
    found3 = calibration.scores(labels3, z3, 0.8, multi_label=False)
    assert found3["brier"] == pytest.approx(brier_score_loss(labels3, probs3), abs=1e-12)
    assert found3["log_loss"] == pytest.approx(log_loss(labels3, probs3), abs=1e-12)


def test_multi_label_scores_pool_every_pair() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(size=(300, 2))
    y = (rng.random(z.shape) < 0.4).astype(float)
    found = calibration.scores(y, z, np.array([1.0, 2.0]), True, ["a", "b"])
    p = calibration.probabilities(z, np.array([1.0, 2.0]), multi_label=True)
    assert found["brier"] == pytest.approx(brier_score_loss(y.ravel(), p.ravel()), abs=1e-12)
    assert found["log_loss"] == pytest.approx(log_loss(y.ravel(), p.ravel()), abs=1e-12)
    assert found["per_label"]["b"]["log_loss"] == pytest.approx(log_loss(y[:, 1], p[:, 1]))
    assert found["ece"] == pytest.approx(calibration.expected_calibration_error(p, y))


def test_ece_by_hand() -> None:
    # confidences 0.95, 0.95 (bin 15: one right), 0.6, 0.62 (bin 10: both right), 0.1 (bin 2:
    # right): |0.5 - 0.95| * 2/5 + |1 - 0.61| * 2/5 + |0 - 0.1| * 1/5, outcome 0 for the last
    confidence = np.array([0.95, 0.95, 0.6, 0.62, 0.1])
    outcome = np.array([1, 0, 1, 1, 0])
    expected = 0.45 * 2 / 5 + 0.39 * 2 / 5 + 0.1 / 5
    assert calibration.expected_calibration_error(confidence, outcome) == pytest.approx(expected)
    # a bin's edge belongs to the bin below: 1/15 and 2/15 fall in bins 1 and 2, not together
    edges = np.array([1 / 15, 2 / 15])
    assert calibration.expected_calibration_error(edges, np.array([0, 1])) == pytest.approx(
        (1 / 15 + (1 - 2 / 15)) / 2
    )


def test_single_label_ece_reads_the_top_class() -> None:
    z = np.log(np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]]))
    labels = np.array([0, 0, 1])  # right at 0.9, wrong at 0.7, right at 0.8
    expected = (0.1 + 0.7 + 0.2) / 3  # each in a bin of its own
    assert calibration.scores(labels, z, 1.0, False)["ece"] == pytest.approx(expected)


def test_reliability_frame_bins() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.22, 0.78], [0.25, 0.75]])
    labels = np.array([0, 0, 1, 1])
    frame = calibration.reliability_frame(labels, {"given": probs}, multi_label=False)
    given = frame[frame["class"] == "given"]
    # bins (10/15, 11/15]: 0.7, wrong; (11/15, 12/15]: 0.78 and 0.75, right; (13/15, 14/15]: 0.9
    assert given["count"].tolist() == [1, 2, 1]
    assert given["confidence"].tolist() == pytest.approx([0.7, 0.765, 0.9])
    assert given["accuracy"].tolist() == pytest.approx([0.0, 1.0, 1.0])
    assert frame[frame["class"] == "perfect"]["accuracy"].tolist() == [0.0, 1.0]


def tiny_classifier(n_classes: int, multi_label: bool) -> GPT2Classifier:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, n_ctx=16, n_embd=8, n_layer=1, n_head=2)
    label_format = "multi" if multi_label else "single"
    model = GPT2Classifier(GPT2.init_random(config), n_classes, "last", label_format)
    torch.nn.init.normal_(model.head.weight)  # logits of a few units, not GPT-2's 0.02
    torch.nn.init.normal_(model.head.bias)
    return model.eval()


@pytest.mark.parametrize(
    ("names", "multi_label", "temperature"),
    [(("ham", "spam"), False, 2.7), (("a", "b", "c"), True, {"a": 0.4, "b": 3.0, "c": 1.0})],
)
def test_folding_equals_dividing_the_logits(names, multi_label, temperature) -> None:
    model = tiny_classifier(len(names), multi_label)
    ids = torch.randint(0, 50, (5, 7))
    lengths = torch.tensor([7, 3, 5, 1, 6])
    with torch.no_grad():
        raw = model(ids, lengths).double()
        classifier.fold_temperature(model, temperature, Classes(names, multi_label=multi_label))
        folded = model(ids, lengths)
    t = [temperature[n] for n in names] if isinstance(temperature, dict) else [temperature]
    divided = calibration.probabilities(raw.numpy(), np.array(t), multi_label)
    activation = torch.sigmoid if multi_label else lambda x: torch.softmax(x, dim=-1)
    assert activation(folded).numpy() == pytest.approx(divided, abs=1e-6)


def test_temperatures_of_other_labels_are_refused_in_one_line() -> None:
    model = tiny_classifier(2, multi_label=True)
    with pytest.raises(SpamGPTError, match=r"labels a, c, the model has a, b: evaluate another"):
        classifier.fold_temperature(model, {"a": 2.0, "c": 1.0}, Classes(("a", "b"), None, True))


def test_calibrate_none_is_todays_probabilities_and_temperature_keeps_decisions() -> None:
    sms = Classes(("ham", "spam"), positive="spam")
    z, labels = calibrated_source(400, 2, seed=9)
    logits = {s: (z * 4).astype(np.float32) for s in ("val", "test")}
    labels = {s: labels for s in ("val", "test")}
    raw, none = results.calibrate("none", sms, labels, logits)
    today = torch.softmax(torch.from_numpy(logits["test"]), dim=-1).numpy()
    assert np.array_equal(raw["test"], today)
    assert none.temperature is None and "calibrated" not in none.scores["test"]
    calibrated, found = results.calibrate("temperature", sms, labels, logits)
    assert found.temperature == pytest.approx(4, rel=0.2)
    assert np.array_equal(calibrated["test"].argmax(axis=1), today.argmax(axis=1))
    before, after = found.scores["test"]["uncalibrated"], found.scores["test"]["calibrated"]
    assert after["log_loss"] < before["log_loss"] and after["ece"] < before["ece"]
    assert found.summary() == {
        "method": "temperature",
        "temperature": found.temperature,
        "test": {
            "ece": after["ece"], "log_loss": after["log_loss"], "ece_uncalibrated": before["ece"]
        },
    }  # fmt: skip


def test_reliability_figure_draws_each_curve_and_the_diagonal() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.22, 0.78]])
    curves = {"uncalibrated": probs, "calibrated": np.sqrt(probs) / np.sqrt(probs).sum(1)[:, None]}
    frame = calibration.reliability_frame(np.array([0, 0, 1]), curves, multi_label=False)
    (axes,) = calibration.reliability_figure(frame, "test reliability").axes
    drawn = {line.get_label(): line.get_xydata().ravel().tolist() for line in axes.get_lines()}
    assert drawn["perfect"] == [0.0, 0.0, 1.0, 1.0]
    assert drawn["uncalibrated"] == pytest.approx([0.7, 0.0, 0.78, 1.0, 0.9, 1.0])
    assert set(drawn) == {"perfect", "uncalibrated", "calibrated"}
