"""spamgpt.data: strict line-by-line parsing, de-duplication, the stratified split and the
split files' CSV round trip."""

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_stage

from spamgpt import data
from spamgpt.errors import SpamGPTError
from spamgpt.labels import SMS

REPO = Path(__file__).resolve().parents[1]


def raw_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "SMSSpamCollection"
    path.write_bytes(content)
    return path


def rows(parsed: data.ParsedMessages) -> list[tuple[int, str, str]]:
    return list(parsed.frame.itertuples(index=False, name=None))


# --- parsing ---


def test_unbalanced_quotes_stay_on_their_own_line(tmp_path: Path) -> None:
    path = raw_file(
        tmp_path,
        b'ham\tHe said "hi\nspam\tWIN "cash" now\nham\t"\nham\tquote at the end"\nspam\tlast\n',
    )
    assert rows(data.read_messages(path, fmt=data.Format(), labels=SMS.names)) == [
        (1, "ham", 'He said "hi'),
        (2, "spam", 'WIN "cash" now'),
        (3, "ham", '"'),
        (4, "ham", 'quote at the end"'),
        (5, "spam", "last"),
    ]


def test_crlf_and_a_last_line_without_newline(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b'ham\tone\r\nspam\ttwo, "three"\r\nham\tfinal words')
    parsed = data.read_messages(path, fmt=data.Format(), labels=SMS.names)
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
    parsed = data.read_messages(raw_file(tmp_path, content), fmt=data.Format(), labels=SMS.names)
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
        data.read_messages(path, bad_lines="error", fmt=data.Format(), labels=SMS.names)
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
    parsed = data.read_messages(path, bad_lines="skip", fmt=data.Format(), labels=SMS.names)
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
    parsed = data.read_messages(
        raw_file(tmp_path, b"\r\n".join(lines)),
        bad_lines="skip",
        fmt=data.Format(),
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
        data.read_messages(path, bad_lines=policy, fmt=data.Format(), labels=SMS.names)


# --- dedupe ---


def test_dedupe_keeps_the_first_occurrence() -> None:
    frame = pd.DataFrame(
        {
            "line": [1, 2, 3, 4, 5, 6],
            "label": ["ham", "spam", "spam", "ham", "ham", "ham"],
            "text": ["hi", "WIN", "hi", "Hi", "hi ", "WIN"],
        }
    )
    out = data.dedupe(frame)
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
    parts = data.split(frame, val, test, seed=123, labels=SMS.names)
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
    a = data.split(frame, 0.1, 0.2, seed=1, labels=SMS.names)
    b = data.split(frame, 0.1, 0.2, seed=1, labels=SMS.names)
    c = data.split(frame, 0.1, 0.2, seed=2, labels=SMS.names)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert set(a["test"]["text"]) != set(c["test"]["text"])
    assert set(a["val"]["text"]) != set(c["val"]["text"])


@pytest.mark.parametrize(("n_ham", "n_spam"), [(100, 2), (100, 0), (2, 100), (0, 50)])
def test_split_needs_enough_of_each_label(n_ham: int, n_spam: int) -> None:
    with pytest.raises(SpamGPTError, match="at least 3 messages of each label"):
        data.split(messages(n_ham, n_spam), 0.1, 0.2, seed=0, labels=SMS.names)


def test_split_too_small_to_split_is_a_user_error() -> None:
    with pytest.raises(SpamGPTError):
        data.split(messages(3, 3), 0.1, 0.2, seed=0, labels=SMS.names)


def test_label_counts() -> None:
    assert data.label_counts(messages(7, 3), labels=SMS.names) == {"ham": 7, "spam": 3}
    assert data.label_counts(messages(0, 2), labels=SMS.names) == {"ham": 0, "spam": 2}


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
    back = data.read_split(path)
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
        for t in data.read_split(folder / "data" / "split" / f"{name}.csv")["text"]
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
        "spamgpt.splits: sms+spam+collection.zip/SMSSpamCollection: skipped 1 bad line "
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
    "csv": data.Format("csv", "body", "category"),
    "tsv": data.Format("tsv", "body", "category"),
    "jsonl": data.Format("jsonl", "body", "category"),
    "parquet": data.Format("parquet", "body", "category"),
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
    parsed = data.read_messages(own_file(tmp_path, fmt, TRICKY_RECORDS), FORMAT[fmt], None)
    assert parsed.frame["text"].tolist() == [r["body"] for r in TRICKY_RECORDS]
    assert parsed.frame["label"].tolist() == [r["category"] for r in TRICKY_RECORDS]
    assert parsed.bad_lines == Counter()


def test_csv_row_numbers_are_the_lines_where_rows_start(tmp_path: Path) -> None:
    parsed = data.read_messages(own_file(tmp_path, "csv", TRICKY_RECORDS), FORMAT["csv"], None)
    # header on line 1; the second record's quoted line break makes the third start on line 5
    assert parsed.frame["line"].tolist() == [2, 3, 5, 6]


@pytest.mark.parametrize("fmt", list(FORMAT))
def test_integer_labels_become_class_names(tmp_path: Path, fmt: str) -> None:
    records = [{"body": f"text {i}", "category": i % 3} for i in range(6)]
    parsed = data.read_messages(own_file(tmp_path, fmt, records), FORMAT[fmt], None)
    assert parsed.frame["label"].tolist() == ["0", "1", "2", "0", "1", "2"]


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfbody,category\nhello,a\n")
    assert rows(data.read_messages(path, FORMAT["csv"], None)) == [(2, "a", "hello")]


def test_a_missing_column_names_the_columns_there_are(tmp_path: Path) -> None:
    path = own_file(tmp_path, "csv", TRICKY_RECORDS)
    with pytest.raises(SpamGPTError) as info:
        data.read_messages(path, data.Format("csv", "text", "category"), None)
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
        data.read_messages(path, FORMAT[fmt], ("a", "b"), "error")
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ") and problem in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("fmt", "bad", "kind", "problem"), CASES)
def test_bad_row_is_skipped_counted_and_never_merged(
    tmp_path: Path, fmt: str, bad: bytes, kind: str, problem: str
) -> None:
    path = tmp_path / f"mine.{fmt}"
    path.write_bytes(HEADER[fmt] + GOOD[fmt][0] + bad + GOOD[fmt][1])
    parsed = data.read_messages(path, FORMAT[fmt], ("a", "b"), "skip")
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
        data.read_messages(path, FORMAT["parquet"], None, "error")
    parsed = data.read_messages(path, FORMAT["parquet"], None, "skip")
    assert rows(parsed) == [(1, "a", "first"), (4, "b", "last")]
    assert parsed.bad_lines == Counter({"missing_text": 1, "missing_label": 1})


def test_not_a_parquet_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.parquet"
    path.write_bytes(b"\x00\x01 no format at all")
    with pytest.raises(SpamGPTError, match=r"mine\.parquet: not a Parquet file"):
        data.read_messages(path, FORMAT["parquet"], None)


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
    fmt = data.Format(declared, "text", "label")
    with pytest.raises(SpamGPTError) as info:
        data.read_messages(path, fmt, None, policy, name="tickets.csv")
    assert str(info.value) == (
        f"tickets.csv does not look like {data.FORMAT_NAMES[declared]} (data.format: "
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
        data.read_messages(path, data.Format(declared, "text", "label"), None, name="mine")
    assert str(info.value).startswith("mine") and "does not look like" not in str(info.value)


def test_line_errors_name_the_file_given(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b"ham\tfine\nspam\tfine too\nno tab here\n")
    with pytest.raises(SpamGPTError) as info:
        data.read_messages(path, data.Format(), None, name="texts.tsv")
    assert str(info.value).startswith("texts.tsv:3: no tab between label and text; ")


def test_skipped_summary_counts_each_kind(tmp_path: Path) -> None:
    path = raw_file(tmp_path, b"ham\tkeep\nno tab\nalso none\nham\t \nspam\tkeep\n")
    parsed = data.read_messages(path, data.Format(), None, "skip")
    assert data.skipped_summary(parsed, "texts.tsv") == (
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
    splits = data.split(frame, 0.1, 0.2, seed=0, labels=("a", "b", "c", "d"))
    for name, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert data.label_counts(splits[name], ("a", "b", "c", "d")) == dict.fromkeys(
            "abcd", round(100 * share)
        )


def test_a_class_too_small_to_split_is_named() -> None:
    frame = pd.DataFrame(
        {"line": range(32), "label": ["a"] * 30 + ["rare"] * 2, "text": list(map(str, range(32)))}
    )
    with pytest.raises(SpamGPTError, match="class 'rare' has 2 messages after dedupe"):
        data.split(frame, 0.1, 0.2, seed=0, labels=("a", "rare"))


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
    fmt_ = data.Format(fmt, "body", "tags", None, True, ";", allow_empty_labels=True)
    parsed = data.read_messages(path, fmt_, ("billing", "shipping", "urgent"))
    assert [json.loads(v) for v in parsed.frame["label"]] == [r["tags"] for r in MULTI_RECORDS]


def test_a_row_without_labels_and_an_unknown_label_are_bad_rows(tmp_path: Path) -> None:
    path = own_file(
        tmp_path, "jsonl", [{"body": r["body"], "tags": r["tags"]} for r in MULTI_RECORDS]
    )
    fmt = data.Format("jsonl", "body", "tags", None, True)
    with pytest.raises(
        SpamGPTError, match=r"mine\.jsonl:3: no label; set data\.allow_empty_labels"
    ):
        data.read_messages(path, fmt, None)
    with pytest.raises(SpamGPTError, match=r"mine\.jsonl:1: unknown label 'urgent'; allowed"):
        data.read_messages(path, fmt, ("billing", "shipping"))
    skipped = data.read_messages(path, fmt, None, "skip")
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
    fmt = data.Format("csv", "body", "tags", None, True, "|")
    parts = ", ".join(value.split() if joiner == " " else (v.strip() for v in value.split(joiner)))
    expected = (
        f'tags.csv:12: "{value}" looks like the labels {parts} joined by "{joiner}", not by '
        f'data.label_separator "|"; set data.label_separator: "{joiner}"'
    ).replace("\t", "\\t")
    for labels in (None, ("a", "b", "c")):
        for bad_lines in ("error", "skip"):  # the setting is wrong, not the row: no skipping
            with pytest.raises(SpamGPTError) as info:
                data.read_messages(path, fmt, labels, bad_lines, name="tags.csv")
            assert str(info.value) == expected


def test_the_first_of_several_misjoined_rows_is_named_and_real_labels_pass(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tags.tsv"
    tsv = TAGS.replace(",", "\t")
    path.write_text(tsv + "10\ttext 10\tb;c\n11\ttext 11\ta;b\n")
    fmt = data.Format("tsv", "body", "tags", None, True, "|")
    with pytest.raises(SpamGPTError, match=r'^tags\.tsv:12: "b;c" looks like the labels b, c '):
        data.read_messages(path, fmt, None, name="tags.tsv")
    # a label holding a separator, whose parts are not all labels: a label of its own
    path.write_text(tsv + "10\ttext 10\tC/C++\n11\ttext 11\ta;x\n")
    parsed = data.read_messages(path, fmt, None, name="tags.tsv")
    assert [json.loads(v) for v in parsed.frame["label"][-2:]] == [["C/C++"], ["a;x"]]
    # with ";" set, "a;b" is two labels
    path.write_text(TAGS.replace("|", ";"))
    fmt = data.Format("csv", "body", "tags", None, True, ";")
    assert json.loads(data.read_messages(path, fmt, None).frame["label"][0]) == ["a", "b"]


def test_a_list_element_is_not_taken_for_a_separator_mistake(tmp_path: Path) -> None:
    """JSON Lines lists hold labels as given: data.label_separator does not apply to them."""
    records = [{"body": f"text {i}", "tags": tags} for i, tags in enumerate([["a"], ["b"]] * 3)]
    path = own_file(tmp_path, "jsonl", [*records, {"body": "odd", "tags": ["a;b"]}])
    fmt = data.Format("jsonl", "body", "tags", None, True)
    assert json.loads(data.read_messages(path, fmt, None).frame["label"].iloc[-1]) == ["a;b"]
    with pytest.raises(SpamGPTError, match=r"mine\.jsonl:7: unknown label 'a;b'; allowed: a, b"):
        data.read_messages(path, fmt, ("a", "b"))


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
    parts = data.split(frame, 0.2, 0.2, 123, ("a", "b", "c"), multi_label=True)
    assert sum(len(p) for p in parts.values()) == 120
    whole = data.label_counts(frame, ("a", "b", "c"), multi_label=True)
    for name, part in parts.items():
        counts = data.label_counts(part, ("a", "b", "c"), multi_label=True)
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
    assert data.label_conflicts(frame) == 1


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
    parsed = data.read_messages(path, data.Format(fmt, "review", "rating", numbers=True), None)
    assert parsed.frame["label"].tolist() == [text for _, text in NUMBER_RECORDS]
    assert [float(v) for v in parsed.frame["label"]] == [5.0, 3.5, -0.1, 0.1]


@pytest.mark.parametrize(
    ("rating", "said"),
    [
        ('"four"', "label 'four' is not a number"),
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
    fmt = data.Format("jsonl", "review", "rating", numbers=True)
    with pytest.raises(SpamGPTError) as info:
        data.read_messages(path, fmt, None, name="reviews.jsonl")
    message = str(info.value)
    assert message.startswith(f"reviews.jsonl:2: {said}")
    assert "\n" not in message
    skipped = data.read_messages(path, fmt, None, "skip")
    assert skipped.bad_lines == Counter(bad_number=1) and skipped.frame["label"].tolist() == ["2.0"]


def test_number_strata_are_quantile_bins_of_even_size() -> None:
    values = pd.Series(["5", "1", "3", "3", "2", "4"] * 5, index=range(100, 130))
    key = data.number_strata(values)
    assert key.index.tolist() == values.index.tolist()
    assert key.value_counts().tolist() == [6] * 5  # STRATA bins of 30 rows
    numbers = values.astype(float)
    assert numbers[key == 0].max() <= numbers[key == 4].min()  # lowest bin, lowest numbers
    assert data.number_strata(values.iloc[:11]).nunique() == 1  # too few for two bins of 6
    assert data.number_strata(values.iloc[:12]).nunique() == 2


def test_a_number_split_spreads_low_and_high_numbers_and_is_summarised() -> None:
    frame = pd.DataFrame(
        {
            "line": range(100),
            "text": [f"message {i}" for i in range(100)],
            "label": [repr(float(i % 10)) for i in range(100)],
        }
    )
    parts = data.split(frame, 0.2, 0.2, 123, ("rating",), numbers=True)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    for part in parts.values():  # each split's mean near the whole's 4.5
        summary = data.label_counts(part, ("rating",), numbers=True)
        assert abs(summary["mean"] - 4.5) < 0.6 and summary["count"] == len(part)
    assert data.number_summary(pd.Series(["1.0", "3.0"])) == {
        "count": 2, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0
    }  # fmt: skip
