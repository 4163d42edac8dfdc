"""Given splits: separate files with leaks between them, a file with a split column, several
text fields; bad inputs stop in one line naming the file or the parameter."""

import copy
import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

from spamgpt import params, paths
from spamgpt.data import download, readers, splits
from spamgpt.errors import SpamGPTError

REAL = yaml.safe_load((REPO / "params.yaml").read_text())


def data_params(**data: object) -> params.Params:
    raw = copy.deepcopy(REAL)
    raw["data"].update(data)
    return params.parse(raw)


def given(**split: object) -> params.Params:
    """Given train/val/test CSV files (data/local/<split>.csv), three classes."""
    files = {
        name: {"url": f"data/local/{name}.csv", "sha256": None} for name in ("train", "val", "test")
    }
    p = data_params(
        url=None, mirrors=[], member=None, sha256=None, format="csv", labels=None,
        positive_label=None, files=files,
    )  # fmt: skip
    return dataclasses.replace(p, split=dataclasses.replace(p.split, **split))


def rows(prefix: str, n: int, classes: tuple[str, ...] = ("a", "b", "c")) -> list[tuple]:
    return [(classes[i % len(classes)], f"{prefix} message {i}") for i in range(n)]


def write_raw(name: str, records: list[tuple]) -> None:
    """A given split's verified copy, as download_data leaves it."""
    path = paths.raw_split_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records, columns=["label", "text"]).to_csv(path, index=False)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def leaky(workspace: Path) -> None:
    write_raw("train", [*rows("train", 30), ("a", "val message 1"), ("b", "test message 2")])
    write_raw("val", [*rows("val", 9), ("c", "test message 2")])
    write_raw("test", [*rows("test", 9), ("a", "test message 0")])  # and one duplicate inside


def test_leaks_are_counted_per_pair_and_dropped_from_train(workspace: Path) -> None:
    leaky(workspace)
    p = given()
    frames, report = splits.split_dataset(p.data, p.split)
    assert report["cross_duplicates"] == {"train-val": 2, "train-test": 1, "val-test": 1}
    assert report["cross_duplicates_removed"] == 2 and report["duplicates_removed"] == 1
    assert {"val message 1", "test message 2"}.isdisjoint(frames["train"]["text"])
    assert len(frames["train"]) == 30 and len(frames["test"]) == 9
    assert report["labels"] == ["a", "b", "c"] and report["val_carved"] is False
    sources = report["sources"]
    assert sources["test"]["source"] == "data/local/test.csv" and sources["test"]["rows"] == 10
    assert sources["train"]["sha256"] == download.sha256_file(paths.raw_split_file("train"))
    kept = splits.split_dataset(p.data, given(cross_duplicates="keep").split)[0]
    assert len(kept["train"]) == 32


def test_leaks_can_stop_the_split(workspace: Path) -> None:
    leaky(workspace)
    p = given(cross_duplicates="error")
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    assert str(e.value).startswith(
        "2 texts of train (data/local/train.csv) are also in val (data/local/val.csv), such as "
    )
    assert "allowed: drop_from_train (remove them from train) or keep" in str(e.value)


def test_a_missing_val_is_carved_from_train_stratified(workspace: Path) -> None:
    write_raw("train", rows("train", 60))
    write_raw("test", rows("test", 9))
    p = given()
    files = dataclasses.replace(p.data.files, val=None)
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, files=files))
    frames, report = splits.split_dataset(p.data, p.split)
    assert report["val_carved"] is True and "val" not in report["sources"]
    assert report["val"] == {"a": 2, "b": 2, "c": 2} and len(frames["train"]) == 54


def test_a_class_only_in_test_names_the_class_and_the_files(workspace: Path) -> None:
    write_raw("train", rows("train", 30, ("a", "b")))
    write_raw("val", rows("val", 6, ("a", "b")))
    write_raw("test", [*rows("test", 6, ("a", "b")), ("z", "only here")])
    p = given()
    with pytest.raises(SpamGPTError, match=r"^class 'z' is in test \(data/local/test.csv\) but "
                       r"not in train \(data/local/train.csv\)"):  # fmt: skip
        splits.split_dataset(p.data, p.split)


def test_files_holding_the_random_split_give_the_same_splits(workspace: Path) -> None:
    """The one-file random split written out as train/val/test files reads back as the same
    messages in the same order, with the same counts: what the later stages read (text and
    label; `line` only traces a message to its file) is the same, so are their results."""
    paths.RAW_DATA.parent.mkdir(parents=True)
    records = [*rows("m", 60), ("a", "m message 0")]  # and a duplicate, which dedupe drops
    pd.DataFrame(records, columns=["label", "text"]).to_csv(paths.RAW_DATA, index=False)
    one = data_params(format="csv", labels=None, positive_label=None)
    at_random, random_report = splits.split_dataset(one.data, one.split)
    paths.RAW_DATA.unlink()
    for name, frame in at_random.items():
        write_raw(name, list(frame[["label", "text"]].itertuples(index=False)))
    p = given()
    as_given, given_report = splits.split_dataset(p.data, p.split)
    for name in paths.SPLITS:
        columns = ["label", "text"]
        assert as_given[name][columns].equals(at_random[name][columns]), name
        assert given_report[name] == random_report[name]
    assert given_report["cross_duplicates"] == {"train-val": 0, "train-test": 0, "val-test": 0}
    assert given_report["labels"] == random_report["labels"] == ["a", "b", "c"]


def test_a_split_column_names_each_rows_split(workspace: Path) -> None:
    frame = pd.DataFrame(
        [
            (label, text, "TRAIN" if i < 30 else "TEST")
            for i, (label, text) in enumerate(rows("m", 40))
        ],
        columns=["label", "text", "part"],
    )
    paths.RAW_DATA.parent.mkdir(parents=True)
    frame.to_parquet(paths.RAW_DATA, index=False)
    names = {"train": "TRAIN", "val": "VAL", "test": "TEST"}
    p = data_params(format="parquet", labels=None, positive_label=None, split_column="part",
                    split_names=names)  # fmt: skip
    frames, report = splits.split_dataset(p.data, p.split)
    assert len(frames["test"]) == 10 and len(frames["train"]) + len(frames["val"]) == 30
    assert report["split_column"] == "part" and report["val_carved"] is True
    frame.loc[3, "part"] = "dev"
    frame.to_parquet(paths.RAW_DATA, index=False)
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    assert str(e.value) == (  # the file as the user named it (data.url/data.member)
        "sms+spam+collection.zip/SMSSpamCollection: row 4: part is 'dev', not a split; "
        "allowed: TRAIN, VAL, TEST "
        "(data.split_names); fix the row, or set data.bad_lines: skip to drop such rows and "
        "count them"
    )


def test_several_text_fields_are_joined_and_a_missing_one_is_a_bad_row(tmp_path: Path) -> None:
    records = [{"label": "a", "subject": f"s{i}", "body": f"b{i}"} for i in range(12)]
    records[5].pop("body")
    path = tmp_path / "mail.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    fmt = readers.Format("jsonl", ["subject", "body"], "label", "Subject: {subject}\n\n{body}")
    parsed = readers.read_messages(path, fmt, None, "skip")
    assert parsed.bad_lines == {"missing_text": 1} and len(parsed.frame) == 11
    assert parsed.frame["text"][0] == "Subject: s0\n\nb0"
    with pytest.raises(SpamGPTError, match=r":6: text field 'body' is missing; fix the line"):
        readers.read_messages(path, fmt, None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"text_template": "{subject}: {sender}", "format": "csv", "text_column": ["subject"]},
         "data.text_template: names field {sender}, which is not in data.text_column (subject)"),
        ({"url": None}, "data.url: set exactly one of data.url (one file) and data.files"),
        ({"split_column": "part"}, "data.split_column: label_tab_text files have no named columns"),
        ({"split_names": {"train": "a", "val": "a", "test": "b"}},
         "data.split_names: train, val and test need three different values"),
    ],
)  # fmt: skip
def test_bad_data_params_are_one_line(data: dict, message: str) -> None:
    with pytest.raises(params.ParamsError) as e:
        data_params(**data)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_missing_file_of_a_split_names_it_and_leaves_nothing(workspace: Path) -> None:
    (workspace / "data/local").mkdir(parents=True)
    (workspace / "data/local/train.csv").write_text("label,text\na,hi\n")
    sources = {"train": ("data/local/train.csv", None), "test": ("data/local/test.csv", None)}
    with pytest.raises(download.DownloadError) as e:
        download.fetch_files(sources, paths.RAW_DATA)
    assert str(e.value) == (
        "data.files.test.url: could not download test (test.csv): data/local/test.csv: no such file"
    )
    assert not paths.RAW_DATA.exists() and not any(paths.RAW_DATA.parent.iterdir())


def test_multi_label_given_splits_carve_val_and_count_labels(workspace: Path) -> None:
    sets = ["a", "b", "a|b", "c", "a|c", "b|c"]
    write_raw("train", [(sets[i % 6], f"train message {i}") for i in range(60)])
    write_raw("test", [(sets[i % 6], f"test message {i}") for i in range(12)])
    p = given()
    files = dataclasses.replace(p.data.files, val=None)
    multi = dataclasses.replace(p.data, files=files, label_format="multi")
    frames, report = splits.split_dataset(multi, p.split)
    assert report["labels"] == ["a", "b", "c"] and report["label_format"] == "multi"
    assert report["label_conflicts"] == 0 and report["test"] == {"a": 6, "b": 6, "c": 6}
    assert len(frames["val"]) == 6 and min(report["val"].values()) >= 2
    assert json.loads(frames["train"]["label"][0]) == ["a"]


def test_a_given_file_without_a_column_the_others_have_is_named(workspace: Path) -> None:
    """The test file lacks the text column train and val have: the file is what is wrong, so
    the error names it and train's columns, not data.text_column."""
    write_raw("train", rows("train", 30))
    write_raw("val", rows("val", 6))
    test = paths.raw_split_file("test")
    pd.DataFrame(rows("test", 6), columns=["label", "body"]).to_csv(test, index=False)
    p = given()
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    assert str(e.value) == (
        "data/local/test.csv (data.files.test): no column 'text' (it has label, body), though "
        "data/local/train.csv (data.files.train) has label, text: give data/local/test.csv "
        "the same columns"
    )


def test_a_column_no_given_file_has_is_the_setting(workspace: Path) -> None:
    for name, n in (("train", 30), ("val", 6), ("test", 6)):
        write_raw(name, rows(name, n))
    p = given()
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, text_column="body"))
    with pytest.raises(SpamGPTError, match=r"no column 'body' .*; set data.text_column$"):
        splits.split_dataset(p.data, p.split)


# --- pinned by mutation testing (tools/mutate.py splits) ---


def test_combined_sha256_is_of_each_name_and_hash_a_line() -> None:
    import hashlib

    hashes = {"train": "ab12", "test": "cd34"}
    expected = hashlib.sha256(b"train ab12\ntest cd34\n").hexdigest()
    assert splits.combined_sha256(hashes) == expected


def test_the_random_split_reports_what_it_read_dropped_and_kept(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths.RAW_DATA.parent.mkdir(parents=True)
    records = [*rows("m", 60), ("a", "m message 0"), ("a", "m message 1")]
    text = pd.DataFrame(records, columns=["label", "text"]).to_csv(index=False)
    paths.RAW_DATA.write_text(text + "a,too,many,fields\n")
    p = data_params(format="csv", labels=None, positive_label=None, bad_lines="skip")
    with caplog.at_level("INFO", logger="spamgpt.data.splits"):
        frames, report = splits.split_dataset(p.data, p.split)
    assert caplog.messages == [
        "sms+spam+collection.zip/SMSSpamCollection: skipped 1 bad line (data.bad_lines: skip): "
        "1 wrong_fields; kept 62"
    ]
    assert report["raw_rows"] == 62 and report["duplicates_removed"] == 2
    assert report["bad_lines"] == 1 and report["bad_lines_by_reason"] == {"wrong_fields": 1}
    assert report["raw_sha256"] == download.sha256_file(paths.RAW_DATA)
    assert report["labels"] == ["a", "b", "c"] and "label_conflicts" not in report
    assert {name: sum(report[name].values()) for name in paths.SPLITS} == {
        name: len(frames[name]) for name in paths.SPLITS
    }
    assert sum(len(f) for f in frames.values()) == 60
    kept = dataclasses.replace(p, split=dataclasses.replace(p.split, dedupe=False))
    frames, report = splits.split_dataset(kept.data, kept.split)
    assert report["duplicates_removed"] == 0 and sum(len(f) for f in frames.values()) == 62


def test_given_splits_report_their_sources_rows_and_bad_lines(workspace: Path) -> None:
    write_raw("train", rows("train", 30))
    write_raw("val", rows("val", 6))
    write_raw("test", rows("test", 6))
    with open(paths.raw_split_file("test"), "a") as f:
        f.write("a,one,too many\n")
    p = given(cross_duplicates="keep")
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, bad_lines="skip"))
    report = splits.split_dataset(p.data, p.split)[1]
    hashes = {n: download.sha256_file(paths.raw_split_file(n)) for n in paths.SPLITS}
    assert report["raw_sha256"] == splits.combined_sha256(hashes)
    assert report["sources"]["test"] == {
        "source": "data/local/test.csv",
        "sha256": hashes["test"],
        "rows": 6,
        "bad_lines": 1,
    }
    assert report["raw_rows"] == 42 and report["bad_lines"] == 1
    assert report["bad_lines_by_reason"] == {"wrong_fields": 1}
    assert report["train"] == {"a": 10, "b": 10, "c": 10} and report["test"] == {
        "a": 2,
        "b": 2,
        "c": 2,
    }
    assert "cross_duplicates_removed" not in report and report["val_carved"] is False


def test_val_that_cannot_be_carved_says_why(workspace: Path) -> None:
    write_raw("train", [*rows("train", 10, ("a",)), ("b", "the only b")])
    write_raw("test", rows("test", 4, ("a", "b")))
    p = given()
    files = dataclasses.replace(p.data.files, val=None)
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, files=files))
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    assert str(e.value).startswith(
        "data/local/train.csv: cannot carve val (split.val 0.1) from train's 11 messages "
        "{'a': 10, 'b': 1} with every class in both ("
    )
    assert str(e.value).endswith("); give a val file (data.files.val) or more training data")


def test_a_class_of_data_labels_without_train_examples_is_named(workspace: Path) -> None:
    for name, n in (("train", 30), ("val", 6), ("test", 6)):
        write_raw(name, rows(name, n, ("a", "b")))
    p = given()
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, labels=["a", "b", "c"]))
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    assert str(e.value) == (
        "class 'c' (data.labels) has no example in train (data/local/train.csv); every class "
        "needs one: add some, or leave it out of data.labels"
    )
    write_raw("val", [*rows("val", 6, ("a", "b")), ("z", "only in val")])
    p = given()
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    assert str(e.value) == (
        "class 'z' is in val (data/local/val.csv) but not in train (data/local/train.csv): the "
        "model cannot learn it; add train examples of it, or leave it out with data.labels"
    )


def test_a_split_column_without_train_or_test_rows_names_the_value(workspace: Path) -> None:
    frame = pd.DataFrame(
        [(label, text, "TRAIN") for label, text in rows("m", 30)], columns=["label", "text", "part"]
    )
    paths.RAW_DATA.parent.mkdir(parents=True)
    frame.to_csv(paths.RAW_DATA, index=False)
    names = {"train": "TRAIN", "val": "VAL", "test": "TEST"}
    p = data_params(format="csv", labels=None, positive_label=None, split_column="part",
                    split_names=names)  # fmt: skip
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    assert str(e.value) == (
        f"{p.data.url}: no row has part 'TEST' (data.split_names.test); test needs rows: set "
        "data.split_names.test to the value naming them"
    )
    frame.loc[25:, "part"] = "TEST"
    frame.loc[20:24, "part"] = "VAL"
    frame.to_csv(paths.RAW_DATA, index=False)
    frames, report = splits.split_dataset(p.data, p.split)
    assert [len(frames[n]) for n in paths.SPLITS] == [20, 5, 5]
    assert list(frames["val"]) == ["line", "label", "text"]
    assert report["sources"] == {
        "dataset": {"source": p.data.url, "sha256": report["raw_sha256"], "rows": 30}
    }
    assert report["raw_sha256"] == download.sha256_file(paths.RAW_DATA)
    assert report["val_carved"] is False and report["raw_rows"] == 30


def write_raw_data(records: list[tuple], columns: tuple[str, ...] = ("label", "text")) -> None:
    paths.RAW_DATA.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records, columns=list(columns)).to_csv(paths.RAW_DATA, index=False)


def test_the_random_split_is_datas_split_with_the_settings(workspace: Path) -> None:
    """data.labels (their order, and rows of other labels refused), the positive label, the
    seed; a text template joining two columns."""
    records = [(("a", "b", "c")[i % 3], f"subject {i}", f"body {i}") for i in range(90)]
    write_raw_data(records, ("label", "subject", "body"))
    p = data_params(
        format="csv", labels=["b", "a"], positive_label="b", bad_lines="skip",
        text_column=["subject", "body"], text_template="{subject}: {body}",
    )  # fmt: skip
    p = dataclasses.replace(p, split=dataclasses.replace(p.split, seed=11))
    frames, report = splits.split_dataset(p.data, p.split)
    assert report["labels"] == ["b", "a"] and report["positive_label"] == "b"
    assert report["bad_lines_by_reason"] == {"unknown_label": 30}
    fmt = readers.Format("csv", ["subject", "body"], "label", "{subject}: {body}")
    parsed = readers.read_messages(paths.RAW_DATA, fmt, ("b", "a"), "skip")
    expected = readers.split(
        readers.dedupe(parsed.frame), p.split.val, p.split.test, 11, ("b", "a")
    )
    for name in paths.SPLITS:
        assert frames[name].equals(expected[name]), name
    assert frames["train"]["text"][0] == "subject 0: body 0"


def test_a_multi_label_random_split_stratifies_and_counts_each_label(workspace: Path) -> None:
    sets = ["a", "b", "a|b", "c", "a|c", "b|c", ""]
    records = [(sets[i % 7], f"message {i}") for i in range(140)] + [("a", "message 3")]
    write_raw_data(records)
    p = data_params(format="csv", labels=None, positive_label=None, label_format="multi",
                    allow_empty_labels=True)  # fmt: skip
    frames, report = splits.split_dataset(p.data, p.split)
    assert report["label_conflicts"] == 1 and report["label_format"] == "multi"
    fmt = readers.Format("csv", "text", "label", None, "multi", "|", allow_empty_labels=True)
    whole = readers.dedupe(readers.read_messages(paths.RAW_DATA, fmt, None).frame)
    s = p.split
    expected = readers.split(whole, s.val, s.test, s.seed, ("a", "b", "c"), label_format="multi")
    for name in paths.SPLITS:
        assert frames[name].equals(expected[name]), name
        assert report[name] == readers.label_counts(frames[name], ("a", "b", "c"), "multi")
        assert report[name]["a"] == sum("a" in json.loads(v) for v in frames[name]["label"])


def test_a_multi_label_val_is_carved_on_the_rarest_labels_with_the_seed(workspace: Path) -> None:
    sets = ["a", "b", "a|b", "c", "a|c", "b|c"]
    write_raw("train", [(sets[i % 6], f"train message {i}") for i in range(60)])
    write_raw("test", [(sets[i % 6], f"test message {i}") for i in range(12)])
    p = given(seed=3)
    files = dataclasses.replace(p.data.files, val=None)
    multi = dataclasses.replace(p.data, files=files, label_format="multi")
    frames, _ = splits.split_dataset(multi, p.split)
    fmt = readers.Format("csv", "text", "label", None, "multi", "|")
    train = readers.read_messages(paths.raw_split_file("train"), fmt, None).frame
    rest, val = readers.stratified(train, p.split.val, 3, label_format="multi")
    assert frames["val"].equals(readers.in_file_order(val))
    assert frames["train"].equals(readers.in_file_order(rest))


def test_given_splits_without_dedupe_remove_nothing(workspace: Path) -> None:
    write_raw("train", [*rows("train", 30), ("a", "train message 0")])
    write_raw("val", rows("val", 6))
    write_raw("test", rows("test", 6))
    frames, report = splits.split_dataset(given().data, given(dedupe=False).split)
    assert report["duplicates_removed"] == 0 and len(frames["train"]) == 31


def test_a_leak_error_shows_the_first_shared_text_cut_at_40(workspace: Path) -> None:
    long = "z" * 50
    write_raw("train", [*rows("train", 30), ("a", long), ("b", "yy")])
    write_raw("val", [*rows("val", 6), ("a", long), ("b", "yy")])
    write_raw("test", rows("test", 6))
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(given().data, given(cross_duplicates="error").split)
    assert str(e.value).startswith(
        "2 texts of train (data/local/train.csv) are also in val (data/local/val.csv), such as "
        "'yy': a leak; split.cross_duplicates: error stops on it; allowed: "
    )
    write_raw("val", [*rows("val", 6), ("a", long)])
    with pytest.raises(SpamGPTError, match=f"such as '{'z' * 40}': a leak"):
        splits.split_dataset(given().data, given(cross_duplicates="error").split)
    frames, _ = splits.split_dataset(given().data, given().split)  # dropped from train
    assert list(frames["train"]) == ["line", "label", "text"]
    assert frames["train"].index.tolist() == list(range(31))


def test_given_files_messages_name_the_users_file_and_data_labels_apply(workspace: Path) -> None:
    write_raw("train", [*rows("train", 30), ("zebra", "not a class")])
    write_raw("val", rows("val", 6))
    write_raw("test", rows("test", 6))
    p = given()
    p = dataclasses.replace(p, data=dataclasses.replace(p.data, labels=["a", "b", "c"]))
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    assert str(e.value).startswith("data/local/train.csv:32: unknown label 'zebra'; allowed: a,")


def test_a_split_columns_classes_and_leaks_name_the_file(workspace: Path) -> None:
    records = [(label, text, "TRAIN") for label, text in rows("m", 30, ("a", "b"))]
    records += [(label, text, "TEST") for label, text in rows("t", 9, ("a", "b"))]
    records += [("a", "m message 0", "TEST"), ("q", "not a class", "TRAIN")]
    write_raw_data(records, ("label", "text", "part"))
    names = {"train": "TRAIN", "val": "VAL", "test": "TEST"}
    p = data_params(format="csv", labels=["a", "b"], positive_label="a",
                    split_column="part", split_names=names, bad_lines="skip")  # fmt: skip
    p = dataclasses.replace(p, split=dataclasses.replace(p.split, cross_duplicates="error"))
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(p.data, p.split)
    url = p.data.url
    assert str(e.value).startswith(f"1 texts of train ({url}) are also in test ({url}), such as")
    p = dataclasses.replace(p, split=dataclasses.replace(p.split, cross_duplicates="keep"))
    _, report = splits.split_dataset(p.data, p.split)
    assert report["bad_lines_by_reason"] == {"unknown_label": 1}
    assert report["labels"] == ["a", "b"] and report["positive_label"] == "a"


def test_a_file_lacking_the_label_column_or_with_no_header_is_named(workspace: Path) -> None:
    wide = [f"extra{i}" for i in range(20)]
    for name in ("train", "val"):
        path = paths.raw_split_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([["a", f"{name} text", *range(20)]], columns=["label", "text", *wide]).to_csv(
            path, index=False
        )
    test = paths.raw_split_file("test")
    pd.DataFrame([["x", "a"]], columns=["text", "category"]).to_csv(test, index=False)
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(given().data, given().split)
    shown = ", ".join(["label", "text", *wide[:18]])
    assert str(e.value) == (
        "data/local/test.csv (data.files.test): no column 'label' (it has text, category), "
        f"though data/local/train.csv (data.files.train) has {shown}: give "
        "data/local/test.csv the same columns"
    )
    paths.raw_split_file("train").write_text('label,"text\n')  # no header to read: skipped
    with pytest.raises(SpamGPTError, match=r"^data/local/test\.csv \(data\.files\.test\): no col"):
        splits.split_dataset(given().data, given().split)
    pd.DataFrame([["x"] * 22], columns=["text", "category", *wide]).to_csv(test, index=False)
    with pytest.raises(SpamGPTError) as e:
        splits.split_dataset(given().data, given().split)
    assert f"(it has text, category, {', '.join(wide[:18])}), though" in str(e.value)


def test_a_number_random_split_is_binned_and_summarised(workspace: Path) -> None:
    """data.label_format: number: one output named after the column, the splits stratified on
    the numbers' bins (readers.split), each summarised, no class to find in each split."""
    write_raw_data([(str(i % 10 / 2), f"message {i}") for i in range(60)])
    p = data_params(format="csv", labels=None, positive_label=None)
    numbers = dataclasses.replace(p.data, label_format="number")
    frames, report = splits.split_dataset(numbers, p.split)
    assert report["labels"] == ["label"] and report["label_format"] == "number"
    assert "label_conflicts" not in report
    fmt = readers.Format("csv", "text", "label", None, "number")
    whole = readers.dedupe(readers.read_messages(paths.RAW_DATA, fmt, None).frame)
    s = p.split
    expected = readers.split(whole, s.val, s.test, s.seed, ("label",), "number")
    for name in paths.SPLITS:
        assert frames[name].equals(expected[name]), name
        assert report[name] == readers.number_summary(frames[name]["label"])


def test_number_given_splits_carve_val_on_the_bins(workspace: Path) -> None:
    write_raw("train", [(str(i % 7), f"train message {i}") for i in range(60)])
    write_raw("test", [(str(i % 3), f"test message {i}") for i in range(12)])
    p = given(seed=4)
    files = dataclasses.replace(p.data.files, val=None)
    numbers = dataclasses.replace(p.data, files=files, label_format="number")
    frames, report = splits.split_dataset(numbers, p.split)
    assert report["labels"] == ["label"] and report["val_carved"] is True
    assert "label_conflicts" not in report
    assert report["test"] == {"count": 12, "mean": 1.0, "std": (2 / 3) ** 0.5, "min": 0.0,
                              "max": 2.0}  # fmt: skip
    fmt = readers.Format("csv", "text", "label", None, "number")
    train = readers.read_messages(paths.raw_split_file("train"), fmt, None).frame
    rest, val = readers.stratified(train, p.split.val, 4, "number")
    assert frames["val"].equals(readers.in_file_order(val))
    assert frames["train"].equals(readers.in_file_order(rest))
