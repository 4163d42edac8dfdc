"""spamgpt.tasks.metrics against numbers worked out by hand, against scikit-learn and counts of our
own on generated data, and best_threshold against a search over every candidate threshold."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from sklearn import metrics as skm

from spamgpt.errors import ParamsError
from spamgpt.labels import SMS, Classes
from spamgpt.tasks import metrics
from spamgpt.tasks.registry import task_for


def two(spam_prob: np.ndarray) -> np.ndarray:
    """(N, 2) probabilities of ham and spam from P(spam)."""
    return np.column_stack([1 - spam_prob, spam_prob])


# Eight messages worked out by hand, at threshold 0.5:
#   label  0    0    0    0    0     1    1    1
#   p      0.1  0.2  0.3  0.6  0.85  0.4  0.8  0.9
#   pred   0    0    0    1    1     0    1    1      -> tn 3, fp 2, fn 1, tp 2
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1])
PROBS = np.array([0.1, 0.2, 0.3, 0.6, 0.85, 0.4, 0.8, 0.9])


def test_best_threshold_of_the_hand_worked_example() -> None:
    # spam F1 at each candidate: 0.9: 2/4, 0.85: 2/5, 0.8: 4/6, 0.6: 4/7, 0.4: 6/8, 0.3: 6/9
    assert metrics.best_threshold(LABELS, PROBS) == 0.4


def generated(seed: int, n: int = 500, decimals: int | None = None) -> tuple[np.ndarray, ...]:
    """Labels (about 15% spam) and spam probabilities that lean towards them; rounded to
    `decimals`, many probabilities tie."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.15).astype(int)
    probs = 1 / (1 + np.exp(-(rng.normal(size=n) + 2.0 * (2 * labels - 1))))
    return labels, probs if decimals is None else probs.round(decimals)


def counts(labels: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp)"""
    return tuple(int(np.sum((labels == a) & (predicted == b))) for a in (0, 1) for b in (0, 1))


def spam_f1(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    _, fp, fn, tp = counts(labels, (probs >= threshold).astype(int))
    return 2 * tp / (2 * tp + fp + fn)


def roc_auc_by_pairs(labels: np.ndarray, probs: np.ndarray) -> float:
    """P(a spam outranks a ham), ties counting half."""
    spam, ham = probs[labels == 1][:, None], probs[labels == 0][None, :]
    return float(np.mean((spam > ham) + 0.5 * (spam == ham)))


def average_precision_by_steps(labels: np.ndarray, probs: np.ndarray) -> float:
    """Sum over thresholds, highest first, of (recall gained) x (precision there)."""
    ap, last_recall = 0.0, 0.0
    for t in np.unique(probs)[::-1]:
        _, fp, fn, tp = counts(labels, (probs >= t).astype(int))
        recall = tp / (tp + fn)
        ap += (recall - last_recall) * tp / (tp + fp)
        last_recall = recall
    return ap


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("seed", range(4))
def test_best_threshold_maximises_spam_f1_over_every_candidate(
    seed: int, decimals: int | None
) -> None:
    """Candidates: each distinct probability (a threshold between two of them predicts as the
    next one up does)."""
    labels, probs = generated(seed, n=300, decimals=decimals)
    best = max(spam_f1(labels, probs, t) for t in np.unique(probs))
    chosen = metrics.best_threshold(labels, probs)
    assert chosen in probs
    assert spam_f1(labels, probs, chosen) == pytest.approx(best, abs=1e-12)


def test_flat_names_every_number_but_support_and_matrix() -> None:
    flat = metrics.flat(task_for(SMS).report(LABELS, two(PROBS), 0.5), "val", classes=SMS)
    per_class = [f"val/{c}_{m}" for c in ("ham", "spam") for m in ("precision", "recall", "f1")]
    assert set(flat) == {"val/accuracy", "val/macro_f1", "val/roc_auc", "val/pr_auc", *per_class}
    assert flat["val/spam_f1"] == pytest.approx(4 / 7)
    assert flat["val/roc_auc"] == pytest.approx(12 / 15)
    assert all(isinstance(v, float) for v in flat.values())
    one_class = metrics.flat(
        task_for(SMS).report(np.zeros(2, dtype=int), two(np.array([0.1, 0.9])), 0.5),
        "t",
        classes=SMS,
    )
    assert "t/roc_auc" not in one_class and "t/pr_auc" not in one_class  # None is left out


# --- more than two classes, and no positive class ---

THREE = Classes(("billing", "outage", "sales"))


def test_selection_score_is_the_chosen_validation_figure() -> None:
    rep = task_for(SMS).report(LABELS, two(PROBS), 0.5)
    micro = skm.f1_score(LABELS, PROBS >= 0.5, average="micro")
    expected = {
        "auto": rep["spam"]["f1"],
        "spam_f1": rep["spam"]["f1"],
        "ham_f1": rep["ham"]["f1"],
        "macro_f1": rep["macro_f1"],
        "micro_f1": micro,
        "accuracy": rep["accuracy"],
        "val_loss": -0.25,  # larger is better
    }
    scores = {metric: task_for(SMS).selection_score(rep, 0.25, metric) for metric in expected}
    assert scores == pytest.approx(expected)
    assert len(set(scores.values())) >= 5  # each a different figure of this example
    assert task_for(Classes(SMS.names)).selection_score(rep, 0.25) == rep["macro_f1"]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"min_precision": 0.9}, "precision of at least 0.9 (the highest is 0.6667)"),
        ({"max_fpr": 0.1}, "false-positive rate of at most 0.1 (the lowest is 0.2)"),
    ],
)
def test_a_policy_no_threshold_meets_is_one_line(policy: dict, message: str) -> None:
    probs = two(np.where(PROBS == 0.85, 0.95, PROBS))  # a ham message scores highest
    with pytest.raises(ParamsError) as info:
        task_for(SMS).choose_threshold(policy, LABELS, probs)
    text = str(info.value)
    assert text.startswith("evaluate.threshold: no threshold gives 'spam' a validation ")
    assert message in text and "\n" not in text
    with pytest.raises(ParamsError, match="no 'spam' message"):
        task_for(SMS).choose_threshold(policy, np.zeros(8, dtype=int), probs)


@pytest.mark.parametrize("decimals", [None, 2, 1])  # 1 decimal: many tied scores
@pytest.mark.parametrize("seed", range(3))
def test_curves_are_scikit_learns(seed: int, decimals: int | None) -> None:
    """The ROC curve (corners only), the precision-recall curve and its thresholds, point
    for point."""
    labels, probs = generated(seed, n=300, decimals=decimals)
    fpr, tpr = metrics.roc_curve(labels == 1, probs)
    their_fpr, their_tpr, _ = skm.roc_curve(labels, probs)
    np.testing.assert_allclose(fpr, their_fpr)
    np.testing.assert_allclose(tpr, their_tpr)
    ours = metrics.precision_recall_curve(labels == 1, probs)
    for got, want in zip(ours, skm.precision_recall_curve(labels, probs), strict=True):
        np.testing.assert_allclose(got, want)


def test_precision_recall_curve_without_positives_has_recall_one() -> None:
    precision, recall, _ = metrics.precision_recall_curve(np.zeros(3, bool), PROBS[:3])
    assert recall.tolist() == [1.0, 1.0, 1.0, 0.0] and precision.tolist() == [0, 0, 0, 1]


def test_finetune_imports_neither_scikit_learn_nor_matplotlib() -> None:
    """Validation needs the metrics alone: scikit-learn (with SciPy) and matplotlib are
    about 1 s of every finetune's start-up on a 2-core CPU."""
    code = (
        "import runpy, sys\n"
        "runpy.run_path('stages/finetune.py')\n"  # its imports; main() runs only as __main__
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'matplotlib'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _overlapping(boxes: list) -> list[tuple[int, int]]:
    """Pairs of drawn boxes (matplotlib Bboxes, in pixels) that overlap by more than a pixel."""
    return [
        (i, j)
        for i, a in enumerate(boxes)
        for j, b in enumerate(boxes[i + 1 :], start=i + 1)
        if min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1
    ]


def test_the_confusion_figure_stays_readable_at_30_classes() -> None:
    """30 classes with 27-character names and a confusion in every row: the figure grows
    with the classes, and once drawn no two class names, and no two cell numbers, overlap,
    and every name lies inside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    names = tuple(f"category-{i:02d}-of-the-package" for i in range(30))
    matrix = (np.eye(30, dtype=int) * 40 + np.roll(np.eye(30, dtype=int), 1, axis=1) * 3).tolist()
    small = metrics.confusion_figure([[50, 2], [3, 9]], "test", SMS)
    fig = metrics.confusion_figure(matrix, "test", Classes(names))
    assert fig.get_size_inches()[0] > 3 * small.get_size_inches()[0]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    whole = fig.bbox
    for ax in fig.axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [label.get_window_extent(renderer) for label in labels]
            assert [label.get_text() for label in labels] == list(names)
            assert _overlapping(boxes) == []
            assert all(whole.x0 <= b.x0 and b.x1 <= whole.x1 for b in boxes)
            assert all(whole.y0 <= b.y0 and b.y1 <= whole.y1 for b in boxes)
        cells = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(cells) == 60 and _overlapping(cells) == []
    x_labels = fig.axes[0].get_xticklabels()
    assert x_labels[0].get_rotation() == 90  # side by side, 27 characters would not fit a cell


# --- pinned by mutation testing (tools/mutate.py metrics) ---

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# scores on a coarse grid: many ties, as real probabilities rounded in a report have
scores = st.lists(st.integers(0, 20).map(lambda i: i / 20), min_size=2, max_size=60)


def policy_by_hand(rule: str, bound: float, labels: np.ndarray, score: np.ndarray) -> dict | None:
    """Every distinct score as a threshold (score >= it is positive): of those meeting the
    bound with a positive found, the highest recall, then the fewest false positives."""
    best = None
    for t in sorted(set(score.tolist()), reverse=True):
        on = score >= t
        tp, fp = int((on & labels).sum()), int((on & ~labels).sum())
        precision, recall = tp / (tp + fp), tp / labels.sum()
        fpr = fp / max(1, int((~labels).sum()))
        meets = precision >= bound if rule == "min_precision" else fpr <= bound
        if tp > 0 and meets and (best is None or (recall, -fp) > (best["recall"], -best["fp"])):
            best = {"threshold": t, "precision": precision, "recall": recall, "fpr": fpr, "fp": fp}
    return best


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    probs=scores,
    rule=st.sampled_from(["min_precision", "max_fpr"]),
    bound=st.sampled_from([0.0, 0.1, 0.5, 0.75, 0.9, 1.0]),
)
def test_any_policy_threshold_is_the_one_found_by_trying_every_score(
    data: st.DataObject, probs: list[float], rule: str, bound: float
) -> None:
    size = len(probs)
    labels = np.array(data.draw(st.lists(st.booleans(), min_size=size, max_size=size)))
    score = np.array(probs)
    expected = policy_by_hand(rule, bound, labels, score) if labels.any() else None
    if expected is None:
        with pytest.raises(ParamsError, match=r"^evaluate\.threshold: "):
            metrics.policy_threshold({rule: bound}, labels, score, "spam")
        return
    expected.pop("fp")
    assert metrics.policy_threshold({rule: bound}, labels, score, "spam") == pytest.approx(expected)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), probs=scores)
def test_any_best_threshold_reaches_the_best_f1_of_every_score(
    data: st.DataObject, probs: list[float]
) -> None:
    size = len(probs)
    labels = np.array(data.draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)))
    score = np.array(probs)
    if not labels.any():
        return
    f1 = {t: skm.f1_score(labels, score >= t, zero_division=0) for t in set(probs)}
    best = metrics.best_threshold(labels, score)
    assert f1[best] == pytest.approx(max(f1.values()))


def test_the_per_class_table_has_a_row_per_split_and_class() -> None:
    val, test = (
        task_for(SMS).report(LABELS, two(PROBS), 0.5),
        task_for(SMS).report(LABELS, two(PROBS), 0.7),
    )
    table = metrics.per_class_table({"val": val, "test": test}, SMS)
    assert table["split"] == ["val", "val", "test", "test"]
    assert table["class"] == ["ham", "spam", "ham", "spam"]
    assert table["support"] == [5, 3, 5, 3]
    assert table["recall"] == [val["ham"]["recall"], 2 / 3, test["ham"]["recall"], 2 / 3]
    assert list(table) == ["split", "class", "precision", "recall", "f1", "support"]


def test_curve_frames_are_scikit_learns_curves_point_by_point() -> None:
    frames = task_for(SMS).curve_frames(LABELS, two(PROBS))
    fpr, tpr, _ = skm.roc_curve(LABELS == 1, PROBS)
    roc = frames["roc"]
    assert list(roc.columns) == ["class", "point", "fpr", "tpr"]
    assert roc["class"].tolist() == ["spam"] * len(fpr) and roc["point"].tolist() == list(
        range(len(fpr))
    )
    np.testing.assert_allclose(roc["fpr"], fpr)
    np.testing.assert_allclose(roc["tpr"], tpr)
    precision, recall, _ = skm.precision_recall_curve(LABELS == 1, PROBS)
    pr = frames["pr"]
    assert list(pr.columns) == ["class", "point", "recall", "precision"]
    assert pr["point"].tolist() == list(range(len(recall)))
    np.testing.assert_allclose(pr["recall"], recall)
    np.testing.assert_allclose(pr["precision"], precision)
    # without a positive class: each class against the rest, but one that is every message
    three = Classes(("a", "b", "c"))
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]]
    )
    frames = task_for(three).curve_frames(labels, probs)
    assert frames["roc"]["class"].unique().tolist() == ["a", "b"]  # c: no message
    a = frames["roc"][frames["roc"]["class"] == "a"]
    fpr, tpr, _ = skm.roc_curve(labels == 0, probs[:, 0])
    np.testing.assert_allclose(a["fpr"], fpr)
    np.testing.assert_allclose(a["tpr"], tpr)
    none = task_for(SMS).curve_frames(np.zeros(3, int), two(np.array([0.1, 0.2, 0.3])))
    assert none["roc"].empty and list(none["roc"].columns) == ["class", "point", "fpr", "tpr"]
    assert none["pr"].empty and list(none["pr"].columns) == [
        "class",
        "point",
        "recall",
        "precision",
    ]


def test_small_edges_of_the_report_and_curves() -> None:
    assert task_for(SMS).report(np.array([1]), two(np.array([0.9])), 0.5)["accuracy"] == 1.0
    # float labels as a split's reader may give them
    matrix = metrics.confusion_matrix(np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0]), 2)
    assert matrix.tolist() == [[0, 1], [1, 1]]
    # three thresholds on one straight line: the middle point is dropped, as scikit-learn does
    labels, scores = np.array([1, 1, 0, 1, 0]), np.array([0.9, 0.8, 0.8, 0.7, 0.7])
    fpr, tpr = metrics.roc_curve(labels == 1, scores)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    rep = {"micro_f1": 0.7, "accuracy": 0.5}
    assert (
        task_for(Classes(("a", "b"), label_format="multi")).selection_score(rep, 0.1, "micro_f1")
        == 0.7
    )


def test_a_max_fpr_policy_error_gives_the_lowest_rate_that_finds_a_positive() -> None:
    labels = np.array([0, 0, 1, 0, 0, 0])  # two ham messages score above the spam one
    scores = np.array([0.99, 0.98, 0.5, 0.4, 0.3, 0.2])
    with pytest.raises(ParamsError, match=r"\(the lowest is 0\.4\)"):
        metrics.policy_threshold({"max_fpr": 0.1}, labels, scores, "spam")


def test_the_confusion_figure_shows_counts_and_row_rates() -> None:
    fig = metrics.confusion_figure([[3, 1], [0, 1]], "test", SMS)
    assert tuple(fig.get_size_inches()) == pytest.approx((2 * 3.6 + 0.4, 3.6 + 0.3))  # at least
    names = tuple("abcdefghij")  # one-letter names: a side of 0.5 in a cell, + 1/12 + 0.4 + 0.6
    ten = metrics.confusion_figure(np.eye(10).tolist(), "t", Classes(names))
    side = 0.5 * 10 + 0.6 * 10 / 72 + 0.4 + 0.6
    assert tuple(ten.get_size_inches()) == pytest.approx((2 * side + 0.4, side + 0.3))
    counts, rates = fig.axes
    rows = {"counts": ["3", "1", "0", "1"], "row-normalised": ["0.750", "0.250", "0.000", "1.000"]}
    for ax, (name, texts) in zip((counts, rates), rows.items(), strict=True):
        assert ax.get_title() == f"test ({name})"
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "actual")
        assert [t.get_text() for t in ax.get_xticklabels()] == ["ham", "spam"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["ham", "spam"]
        assert list(ax.get_xticks()) == [0, 1] and list(ax.get_yticks()) == [0, 1]
        assert [t.get_text() for t in ax.texts] == texts
        assert [t.get_position() for t in ax.texts] == [(0, 0), (1, 0), (0, 1), (1, 1)]
        assert [t.get_color() for t in ax.texts] == ["white", "black", "black", "white"]
        assert {(t.get_ha(), t.get_va()) for t in ax.texts} == {("center", "center")}
        [image] = ax.images
        np.testing.assert_allclose(image.get_array(), [[0.75, 0.25], [0.0, 1.0]])
        assert image.get_cmap().name == "Blues" and image.get_clim() == (0, 1)
    assert counts.get_position().x1 < rates.get_position().x0  # side by side
    assert counts.get_position().y0 == rates.get_position().y0
    # no rate under 0.5 here: the colour scale still starts at 0; exactly 0.5 is dark text
    half = metrics.confusion_figure([[1, 1], [1, 3]], "v", SMS).axes[0]
    assert half.images[0].get_clim() == (0, 1)
    assert [t.get_color() for t in half.texts] == ["black", "black", "black", "white"]


def test_the_curve_figure_draws_one_labelled_line_per_series() -> None:
    fig = metrics.curve_figure({"val": ([0.5, 1], [0.5, 0.25]), "test": ([0, 2], [1, 0])}, "x", "T")
    [ax] = fig.axes
    assert tuple(fig.get_size_inches()) == (6, 4)
    assert [line.get_label() for line in ax.lines] == ["val", "test"]
    assert ax.lines[0].get_xydata().tolist() == [[0.5, 0.5], [1, 0.25]]
    assert (ax.get_xlabel(), ax.get_title()) == ("x", "T")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["val", "test"]
    assert all(line.get_alpha() == 0.3 and line.get_visible() for line in ax.get_xgridlines())


def test_best_threshold_is_the_f1_optimum_where_precision_and_recall_sum_under_one() -> None:
    # top 3: precision 1/3, recall 1/2, F1 0.4; everything: precision 2/9, recall 1, F1 0.36
    labels = np.array([0, 0, 1, 0, 0, 0, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert metrics.best_threshold(labels, scores) == 0.7


def test_curve_frames_skip_a_class_without_messages_before_others() -> None:
    three = Classes(("a", "b", "c"))
    labels = np.array([1, 2, 1, 2])  # no "a": skipped, "b" and "c" still drawn
    probs = np.array([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3], [0.1, 0.5, 0.4]])
    frames = task_for(three).curve_frames(labels, probs)
    for frame in frames.values():
        assert frame["class"].unique().tolist() == ["b", "c"]
        assert frame.index.tolist() == list(range(len(frame)))  # one index over both


def test_ratio_confusion_matrix_and_the_aucs_directly() -> None:
    """The pieces the tasks' reports are made of (tests/test_classification.py checks the
    reports), by hand and against scikit-learn."""
    assert metrics.ratio(np.array([1.0, 0.0, 3.0]), np.array([2, 0, 4])).tolist() == [
        0.5, 0.0, 0.75
    ]  # fmt: skip
    matrix = metrics.confusion_matrix(np.array([0, 2, 2, 1]), np.array([0, 1, 2, 2]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    # the hand-worked example: of 15 (spam, ham) pairs 12 ranked right; recall thirds
    assert metrics.roc_auc(LABELS == 1, PROBS) == pytest.approx(12 / 15)
    assert metrics.average_precision(LABELS == 1, PROBS) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    for seed, decimals in ((0, None), (1, 2), (2, 1)):  # 1 decimal: many ties
        labels, probs = generated(seed, n=300, decimals=decimals)
        auc = metrics.roc_auc(labels == 1, probs)
        assert auc == pytest.approx(roc_auc_by_pairs(labels, probs))
        assert auc == pytest.approx(skm.roc_auc_score(labels, probs))
        ap = metrics.average_precision(labels == 1, probs)
        assert ap == pytest.approx(average_precision_by_steps(labels, probs))
        assert ap == pytest.approx(skm.average_precision_score(labels, probs))


def test_ratio_of_one_and_curves_and_policies_of_one_positive() -> None:
    assert metrics.ratio(np.array([1, 0]), np.array([1, 1])).tolist() == [1.0, 0.0]
    labels, scores = np.array([False, True, False]), np.array([0.9, 0.5, 0.2])
    precision, recall, _ = metrics.precision_recall_curve(labels, scores)
    sk_precision, sk_recall, _ = skm.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(precision, sk_precision)
    np.testing.assert_allclose(recall, sk_recall)  # one positive: recall 0, 1, 1, then 0
    # a false-positive rate of 1/2 allows the top (ham) score alone, which finds no spam
    found = metrics.policy_threshold({"max_fpr": 0.5}, labels, scores, "spam")
    assert found == {"threshold": 0.5, "precision": 0.5, "recall": 1.0, "fpr": 0.5}
