"""audit: likely label errors in train and val, by confident learning over out-of-fold
probabilities of cheap models (spamgpt.evaluate.audit). Reported in reports/label_issues.csv for a
person to review, never fixed; audit.enabled: false, or a task without classes (regression),
writes an empty report."""

import time

from spamgpt import contracts, paths, stage
from spamgpt.data import readers
from spamgpt.evaluate import audit
from spamgpt.params import Params
from spamgpt.tasks.registry import task_for


def main(params: Params) -> None:
    settings = params.audit
    classes = contracts.read_classes()
    not_applicable = task_for(classes).audit_skipped()  # {}: the audit applies to the task
    if not settings.enabled or not_applicable:
        contracts.write_label_issues(audit.no_issues())
        contracts.write_audit({"enabled": False, **not_applicable})
        return
    start = time.perf_counter()
    frames = {s: readers.read_split(paths.split_file(s)) for s in audit.AUDITED_SPLITS}
    rows = sum(len(frame) for frame in frames.values())
    audit.check_folds(settings.folds, rows)
    hidden = audit.trunk_features(audit.AUDITED_SPLITS, rows)
    files = {s: audit.source_file(s, params.data) for s in frames}
    table, _ = audit.audit(frames, files, classes, settings.folds, hidden)
    contracts.write_label_issues(table)
    models = ["tfidf"] + ["trunk"] * (hidden is not None)
    summary = audit.summary(table, {s: len(f) for s, f in frames.items()}, classes)
    contracts.write_audit({"enabled": True, "folds": settings.folds, "models": models, **summary})
    stage.log.info(
        "%d of %d rows flagged as likely label errors (%s), in %.1f s: %s",
        len(table), rows, " + ".join(models), time.perf_counter() - start, paths.LABEL_ISSUES,
    )  # fmt: skip


if __name__ == "__main__":
    stage.run(main)
