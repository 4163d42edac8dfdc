"""Temperature and Platt scaling and the calibration figures: the fits recover a known
temperature (and shift), Platt's is scikit-learn's logistic regression on the margin, the
figures are scikit-learn's and the hand-computed ones, and the temperature (and shift) folded
into the head gives the probabilities of divided (and shifted) logits."""

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss

from spamgpt.errors import SpamGPTError
from spamgpt.evaluate import results
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.tasks import calibration


def calibrated_source(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from them: softmax(logits) is each label's true probability."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, classes))
    p = calibration.probabilities(z, 1.0)
    labels = (rng.random(n)[:, None] > p.cumsum(axis=1)).sum(axis=1)
    return z, labels


@pytest.mark.parametrize("classes", [2, 4])
def test_fit_recovers_a_known_temperature(classes: int) -> None:
    z, labels = calibrated_source(20000, classes, seed=classes)
    (t,) = calibration.fit_temperature(z * 3, labels)
    assert t == pytest.approx(3, rel=0.05)
    (t,) = calibration.fit_temperature(z, labels)
    assert t == pytest.approx(1, rel=0.05)  # a calibrated source keeps T = 1


def test_fit_is_the_log_loss_optimum() -> None:
    # the fitted T beats every T of a fine grid on the loss it minimises (to float rounding)
    z, labels = calibrated_source(2000, 3, seed=7)
    (t,) = calibration.fit_temperature(z / 2, labels)
    loss = {u: calibration.scores(labels, z / 2, u)["log_loss"] for u in (t, t * 0.98, t * 1.02)}
    assert loss[t] < loss[t * 0.98] and loss[t] < loss[t * 1.02]
    assert t == pytest.approx(0.5, rel=0.1)


def test_multi_label_fits_one_temperature_per_label() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=(20000, 3))
    y = (rng.random(z.shape) < calibration.label_probabilities(z, 1.0)).astype(float)
    y[:, 2] = 0  # a label never present: nothing to fit, T stays 1
    fitted = calibration.fit_label_temperatures(z * np.array([3.0, 0.5, 2.0]), y)
    assert fitted[:2] == pytest.approx([3.0, 0.5], rel=0.05)
    assert fitted[2] == 1.0


def test_a_split_separated_perfectly_or_all_wrong_keeps_temperature_1() -> None:
    # the log loss's optimum is T -> 0 (or infinity): every probability would round to 0 or 1
    z = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert calibration.fit_temperature(z, np.array([1, 0]))[0] == 1.0
    assert calibration.fit_temperature(z, np.array([0, 1]))[0] == 1.0
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    separated = np.array([[2.0, -1.0], [-2.0, 1.0], [0.5, -0.3]])  # label 1: one wrong
    fitted = calibration.fit_label_temperatures(separated, y)
    assert fitted[0] == 1.0 and fitted[1] != 1.0


def test_platt_on_two_classes_is_logistic_regression_on_the_margin() -> None:
    # sigmoid(margin / T + c): scikit-learn's unpenalised logistic regression of the label on
    # the margin z_1 - z_0 has coefficient 1/T and intercept c
    z, labels = calibrated_source(3000, 2, seed=3)
    biased = z * 2.5 + np.array([0.0, 1.5])  # overconfident, and shifted towards class 1
    (t,), shift = calibration.fit_platt(biased, labels)
    margin = (biased[:, 1] - biased[:, 0])[:, None]
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(margin, labels)
    assert 1 / t == pytest.approx(reference.coef_[0, 0], rel=1e-5)
    assert shift.tolist() == pytest.approx([0.0, reference.intercept_[0]], rel=1e-5)
    assert t == pytest.approx(2.5, rel=0.1) and shift[1] == pytest.approx(-1.5 / 2.5, abs=0.15)


def test_platt_recovers_a_known_shift_per_class_and_per_label() -> None:
    z, labels = calibrated_source(20000, 3, seed=4)
    (t,), shift = calibration.fit_platt(z * 2 - np.array([0.0, 1.0, -2.0]), labels)
    # logits / 2 - (0, 0.5, -1) are the source's: undone by T 2 and c (0, 0.5, -1)
    assert t == pytest.approx(2, rel=0.05)
    assert shift.tolist() == pytest.approx([0.0, 0.5, -1.0], abs=0.08)
    rng = np.random.default_rng(5)
    z = rng.normal(scale=2.0, size=(20000, 3))
    y = (rng.random(z.shape) < calibration.label_probabilities(z, 1.0)).astype(float)
    y[:, 0] = 1  # a label always present: nothing to fit, T 1 and c 0 (and the next fitted)
    t, shift = calibration.fit_label_platt(z * np.array([2.0, 3.0, 0.5]) + 1.0, y)
    assert t.tolist() == pytest.approx([1.0, 3.0, 0.5], rel=0.05)
    assert shift.tolist() == pytest.approx([0.0, -1 / 3, -2.0], abs=0.08)
    assert (t[0], shift[0]) == (1.0, 0.0)


def test_platt_keeps_the_identity_where_its_temperature_is_outside_the_range() -> None:
    z, labels = calibrated_source(4000, 2, seed=15)
    (t,), _ = calibration.fit_platt(z * 60, labels)
    assert t == pytest.approx(60, rel=0.1)  # inside T_RANGE (0.01, 100): fitted
    (t,), shift = calibration.fit_platt(z * 1000, labels)
    assert t == 1.0 and shift.tolist() == [0.0, 0.0]  # its optimum, T ~ 1000, is not


def test_platt_beats_the_temperature_on_a_shifted_source_and_moves_decisions() -> None:
    z, labels = calibrated_source(4000, 2, seed=6)
    shifted = z + np.array([0.0, 2.0])  # what class weights do: every class-1 logit up
    (t,) = calibration.fit_temperature(shifted, labels)
    (tp,), shift = calibration.fit_platt(shifted, labels)
    by_t = calibration.scores(labels, shifted, t)
    by_platt = calibration.scores(labels, shifted, tp, shift=shift)
    assert by_platt["log_loss"] < by_t["log_loss"] and by_platt["ece"] < by_t["ece"] / 2
    decided = calibration.probabilities(shifted, tp, shift).argmax(axis=1)
    assert (decided != shifted.argmax(axis=1)).sum() > 100  # the boundary moved back


def test_platt_on_a_split_the_shifted_logits_separate_keeps_the_identity() -> None:
    # every margin positive, the label 1 exactly where it is above 2: optimum at infinity
    z = np.stack([np.zeros(6), np.array([0.5, 1.0, 1.5, 2.5, 3.0, 4.0])], axis=1)
    (t,), shift = calibration.fit_platt(z, np.array([0, 0, 0, 1, 1, 1]))
    assert t == 1.0 and shift.tolist() == [0.0, 0.0]
    y = np.array([[0.0], [0.0], [0.0], [1.0], [1.0], [1.0]])  # the same, as a label
    assert calibration.fit_label_platt(z[:, 1:], y) == ([1.0], [0.0])
    # a class with no validation message: its shift would fall without end
    z, labels = calibrated_source(500, 3, seed=14)
    (t,), shift = calibration.fit_platt(z[labels < 2], labels[labels < 2])
    assert t == 1.0 and shift.tolist() == [0.0, 0.0, 0.0]
    # the same messages of two classes fit
    (t,), _ = calibration.fit_platt(z[labels < 2][:, :2], labels[labels < 2])
    assert t != 1.0


def test_scores_are_scikit_learns() -> None:
    z, labels = calibrated_source(500, 2, seed=3)
    probs = calibration.probabilities(z, 1.7)
    found = calibration.scores(labels, z, 1.7)
    assert found["brier"] == pytest.approx(brier_score_loss(labels, probs[:, 1]), abs=1e-12)
    assert found["log_loss"] == pytest.approx(log_loss(labels, probs), abs=1e-12)
    z3, labels3 = calibrated_source(500, 3, seed=4)
    probs3 = calibration.probabilities(z3, 0.8)
    found3 = calibration.scores(labels3, z3, 0.8)
    assert found3["brier"] == pytest.approx(brier_score_loss(labels3, probs3), abs=1e-12)
    assert found3["log_loss"] == pytest.approx(log_loss(labels3, probs3), abs=1e-12)


def test_multi_label_scores_pool_every_pair() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(size=(300, 2))
    y = (rng.random(z.shape) < 0.4).astype(float)
    found = calibration.label_scores(y, z, np.array([1.0, 2.0]), ["a", "b"])
    p = calibration.label_probabilities(z, np.array([1.0, 2.0]))
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


def test_ece_floor_by_hand_and_against_a_simulation() -> None:
    # two confidences of 0.9 (one bin) and one of 0.6: sqrt(2/pi) sqrt(sum c (1 - c)) per bin
    by_hand = (np.sqrt(2 / np.pi * 0.18) + np.sqrt(2 / np.pi * 0.24)) / 3
    assert calibration.ece_floor(np.array([0.9, 0.6, 0.9])) == pytest.approx(by_hand)
    # the mean ECE of outcomes drawn from the confidences themselves (perfect calibration)
    rng = np.random.default_rng(11)
    confidence = 1 - rng.beta(0.5, 4.0, size=1000) / 2  # most near 1, as a classifier's
    drawn = [
        calibration.expected_calibration_error(confidence, rng.random(1000) < confidence)
        for _ in range(2000)
    ]
    assert calibration.ece_floor(confidence) == pytest.approx(np.mean(drawn), rel=0.05)
    assert calibration.ece_floor(np.ones(5)) == 0.0  # certain and right: nothing to draw
    assert calibration.ece_floor(np.array([0.8])) == pytest.approx(np.sqrt(2 / np.pi * 0.16))


def test_single_label_ece_reads_the_top_class() -> None:
    z = np.log(np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]]))
    labels = np.array([0, 0, 1])  # right at 0.9, wrong at 0.7, right at 0.8
    expected = (0.1 + 0.7 + 0.2) / 3  # each in a bin of its own
    assert calibration.scores(labels, z, 1.0)["ece"] == pytest.approx(expected)


def test_reliability_frame_bins() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.22, 0.78], [0.25, 0.75]])
    labels = np.array([0, 0, 1, 1])
    frame = calibration.reliability_frame({"given": calibration.top_class(probs, labels)})
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
    ("names", "multi_label", "temperature", "shift"),
    [
        (("ham", "spam"), False, 2.7, None),
        (("a", "b", "c"), True, {"a": 0.4, "b": 3.0, "c": 1.0}, None),
        (("ham", "spam"), False, 1.6, {"spam": -1.4, "ham": 0.0}),  # platt: named, any order
        (("a", "b", "c"), True, {"a": 0.4, "b": 3.0, "c": 1.0}, {"c": 2.0, "a": -0.5, "b": 0.0}),
    ],
)
def test_folding_equals_dividing_the_logits(names, multi_label, temperature, shift) -> None:
    model = tiny_classifier(len(names), multi_label)
    ids = torch.randint(0, 50, (5, 7))
    lengths = torch.tensor([7, 3, 5, 1, 6])
    classes = Classes(names, label_format="multi" if multi_label else "single")
    with torch.no_grad():
        raw = model(ids, lengths).double()
        raw_bias = model.head.bias.double().clone()
        classifier.fold_temperature(model, temperature, classes, shift)
        folded = model(ids, lengths)
    t = [temperature[n] for n in names] if isinstance(temperature, dict) else [temperature]
    c = None if shift is None else np.array([shift[n] for n in names])
    # b / T + c in float64, rounded to float32 once
    exact = raw_bias / torch.tensor(t, dtype=torch.float64) + torch.from_numpy(
        c if c is not None else np.zeros(len(names))
    )
    assert torch.equal(model.head.bias.detach(), exact.float())
    scaled = calibration.label_probabilities if multi_label else calibration.probabilities
    divided = scaled(raw.numpy(), np.array(t), c)
    activation = torch.sigmoid if multi_label else lambda x: torch.softmax(x, dim=-1)
    assert activation(folded).numpy() == pytest.approx(divided, abs=1e-6)


def test_temperatures_of_other_labels_are_refused_in_one_line() -> None:
    model = tiny_classifier(2, multi_label=True)
    with pytest.raises(SpamGPTError, match=r"labels a, c, the model has a, b: evaluate another"):
        classifier.fold_temperature(model, {"a": 2.0, "c": 1.0}, Classes(("a", "b"), None, "multi"))
    with pytest.raises(SpamGPTError, match=r"shifts are of the labels a, c, the model has a, b"):
        classifier.fold_temperature(model, 2.0, Classes(("a", "b")), {"a": 0.0, "c": 1.0})


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
    frame = calibration.reliability_frame(
        {name: calibration.top_class(p, np.array([0, 0, 1])) for name, p in curves.items()}
    )
    (axes,) = calibration.reliability_figure(frame, "test reliability").axes
    drawn = {line.get_label(): line.get_xydata().ravel().tolist() for line in axes.get_lines()}
    assert drawn["perfect"] == [0.0, 0.0, 1.0, 1.0]
    assert drawn["uncalibrated"] == pytest.approx([0.7, 0.0, 0.78, 1.0, 0.9, 1.0])
    assert set(drawn) == {"perfect", "uncalibrated", "calibrated"}


def test_calibrate_platt_gives_the_shifted_probabilities_and_reports_its_shift() -> None:
    sms = Classes(("ham", "spam"), positive="spam")
    z, labels = calibrated_source(600, 2, seed=10)
    logits = {s: (z * 2 + np.array([0.0, 1.5])).astype(np.float32) for s in ("val", "test")}
    labels = {s: labels for s in ("val", "test")}
    calibrated, found = results.calibrate("platt", sms, labels, logits)
    (t,), shift = calibration.fit_platt(logits["val"], labels["val"])
    assert found.temperature == t and found.shift == {"ham": 0.0, "spam": shift[1]}
    expected = calibration.probabilities(logits["test"], t, shift)
    assert calibrated["test"] == pytest.approx(expected, abs=1e-6)  # float32, as the model
    before, after = found.scores["test"]["uncalibrated"], found.scores["test"]["calibrated"]
    assert after == calibration.scores(labels["test"], logits["test"], t, shift=shift)
    assert after["ece"] < before["ece"] / 2
    assert found.report()["shift"] == found.shift and found.report()["method"] == "platt"
    assert found.summary()["shift"] == found.shift
    _, by_t = results.calibrate("temperature", sms, labels, logits)
    assert "shift" not in by_t.report() and "shift" not in by_t.summary()


def test_the_comparison_tool_fits_each_method_on_val_and_scores_test() -> None:
    """tools/calibration_compare.py (docs/calibration.md's comparison), on a shifted source:
    the temperature moves no decision, Platt moves some and beats it, each row's test figures
    are those of its probabilities, and the uncalibrated row changes nothing."""
    spec = importlib.util.spec_from_file_location("compare", REPO / "tools/calibration_compare.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    z, labels = calibrated_source(3000, 2, seed=12)
    margin = z[:, 1] - z[:, 0] + 2.0  # every class-1 margin up: a bias, as class weights give
    margins = {"val": margin[:1500], "test": margin[1500:]}
    split = {"val": labels[:1500], "test": labels[1500:]}
    rows = {row["method"].split()[0]: row for row in tool.compare(margins, split, 50, 0)}
    assert list(rows) == ["none", "temperature", "platt", "isotonic", "beta"]
    assert rows["none"]["moved"] == rows["temperature"]["moved"] == 0
    assert rows["none"]["change"] == (0.0, 0.0) and rows["platt"]["moved"] > 50
    assert rows["platt"]["test"]["ece"] < rows["temperature"]["test"]["ece"] / 2
    p = calibration.probabilities(z[1500:] + np.array([0.0, 2.0]), 1.0)
    assert rows["none"]["test"]["ece"] == pytest.approx(
        calibration.expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == labels[1500:])
    )
    assert rows["none"]["test"]["brier"] == pytest.approx(brier_score_loss(labels[1500:], p[:, 1]))


def test_calibrate_platt_multi_label_fits_each_label_and_keeps_one_with_nothing_to_fit() -> None:
    tags = Classes(("billing", "urgent", "never"), label_format="multi")
    rng = np.random.default_rng(13)
    z = rng.normal(scale=2.0, size=(3000, 3))
    y = (rng.random(z.shape) < calibration.label_probabilities(z, 1.0)).astype(float)
    y[:, 2] = 0  # never present: T 1 and c 0, the raw sigmoid
    logits = {s: (z * 2 + 1.0).astype(np.float32) for s in ("val", "test")}
    labels = {s: y for s in ("val", "test")}
    calibrated, found = results.calibrate("platt", tags, labels, logits)
    t, shift = calibration.fit_label_platt(logits["val"], y)
    assert found.temperature == dict(zip(tags.names, t.tolist(), strict=True))
    assert found.shift == dict(zip(tags.names, shift.tolist(), strict=True))
    assert (found.temperature["never"], found.shift["never"]) == (1.0, 0.0)
    assert found.temperature["billing"] == pytest.approx(2, rel=0.1)
    assert found.shift["billing"] == pytest.approx(-0.5, abs=0.1)
    expected = calibration.label_probabilities(logits["test"], t, shift)
    assert calibrated["test"] == pytest.approx(expected, abs=1e-6)
    after = found.scores["test"]["calibrated"]
    assert after["per_label"]["never"] == found.scores["test"]["uncalibrated"]["per_label"]["never"]
    assert after["ece"] < found.scores["test"]["uncalibrated"]["ece"]


# --- pinned by mutation testing (tools/mutate.py tasks.calibration) ---


def test_scores_by_hand_at_logits_too_large_for_exp() -> None:
    # softmax rows: (s(1), s(-1)) twice, (s(-2), s(2)), s the sigmoid; the top class right,
    # wrong, right; the first row's logits overflow exp unless each row's own max is taken off
    a, b = 1 / (1 + np.exp(-1)), 1 / (1 + np.exp(-2))
    z = np.array([[1000.0, 999.0], [0.0, -1.0], [3.0, 5.0]])
    found = calibration.scores(np.array([0, 1, 1]), z, 1.0)
    # ECE: bin 11 (a, a: one right), bin 14 (b, right); floor: sqrt(2/pi sum c(1 - c)) a bin
    ece = (abs(1 - a - a) + (1 - b)) / 3
    floor = (np.sqrt(2 / np.pi * 2 * a * (1 - a)) + np.sqrt(2 / np.pi * b * (1 - b))) / 3
    brier = ((1 - a) ** 2 + a**2 + (1 - b) ** 2) / 3  # two classes: the positive's (p - y)^2
    log_loss_ = (np.log(1 + np.exp(-1)) + np.log(1 + np.e) + np.log(1 + np.exp(-2))) / 3
    expected = {"ece": ece, "ece_floor": floor, "brier": brier, "log_loss": log_loss_}
    assert found == pytest.approx(expected, rel=1e-12)
    assert list(found) == ["ece", "ece_floor", "brier", "log_loss"]


def test_label_scores_are_scikit_learns_pair_by_pair_with_the_shift() -> None:
    rng = np.random.default_rng(21)
    z = rng.normal(scale=2.0, size=(60, 2))
    y = (rng.random(z.shape) < 0.5).astype(float)
    t, c = np.array([1.5, 0.5]), np.array([1.0, -2.0])
    found = calibration.label_scores(y, z, t, ["a", "b"], c)
    p = calibration.label_probabilities(z, t, c)
    assert p == pytest.approx(1 / (1 + np.exp(-(z / t + c))), rel=1e-12)

    def four(p: np.ndarray, y: np.ndarray) -> dict:
        return {
            "ece": calibration.expected_calibration_error(p, y),
            "ece_floor": calibration.ece_floor(p),
            "brier": brier_score_loss(y.ravel(), p.ravel()),
            "log_loss": log_loss(y.ravel(), p.ravel()),
        }

    per_label = found.pop("per_label")
    assert found == pytest.approx(four(p, y), rel=1e-9)
    assert list(per_label) == ["a", "b"]
    for j, name in enumerate(("a", "b")):
        assert per_label[name] == pytest.approx(four(p[:, j], y[:, j]), rel=1e-9), name
        assert list(per_label[name]) == ["ece", "ece_floor", "brier", "log_loss"]


def test_ece_of_one_prediction_of_confidence_0_and_of_the_top_two_bins() -> None:
    assert calibration.expected_calibration_error(np.array([0.8]), np.array([1])) == (
        pytest.approx(0.2)
    )
    # 0 is in the first bin, with (0, 1/15]: |(0 - 0) + (1 - 0.05)| / 2
    zero = calibration.expected_calibration_error(np.array([0.0, 0.05]), np.array([0, 1]))
    assert zero == pytest.approx(0.475)
    # (13/15, 14/15] and (14/15, 1] are two bins: |1 - 0.9| + |0 - 0.95|, not |1 - 1.85|
    top = calibration.expected_calibration_error(np.array([0.9, 0.95]), np.array([1, 0]))
    assert top == pytest.approx(0.525)
    assert calibration.ece_floor(np.array([0.0, 1.0, 0.9, 0.95])) == pytest.approx(
        (np.sqrt(2 / np.pi * 0.09) + np.sqrt(2 / np.pi * 0.0475)) / 4
    )


def test_temperatures_near_each_end_of_the_range() -> None:
    z, labels = calibrated_source(4000, 2, seed=22)
    (t,) = calibration.fit_temperature(z * 70, labels)
    assert t == pytest.approx(70, rel=0.1)  # inside T_RANGE (0.01, 100)
    (t,) = calibration.fit_temperature(z * 0.007, labels)
    assert t == 1.0  # its optimum, T ~ 0.007, is not
    (t,) = calibration.fit_temperature(z * 150, labels)
    assert t == 1.0


def test_a_label_with_nothing_to_fit_keeps_1_and_the_next_is_fitted() -> None:
    # the first label is on no message, its logits mostly negative: the loss of its sigmoid
    # has a finite optimum in T (the mean logit below 0, one above), which is not fitted
    rng = np.random.default_rng(23)
    z = np.column_stack([np.tile([-3.0, -2.0, -1.0, 0.5], 500), rng.normal(scale=2.0, size=2000)])
    y = np.column_stack([np.zeros(2000), rng.random(2000) < calibration.label_probabilities(
        z[:, 1], 1.0)])  # fmt: skip
    t = calibration.fit_label_temperatures(z * np.array([1.0, 3.0]), y)
    assert t[0] == 1.0 and t[1] == pytest.approx(3.0, rel=0.1)
    t, c = calibration.fit_label_platt(z * np.array([1.0, 3.0]), y)
    assert (t[0], c[0]) == (1.0, 0.0) and t[1] == pytest.approx(3.0, rel=0.1)


def test_reliability_frame_exactly() -> None:
    # top_class of (0.9, 0.1) right and (0.3, 0.7) wrong; each_label of two labels pooled
    top = calibration.top_class(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]))
    assert top[0].tolist() == [0.9, 0.7] and top[1].tolist() == [1.0, 0.0]
    pairs = calibration.each_label(np.array([[0.9, 0.2]]), np.array([[1.0, 0.0]]))
    assert pairs[0].tolist() == [[0.9, 0.2]] and pairs[1].tolist() == [[1.0, 0.0]]
    frame = calibration.reliability_frame({"top": top, "labels": pairs})
    expected = pd.DataFrame(
        {
            "class": ["perfect", "perfect", "top", "top", "labels", "labels"],
            "point": [0, 1, 0, 1, 0, 1],
            "confidence": [0.0, 1.0, 0.7, 0.9, 0.2, 0.9],
            "accuracy": [0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
            "count": [0, 0, 1, 1, 1, 1],
        }
    )
    pd.testing.assert_frame_equal(frame, expected)


def test_reliability_figure_style_axes_and_order() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    curves = {"uncalibrated": calibration.top_class(probs, np.array([0, 1]))}
    curves["calibrated"] = calibration.top_class(probs**2, np.array([0, 1]))
    figure = calibration.reliability_figure(calibration.reliability_frame(curves), "val")
    assert tuple(figure.get_size_inches()) == (5, 5)
    (axes,) = figure.axes
    lines = axes.get_lines()
    assert [line.get_label() for line in lines] == ["perfect", "uncalibrated", "calibrated"]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "perfect", "uncalibrated", "calibrated"
    ]  # fmt: skip
    assert (lines[0].get_linestyle(), lines[0].get_marker()) == ("--", "None")
    assert lines[0].get_color() in ("grey", "GREY")  # matplotlib reads either as grey
    assert {(line.get_linestyle(), line.get_marker()) for line in lines[1:]} == {("-", "o")}
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("confidence", "observed frequency")
    assert axes.get_title() == "val"
    assert axes.get_xlim() == (0, 1) and axes.get_ylim() == (0, 1)
    grid = axes.get_xgridlines() + axes.get_ygridlines()
    assert all(line.get_alpha() == 0.3 and line.get_visible() for line in grid)
