"""spamgpt.tasks.registry: the one factory gives each data.label_format its task, holding the
classes it was given."""

import pytest

from spamgpt.labels import Classes
from spamgpt.tasks.classification import MultiLabel, SingleLabel
from spamgpt.tasks.registry import TASKS, task_for
from spamgpt.tasks.regression import Regression


@pytest.mark.parametrize(
    ("label_format", "kind"),
    [("single", SingleLabel), ("multi", MultiLabel), ("number", Regression)],
)
def test_each_label_format_gets_its_task_with_the_classes(label_format: str, kind: type) -> None:
    classes = Classes.from_dict({"labels": ["a", "b"], "label_format": label_format})
    found = task_for(classes)
    assert type(found) is kind and found.classes is classes
    assert found.label_format == label_format


def test_the_factory_knows_exactly_the_three_formats() -> None:
    assert {"single": SingleLabel, "multi": MultiLabel, "number": Regression} == TASKS
