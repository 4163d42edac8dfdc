"""The SMS Spam Collection: strict parsing, de-duplication and a stratified split.

The file is `label<TAB>text`, one message per line. Its texts contain unbalanced double quotes,
so a CSV reader with default quoting merges neighbouring messages (5572 rows instead of 5574);
here each line is parsed on its own and split at the first tab, and a line that does not parse
is never glued to another: it stops the run, or is skipped and counted.
"""

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from spamgpt import atomic
from spamgpt.errors import SpamGPTError
from spamgpt.labels import LABELS


@dataclass
class ParsedMessages:
    frame: pd.DataFrame  # columns: line (1-based line number in the raw file), label, text
    bad_lines: Counter = field(default_factory=Counter)  # reason -> count (policy 'skip')


class _BadLine(ValueError):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # the key counted in metrics/data.json under bad_lines


def _parse_line(raw: bytes) -> tuple[str, str]:
    """(label, text) of one raw line without its newline, or _BadLine."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        detail = f"undecodable bytes at column {e.start + 1} (not UTF-8)"
        raise _BadLine("undecodable", detail) from None
    label, tab, text = line.partition("\t")
    if not tab:
        raise _BadLine("no_tab", "no tab between label and text")
    if label not in LABELS:
        raise _BadLine("unknown_label", f"unknown label {label[:20]!r}; allowed: ham, spam")
    if not text.strip():
        raise _BadLine("empty_text", "empty text")
    return label, text


def parse_messages(path: str | os.PathLike, bad_lines: str = "error") -> ParsedMessages:
    """Parse the raw file; `bad_lines` is 'error' (raise at the first) or 'skip' (count them)."""
    lines = Path(path).read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    rows, skipped = [], Counter()
    for number, raw in enumerate(lines, start=1):
        try:
            rows.append((number, *_parse_line(raw.removesuffix(b"\r"))))
        except _BadLine as bad:
            if bad_lines != "skip":
                raise SpamGPTError(
                    f"{path}:{number}: {bad}; fix the line, or set data.bad_lines: skip "
                    f"to drop such lines and count them"
                ) from None
            skipped[bad.kind] += 1
    if not rows:
        raise SpamGPTError(f"{path}: no messages (the file is empty or every line is bad)")
    return ParsedMessages(pd.DataFrame(rows, columns=["line", "label", "text"]), skipped)


def dedupe(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first occurrence of each exact text: a copy in train and in test leaks."""
    return frame.drop_duplicates(subset="text", keep="first").reset_index(drop=True)


def split(frame: pd.DataFrame, val: float, test: float, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test split by label; fractions are of the whole frame."""
    counts = frame["label"].value_counts()
    if len(counts) < len(LABELS) or counts.min() < 3:
        raise SpamGPTError(
            f"need at least 3 messages of each label to split, got {counts.to_dict()}"
        )
    try:
        rest, test_part = train_test_split(
            frame, test_size=test, stratify=frame["label"], random_state=seed
        )
        train_part, val_part = train_test_split(
            rest, test_size=val / (1 - test), stratify=rest["label"], random_state=seed
        )
    except ValueError as e:  # a split too small to hold every class
        raise SpamGPTError(
            f"cannot split {len(frame)} messages {counts.to_dict()} into val {val:g} / test "
            f"{test:g} with both labels in each: {e}"
        ) from None
    return {
        name: part.sort_values("line").reset_index(drop=True)
        for name, part in (("train", train_part), ("val", val_part), ("test", test_part))
    }


def label_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {label: int((frame["label"] == label).sum()) for label in LABELS}


def write_split(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """CSV with every text quoted: a bare carriage return or a quote inside a message cannot
    end or merge rows when the file is read back."""
    with atomic.atomic_open(path, "w", encoding="utf-8", newline="") as f:
        frame.to_csv(f, index=False, quoting=csv.QUOTE_NONNUMERIC)


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """A split file as written by write_split, every text exactly as parsed."""
    return pd.read_csv(
        path, dtype={"line": "int64", "label": "str", "text": "str"}, keep_default_na=False
    )
