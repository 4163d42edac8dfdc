"""spamgpt.data.readers: strict line-by-line parsing, de-duplication, the stratified split and the
split files' CSV round trip."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_stage

from spamgpt.data import readers
from spamgpt.errors import SpamGPTError
from spamgpt.labels import SMS, Classes

REPO = Path(__file__).resolve().parents[1]


def raw_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "SMSSpamCollection"
    path.write_bytes(content)
    return path


def rows(parsed: readers.ParsedMessages) -> list[tuple[int, str, str]]:
    return list(parsed.frame.itertuples(index=False, name=None))


# --- parsing ---


def test_unbalanced_quotes_stay_on_their_own_line(tmp_path: Path) -> None:
    path = raw_file(
        tmp_path,
        b'ham\tHe said "hi\nspam\tWIN "cash" now\nham\t"\nham\tquote at the end"\nspam\tlast\n',
    )
    assert rows(readers.read_messages(path, fmt=readers.Format(), labels=SMS.names)) == [
        (1, "ham", 'He said "hi'),
        (2, "spam", 'WIN "cash" now'),
        (3, "ham", '"'),
        (4, "ham", 'quote at the end"'),
        (5, "spam", "last"),
    ]


def test_crlf_and_a_last_line_without_newline(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b'ham\tone\r\nspam\ttwo, "three"\r\nham\tfinal words')
    parsed = readers.read_messages(path, fmt=readers.Format(), labels=SMS.names)
    assert rows(parsed) == [
        (1, "ham", "one"),
        (2, "spam", 'two, "three"'),
        (3, "ham", "final words"),
    ]
    assert parsed.bad_lines == Counter()


def test_text_is_kept_exactly(tmp_path: Path) -> None:
    """Split at the first tab only; spaces, further tabs and unicode are the message's own."""
    texts = ["  padded  ", "a\tb\tc", "ham\tspam", "émoji 😀👍🏽, 中文", "NA", "null"]
    content = "".join(f"ham\t{t}\n" for t in texts).encode()
    parsed = readers.read_messages(
        raw_file(tmp_path, content), fmt=readers.Format(), labels=SMS.names
    )
    assert parsed.frame["text"].tolist() == texts
    assert parsed.frame["line"].tolist() == list(range(1, len(texts) + 1))


BAD_LINES = [
    ("no-tab", b"ham no tab here", "no_tab", "no tab"),
    ("blank-line", b"", "no_tab", "no tab"),
    ("unknown-label", b"eggs\tsome text", "unknown_label", "unknown label 'eggs'"),
    ("label-uppercase", b"HAM\tsome text", "unknown_label", "unknown label 'HAM'"),
    ("label-space", b"ham \tsome text", "unknown_label", "unknown label 'ham '"),
    ("empty-text", b"ham\t", "empty_text", "empty text"),
    ("whitespace-text", b"spam\t  \t ", "empty_text", "empty text"),
    ("whitespace-text-crlf", b"spam\t \r", "empty_text", "empty text"),
    ("undecodable", b"ham\tbad \xff\xfe bytes", "undecodable", "undecodable bytes at column 9"),
    ("latin-1", b"spam\tWin \xa3100 now", "undecodable", "undecodable"),
]
GOOD_BEFORE = [b"ham\tfirst message", b'spam\tWIN "big now']
GOOD_AFTER = [b'ham\tsays "ok', b"spam\tlast one"]


@pytest.mark.parametrize(
    ("line", "kind", "problem"), [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES]
)
def test_bad_line_stops_the_run(tmp_path: Path, line: bytes, kind: str, problem: str) -> None:
    path = raw_file(tmp_path, b"\n".join([*GOOD_BEFORE, line, *GOOD_AFTER]) + b"\n")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, bad_lines="error", fmt=readers.Format(), labels=SMS.names)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert problem in message
    assert "\n" not in message
    assert info.value.exit_code == 1


@pytest.mark.parametrize(
    ("line", "kind", "problem"), [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES]
)
def test_bad_line_is_skipped_and_counted(
    tmp_path: Path, line: bytes, kind: str, problem: str
) -> None:
    path = raw_file(tmp_path, b"\n".join([*GOOD_BEFORE, line, *GOOD_AFTER]) + b"\n")
    parsed = readers.read_messages(path, bad_lines="skip", fmt=readers.Format(), labels=SMS.names)
    assert rows(parsed) == [
        (1, "ham", "first message"),
        (2, "spam", 'WIN "big now'),
        (4, "ham", 'says "ok'),  # the neighbours keep exactly their own text
        (5, "spam", "last one"),
    ]
    assert parsed.bad_lines == Counter({kind: 1})


def test_skip_counts_each_kind(tmp_path: Path) -> None:
    lines = [
        b"ham\tkeep 1",
        b"no tab",
        b"ham\t\xff",
        b"nope\ttext",
        b"ham\tkeep 2",
        b"spam\t ",
        b"also no tab",
        b"\xfe\xff",
        b"spam\tkeep 3",
    ]
    parsed = readers.read_messages(
        raw_file(tmp_path, b"\r\n".join(lines)),
        bad_lines="skip",
        fmt=readers.Format(),
        labels=SMS.names,
    )
    assert parsed.frame["text"].tolist() == ["keep 1", "keep 2", "keep 3"]
    assert parsed.frame["line"].tolist() == [1, 5, 9]
    assert parsed.bad_lines == Counter(
        {"no_tab": 2, "undecodable": 2, "unknown_label": 1, "empty_text": 1}
    )


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("content", [b"", b"ham no tab\nspam\t  \n"], ids=["empty", "all-bad"])
def test_no_messages_is_an_error(tmp_path: Path, policy: str, content: bytes) -> None:
    path = raw_file(tmp_path, content)
    with pytest.raises(SpamGPTError, match=str(path)):
        readers.read_messages(path, bad_lines=policy, fmt=readers.Format(), labels=SMS.names)


# --- dedupe ---


def test_dedupe_keeps_the_first_occurrence() -> None:
    frame = pd.DataFrame(
        {
            "line": [1, 2, 3, 4, 5, 6],
            "label": ["ham", "spam", "spam", "ham", "ham", "ham"],
            "text": ["hi", "WIN", "hi", "Hi", "hi ", "WIN"],
        }
    )
    out = readers.dedupe(frame)
    # exact texts only: "Hi" and "hi " are different messages
    assert list(out.itertuples(index=False, name=None)) == [
        (1, "ham", "hi"),
        (2, "spam", "WIN"),
        (4, "ham", "Hi"),
        (5, "ham", "hi "),
    ]
    assert out.index.tolist() == [0, 1, 2, 3]
    assert len(frame) == 6  # the input is not modified


# --- split ---


def messages(n_ham: int, n_spam: int) -> pd.DataFrame:
    labels = ["ham"] * n_ham + ["spam"] * n_spam
    order = pd.Series(range(len(labels))).sample(frac=1, random_state=0).tolist()
    labels = [labels[i] for i in order]  # interleave the classes
    return pd.DataFrame(
        {
            "line": range(1, len(labels) + 1),
            "label": labels,
            "text": [f"{label} message {i}" for i, label in enumerate(labels)],
        }
    )


@pytest.mark.parametrize(
    ("n_ham", "n_spam", "val", "test"),
    [(700, 300, 0.1, 0.2), (523, 81, 0.15, 0.25), (4825, 747, 0.1, 0.2), (60, 12, 0.3, 0.3)],
)
def test_split_is_stratified_sized_and_disjoint(
    n_ham: int, n_spam: int, val: float, test: float
) -> None:
    frame = messages(n_ham, n_spam)
    parts = readers.split(frame, val, test, seed=123, labels=SMS.names)
    assert list(parts) == ["train", "val", "test"]
    n = len(frame)
    expected = {"val": val * n, "test": test * n}
    expected["train"] = n - expected["val"] - expected["test"]
    spam_ratio = n_spam / n
    for name, part in parts.items():
        # val and test are rounded up; train, the rest, can be up to 2 short
        assert abs(len(part) - expected[name]) < (2 if name == "train" else 1), (name, len(part))
        spam = (part["label"] == "spam").sum()
        assert abs(spam - spam_ratio * len(part)) <= 1, (name, spam, len(part))
        assert part["line"].is_monotonic_increasing
        assert part.index.tolist() == list(range(len(part)))
    texts = [set(part["text"]) for part in parts.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    together = pd.concat(parts.values()).sort_values("line").reset_index(drop=True)
    pd.testing.assert_frame_equal(together, frame)  # every row once, label still with its text


def test_split_is_seeded() -> None:
    frame = messages(300, 100)
    a = readers.split(frame, 0.1, 0.2, seed=1, labels=SMS.names)
    b = readers.split(frame, 0.1, 0.2, seed=1, labels=SMS.names)
    c = readers.split(frame, 0.1, 0.2, seed=2, labels=SMS.names)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert set(a["test"]["text"]) != set(c["test"]["text"])
    assert set(a["val"]["text"]) != set(c["val"]["text"])


@pytest.mark.parametrize(("n_ham", "n_spam"), [(100, 2), (100, 0), (2, 100), (0, 50)])
def test_split_needs_enough_of_each_label(n_ham: int, n_spam: int) -> None:
    with pytest.raises(SpamGPTError, match="at least 3 messages of each label"):
        readers.split(messages(n_ham, n_spam), 0.1, 0.2, seed=0, labels=SMS.names)


def test_split_too_small_to_split_is_a_user_error() -> None:
    with pytest.raises(SpamGPTError):
        readers.split(messages(3, 3), 0.1, 0.2, seed=0, labels=SMS.names)


def test_label_counts() -> None:
    assert readers.label_counts(messages(7, 3), labels=SMS.names) == {"ham": 7, "spam": 3}
    assert readers.label_counts(messages(0, 2), labels=SMS.names) == {"ham": 0, "spam": 2}


# --- the split files: written as the split stage does, read back exactly ---

TRICKY = [
    'He said "hi',
    'WIN "cash" now',
    '"',
    '""',
    '"quoted"',
    "a, b, c",
    ",",
    "  leading",
    "trailing  ",
    "  both  ",
    "NA",
    "N/A",
    "#N/A",
    "null",
    "NULL",
    "NaN",
    "nan",
    "None",
    "-",
    "007",
    "1e5",
    "True",
    "tab\tinside",
    "back\\slash",
    "it's 'single'",
    "# not a comment",
    "émoji 😀👍🏽 and Ünïcödé, 中文, العربية",
    "\u2028line separator",
]


def test_split_file_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "line": range(1, len(TRICKY) + 1),
            "label": ["ham", "spam"] * (len(TRICKY) // 2),
            "text": TRICKY,
        }
    )
    path = tmp_path / "train.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:  # as stages/split.py writes it
        frame.to_csv(f, index=False)
    back = readers.read_split(path)
    assert back["text"].tolist() == TRICKY
    assert back["label"].tolist() == frame["label"].tolist()
    assert back["line"].tolist() == frame["line"].tolist() and back["line"].dtype == "int64"
    assert not back.isna().any().any()


def run_split_stage(folder: Path, raw: bytes, **data_params: object) -> subprocess.CompletedProcess:
    """The real split stage on `raw`, in a workspace of its own."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"].update({"bad_lines": "skip", **data_params})
    (folder / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (folder / "data" / "raw").mkdir(parents=True)
    (folder / "data" / "raw" / "dataset").write_bytes(raw)
    stage = run_stage("split", folder)
    stdout, stderr = stage.communicate(timeout=60)
    return subprocess.CompletedProcess(stage.args, stage.returncode, stdout, stderr)


def read_back(folder: Path) -> list[str]:
    return [
        t
        for name in ("train", "val", "test")
        for t in readers.read_split(folder / "data" / "split" / f"{name}.csv")["text"]
    ]


def test_split_stage_round_trip(tmp_path: Path) -> None:
    """Through the stage itself: every tricky text comes back exactly, in exactly one split."""
    texts = [*TRICKY, *(f"plain message {i}" for i in range(12)), TRICKY[0]]  # one duplicate
    lines = [f"{'spam' if i % 3 == 0 else 'ham'}\t{t}" for i, t in enumerate(texts)]
    raw = ("\n".join(lines) + "\nno tab\n").encode()
    result = run_split_stage(tmp_path, raw)
    assert result.returncode == 0, result.stderr
    assert sorted(read_back(tmp_path)) == sorted(set(texts))
    metrics = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert metrics["raw_rows"] == len(texts)
    assert metrics["duplicates_removed"] == 1
    assert metrics["bad_lines"] == 1 and metrics["bad_lines_by_reason"] == {"no_tab": 1}
    assert sum(sum(metrics[name].values()) for name in ("train", "val", "test")) == len(set(texts))
    # the console says so, naming data.url's file (the archive member) as the user knows it
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert skipped == [
        "spamgpt.data.splits: sms+spam+collection.zip/SMSSpamCollection: skipped 1 bad line "
        f"(data.bad_lines: skip): 1 no_tab; kept {len(texts)}"
    ]


def test_split_stage_errors_name_the_users_file(tmp_path: Path) -> None:
    csv_file = b"id,text,label\n1,see you at 7,ham\n2,WIN a prize,spam\n"
    own = {"url": "data/local/tickets.csv", "member": None, "sha256": None, "format": "jsonl"}
    result = run_split_stage(tmp_path, csv_file, **own)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: data/local/tickets.csv does not look like JSON Lines (data.format: jsonl): "
        "its first line reads like CSV with columns id, text, label; set data.format: csv"
    )
    assert not (tmp_path / "data" / "split").exists()


def test_split_stage_round_trip_carriage_return(tmp_path: Path) -> None:
    # A bare \r inside a text survives; one just before the newline is a CRLF line ending.
    texts = ["old\rmac line break", "cr\r\rtwice", *(f"message {i}" for i in range(16))]
    lines = [f"{'spam' if i % 3 == 0 else 'ham'}\t{t}" for i, t in enumerate(texts)]
    result = run_split_stage(tmp_path, ("\n".join(lines) + "\n").encode())
    assert result.returncode == 0, result.stderr
    assert sorted(read_back(tmp_path)) == sorted(texts)


# --- your own data: CSV, TSV, JSON Lines, Parquet ---

FORMAT = {
    "csv": readers.Format("csv", "body", "category"),
    "tsv": readers.Format("tsv", "body", "category"),
    "jsonl": readers.Format("jsonl", "body", "category"),
    "parquet": readers.Format("parquet", "body", "category"),
}


def own_file(tmp_path: Path, fmt: str, records: list[dict], extra: str = "id") -> Path:
    """`records` ({'body', 'category'}) as a user's file of this format, with an extra column."""
    frame = pd.DataFrame([{extra: i, **r} for i, r in enumerate(records)])
    path = tmp_path / f"mine.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return path


TRICKY_RECORDS = [
    {"body": 'a "quoted" word, and a comma', "category": "billing"},
    {"body": "two\nlines, one message", "category": "outage"},
    {"body": "tab\there and émoji 😀", "category": "billing"},
    {"body": "  padded  ", "category": "other"},
]


@pytest.mark.parametrize("fmt", list(FORMAT))
def test_every_format_reads_each_text_exactly(tmp_path: Path, fmt: str) -> None:
    parsed = readers.read_messages(own_file(tmp_path, fmt, TRICKY_RECORDS), FORMAT[fmt], None)
    assert parsed.frame["text"].tolist() == [r["body"] for r in TRICKY_RECORDS]
    assert parsed.frame["label"].tolist() == [r["category"] for r in TRICKY_RECORDS]
    assert parsed.bad_lines == Counter()


def test_csv_row_numbers_are_the_lines_where_rows_start(tmp_path: Path) -> None:
    parsed = readers.read_messages(own_file(tmp_path, "csv", TRICKY_RECORDS), FORMAT["csv"], None)
    # header on line 1; the second record's quoted line break makes the third start on line 5
    assert parsed.frame["line"].tolist() == [2, 3, 5, 6]


@pytest.mark.parametrize("fmt", list(FORMAT))
def test_integer_labels_become_class_names(tmp_path: Path, fmt: str) -> None:
    records = [{"body": f"text {i}", "category": i % 3} for i in range(6)]
    parsed = readers.read_messages(own_file(tmp_path, fmt, records), FORMAT[fmt], None)
    assert parsed.frame["label"].tolist() == ["0", "1", "2", "0", "1", "2"]


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfbody,category\nhello,a\n")
    assert rows(readers.read_messages(path, FORMAT["csv"], None)) == [(2, "a", "hello")]


def test_a_missing_column_names_the_columns_there_are(tmp_path: Path) -> None:
    path = own_file(tmp_path, "csv", TRICKY_RECORDS)
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, readers.Format("csv", "text", "category"), None)
    assert str(info.value) == (
        f"{path}: no column 'text' (it has id, body, category); set data.text_column"
    )


BAD_ROWS = {
    "csv": [
        (b'7,"quoted" then more,a\n', "unparseable", "does not parse as CSV"),
        (b"7,only two\n", "wrong_fields", "2 fields where the header has 3"),
        (b"7,one too,a,many\n", "wrong_fields", "4 fields where the header has 3"),
        (b"7,,a\n", "empty_text", "empty text"),
        (b"7,some text,\n", "missing_label", "label is missing"),
        (b"7,some text,zebra\n", "unknown_label", "unknown label 'zebra'"),
        (b"7,bad \xff bytes,a\n", "undecodable", "not UTF-8"),
    ],
    "jsonl": [
        (b'{"id": 7, "body": "x", \n', "unparseable", "not a JSON object"),
        (b"[1, 2]\n", "unparseable", "not a JSON object"),
        (b'{"id": 7, "category": "a"}\n', "missing_text", "text is missing"),
        (b'{"id": 7, "body": "x"}\n', "missing_label", "label is missing"),
        (b'{"id": 7, "body": "x", "category": 1.5}\n', "missing_label", "float, not text"),
        (b'{"id": 7, "body": "   ", "category": "a"}\n', "empty_text", "empty text"),
        (b'{"id": 7, "body": "x", "category": "zebra"}\n', "unknown_label", "unknown label"),
    ],
}
HEADER = {"csv": b"id,body,category\n", "jsonl": b""}
GOOD = {
    "csv": (b"1,first,a\n", b"2,last,b\n"),
    "jsonl": (
        b'{"id": 1, "body": "first", "category": "a"}\n',
        b'{"id": 2, "body": "last", "category": "b"}\n',
    ),
}
CASES = [(fmt, *case) for fmt, cases in BAD_ROWS.items() for case in cases]


@pytest.mark.parametrize(("fmt", "bad", "kind", "problem"), CASES)
def test_bad_row_stops_the_run_naming_its_line(
    tmp_path: Path, fmt: str, bad: bytes, kind: str, problem: str
) -> None:
    path = tmp_path / f"mine.{fmt}"
    path.write_bytes(HEADER[fmt] + GOOD[fmt][0] + bad + GOOD[fmt][1])
    line = 3 if fmt == "csv" else 2
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, FORMAT[fmt], ("a", "b"), "error")
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ") and problem in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("fmt", "bad", "kind", "problem"), CASES)
def test_bad_row_is_skipped_counted_and_never_merged(
    tmp_path: Path, fmt: str, bad: bytes, kind: str, problem: str
) -> None:
    path = tmp_path / f"mine.{fmt}"
    path.write_bytes(HEADER[fmt] + GOOD[fmt][0] + bad + GOOD[fmt][1])
    parsed = readers.read_messages(path, FORMAT[fmt], ("a", "b"), "skip")
    assert parsed.frame["text"].tolist() == ["first", "last"]  # neighbours exactly their own
    assert parsed.bad_lines == Counter({kind: 1})


def test_parquet_bad_rows_name_their_row(tmp_path: Path) -> None:
    records = [
        {"body": "first", "category": "a"},
        {"body": None, "category": "a"},
        {"body": "x", "category": None},
        {"body": "last", "category": "b"},
    ]
    path = own_file(tmp_path, "parquet", records)
    with pytest.raises(SpamGPTError, match=r"mine\.parquet: row 2: text is missing"):
        readers.read_messages(path, FORMAT["parquet"], None, "error")
    parsed = readers.read_messages(path, FORMAT["parquet"], None, "skip")
    assert rows(parsed) == [(1, "a", "first"), (4, "b", "last")]
    assert parsed.bad_lines == Counter({"missing_text": 1, "missing_label": 1})


def test_not_a_parquet_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.parquet"
    path.write_bytes(b"\x00\x01 no format at all")
    with pytest.raises(SpamGPTError, match=r"mine\.parquet: not a Parquet file"):
        readers.read_messages(path, FORMAT["parquet"], None)


# --- messages that name the user's file and what it looks like ---

PARQUET = pd.DataFrame({"text": ["hi"], "label": ["ham"]}).to_parquet()
FIRST_LINE = "its first line reads like "
CSV_LINE = f"{FIRST_LINE}CSV with columns id, text, label; set data.format: csv"
LABEL_TAB = f"{FIRST_LINE}label<TAB>text; set data.format: label_tab_text"
# (declared format, the file's first bytes, what the error says of them)
OTHER_FORMATS = [
    ("jsonl", b"id,text,label\n1,hi,ham\n", CSV_LINE),
    (
        "label_tab_text",
        b'{"text": "hi", "label": "ham"}\n',
        f"{FIRST_LINE}JSON Lines with keys text, label; set data.format: jsonl",
    ),
    (
        "csv",
        b"id\ttext\tlabel\n1\thi\tham\n",
        f"{FIRST_LINE}TSV with columns id, text, label; set data.format: tsv",
    ),
    ("csv", b"ham\tsee you, at 7\n", LABEL_TAB),
    ("tsv", b"ham\tsee you, at 7\n", LABEL_TAB),
    ("parquet", b"id,text,label\n1,hi,ham\n", CSV_LINE),
    ("csv", PARQUET, "it is a Parquet file; set data.format: parquet"),
    (
        "label_tab_text",
        b"PK\x03\x04rest of a zip",
        "it is an archive (zip or gzip); data.member names the file in it",
    ),
]


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize(("declared", "content", "says"), OTHER_FORMATS)
def test_a_file_of_another_format_says_what_it_looks_like(
    tmp_path: Path, policy: str, declared: str, content: bytes, says: str
) -> None:
    path = tmp_path / "dataset"
    path.write_bytes(content)
    fmt = readers.Format(declared, "text", "label")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, fmt, None, policy, name="tickets.csv")
    assert str(info.value) == (
        f"tickets.csv does not look like {readers.FORMAT_NAMES[declared]} (data.format: "
        f"{declared}): {says}"
    )


@pytest.mark.parametrize(
    ("declared", "content"),
    [
        ("jsonl", b'{"text": "hi", "label": \n{"text": "ok", "label": "ham"}\n'),  # broken JSON
        ("label_tab_text", b"ham, with a comma but no tab\nham\tok\n"),  # one field: nothing
        ("csv", b"id,body,category\n1,hi,ham\n"),  # CSV, its columns named otherwise
    ],
)
def test_a_bad_first_row_of_the_format_is_no_other_format(
    tmp_path: Path, declared: str, content: bytes
) -> None:
    path = tmp_path / "dataset"
    path.write_bytes(content)
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, readers.Format(declared, "text", "label"), None, name="mine")
    assert str(info.value).startswith("mine") and "does not look like" not in str(info.value)


def test_line_errors_name_the_file_given(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b"ham\tfine\nspam\tfine too\nno tab here\n")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, readers.Format(), None, name="texts.tsv")
    assert str(info.value).startswith("texts.tsv:3: no tab between label and text; ")


def test_skipped_summary_counts_each_kind(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b"ham\tkeep\nno tab\nalso none\nham\t \nspam\tkeep\n")
    parsed = readers.read_messages(path, readers.Format(), None, "skip")
    assert readers.skipped_summary(parsed, "texts.tsv") == (
        "texts.tsv: skipped 3 bad lines (data.bad_lines: skip): 2 no_tab, 1 empty_text; kept 2"
    )


def test_four_classes_split_stratified() -> None:
    frame = pd.DataFrame(
        {
            "line": range(400),
            "label": [c for c in "abcd" for _ in range(100)],
            "text": [f"message {i}" for i in range(400)],
        }
    )
    splits = readers.split(frame, 0.1, 0.2, seed=0, labels=("a", "b", "c", "d"))
    for name, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert readers.label_counts(splits[name], ("a", "b", "c", "d")) == dict.fromkeys(
            "abcd", round(100 * share)
        )


def test_a_class_too_small_to_split_is_named() -> None:
    frame = pd.DataFrame(
        {"line": range(32), "label": ["a"] * 30 + ["rare"] * 2, "text": list(map(str, range(32)))}
    )
    with pytest.raises(SpamGPTError, match="class 'rare' has 2 messages after dedupe"):
        readers.split(frame, 0.1, 0.2, seed=0, labels=("a", "rare"))


MULTI_RECORDS = [
    {"body": "charged twice, send it asap", "tags": ["billing", "urgent"]},
    {"body": "where is my parcel", "tags": ["shipping"]},
    {"body": "just saying hello", "tags": []},
]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_multi_labels_are_lists_or_separated_text(tmp_path: Path, fmt: str) -> None:
    delimited = fmt in ("csv", "tsv")  # a text field: the labels joined by the separator
    records = [
        {"body": r["body"], "tags": "; ".join(r["tags"]) if delimited else r["tags"]}
        for r in MULTI_RECORDS
    ]
    path = own_file(tmp_path, fmt, records)
    fmt_ = readers.Format(fmt, "body", "tags", None, "multi", ";", allow_empty_labels=True)
    parsed = readers.read_messages(path, fmt_, ("billing", "shipping", "urgent"))
    assert [json.loads(v) for v in parsed.frame["label"]] == [r["tags"] for r in MULTI_RECORDS]


def test_a_row_without_labels_and_an_unknown_label_are_bad_rows(tmp_path: Path) -> None:
    path = own_file(
        tmp_path, "jsonl", [{"body": r["body"], "tags": r["tags"]} for r in MULTI_RECORDS]
    )
    fmt = readers.Format("jsonl", "body", "tags", None, "multi")
    with pytest.raises(
        SpamGPTError, match=r"mine\.jsonl:3: no label; set data\.allow_empty_labels"
    ):
        readers.read_messages(path, fmt, None)
    with pytest.raises(SpamGPTError, match=r"mine\.jsonl:1: unknown label 'urgent'; allowed"):
        readers.read_messages(path, fmt, ("billing", "shipping"))
    skipped = readers.read_messages(path, fmt, None, "skip")
    assert skipped.bad_lines == Counter(missing_label=1) and len(skipped.frame) == 2


TAGS = "id,body,tags\n" + "".join(
    f"{i},text {i},{tags}\n"
    for i, tags in enumerate(["a|b", "c", "b|c", "a", "b", "c|a", "b", "a|b|c", "c", "a"])
)  # labels a, b, c joined by data.label_separator "|", on lines 2 to 11


@pytest.mark.parametrize(
    ("value", "joiner"),
    [("a;b;c", ";"), ("a, c", ","), ("b/c", "/"), ("a b", " "), ("a  c\tb", " ")],
)
def test_labels_joined_by_another_separator_name_the_file_line_and_separator(
    tmp_path: Path, value: str, joiner: str
) -> None:
    """One row written with another separator, among rows using data.label_separator, and
    the same when data.labels names the labels."""
    path = tmp_path / "tags.csv"
    path.write_text(TAGS + f'10,text 10,"{value}"\n' + "11,text 11,b|a\n")
    fmt = readers.Format("csv", "body", "tags", None, "multi", "|")
    parts = ", ".join(value.split() if joiner == " " else (v.strip() for v in value.split(joiner)))
    expected = (
        f'tags.csv:12: "{value}" looks like the labels {parts} joined by "{joiner}", not by '
        f'data.label_separator "|"; set data.label_separator: "{joiner}"'
    ).replace("\t", "\\t")
    for labels in (None, ("a", "b", "c")):
        for bad_lines in ("error", "skip"):  # the setting is wrong, not the row: no skipping
            with pytest.raises(SpamGPTError) as info:
                readers.read_messages(path, fmt, labels, bad_lines, name="tags.csv")
            assert str(info.value) == expected


def test_the_first_of_several_misjoined_rows_is_named_and_real_labels_pass(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tags.tsv"
    tsv = TAGS.replace(",", "\t")
    path.write_text(tsv + "10\ttext 10\tb;c\n11\ttext 11\ta;b\n")
    fmt = readers.Format("tsv", "body", "tags", None, "multi", "|")
    with pytest.raises(SpamGPTError, match=r'^tags\.tsv:12: "b;c" looks like the labels b, c '):
        readers.read_messages(path, fmt, None, name="tags.tsv")
    # a label holding a separator, whose parts are not all labels: a label of its own
    path.write_text(tsv + "10\ttext 10\tC/C++\n11\ttext 11\ta;x\n")
    parsed = readers.read_messages(path, fmt, None, name="tags.tsv")
    assert [json.loads(v) for v in parsed.frame["label"][-2:]] == [["C/C++"], ["a;x"]]
    # with ";" set, "a;b" is two labels
    path.write_text(TAGS.replace("|", ";"))
    fmt = readers.Format("csv", "body", "tags", None, "multi", ";")
    assert json.loads(readers.read_messages(path, fmt, None).frame["label"][0]) == ["a", "b"]


def test_a_list_element_is_not_taken_for_a_separator_mistake(tmp_path: Path) -> None:
    """JSON Lines lists hold labels as given: data.label_separator does not apply to them."""
    records = [{"body": f"text {i}", "tags": tags} for i, tags in enumerate([["a"], ["b"]] * 3)]
    path = own_file(tmp_path, "jsonl", [*records, {"body": "odd", "tags": ["a;b"]}])
    fmt = readers.Format("jsonl", "body", "tags", None, "multi")
    assert json.loads(readers.read_messages(path, fmt, None).frame["label"].iloc[-1]) == ["a;b"]
    with pytest.raises(SpamGPTError, match=r"mine\.jsonl:7: unknown label 'a;b'; allowed: a, b"):
        readers.read_messages(path, fmt, ("a", "b"))


def test_a_multi_label_split_keeps_every_label_in_each_split() -> None:
    rng = np.random.default_rng(0)
    sets = [["a"], ["b"], ["a", "b"], ["c"], ["a", "c"], []]
    frame = pd.DataFrame(
        {
            "line": range(120),
            "text": [f"message {i}" for i in range(120)],
            "label": [json.dumps(sets[i]) for i in rng.integers(0, len(sets), 120)],
        }
    )
    parts = readers.split(frame, 0.2, 0.2, 123, ("a", "b", "c"), label_format="multi")
    assert sum(len(p) for p in parts.values()) == 120
    whole = readers.label_counts(frame, ("a", "b", "c"), label_format="multi")
    for name, part in parts.items():
        counts = readers.label_counts(part, ("a", "b", "c"), label_format="multi")
        share = len(part) / 120
        for label, n in counts.items():  # stratified: each label's share about the split's
            assert abs(n - share * whole[label]) <= 3, (name, label)


def test_label_conflicts_count_texts_with_two_label_sets() -> None:
    frame = pd.DataFrame(
        {
            "text": ["x", "x", "y", "y", "z"],
            "label": ['["a"]', '["a", "b"]', '["a"]', '["a"]', "[]"],
        }
    )
    assert readers.label_conflicts(frame) == 1


# --- properties: any file the format allows reads back as written ---

import csv  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# what RFC 4180 quoting, line breaks and the separators must survive, among any other character
# UTF-8 can write (no surrogates: they have no UTF-8 bytes)
SPECIAL = [*"\",\t\n\r;|/ '\\", "\u2028", "\x85", "\ufeff", "\x00"]
characters = st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=("Cs",)))
any_texts = st.text(characters, min_size=1, max_size=40).filter(lambda t: t.strip() != "")
# any label but an empty one (a missing label)
any_labels = st.text(characters, min_size=1, max_size=12)
LINE_BREAK = re.compile("\r\n|\r|\n")  # what Python's newline="" reading counts as one


def quoted_carriage_returns(rows_: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Writers leave a carriage return unquoted when their lines end in a bare line feed
    (csv.writer's and pandas' minimal quoting), which no reader tells from a line's end, and
    which RFC 4180 does not allow: for such writers, line feeds instead (always quoted)."""
    return [(label.replace("\r", "\n"), text.replace("\r", "\n")) for label, text in rows_]


def delimited_bytes(
    header: list[str], records: list[list[str]], delimiter: str, quoting: int, ending: str
) -> tuple[bytes, list[int]]:
    """The file csv.writer writes, and the line each record starts on."""
    out, starts = io.StringIO(), []
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator=ending)
    writer.writerow(header)
    for record in records:
        starts.append(len(LINE_BREAK.findall(out.getvalue())) + 1)
        writer.writerow(record)
    return out.getvalue().encode("utf-8"), starts


@settings(max_examples=60, deadline=None)
@given(
    rows_=st.lists(st.tuples(any_labels, any_texts), min_size=1, max_size=6),
    delimiter=st.sampled_from([",", "\t"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    ending=st.sampled_from(["\r\n", "\n"]),
    bom=st.booleans(),
)
def test_any_csv_or_tsv_reads_back_each_row_and_the_line_it_starts_on(
    rows_: list[tuple[str, str]],
    delimiter: str,
    quoting: int,
    ending: str,
    bom: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    if quoting == csv.QUOTE_MINIMAL and ending == "\n":
        rows_ = quoted_carriage_returns(rows_)
    records = [[str(i), label, text] for i, (label, text) in enumerate(rows_)]
    header = ["id", "category", "body"]
    content, starts = delimited_bytes(header, records, delimiter, quoting, ending)
    fmt_name = "csv" if delimiter == "," else "tsv"
    path = tmp_path_factory.mktemp("raw") / f"mine.{fmt_name}"
    path.write_bytes(b"\xef\xbb\xbf" * bom + content)
    parsed = readers.read_messages(path, readers.Format(fmt_name, "body", "category"), None)
    assert rows(parsed) == [(start, *row) for start, row in zip(starts, rows_, strict=True)]
    assert parsed.bad_lines == Counter()


@settings(max_examples=40, deadline=None)
@given(
    rows_=st.lists(st.tuples(any_labels, any_texts), min_size=1, max_size=6),
    fmt_name=st.sampled_from(["csv", "tsv", "jsonl", "parquet"]),
)
def test_any_file_pandas_writes_reads_back_each_row(
    rows_: list[tuple[str, str]], fmt_name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if fmt_name in ("csv", "tsv"):  # pandas ends lines with a bare line feed
        rows_ = quoted_carriage_returns(rows_)
    records = [{"body": text, "category": label} for label, text in rows_]
    parsed = readers.read_messages(
        own_file(tmp_path_factory.mktemp("raw"), fmt_name, records), FORMAT[fmt_name], None
    )
    assert parsed.frame[["label", "text"]].values.tolist() == [list(r) for r in rows_]
    if fmt_name in ("jsonl", "parquet"):  # one line (row) per record
        assert parsed.frame["line"].tolist() == list(range(1, len(rows_) + 1))


@settings(max_examples=40, deadline=None)
@given(
    rows_=st.lists(st.tuples(any_labels, any_texts), min_size=1, max_size=6),
    ensure_ascii=st.booleans(),
    ending=st.sampled_from(["\n", "\r\n"]),
)
def test_any_json_lines_file_reads_back_each_object(
    rows_: list[tuple[str, str]],
    ensure_ascii: bool,
    ending: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    lines = [
        json.dumps({"category": label, "body": text}, ensure_ascii=ensure_ascii)
        for label, text in rows_
    ]
    path = tmp_path_factory.mktemp("raw") / "mine.jsonl"
    path.write_bytes(ending.join(lines).encode("utf-8"))
    parsed = readers.read_messages(path, FORMAT["jsonl"], None)
    assert rows(parsed) == [(i, *row) for i, row in enumerate(rows_, start=1)]


one_line = st.text(characters.filter(lambda c: c not in "\r\n"), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(
    rows_=st.lists(
        st.tuples(
            # a label starting with U+FEFF on line 1 is taken for a byte-order mark
            one_line.filter(lambda label: "\t" not in label and not label.startswith("\ufeff")),
            one_line.filter(lambda t: t.strip() != ""),
        ),
        min_size=1,
        max_size=6,
    ),
    ending=st.sampled_from(["\n", "\r\n"]),
    last_ending=st.booleans(),
)
def test_any_label_tab_text_file_reads_back_each_line(
    rows_: list[tuple[str, str]],
    ending: str,
    last_ending: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Split at the first tab: the text keeps its own tabs, and only the line ending goes."""
    content = ending.join(f"{label}\t{text}" for label, text in rows_) + ending * last_ending
    path = raw_file(tmp_path_factory.mktemp("raw"), content.encode("utf-8"))
    parsed = readers.read_messages(path, readers.Format(), None)
    assert rows(parsed) == [(i, *row) for i, row in enumerate(rows_, start=1)]


# a label as a user writes it: no separator nor whitespace in it (those are the separators'
# own), nor a character a stripped part would lose
label_names = st.text(
    st.characters(exclude_categories=("Cs", "Z", "Cc"), exclude_characters=";,/|: \ufeff\x85"),
    min_size=1,
    max_size=8,
).filter(lambda name: name == name.strip())


@settings(max_examples=60, deadline=None)
@given(
    sets=st.lists(st.lists(label_names, min_size=1, max_size=4), min_size=1, max_size=6),
    separator=st.sampled_from([*readers.OTHER_SEPARATORS[:4], "::", "\t"]),
    padding=st.sampled_from(["", " ", "  "]),
    fmt_name=st.sampled_from(["csv", "tsv"]),
    known=st.booleans(),
)
def test_any_label_set_joined_by_the_separator_reads_back_as_its_sorted_set(
    sets: list[list[str]],
    separator: str,
    padding: str,
    fmt_name: str,
    known: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Each label once, sorted, whatever the order and repeats, with spaces around the
    separator or not, given data.labels or not."""
    records = [
        {"body": f"text {i}", "tags": f"{padding}{separator}{padding}".join(names)}
        for i, names in enumerate(sets)
    ]
    path = own_file(tmp_path_factory.mktemp("raw"), fmt_name, records)
    fmt = readers.Format(fmt_name, "body", "tags", None, "multi", separator)
    allowed = tuple(sorted({n for names in sets for n in names})) if known else None
    parsed = readers.read_messages(path, fmt, allowed)
    assert [json.loads(v) for v in parsed.frame["label"]] == [sorted(set(s)) for s in sets]


@settings(max_examples=40, deadline=None)
@given(rows_=st.lists(st.tuples(any_labels, st.text(characters, max_size=40)), max_size=6))
def test_any_split_file_reads_back_exactly(
    rows_: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    frame = pd.DataFrame(
        {
            "line": list(range(1, len(rows_) + 1)),
            "label": [label for label, _ in rows_],
            "text": [text for _, text in rows_],
        }
    )
    path = tmp_path_factory.mktemp("split") / "train.csv"
    readers.write_split(frame, path)
    back = readers.read_split(path)
    assert back.values.tolist() == frame.values.tolist() and list(back) == list(frame)


# --- pinned by mutation testing (tools/mutate.py data -k "not split_stage") ---

ARCHIVE = "it is an archive (zip or gzip); data.member names the file in it"
LOOKS = f"{FIRST_LINE}CSV with columns"
# (a file's first bytes, what data._looks_like makes of them)
SNIFFED = [
    (b"PAR1 and more", ("parquet", "it is a Parquet file")),
    (b"PK\x03\x04 a zip", ("archive", ARCHIVE)),
    (b"\x1f\x8b\x08 a gzip", ("archive", ARCHIVE)),
    (
        b'\xef\xbb\xbf{"text": "hi", "label": "ham"}\n',  # after a byte-order mark
        ("jsonl", f"{FIRST_LINE}JSON Lines with keys text, label"),
    ),
    (b"ham\thi\n", ("label_tab_text", f"{FIRST_LINE}label<TAB>text")),
    (
        b"id\ttext\tlabel\r\n1\thi\tham\r\n",
        ("tsv", f"{FIRST_LINE}TSV with columns id, text, label"),
    ),
    (b"text,label\r\n", ("csv", f"{LOOKS} text, label")),  # two columns are enough
    (b"id,te\xffxt\n", ("csv", f"{LOOKS} id, te\ufffdxt")),  # not UTF-8: replaced
    (b"{a,b}\n", None),  # JSON gone wrong, not a header
    (b"[a,b]\n", None),
    (b"id, text, label\n", None),  # spaces around: a sentence, not column names
    (b"id," + b"x" * 64 + b"\n", ("csv", f"{LOOKS} id, {'x' * 30}")),  # names up to 64 long
    (b"id," + b"x" * 65 + b"\n", None),
    (
        ",".join(f"c{i}" for i in range(11)).encode(),  # ten names shown, then "..."
        ("csv", f"{LOOKS} {', '.join(f'c{i}' for i in range(10))}, ..."),
    ),
    (
        ",".join(f"c{i}" for i in range(10)).encode(),
        ("csv", f"{LOOKS} {', '.join(f'c{i}' for i in range(10))}"),
    ),
    (b"\n", None),
    # only the first 64 KiB are read: a longer first line is no JSON object
    (b'{"text": "' + b"x" * (1 << 16) + b'"}\n', None),
]


@pytest.mark.parametrize(("head", "looks"), SNIFFED)
def test_what_a_files_beginning_looks_like(
    tmp_path: Path, head: bytes, looks: tuple[str, str] | None
) -> None:
    path = tmp_path / "dataset"
    path.write_bytes(head)
    assert readers._looks_like(path) == looks


def test_a_bad_row_error_says_to_fix_the_line_or_row_and_how_to_skip() -> None:
    hint = readers.PIPELINE_SKIP
    bad = readers._BadLine("no_tab", "no tab between label and text")
    assert str(readers.bad_line_error("sms.txt", "label_tab_text", 4, bad, hint)) == (
        "sms.txt:4: no tab between label and text; fix the line, or set data.bad_lines: skip "
        "to drop such lines and count them"
    )
    bad = readers._BadLine("missing_text", "text is missing")
    assert str(readers.bad_line_error("t.parquet", "parquet", 2, bad, hint)) == (
        "t.parquet: row 2: text is missing; fix the row, or set data.bad_lines: skip to drop "
        "such rows and count them"
    )


def test_one_skipped_line_is_one_line(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b"ham\tkeep\nno tab\nspam\tkeep\n")
    parsed = readers.read_messages(path, readers.Format(), None, "skip")
    assert readers.skipped_summary(parsed, "t") == (
        "t: skipped 1 bad line (data.bad_lines: skip): 1 no_tab; kept 2"
    )


def test_misjoined_labels_are_quoted_as_written(tmp_path: Path) -> None:
    path = tmp_path / "tags.csv"
    path.write_text("body,tags\nx,été|hiver\ny,été;hiver\n", encoding="utf-8")
    fmt = readers.Format("csv", "body", "tags", None, "multi", "|")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, fmt, None, name="tags.csv")
    assert str(info.value) == (
        'tags.csv:3: "été;hiver" looks like the labels été, hiver joined by ";", not by '
        'data.label_separator "|"; set data.label_separator: ";"'
    )


PREDICT = {"text": "--text-column", "keep": "--keep"}  # as spamgpt predict names them
PREDICT_SKIP = "use --bad-lines skip to drop such {where}s"


def test_read_texts_gives_each_rows_text_and_kept_columns_in_order(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": 1, "subject": "Hi", "body": "cash now", "x": true}\n'
        "\n"
        '{"id": 2, "subject": "Re", "body": "lunch?", "x": null}\n'
    )
    rows_ = readers.read_texts(
        path, "jsonl", readers.TextFields(("body",)), ("id", "x"), "error", Counter(), PREDICT, ""
    )
    assert list(rows_) == [("cash now", [1, True]), ("lunch?", [2, None])]
    joined = readers.TextFields(("subject", "body"), "{subject}: {body}")
    rows_ = readers.read_texts(path, "jsonl", joined, ("body",), "error", Counter(), PREDICT, "")
    assert list(rows_) == [("Hi: cash now", ["cash now"]), ("Re: lunch?", ["lunch?"])]


@pytest.mark.parametrize(
    ("row", "kind", "problem"),
    [
        (b'{"id": 7}', "missing_text", "text is missing"),
        (b'{"id": 7, "body": 5}', "missing_text", "text is not text"),
        (b'{"id": 7, "body": " \\t "}', "empty_text", "empty text"),
        (b'{"id": 7, "body": "a \xff b"}', "undecodable", "undecodable bytes at character 3"),
    ],
)
def test_read_texts_stops_at_or_counts_a_bad_text(
    tmp_path: Path, row: bytes, kind: str, problem: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": 1, "body": "fine"}\n' + row + b'\n{"id": 3, "body": "also"}\n')
    fields = readers.TextFields(("body",))
    with pytest.raises(SpamGPTError) as info:
        list(
            readers.read_texts(
                path, "jsonl", fields, ("id",), "error", Counter(), PREDICT, PREDICT_SKIP
            )
        )
    assert str(info.value).startswith(f"{path}:2: {problem}")
    assert str(info.value).endswith("; fix the line, or use --bad-lines skip to drop such lines")
    skipped: Counter = Counter()
    rows_ = readers.read_texts(path, "jsonl", fields, ("id",), "skip", skipped, PREDICT, "")
    assert list(rows_) == [("fine", [1]), ("also", [3])] and skipped == Counter({kind: 1})


def test_read_texts_names_the_option_of_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,body\n1,hello\n")
    fields = readers.TextFields(("body",))
    with pytest.raises(SpamGPTError) as info:
        list(readers.read_texts(path, "csv", fields, ("user",), "error", Counter(), PREDICT, ""))
    assert str(info.value) == f"{path}: no column 'user' (it has id, body); set --keep"
    with pytest.raises(SpamGPTError) as info:
        list(
            readers.read_texts(
                path, "csv", readers.TextFields(("text",)), (), "error", Counter(), PREDICT, ""
            )
        )
    assert str(info.value) == f"{path}: no column 'text' (it has id, body); set --text-column"
    kept = readers.read_texts(path, "csv", fields, ("body", "id"), "error", Counter(), PREDICT, "")
    assert list(kept) == [("hello", ["hello", "1"])]  # a text column may be kept too


@pytest.mark.parametrize(
    ("fmt_name", "content", "columns"),
    [
        ("csv", b"\xef\xbb\xbfid,body,category\n1,hi,a\n", ["id", "body", "category"]),
        ("tsv", b"id\tbody, with a comma\n", ["id", "body, with a comma"]),
        ("csv", b"", []),  # no header at all
        ("csv", b'id,"body\n', None),  # does not parse: reading it says why
        ("jsonl", b'{"body": "hi"}\n', None),  # no header in these formats
        ("label_tab_text", b"ham\thi\n", None),
        ("parquet", b"not parquet", None),
    ],
)
def test_header_columns_are_the_declared_ones(
    tmp_path: Path, fmt_name: str, content: bytes, columns: list[str] | None
) -> None:
    path = tmp_path / "in"
    path.write_bytes(content)
    assert readers.header_columns(path, fmt_name) == columns


def test_header_columns_of_parquet_are_its_schemas(tmp_path: Path) -> None:
    path = own_file(tmp_path, "parquet", TRICKY_RECORDS)
    assert readers.header_columns(path, "parquet") == ["id", "body", "category"]


def test_a_split_column_maps_each_value_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "all.jsonl"
    lines = [
        {"body": "one", "category": "a", "part": "TRAIN"},
        {"body": "two", "category": "b", "part": 3},
        {"body": "three", "category": "a", "part": "holdout"},
        {"body": "four", "category": "b"},
        {"body": "five", "category": "a", "part": "a value longer than twenty characters"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    names = {"TRAIN": "train", "3": "test"}
    parsed = readers.read_messages(path, FORMAT["jsonl"], None, "skip", "part", names)
    assert rows(parsed) == [(1, "a", "one", "train"), (2, "b", "two", "test")]
    assert parsed.bad_lines == Counter(unknown_split=3)
    for number, shown in ((3, "'holdout'"), (4, "'None'"), (5, "'a value longer than '")):
        lines_ = [*lines[:2], lines[number - 1]]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines_))
        with pytest.raises(SpamGPTError) as info:
            readers.read_messages(path, FORMAT["jsonl"], None, "error", "part", names)
        assert str(info.value).startswith(
            f"{path}:3: part is {shown}, not a split; allowed: TRAIN, 3 (data.split_names); "
        )


def multi_frame(sets: list[list[str]], first: int = 0) -> pd.DataFrame:
    index = range(first, first + len(sets))
    return pd.DataFrame({"label": [json.dumps(s) for s in sets]}, index=index)


@pytest.mark.parametrize(
    ("sets", "keys"),
    [
        # each row's rarest label (b: 4 rows, a: 7); c's 2 rows and the one without a label
        # are too few to stand alone: with the other unlabelled rows, 3 together
        (
            [["a", "b"]] * 3 + [["a"]] * 3 + [["b", "c"], [], ["c", "a"]],
            ["b"] * 3 + ["a"] * 3 + [""] * 3,
        ),
        ([["a"]] * 3 + [[]] * 3, ["a"] * 3 + [""] * 3),  # the unlabelled rows: a key of 3
        # a lone row left over joins the most common key
        ([["a"]] * 3 + [["b"]] * 4 + [["c"]], ["a"] * 3 + ["b"] * 5),
        ([["a"]] * 3 + [["b"]] * 3 + [["c"], ["d"]], ["a"] * 3 + ["b"] * 3 + ["", ""]),
        ([["b", "a"]] * 3, ["a"] * 3),  # a tie: the first name
    ],
)
def test_stratify_key_is_each_rows_rarest_label(sets: list[list[str]], keys: list[str]) -> None:
    key = readers.stratify_key(multi_frame(sets, first=10))
    assert key.to_dict() == dict(zip(range(10, 10 + len(sets)), keys, strict=True))


@pytest.mark.parametrize(
    ("tags", "kind", "problem"),
    [
        ("5", "missing_label", "labels are int, not a list of text"),
        ("[true]", "missing_label", "labels are list, not a list of text"),
        ("[1.5]", "missing_label", "labels are list, not a list of text"),
        ('"a|b"', "unknown_label", "unknown label 'b'; allowed: a"),  # a text: split on |
        (
            '["a", "a label longer than twenty"]',
            "unknown_label",
            "unknown label 'a label longer than '; allowed: a",
        ),
        ("[]", "missing_label", "no label; set data.allow_empty_labels: true where a row may"),
    ],
)
def test_a_bad_label_list_is_a_bad_row_of_its_kind(
    tmp_path: Path, tags: str, kind: str, problem: str
) -> None:
    path = tmp_path / "tags.jsonl"
    path.write_text(f'{{"body": "x", "tags": ["a"]}}\n{{"body": "y", "tags": {tags}}}\n')
    fmt = readers.Format("jsonl", "body", "tags", None, "multi", "|")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, fmt, ("a",))
    assert str(info.value).startswith(f"{path}:2: {problem}")
    skipped = readers.read_messages(path, fmt, ("a",), "skip")
    assert skipped.bad_lines == Counter({kind: 1}) and len(skipped.frame) == 1


def test_labels_of_numbers_and_no_labels_where_allowed(tmp_path: Path) -> None:
    path = tmp_path / "tags.jsonl"
    path.write_text(
        '{"body": "x", "tags": [2, "a", 2]}\n{"body": "y", "tags": null}\n'
        '{"body": "z", "tags": []}\n{"body": "w", "tags": "a| |"}\n'
    )
    fmt = readers.Format("jsonl", "body", "tags", None, "multi", "|", allow_empty_labels=True)
    parsed = readers.read_messages(path, fmt, None)
    assert parsed.frame["label"].tolist() == ['["2", "a"]', "[]", "[]", '["a"]']


def test_a_byte_order_mark_is_dropped_from_the_first_line_only(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b"\xef\xbb\xbfham\thi\n\xef\xbb\xbfspam\tyo\n")
    assert rows(readers.read_messages(path, readers.Format(), None)) == [
        (1, "ham", "hi"),
        (2, "\ufeffspam", "yo"),
    ]


def test_json_lines_with_a_byte_order_mark_blank_lines_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"body": "first", "category": "a"}\n\n  \n'
        b'{"body": "bad \xff byte", "category": "a"}\n{"body": "last", "category": "b"}\n'
    )
    parsed = readers.read_messages(path, FORMAT["jsonl"], None, "skip")
    assert rows(parsed) == [(1, "a", "first"), (5, "b", "last")]
    assert parsed.bad_lines == Counter(undecodable=1)
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, FORMAT["jsonl"], None)
    assert str(info.value).startswith(
        f"{path}:4: undecodable bytes at character 5 of a field (not UTF-8); fix the line"
    )


def test_a_json_value_that_is_no_object_says_so(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"body": "first", "category": "a"}\n"just a string"\n')
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, FORMAT["jsonl"], None)
    assert str(info.value).startswith(f"{path}:2: not a JSON object; fix the line")


def test_tsv_rows_that_do_not_parse_say_tsv(tmp_path: Path) -> None:
    path = tmp_path / "mine.tsv"
    path.write_bytes(b'id\tbody\tcategory\n1\tfirst\ta\n2\t"quoted" then\ta\n')
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, FORMAT["tsv"], None)
    assert str(info.value).startswith(f"{path}:3: does not parse as TSV: ")


def test_blank_lines_between_csv_rows_hold_no_row(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_bytes(b"id,body,category\n1,first,a\n\n\n4,last,b\n")
    assert rows(readers.read_messages(path, FORMAT["csv"], None)) == [
        (2, "a", "first"),
        (5, "b", "last"),
    ]


@pytest.mark.parametrize("fmt_name", ["csv", "tsv"])
def test_an_empty_delimited_file_has_no_messages(tmp_path: Path, fmt_name: str) -> None:
    path = tmp_path / f"mine.{fmt_name}"
    path.write_bytes(b"")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, FORMAT[fmt_name], None)
    assert str(info.value) == f"{path}: no messages (the file is empty or every line is bad)"


def test_a_missing_column_shows_the_first_twenty_columns(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(25)) + "\n" + ",".join(["x"] * 25) + "\n")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, FORMAT["csv"], None)
    shown = ", ".join(f"c{i}" for i in range(20))
    assert str(info.value) == f"{path}: no column 'body' (it has {shown}); set data.text_column"


def test_a_parquet_file_without_the_column_names_the_file_as_given(tmp_path: Path) -> None:
    path = own_file(tmp_path, "parquet", TRICKY_RECORDS)
    fmt = readers.Format("parquet", "message", "category")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, fmt, None, name="tickets.parquet")
    assert str(info.value) == (
        "tickets.parquet: no column 'message' (it has id, body, category); set data.text_column"
    )


def test_a_class_of_three_messages_is_enough() -> None:
    frame = pd.DataFrame(
        {"line": range(33), "label": ["a"] * 30 + ["b"] * 3, "text": list(map(str, range(33)))}
    )
    parts = readers.split(frame, 0.3, 0.3, seed=0, labels=("a", "b"))
    assert [readers.label_counts(parts[n], ("a", "b"))["b"] for n in ("train", "val", "test")] == [
        1,
        1,
        1,
    ]


def test_a_split_too_small_says_what_it_has() -> None:
    frame = pd.DataFrame({"line": range(6), "label": ["a", "b"] * 3, "text": list("abcdef")})
    with pytest.raises(SpamGPTError) as info:
        readers.split(frame, 0.1, 0.1, seed=0, labels=("a", "b"))
    assert str(info.value).startswith(
        "cannot split 6 messages {'a': 3, 'b': 3} into val 0.1 / test 0.1 with every class in "
        "each: "
    )


@pytest.mark.parametrize("label_format", ["single", "multi"])
def test_split_is_sklearns_stratified_split_twice(label_format: str) -> None:
    """Test first, then val of the rest (split.val of the whole), each stratified on the
    label (multi-label: stratify_key), with the seed; each part in file order."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(1)
    sets = [["a"], ["b"], ["a", "b"], ["c"], ["b", "c"]]
    multi_label = label_format == "multi"
    labels_ = [json.dumps(sets[i]) for i in rng.integers(0, 5, 90)] if multi_label else None
    frame = pd.DataFrame(
        {
            "line": range(1, 91),
            "label": labels_ or [("a", "b", "c")[i] for i in rng.integers(0, 3, 90)],
            "text": [f"message {i}" for i in range(90)],
        }
    )

    def key(part: pd.DataFrame) -> pd.Series:
        return readers.stratify_key(part) if multi_label else part["label"]

    rest, test = train_test_split(frame, test_size=0.2, stratify=key(frame), random_state=5)
    train, val = train_test_split(rest, test_size=0.1 / 0.8, stratify=key(rest), random_state=5)
    parts = readers.split(frame, 0.1, 0.2, 5, ("a", "b", "c"), label_format)
    for name, part in (("train", train), ("val", val), ("test", test)):
        assert parts[name]["line"].tolist() == sorted(part["line"]), name
        assert parts[name].index.tolist() == list(range(len(part)))
    single = frame.assign(label=[("a", "b")[i % 2] for i in range(90)])
    rest, part = readers.stratified(single, 0.25, 7)  # single-label by default
    expected = train_test_split(single, test_size=0.25, stratify=single["label"], random_state=7)
    assert rest.equals(expected[0]) and part.equals(expected[1])


def test_an_empty_split_file_reads_back_with_its_types(tmp_path: Path) -> None:
    path = tmp_path / "val.csv"
    readers.write_split(pd.DataFrame({"line": [], "label": [], "text": []}), path)
    back = readers.read_split(path)
    assert back.empty and list(back) == ["line", "label", "text"]
    assert back["line"].dtype == "int64"  # not the object column of a column with no values


def test_a_split_file_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """Written in a process whose locale encoding is ASCII (the C locale, no UTF-8 mode)."""
    path = tmp_path / "train.csv"
    frame = pd.DataFrame(
        {"line": [1, 2], "label": ["ham", "spam"], "text": ["caf\u00e9 \u00e0 7", "two\r\nlines"]}
    )
    readers.write_split(frame, path)
    written = '"line","label","text"\n1,"ham","café à 7"\n2,"spam","two\r\nlines"\n'.encode()
    assert path.read_bytes() == written
    path.unlink()
    code = (
        "import sys, pandas as pd; from spamgpt.data import readers; "
        "readers.write_split(pd.DataFrame({'line': [1, 2], 'label': ['ham', 'spam'], "
        "'text': ['caf\\u00e9 \\u00e0 7', 'two\\r\\nlines']}), sys.argv[1])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}
    env.update(PYTHONCOERCECLOCALE="0", PYTHONUTF8="0")
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert path.read_bytes() == written


@pytest.mark.parametrize(
    ("head", "says"),
    [
        (b"PAR1\tnot text\n", "it is a Parquet file; set data.format: parquet"),
        (b"PK\x03\x04\tnot text\n", ARCHIVE),
        (b"\x1f\x8b\x08\tnot text\n", ARCHIVE),
    ],
)
def test_a_binary_file_is_refused_before_its_bytes_are_read_as_rows(
    tmp_path: Path, head: bytes, says: str
) -> None:
    """Its first line would read as a label<TAB>text row: the first bytes tell it first."""
    path = raw_file(tmp_path, head)
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, readers.Format(), None, "skip", name="sms.txt")
    assert str(info.value) == (
        f"sms.txt does not look like label<TAB>text lines (data.format: label_tab_text): {says}"
    )


def test_one_field_through_a_template_and_fields_that_are_not_text(tmp_path: Path) -> None:
    fmt = readers.Format("jsonl", "subject", "label", "Subject: {subject}")
    first = '{"subject": "Hi", "label": "a"}\n'
    for second, what in (
        ('{"subject": 5, "label": "a"}', "not text"),
        ('{"label": "a"}', "missing"),
    ):
        path = tmp_path / "mail.jsonl"
        path.write_text(first + second + "\n")
        parsed = readers.read_messages(path, fmt, None, "skip")
        assert rows(parsed) == [(1, "a", "Subject: Hi")]
        assert parsed.bad_lines == Counter(missing_text=1)
        with pytest.raises(SpamGPTError) as info:
            readers.read_messages(path, fmt, None)
        assert str(info.value).startswith(f"{path}:2: text field 'subject' is {what}; fix the")


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (b'{"body": 5, "category": "a"}', "text is not text"),
        (b'{"body": " ", "category": "a"}', "empty text"),
        (b'{"body": "x", "category": "zebra"}', "unknown label 'zebra'; allowed: a, b"),
        (
            b'{"body": "x", "category": "a label longer than twenty"}',
            "unknown label 'a label longer than '; allowed: a, b",
        ),
    ],
)
def test_a_bad_rows_problem_in_full(tmp_path: Path, row: bytes, problem: str) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_bytes(row + b"\n")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, FORMAT["jsonl"], ("a", "b"))
    assert str(info.value).startswith(f"{path}:1: {problem}; fix the line")


def test_a_split_named_none_is_not_a_missing_value(tmp_path: Path) -> None:
    path = tmp_path / "all.jsonl"
    path.write_text(
        '{"body": "x", "category": "a", "part": "None"}\n{"body": "y", "category": "a"}\n'
    )
    parsed = readers.read_messages(path, FORMAT["jsonl"], None, "skip", "part", {"None": "test"})
    assert rows(parsed) == [(1, "a", "x", "test")] and parsed.bad_lines == {"unknown_split": 1}


def test_header_columns_keep_undecodable_bytes_and_quoted_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b'id,b\xffody,"two\r\nlines"\n1,2,3\n')
    assert readers.header_columns(path, "csv") == ["id", "b\udcffody", "two\r\nlines"]


def test_label_tab_text_reads_label_and_text_whatever_the_columns_set(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b"ham\thi\n")
    fmt = readers.Format("label_tab_text", "body", "category")  # ignored: the file has no header
    assert rows(readers.read_messages(path, fmt, None)) == [(1, "ham", "hi")]
    template = readers.Format(
        "label_tab_text", ["subject", "body"], "category", "{subject}: {body}"
    )
    assert rows(readers.read_messages(path, template, None)) == [(1, "ham", "hi")]  # no template


def test_label_tab_text_keeps_the_label_format_several_labels_or_a_number(
    tmp_path: Path,
) -> None:
    """Only the columns are fixed by the format: a label set or a number reads as such (the
    format was rebuilt whole, and every label read as one class)."""
    multi = readers.Format("label_tab_text", label_format="multi", label_separator="|")
    path = raw_file(tmp_path, b"spam|promo\tWIN now\nham\thi\n")
    parsed = readers.read_messages(path, multi, None)
    assert [json.loads(v) for v in parsed.frame["label"]] == [["promo", "spam"], ["ham"]]
    numbers = readers.Format("label_tab_text", label_format="number")
    parsed = readers.read_messages(raw_file(tmp_path, b"4.5\tgood\n1\tbad\n"), numbers, None)
    assert parsed.frame["label"].astype(float).tolist() == [4.5, 1.0]


def test_a_later_bad_line_is_a_bad_line_though_the_first_looks_like_tsv(tmp_path: Path) -> None:
    """Only a bad first row may mean the file is of another format."""
    path = raw_file(tmp_path, b"id\ttext\tlabel\nno tab here\nham\tfine\n")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, readers.Format(), None, name="sms.txt")
    assert str(info.value).startswith("sms.txt:2: no tab between label and text; fix")
    parsed = readers.read_messages(path, readers.Format(), None, "skip")
    assert rows(parsed) == [(1, "id", "text\tlabel"), (3, "ham", "fine")]
    assert parsed.bad_lines == Counter(no_tab=1)


@pytest.mark.parametrize("labels", [None, ("a", "b")])
def test_labels_misjoined_in_a_parquet_file_name_the_row(
    tmp_path: Path, labels: tuple | None
) -> None:
    records = [{"body": f"text {i}", "tags": tags} for i, tags in enumerate(["a", "b", "a;b"])]
    path = own_file(tmp_path, "parquet", records)
    fmt = readers.Format("parquet", "body", "tags", None, "multi", "|")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, fmt, labels, name="tags.parquet")
    assert str(info.value).startswith('tags.parquet: row 3: "a;b" looks like the labels a, b')


def test_parquet_rows_are_counted_as_rows(tmp_path: Path) -> None:
    records = [{"body": "x", "category": "a"}, {"body": None, "category": "a"}]
    path = own_file(tmp_path, "parquet", records)
    parsed = readers.read_messages(path, FORMAT["parquet"], None, "skip")
    assert readers.skipped_summary(parsed, "t") == (
        "t: skipped 1 bad row (data.bad_lines: skip): 1 missing_text; kept 1"
    )
    path = own_file(tmp_path, "parquet", records[1:])
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, FORMAT["parquet"], None, "skip")
    assert str(info.value) == f"{path}: no messages (the file is empty or every row is bad)"


@pytest.mark.parametrize(
    ("fmt", "split_column", "setting"),
    [
        (readers.Format("csv", "body", "label"), None, "data.label_column"),
        (readers.Format("csv", "body", "category"), "part", "data.split_column"),
    ],
)
def test_a_missing_label_or_split_column_names_its_setting(
    tmp_path: Path, fmt: readers.Format, split_column: str | None, setting: str
) -> None:
    path = own_file(tmp_path, "csv", TRICKY_RECORDS)
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, fmt, None, "error", split_column, {"a": "train"})
    column = split_column or "label"
    assert (
        str(info.value)
        == f"{path}: no column {column!r} (it has id, body, category); set {setting}"
    )


def test_read_rows_names_the_path_by_default(tmp_path: Path) -> None:
    path = own_file(tmp_path, "csv", TRICKY_RECORDS)
    with pytest.raises(SpamGPTError) as info:
        list(readers.read_rows(path, "csv", {"text": "--text-column"}))
    assert (
        str(info.value)
        == f"{path}: no column 'text' (it has id, body, category); set --text-column"
    )


def test_multi_labels_and_splits_are_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / "tags.jsonl"
    path.write_text('{"body": "x", "tags": ["été", "b"], "part": "t"}\n', encoding="utf-8")
    fmt = readers.Format("jsonl", "body", "tags", None, "multi")
    parsed = readers.read_messages(path, fmt, None, "error", "part", {"t": "train"})
    assert parsed.frame.to_dict("records") == [
        {"line": 1, "label": '["b", "été"]', "text": "x", "split": "train"}
    ]


NUMBER_RECORDS = [  # (rating as the file holds it, as the split file holds it)
    ({"review": "great", "rating": 5}, "5.0"),
    ({"review": "fine", "rating": 3.5}, "3.5"),
    ({"review": "meh", "rating": " -1e-1 "}, "-0.1"),
    ({"review": "tenth", "rating": "0.1"}, "0.1"),
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_number_labels_are_read_as_exact_floats(tmp_path: Path, fmt: str) -> None:
    records = [r for r, _ in NUMBER_RECORDS]
    if fmt == "parquet":  # one type a column
        records = [{**r, "rating": str(r["rating"])} for r in records]
    path = own_file(tmp_path, fmt, records)
    parsed = readers.read_messages(
        path, readers.Format(fmt, "review", "rating", label_format="number"), None
    )
    assert parsed.frame["label"].tolist() == [text for _, text in NUMBER_RECORDS]
    assert [float(v) for v in parsed.frame["label"]] == [5.0, 3.5, -0.1, 0.1]


@pytest.mark.parametrize(
    ("rating", "said"),
    [
        ('"four"', "label 'four' is not a number"),
        ('"abcdefghijklmnopqrstuvwxyz"', "label 'abcdefghijklmnopqrst' is not a number"),
        ('"nan"', "label 'nan' is not a number"),
        ("1e999", "label 'inf' is not a number"),
        ("null", "label is missing, not a number"),
        ("true", "label is bool, not a number"),
        ("[1]", "label is list, not a number"),
    ],
)
def test_a_bad_number_names_the_file_line_and_value(tmp_path: Path, rating: str, said) -> None:
    path = tmp_path / "reviews.jsonl"
    path.write_text(f'{{"review": "ok", "rating": 2}}\n{{"review": "x", "rating": {rating}}}\n')
    fmt = readers.Format("jsonl", "review", "rating", label_format="number")
    with pytest.raises(SpamGPTError) as info:
        readers.read_messages(path, fmt, None, name="reviews.jsonl")
    message = str(info.value)
    assert message.startswith(f"reviews.jsonl:2: {said}")
    assert "\n" not in message
    skipped = readers.read_messages(path, fmt, None, "skip")
    assert skipped.bad_lines == Counter(bad_number=1) and skipped.frame["label"].tolist() == ["2.0"]


def test_number_strata_are_quantile_bins_of_even_size() -> None:
    values = pd.Series(["5", "1", "3", "3", "2", "4"] * 5, index=range(100, 130))
    key = readers.number_strata(values)
    assert key.index.tolist() == values.index.tolist()
    assert key.value_counts().tolist() == [6] * 5  # STRATA bins of 30 rows
    assert key.dtype == "int64"  # bin numbers
    numbers = values.astype(float)
    assert numbers[key == 0].max() <= numbers[key == 4].min()  # lowest bin, lowest numbers
    assert readers.number_strata(values.iloc[:11]).nunique() == 1  # too few for two bins of 6
    assert readers.number_strata(values.iloc[:12]).nunique() == 2


def test_a_number_split_spreads_low_and_high_numbers_and_is_summarised() -> None:
    frame = pd.DataFrame(
        {
            "line": range(100),
            "text": [f"message {i}" for i in range(100)],
            "label": [repr(float(i % 10)) for i in range(100)],
        }
    )
    parts = readers.split(frame, 0.2, 0.2, 123, ("rating",), label_format="number")
    assert [len(parts[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    for part in parts.values():  # each split's mean near the whole's 4.5
        summary = readers.label_counts(part, ("rating",), label_format="number")
        assert abs(summary["mean"] - 4.5) < 0.6 and summary["count"] == len(part)
    assert readers.number_summary(pd.Series(["1.0", "3.0"])) == {
        "count": 2, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0
    }  # fmt: skip


def test_each_label_format_finds_its_classes_and_counts_them() -> None:
    """LABEL_FORMATS: the classes found (data.labels in order, or every one found, numbers
    one output named after the column), the classes a frame's rows carry, the rows of each
    class a split needs some of, and the label conflicts metrics/data.json records."""
    single, multi, number = (readers.LABEL_FORMATS[k] for k in ("single", "multi", "number"))
    assert [f.name for f in (single, multi, number)] == ["single", "multi", "number"]
    one = pd.DataFrame({"label": ["b", "a", "b"], "text": ["x", "y", "x"]})
    sets = pd.DataFrame({"label": ['["b"]', '["a", "c"]', '["a"]'], "text": ["x", "y", "x"]})
    assert single.classes(one["label"], None, "b", "rating") == Classes(("a", "b"), "b")
    assert single.classes(one["label"], ["b", "a"], None, "rating").names == ("b", "a")
    assert multi.classes(sets["label"], None, None, "tags") == Classes(
        ("a", "b", "c"), None, "multi"
    )
    assert number.classes(pd.Series(["1.0"]), None, None, "rating") == Classes(
        ("rating",), None, "number"
    )
    assert single.names_in(one) == {"a", "b"} and multi.names_in(sets) == {"a", "b", "c"}
    assert number.names_in(one) == set()
    assert single.class_counts(one, ("a", "b", "z")) == {"a": 1, "b": 2, "z": 0}
    assert multi.class_counts(sets, ("c", "a", "z")) == {"c": 1, "a": 2, "z": 0}
    assert number.class_counts(pd.DataFrame({"label": ["1.0"]}), ("rating",)) == {}
    assert multi.conflicts([sets, sets.iloc[:2]]) == {"label_conflicts": 1}
    assert single.conflicts([one]) == {} and number.conflicts([one]) == {}
    assert single.stratify_key(one).tolist() == ["b", "a", "b"]


def test_a_number_label_may_be_padded_with_any_white_space() -> None:
    """str.strip's white space, which float() alone refuses (the information separators
    \x1c-\x1f), around a number in a text field."""
    assert readers._number("\x1f 2.5\x1c") == "2.5"


def test_split_file_texts_that_look_like_numbers_stay_text(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"line": [1, 2, 3], "label": ["a", "b", "a"], "text": ["007", "1e3", "12"]}
    )
    path = tmp_path / "train.csv"
    readers.write_split(frame, path)
    assert readers.read_split(path)["text"].tolist() == ["007", "1e3", "12"]
