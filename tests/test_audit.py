"""spamgpt.evaluate.audit and its stage: planted label flips are what it reports, single- and
multi-label, and its CSV names each suspect's line in the user's file."""

import json
import runpy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO

from spamgpt import contracts, paths
from spamgpt import params as params_module
from spamgpt.data import readers
from spamgpt.data.batching import PackedSequences
from spamgpt.evaluate import audit
from spamgpt.labels import SMS, Classes

SPAM_WORDS = ("win", "prize", "claim", "free", "cash", "urgent", "call", "txt", "award", "bonus")
HAM_WORDS = ("see", "you", "later", "dinner", "home", "tonight", "love", "mum", "thanks", "lunch")
SHARED = ("the", "a", "to", "and", "is", "on", "at", "for", "it")


def messages(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """`n` texts of 8 words, spam (1) drawn mostly from spam words, ham (0) from ham words."""
    rng = np.random.default_rng(seed)
    classes = (rng.random(n) < 0.3).astype(int)
    texts = []
    for i, c in enumerate(classes):
        own = SPAM_WORDS if c else HAM_WORDS
        words = [*rng.choice(own, 6), *rng.choice(SHARED, 2)]
        texts.append(" ".join(rng.permutation(words)) + f" {i}")  # each text unique
    return texts, classes


def flipped(n: int, share: float, seed: int) -> np.ndarray:
    """Indices of the `share` of `n` rows whose label the test flips."""
    return np.random.default_rng(seed).choice(n, int(n * share), replace=False)


def found_and_false(reported: pd.Series, planted: np.ndarray) -> tuple[float, float]:
    """The share of planted rows reported, and the share of reports that are clean rows."""
    reported, planted = set(reported), set(planted.tolist())
    return len(reported & planted) / len(planted), len(reported - planted) / max(1, len(reported))


def test_planted_flips_are_found_and_ranked_first() -> None:
    texts, truth = messages(600, seed=1)
    planted = flipped(600, 0.05, seed=2)
    given = truth.copy()
    given[planted] = 1 - given[planted]
    frame = pd.DataFrame({"line": np.arange(1, 601), "label": SMS.named(given), "text": texts})
    frames = {"train": frame.iloc[:500], "val": frame.iloc[500:].reset_index(drop=True)}
    table, probs = audit.audit(frames, {"train": "sms.txt", "val": "sms.txt"}, SMS, folds=5)
    assert probs.shape == (600, 2)
    recall, false_share = found_and_false(table["line"] - 1, planted)
    assert recall >= 0.8 and false_share <= 0.3, (recall, false_share)
    top = table["line"].head(len(planted) // 2) - 1  # the most confident half: all planted
    assert set(top) <= set(planted.tolist())
    # each suspect's suggestion is its true class, and scores rise down the table
    assert list(table["suggested"]) == [SMS.names[truth[line - 1]] for line in table["line"]]
    assert (np.diff(table["score"]) >= 0).all()
    assert set(table["split"]) <= {"train", "val"} and (table["file"] == "sms.txt").all()


def test_trunk_features_join_the_tfidf_model() -> None:
    """A second model whose features are the true class (plus noise) keeps the flips found."""
    texts, truth = messages(400, seed=3)
    planted = flipped(400, 0.05, seed=4)
    given = truth.copy()
    given[planted] = 1 - given[planted]
    frame = pd.DataFrame({"line": np.arange(1, 401), "label": SMS.named(given), "text": texts})
    rng = np.random.default_rng(5)
    hidden = rng.normal(size=(400, 16)) + 3 * truth[:, None]
    table, probs = audit.audit({"train": frame}, {"train": "x"}, SMS, folds=4, hidden=hidden)
    recall, false_share = found_and_false(table["line"] - 1, planted)
    assert recall >= 0.8 and false_share <= 0.3, (recall, false_share)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_multi_label_flips_are_found() -> None:
    """Three labels, each carried by its own words; 5% of rows gain or lose one label."""
    vocab = {"billing": "invoice refund charge paid", "outage": "down offline error crash",
             "urgent": "asap now immediately critical"}  # fmt: skip
    names = tuple(vocab)
    rng = np.random.default_rng(6)
    truth = rng.random((600, 3)) < 0.35
    texts = []
    for i, row in enumerate(truth):
        carried = [label for label, on in zip(names, row, strict=True) if on]
        words = [word for label in carried for word in vocab[label].split()]
        words += list(rng.choice(SHARED, 3))
        texts.append(" ".join(rng.permutation(words)) + f" ticket {i}")
    planted = flipped(600, 0.05, seed=7)
    given = truth.copy()
    which = rng.integers(0, 3, len(planted))
    given[planted, which] = ~given[planted, which]
    labels = [json.dumps([n for n, on in zip(names, row, strict=True) if on]) for row in given]
    frame = pd.DataFrame({"line": np.arange(1, 601), "label": labels, "text": texts})
    classes = Classes(names, None, label_format="multi")
    table, probs = audit.audit({"train": frame}, {"train": "t.csv"}, classes, folds=5)
    assert probs.shape == (600, 3)
    recall, false_share = found_and_false(table["line"] - 1, planted)
    assert recall >= 0.8 and false_share <= 0.3, (recall, false_share)
    for line, suggestion in zip(table["line"], table["suggested"], strict=True):
        if line - 1 in set(planted.tolist()):
            expected = [n for n, on in zip(names, truth[line - 1], strict=True) if on]
            assert json.loads(suggestion) == expected
    report = audit.summary(table, {"train": 600}, classes)
    assert report["label_issues"] == len(table) and report["by_split"] == {"train": len(table)}
    carried = np.array([[n in json.loads(v) for n in names] for v in table["label"]])
    assert report["by_label"] == dict(zip(names, carried.sum(axis=0).tolist(), strict=True))


def test_mean_hidden_reads_the_packed_cache() -> None:
    rows = torch.arange(12.0).reshape(6, 2)  # messages of 1, 3 and 2 tokens
    sequences = PackedSequences(rows, torch.tensor([1, 3, 2]))
    expected = [[0.0, 1.0], [4.0, 5.0], [9.0, 10.0]]
    np.testing.assert_allclose(audit.mean_hidden(sequences), expected)


@pytest.fixture
def split_project(tmp_path, monkeypatch) -> tuple:
    """A folder with the SMS-like file (5% of labels flipped), split by the split stage, and
    a trunk cache of nothing: the audit stage's inputs."""
    texts, truth = messages(400, seed=8)
    planted = flipped(400, 0.05, seed=9)
    given = truth.copy()
    given[planted] = 1 - given[planted]
    lines = [f"{label}\t{text}" for label, text in zip(SMS.named(given), texts, strict=True)]
    monkeypatch.chdir(tmp_path)
    paths.RAW_DATA.parent.mkdir(parents=True)
    paths.RAW_DATA.write_text("\n".join(lines) + "\n", encoding="utf-8")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(url="messages.txt", mirrors=[], member=None, sha256=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runpy.run_path(str(REPO / "stages/split.py"))["main"](params_module.load())
    paths.TRUNK_DIR.mkdir()
    contracts.write_trunk_info(None, "cpu", "fp32")
    return tmp_path, lines, planted


def test_stage_writes_the_suspects_with_their_lines(split_project) -> None:
    _, lines, planted = split_project
    runpy.run_path(str(REPO / "stages/audit.py"))["main"](params_module.load())
    table = contracts.read_label_issues()
    assert list(table.columns) == list(contracts.LABEL_ISSUE_COLUMNS)
    assert len(table) > 0 and (table["file"] == "messages.txt").all()
    for row in table.itertuples():  # its line in the user's file is that text with that label
        assert lines[row.line - 1] == f"{row.label}\t{row.text}"
    test_lines = set(readers.read_split(paths.split_file("test"))["line"])
    assert not test_lines & set(table["line"])  # test is never audited
    recall, false_share = found_and_false(table["line"] - 1, np.setdiff1d(planted, [
        line - 1 for line in test_lines
    ]))  # fmt: skip
    assert recall >= 0.8 and false_share <= 0.3
    report = contracts.read_audit()
    assert report["enabled"] and report["models"] == ["tfidf"] and report["folds"] == 5
    assert report["label_issues"] == len(table) and report["rows"] == 400 - len(test_lines)
    assert sum(report["by_split"].values()) == len(table)


def test_disabled_audit_writes_an_empty_report(split_project) -> None:
    path, _, _ = split_project
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["audit"]["enabled"] = False
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    runpy.run_path(str(REPO / "stages/audit.py"))["main"](params_module.load())
    assert contracts.read_audit() == {"enabled": False}
    table = contracts.read_label_issues()
    assert table.empty and list(table.columns) == list(contracts.LABEL_ISSUE_COLUMNS)


def test_more_folds_than_rows_is_one_clear_error() -> None:
    with pytest.raises(audit.SpamGPTError, match=r"^audit\.folds: 9 folds of 8 .* 2 to 8$"):
        audit.check_folds(9, 8)


def test_summary_of_no_issues() -> None:
    empty = pd.DataFrame(columns=contracts.LABEL_ISSUE_COLUMNS)
    report = audit.summary(empty, {"train": 10, "val": 3}, SMS)
    assert report == {
        "rows": 13, "label_issues": 0, "by_split": {"train": 0, "val": 0},
        "by_label": {"ham": 0, "spam": 0},
    }  # fmt: skip


def test_three_classes_flips_are_found() -> None:
    """More than two classes: one logistic regression per class against the rest."""
    words = {"billing": ["invoice", "refund", "charge", "paid", "card", "price"],
             "outage": ["down", "offline", "error", "crash", "slow", "broken"],
             "sales": ["demo", "quote", "buy", "trial", "plan", "upgrade"]}  # fmt: skip
    classes = Classes(tuple(words))
    rng = np.random.default_rng(10)
    truth = rng.integers(0, 3, 450)
    texts = [
        " ".join([*rng.choice(words[classes.names[c]], 5), *rng.choice(SHARED, 2)]) + f" #{i}"
        for i, c in enumerate(truth)
    ]
    planted = flipped(450, 0.05, seed=11)
    given = truth.copy()
    given[planted] = (given[planted] + rng.integers(1, 3, len(planted))) % 3
    frame = pd.DataFrame({"line": np.arange(1, 451), "label": classes.named(given), "text": texts})
    table, probs = audit.audit({"train": frame}, {"train": "t.csv"}, classes, folds=5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    recall, false_share = found_and_false(table["line"] - 1, planted)
    assert recall >= 0.8 and false_share <= 0.3, (recall, false_share)
    assert list(table["suggested"]) == classes.named(truth[table["line"] - 1])


# Each function on tiny inputs, against scikit-learn and cleanlab where they are the reference


def test_logistic_is_one_liblinear_regression_per_class() -> None:
    model = audit.logistic(2.5)
    inner = model.get_params()
    assert type(model).__name__ == "OneVsRestClassifier"
    assert (inner["estimator__C"], inner["estimator__solver"]) == (2.5, "liblinear")
    assert inner["estimator__max_iter"] == 1000


def test_tfidf_features_are_the_baselines_fitted_on_every_text() -> None:
    from spamgpt.evaluate import baseline

    texts = ["win a free prize now", "see you at dinner", "free dinner now"]
    expected = baseline.features().fit_transform(texts)
    assert (audit.tfidf_features(texts) != expected).nnz == 0


def test_standardised_features_have_mean_0_and_variance_1() -> None:
    """A constant feature becomes 0; one that varies by 1e-6 is not blown up (the 1e-6 added
    to its deviation halves it)."""
    hidden = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 2e-6]])
    np.testing.assert_allclose(
        audit.standardised(hidden), [[-1 / (1 + 1e-6), 0, -0.5], [1 / (1 + 1e-6), 0, 0.5]],
        rtol=1e-12,
    )  # fmt: skip


def test_out_of_fold_is_scikit_learns_cross_validated_prediction() -> None:
    """Stratified folds shuffled with seed 0 (multi-label: plain folds, shuffled alike), each
    row predicted by the model fitted on the others."""
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 4))
    targets = (features[:, 0] + rng.normal(size=30) > 0).astype(np.int64)
    found = audit.out_of_fold(features, targets, 3, 0.5, audit.task_for(SMS))
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    expected = cross_val_predict(audit.logistic(0.5), features, targets, cv=folds,
                                 method="predict_proba")  # fmt: skip
    np.testing.assert_array_equal(found, expected)
    multi = Classes(("a", "b"), None, label_format="multi")
    sets = np.column_stack([targets, 1 - targets * (features[:, 1] > 0)])
    found = audit.out_of_fold(features, sets, 3, 0.5, audit.task_for(multi))
    folds = KFold(n_splits=3, shuffle=True, random_state=0)
    expected = cross_val_predict(audit.logistic(0.5), features, sets, cv=folds,
                                 method="predict_proba")  # fmt: skip
    np.testing.assert_array_equal(found, expected)


def test_mean_hidden_reads_the_cache_a_chunk_of_messages_at_a_time(monkeypatch) -> None:
    """Chunks of 2 messages give the whole cache's means; a message of no token has 0s."""
    rows = torch.arange(16.0).reshape(8, 2)  # messages of 1, 3, 0, 2 and 2 tokens
    sequences = PackedSequences(rows, torch.tensor([1, 3, 0, 2, 2]))
    expected = [[0.0, 1.0], [4.0, 5.0], [0.0, 0.0], [9.0, 10.0], [13.0, 14.0]]
    np.testing.assert_allclose(audit.mean_hidden(sequences), expected)
    monkeypatch.setattr(audit, "POOL_CHUNK", 2)
    np.testing.assert_allclose(audit.mean_hidden(sequences), expected)
    assert audit.mean_hidden(sequences).dtype == np.float32


def test_as_many_folds_as_rows_is_allowed() -> None:
    audit.check_folds(8, 8)
    audit.check_folds(2, 8)


def write_trunk_cache(split: str, rows: torch.Tensor, lengths: list[int]) -> None:
    from spamgpt.data import tensorfile

    path = paths.trunk_file(split)
    layout = {"lengths": (torch.int64, (len(lengths),)), "hidden": (torch.float32, rows.shape)}
    tensorfile.create(path, layout)
    with tensorfile.TensorFile(path, writable=True) as f:
        f.write("lengths", 0, torch.tensor(lengths))
        f.write("hidden", 0, rows)


def test_trunk_features_are_each_splits_mean_states_in_order(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths.TRUNK_DIR.mkdir(parents=True)
    contracts.write_trunk_info(None, "cpu", "fp32")
    assert audit.trunk_features(("train", "val"), 3) is None  # nothing cached: all blocks train
    contracts.write_trunk_info(2, "cpu", "fp32")
    write_trunk_cache("train", torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), [2, 1])
    write_trunk_cache("val", torch.tensor([[7.0, 9.0]]), [1])
    np.testing.assert_allclose(
        audit.trunk_features(("train", "val"), 3), [[2.0, 3.0], [5.0, 6.0], [7.0, 9.0]]
    )
    message = (
        r"^data/trunk: 3 messages cached, the splits hold 4; re-run the loaders and trunk "
        r"stages \(dvc repro trunk\)$"
    )
    with pytest.raises(audit.SpamGPTError, match=message):
        audit.trunk_features(("train", "val"), 4)


def test_targets_are_class_indices_or_label_sets_of_integers() -> None:
    frame = pd.DataFrame({"label": ["spam", "ham", "spam"]})
    targets = audit.targets_of(frame, SMS)
    assert targets.tolist() == [1, 0, 1] and targets.dtype == np.int64
    multi = Classes(("a", "b"), None, label_format="multi")
    sets = audit.targets_of(pd.DataFrame({"label": ['["b"]', '["a", "b"]']}), multi)
    assert sets.tolist() == [[0, 1], [1, 1]] and sets.dtype == np.int64


def test_a_rows_file_is_the_users_as_messages_name_it() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(url="https://host/data/sms%20spam.zip", member="SMSSpamCollection")
    data = params_module.parse(raw).data
    assert audit.source_file("train", data) == "sms spam.zip/SMSSpamCollection"
    raw["data"].update(url=None, member=None, sha256=None)
    raw["data"]["files"] = {
        "train": {"url": "given/train.csv", "sha256": None},
        "val": None,
        "test": {"url": "test.csv", "sha256": None},
    }
    data = params_module.parse(raw).data
    assert audit.source_file("train", data) == "given/train.csv"
    assert audit.source_file("val", data) == "given/train.csv"  # carved from train
    assert audit.source_file("test", data) == "test.csv"
    raw["data"]["files"]["val"] = {"url": "https://host/v.csv", "sha256": None}
    assert audit.source_file("val", params_module.parse(raw).data) == "v.csv"


def test_the_audit_is_cleanlabs_on_the_averaged_probabilities() -> None:
    """The flagged rows, their order and scores are cleanlab's (find_label_issues ranked by
    self-confidence, get_label_quality_scores) on the mean of the TF-IDF model's (C = 10) and
    the trunk model's (C = 0.1) out-of-fold probabilities; the table keeps each row's columns,
    its split and its file."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    texts, truth = messages(120, seed=12)
    given = truth.copy()
    given[[3, 50, 90, 100]] = 1 - given[[3, 50, 90, 100]]
    frame = pd.DataFrame({"line": np.arange(1, 121), "label": SMS.named(given), "text": texts})
    frames = {"train": frame.iloc[:100], "val": frame.iloc[100:].reset_index(drop=True)}
    hidden = np.random.default_rng(13).normal(size=(120, 6)) + truth[:, None]
    task = audit.task_for(SMS)
    words = audit.out_of_fold(audit.tfidf_features(texts), given, 4, 10.0, task)
    states = audit.out_of_fold(audit.standardised(hidden), given, 4, 0.1, task)
    expected = (words + states) / 2
    table, probs = audit.audit(frames, {"train": "a.txt", "val": "b.txt"}, SMS, 4, hidden)
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    flagged = find_label_issues(given, expected, return_indices_ranked_by="self_confidence")
    assert len(flagged) >= 3 and list(table["line"]) == (flagged + 1).tolist()
    scores = get_label_quality_scores(given, expected, method="self_confidence")
    assert table["score"].tolist() == scores[flagged].round(4).tolist()
    assert list(table.columns) == ["line", "label", "text", "split", "file", "suggested", "score"]
    assert table["split"].tolist() == ["train" if i < 100 else "val" for i in flagged]
    assert table["file"].tolist() == ["a.txt" if i < 100 else "b.txt" for i in flagged]
    assert table["suggested"].tolist() == SMS.named(expected[flagged].argmax(axis=1))
    assert table.index.tolist() == list(range(len(table)))
    _, words_only = audit.audit(frames, {"train": "a.txt", "val": "b.txt"}, SMS, 4)
    np.testing.assert_array_equal(words_only, words)


def test_a_multi_label_audit_is_cleanlabs_multi_label_one() -> None:
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    classes = Classes(("a", "b"), None, label_format="multi")
    rng = np.random.default_rng(14)
    truth = rng.random((80, 2)) < 0.4
    texts = [
        " ".join(["alpha"] * int(row[0]) + ["beta"] * int(row[1]) + [f"w{i}"])
        for i, row in enumerate(truth)
    ]
    given = truth.copy()
    given[[5, 40], 0] = ~given[[5, 40], 0]
    labels = [json.dumps([n for n, on in zip(classes.names, row, strict=True) if on])
              for row in given]  # fmt: skip
    frame = pd.DataFrame({"line": np.arange(1, 81), "label": labels, "text": texts})
    table, probs = audit.audit({"train": frame}, {"train": "t.csv"}, classes, folds=4)
    sets = [list(np.flatnonzero(row)) for row in given]
    flagged = find_label_issues(sets, probs, return_indices_ranked_by="self_confidence")
    assert list(table["line"]) == (flagged + 1).tolist() and {6, 41} <= set(table["line"])
    scores = get_label_quality_scores(sets, probs)
    assert table["score"].tolist() == scores[flagged].round(4).tolist()
    report = audit.summary(table, {"train": 80}, classes)
    carried = {n: sum(n in json.loads(v) for v in table["label"]) for n in classes.names}
    assert report == {"rows": 80, "label_issues": len(table), "by_split": {"train": len(table)},
                      "by_label": carried}  # fmt: skip


def test_summary_counts_each_split_and_label_of_the_suspects() -> None:
    table = pd.DataFrame({"split": ["val", "train", "val"], "label": ["spam", "spam", "ham"]})
    report = audit.summary(table, {"train": 10, "val": 5}, SMS)
    assert report == {
        "rows": 15, "label_issues": 3, "by_split": {"train": 1, "val": 2},
        "by_label": {"ham": 1, "spam": 2},
    }  # fmt: skip
    assert type(report["by_split"]["val"]) is int
    assert list(audit.no_issues().columns) == list(contracts.LABEL_ISSUE_COLUMNS)
    assert audit.no_issues().empty and audit.AUDITED_SPLITS == ("train", "val")
