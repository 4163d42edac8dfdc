"""The one factory of tasks (spamgpt.tasks.task's interface): `task_for(classes)`, the one place
that decides which task runs, from the classes' data.label_format. A new task adds its line
to TASKS (see spamgpt/tasks/task.py)."""

from spamgpt.labels import Classes
from spamgpt.tasks.classification import MultiLabel, SingleLabel
from spamgpt.tasks.regression import Regression
from spamgpt.tasks.task import Task

TASKS: dict[str, type[Task]] = {
    task.label_format: task for task in (SingleLabel, MultiLabel, Regression)
}


def task_for(classes: Classes) -> Task:
    """The task of these classes (data.label_format, as classifier.json and
    metrics/data.json record it): the one place that decides it."""
    return TASKS[classes.label_format](classes)
