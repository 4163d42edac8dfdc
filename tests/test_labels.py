"""spamgpt.labels: the classes found or given, and the one decision rule."""

import numpy as np
import pytest

from spamgpt import labels
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.labels import SMS, Classes

PROBS = np.array([[0.7, 0.3], [0.45, 0.55], [0.2, 0.8]])


def test_a_threshold_applies_to_the_positive_class() -> None:
    np.testing.assert_array_equal(SMS.predicted(PROBS, 0.5), [0, 1, 1])
    np.testing.assert_array_equal(SMS.predicted(PROBS, 0.6), [0, 0, 1])
    np.testing.assert_array_equal(SMS.predicted(PROBS, 0.3), [1, 1, 1])  # >= threshold
    first = Classes(("spam", "ham"), "spam")  # the positive class need not be the second
    np.testing.assert_array_equal(first.predicted(PROBS, 0.6), [0, 1, 1])


def test_without_a_threshold_or_a_positive_class_the_most_probable_wins() -> None:
    np.testing.assert_array_equal(SMS.predicted(PROBS, None), [0, 1, 1])
    three = Classes(("a", "b", "c"))
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    np.testing.assert_array_equal(three.predicted(probs, 0.5), [1, 0])  # no positive: argmax
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
