"""spamgpt.labels: the classes found or given, and the one decision rule."""

import numpy as np
import pytest

from spamgpt import labels
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.labels import SMS, Classes
from spamgpt.tasks.registry import task_for

PROBS = np.array([[0.7, 0.3], [0.45, 0.55], [0.2, 0.8]])


def test_a_threshold_applies_to_the_positive_class() -> None:
    np.testing.assert_array_equal(task_for(SMS).decisions(PROBS, 0.5), [0, 1, 1])
    np.testing.assert_array_equal(task_for(SMS).decisions(PROBS, 0.6), [0, 0, 1])
    np.testing.assert_array_equal(task_for(SMS).decisions(PROBS, 0.3), [1, 1, 1])  # >= threshold
    first = Classes(("spam", "ham"), "spam")  # the positive class need not be the second
    np.testing.assert_array_equal(task_for(first).decisions(PROBS, 0.6), [0, 1, 1])


def test_without_a_threshold_or_a_positive_class_the_most_probable_wins() -> None:
    np.testing.assert_array_equal(task_for(SMS).decisions(PROBS, None), [0, 1, 1])
    three = Classes(("a", "b", "c"))
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    no_positive = task_for(three).decisions(probs, 0.5)
    np.testing.assert_array_equal(no_positive, [1, 0])  # no positive: argmax
    assert three.named([1, 0, 2]) == ["b", "a", "c"]


def test_classes_found_are_sorted_numerically_when_integers() -> None:
    assert labels.found(["b", "a", "b"], None, None).names == ("a", "b")
    assert labels.found(["10", "9", "2"], None, None).names == ("2", "9", "10")
    given = labels.found(["spam", "ham"], ["spam", "ham", "other"], "spam")
    assert given.names == ("spam", "ham", "other") and given.positive_index == 0
    assert labels.found(["1", "0"], [0, 1], 1).names == ("0", "1")


def test_a_positive_class_outside_the_classes_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match=r"data\.positive_label: 'spam' is not a class"):
        labels.found(["a", "b"], None, "spam")


def test_metric_names_are_made_safe() -> None:
    assert SMS.metric_name("spam") == "spam"
    assert Classes(("a",)).metric_name("café & co?") == "caf____co_"


def test_a_threshold_to_apply_is_strictly_between_0_and_1() -> None:
    for fine in (None, 0.5, 1e-6, {"billing": 0.3, "urgent": 0.999}):
        labels.check_threshold_values(fine, "--threshold")
    for wrong in (0.0, 1.0, 1.5, {"billing": 0.3, "urgent": 1.0}):
        with pytest.raises(SpamGPTError) as info:
            labels.check_threshold_values(wrong, "--threshold")
        assert str(info.value) == f"--threshold must be between 0 and 1, got {wrong}"


def test_a_threshold_needs_two_classes_and_a_positive_one() -> None:
    three = Classes(("a", "b", "c"), "b")
    probs = np.array([[0.5, 0.2, 0.3], [0.1, 0.3, 0.6]])
    three_classes = task_for(three).decisions(probs, 0.1)
    np.testing.assert_array_equal(three_classes, [0, 2])  # argmax, no threshold
    np.testing.assert_array_equal(task_for(Classes(("a", "b"))).decisions(PROBS, 0.6), [0, 1, 1])


def test_multi_label_predictions_are_each_label_at_or_over_its_threshold() -> None:
    multi = Classes(("x", "y", "z"), label_format="multi")
    probs = np.array([[0.5, 0.49, 0.9], [0.2, 0.7, 0.3]])
    at_default = task_for(multi).decisions(probs)
    np.testing.assert_array_equal(at_default, [[1, 0, 1], [0, 1, 0]])  # 0.5 each
    np.testing.assert_array_equal(task_for(multi).decisions(probs, 0.3), [[1, 1, 1], [0, 1, 1]])
    per_label = task_for(multi).decisions(probs, {"x": 0.6, "z": 0.95})  # y: 0.5, not set
    np.testing.assert_array_equal(per_label, [[0, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(task_for(multi).thresholds({"y": 0.1}), [0.5, 0.1, 0.5])
    np.testing.assert_array_equal(task_for(multi).thresholds(None), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(task_for(multi).thresholds(0.25), [0.25, 0.25, 0.25])


def test_targets_are_class_indices_or_multi_label_indicators() -> None:
    single = SMS.targets(["spam", "ham", "spam"])
    assert single.dtype == np.int64
    np.testing.assert_array_equal(single, [1, 0, 1])
    assert SMS.targets([]).dtype == np.int64  # not numpy's float64 of an empty list
    multi = Classes(("x", "y", "z"), label_format="multi")
    out = multi.targets(['["z", "x"]', "[]", '["y"]'])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert SMS.index("spam") == 1 and SMS.index("ham") == 0


def test_multi_label_classes_found_are_the_union_of_the_rows_lists() -> None:
    found = labels.found(['["b", "a"]', "[]", '["c"]', '["b", "a"]'], None, None, "multi")
    assert found.names == ("a", "b", "c") and found.label_format == "multi"
    assert found.positive is None
    assert labels.found(['["10"]', '["9"]'], None, None, "multi").names == ("9", "10")
    assert labels.found(["a"], None, None).label_format == "single"


def test_classes_round_trip_through_their_dict() -> None:
    assert SMS.to_dict() == {"labels": ["ham", "spam"], "positive_label": "spam"}
    multi = Classes(("x", "y"), label_format="multi")
    d = multi.to_dict()
    assert d == {"labels": ["x", "y"], "positive_label": None, "label_format": "multi"}
    assert Classes.from_dict(d) == multi
    assert Classes.from_dict(SMS.to_dict()) == SMS
    assert Classes.from_dict({"labels": ["a", "b"]}) == Classes(("a", "b"))


def test_the_positive_class_error_lists_the_allowed_classes() -> None:
    with pytest.raises(ParamsError, match=r"allowed: one of a, b, or null$"):
        Classes(("a", "b"), "c")


def test_classes_refuse_a_label_format_params_does_not_allow() -> None:
    with pytest.raises(ValueError, match=r"^label_format True; allowed: single, multi, number$"):
        Classes(("a", "b"), None, True)  # the multi_label flag that was once in its place
    assert Classes(("a", "b"), None, "number").label_format == "number"


def test_number_classes_are_one_output_named_after_the_column() -> None:
    rating = Classes(("rating",), label_format="number")
    assert rating.label_format == "number"
    assert rating.to_dict() == {
        "labels": ["rating"],
        "positive_label": None,
        "label_format": "number",
    }
    assert Classes.from_dict(rating.to_dict()) == rating
    targets = rating.targets(["4.5", "-1.0"])
    assert targets.tolist() == [4.5, -1.0] and targets.dtype == np.float32
    assert SMS.label_format == "single" and "label_format" not in SMS.to_dict()
